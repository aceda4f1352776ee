"""The paper's objectives in plain PyTorch: DPO on summed response log-probs and GRPO with a
clipped ratio against the behaviour policy and a k3 KL to the reference.

One function per objective: these are the seams the fused kernels (`kernels/dpo.py`,
`kernels/grpo.py`) replace. Both are written so that gradient accumulation over micro-batches is
exact: DPO returns per-pair losses (the caller divides by the global pair count), GRPO takes a
per-token weight that already carries the global normalisation (token- or sequence-level).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DPOTerms:
    loss: torch.Tensor  # (P,) per-pair loss, differentiable
    margin: torch.Tensor  # (P,) beta * [(pi_c - ref_c) - (pi_r - ref_r)], detached


def dpo_loss(
    policy_chosen: torch.Tensor,  # (P,) summed response log-probs under the policy
    policy_rejected: torch.Tensor,  # (P,)
    ref_chosen: torch.Tensor,  # (P,) same under the reference (no grad)
    ref_rejected: torch.Tensor,  # (P,)
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,  # (P,) response token counts
    rejected_lengths: torch.Tensor | None = None,
    length_normalize: bool = False,
    nll_weight: float = 0.0,
) -> DPOTerms:
    """-log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]) (+ nll_weight * NLL of the chosen
    response per token). With `length_normalize` every summed log-prob is divided by its length
    first."""
    pc, pr, rc, rr = policy_chosen, policy_rejected, ref_chosen, ref_rejected
    if length_normalize or nll_weight:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("length_normalize / nll_weight need chosen_lengths and rejected_lengths")
        lc = chosen_lengths.clamp(min=1).to(pc.dtype)
        lr = rejected_lengths.clamp(min=1).to(pc.dtype)
    if length_normalize:
        pc, rc, pr, rr = pc / lc, rc / lc, pr / lr, rr / lr
    margin = beta * ((pc - rc) - (pr - rr))
    loss = -F.logsigmoid(margin)
    if nll_weight:
        loss = loss + nll_weight * (-policy_chosen / lc)
    return DPOTerms(loss=loss, margin=margin.detach())


@dataclass
class GRPOTerms:
    loss: torch.Tensor  # scalar: sum_t weight_t * (pg_t + kl_coef * kl_t), differentiable
    clipped: torch.Tensor  # (N,) bool, tokens whose clipped branch was taken
    kl: torch.Tensor  # (N,) k3 estimate of KL(policy || reference) per token, detached
    ratio: torch.Tensor  # (N,) pi / pi_old, detached


def grpo_loss(
    logprobs: torch.Tensor,  # (N,) response-token log-probs under the policy (grad)
    old_logprobs: torch.Tensor,  # (N,) behaviour (or pre-update learner) log-probs
    ref_logprobs: torch.Tensor,  # (N,) reference log-probs
    advantages: torch.Tensor,  # (N,) the sequence advantage repeated on each of its tokens
    token_weight: torch.Tensor,  # (N,) global normalisation: 1/total_tokens or 1/(len*num_seqs)
    *,
    clip_eps: float,
    kl_coef: float,
    tis_weight: torch.Tensor | None = None,  # (N,) truncated importance weights, or None
) -> GRPOTerms:
    """PPO-clip surrogate per token, plus k3 KL: exp(ref - pi) - (ref - pi) - 1."""
    log_ratio = logprobs - old_logprobs
    ratio = log_ratio.exp()
    unclipped = ratio * advantages
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    pg = -torch.minimum(unclipped, clipped)
    if tis_weight is not None:
        pg = pg * tis_weight
    delta = ref_logprobs - logprobs
    kl = delta.exp() - delta - 1.0
    per_token = pg + kl_coef * kl
    return GRPOTerms(
        loss=(per_token * token_weight).sum(),
        clipped=(clipped < unclipped).detach(),
        kl=kl.detach(),
        ratio=ratio.detach(),
    )
