"""The GRPO loss fused with its backward: `grpo_loss(...)`, its torch path, and
`grpo_loss_reference` (plain PyTorch autograd, the tests' ground truth); plus `token_weights`,
the per-token normalisation that makes token- or sequence-level reduction and masking exact
under micro-batch accumulation.

    w = token_weights(lengths, reduction="token", total_tokens=T, total_sequences=S)   # (N,)
    terms = grpo_loss(lp, old_lp, ref_lp, adv, w, clip_eps=0.2, kl_coef=1e-3)
    terms.loss.backward()                 # scalar: sum_t w_t * (pg_t + kl_coef * kl_t)

Per token: the PPO-clip surrogate on the ratio pi / pi_old (pi_old: the behaviour policy, or the
pre-update learner with truncated importance weights `tis_weight` against the sampler), plus the
k3 estimate of KL(pi || ref): exp(ref - pi) - (ref - pi) - 1.

The fused paths (torch: `_FusedGRPO`; Triton: `kernels/losses_triton.py`) compute the loss, the
metrics and d loss / d logprob in one pass and keep only that derivative for the backward.
Only `logprobs` receives a gradient; the other inputs are data.

Must not import anything from `engine`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from kernels.loss_backward import grpo_backward
from kernels.paths import resolve_impl


@dataclass
class GRPOTerms:
    loss: torch.Tensor  # scalar: sum_t weight_t * (pg_t + kl_coef * kl_t), differentiable
    clipped: torch.Tensor  # (N,) bool, tokens whose clipped branch was taken
    kl: torch.Tensor  # (N,) k3 estimate of KL(policy || reference) per token, detached
    ratio: torch.Tensor  # (N,) pi / pi_old, detached


def token_weights(
    lengths: torch.Tensor,  # (B,) response lengths of this micro-batch's sequences
    *,
    reduction: Literal["token", "sequence"],
    total_tokens: int,  # over the whole optimizer step (all micro-batches), unmasked tokens only
    total_sequences: int,  # over the whole optimizer step
    mask: torch.Tensor | None = None,  # (N,) bool, False for tokens that must not count
) -> torch.Tensor:
    """(N,) fp32 weights: 1/total_tokens ("token": every token counts the same), or
    1/(len * total_sequences) ("sequence": every sequence counts the same, len = its unmasked
    token count). Masked tokens get 0."""
    if reduction == "token":
        weight = torch.full((int(lengths.sum()),), 1.0 / max(total_tokens, 1), device=lengths.device)
    elif reduction == "sequence":
        seq_len = lengths.float()
        if mask is not None:
            seq_index = torch.repeat_interleave(torch.arange(len(lengths), device=lengths.device), lengths)
            seq_len = torch.zeros_like(seq_len).index_add_(0, seq_index, mask.float())
        weight = torch.repeat_interleave(1.0 / (seq_len.clamp(min=1) * max(total_sequences, 1)), lengths)
    else:
        raise ValueError(f"reduction={reduction!r}: expected 'token' or 'sequence'")
    return weight * mask if mask is not None else weight


def grpo_loss(
    logprobs: torch.Tensor,  # (N,) response-token log-probs under the policy (grad)
    old_logprobs: torch.Tensor,  # (N,) behaviour (or pre-update learner) log-probs
    ref_logprobs: torch.Tensor,  # (N,) reference log-probs
    advantages: torch.Tensor,  # (N,) the sequence advantage repeated on each of its tokens
    token_weight: torch.Tensor,  # (N,) global normalisation, see `token_weights`
    *,
    clip_eps: float,
    kl_coef: float,
    tis_weight: torch.Tensor | None = None,  # (N,) truncated importance weights, or None
    impl: str | None = None,  # "triton" | "torch" | "reference" | None (auto, see kernels.paths)
) -> GRPOTerms:
    """PPO-clip surrogate per token plus k3 KL, weighted and summed; every path gives the same terms."""
    path = resolve_impl(impl, logprobs.device)
    data = (logprobs, old_logprobs, ref_logprobs, advantages, token_weight)
    if path == "reference":
        return grpo_loss_reference(*data, clip_eps=clip_eps, kl_coef=kl_coef, tis_weight=tis_weight)
    if path == "triton":
        from kernels.losses_triton import grpo_loss_triton

        loss, clipped, kl, ratio = grpo_loss_triton(*data, tis_weight, clip_eps, kl_coef)
    else:
        loss, clipped, kl, ratio = _FusedGRPO.apply(*data, tis_weight, clip_eps, kl_coef)
    return GRPOTerms(loss=loss, clipped=clipped, kl=kl, ratio=ratio)


def grpo_loss_reference(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    token_weight: torch.Tensor,
    *,
    clip_eps: float,
    kl_coef: float,
    tis_weight: torch.Tensor | None = None,
) -> GRPOTerms:
    """Plain PyTorch autograd; same contract as `grpo_loss`."""
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


def grpo_terms(lp, old, ref, adv, weight, tis, clip_eps: float, kl_coef: float):
    """Per-token (weighted loss, d loss / d lp, clipped, kl, ratio) in fp32, without autograd.

    d min(u, c) / d lp follows torch's conventions exactly: u = ratio * A always passes ratio * A;
    c = clamp(ratio) * A passes it only inside [1 - eps, 1 + eps]; a tie splits the gradient.
    """
    lp, old, ref, adv, weight = (t.float() for t in (lp, old, ref, adv, weight))
    ratio = (lp - old).exp()
    unclipped = ratio * adv
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * adv
    in_range = ((ratio >= 1.0 - clip_eps) & (ratio <= 1.0 + clip_eps)).float()
    take_u = torch.where(unclipped < clipped, 1.0, torch.where(unclipped > clipped, 0.0, 0.5))
    d_min = unclipped * (take_u + (1.0 - take_u) * in_range)
    pg, d_pg = -torch.minimum(unclipped, clipped), -d_min
    if tis is not None:
        pg, d_pg = pg * tis.float(), d_pg * tis.float()
    delta = ref - lp
    e = delta.exp()
    kl = e - delta - 1.0
    per_token = weight * (pg + kl_coef * kl)
    d_lp = weight * (d_pg + kl_coef * (1.0 - e))
    return per_token, d_lp, clipped < unclipped, kl, ratio


class _FusedGRPO(torch.autograd.Function):
    """Loss and d loss / d logprob in one pass; saves only the (N,) derivative."""

    @staticmethod
    def forward(ctx, lp, old, ref, adv, weight, tis, clip_eps: float, kl_coef: float):
        per_token, d_lp, clipped, kl, ratio = grpo_terms(lp, old, ref, adv, weight, tis, clip_eps, kl_coef)
        ctx.save_for_backward(d_lp)
        ctx.lp_dtype = lp.dtype
        ctx.mark_non_differentiable(clipped, kl, ratio)
        return per_token.sum(), clipped, kl, ratio

    @staticmethod
    def backward(ctx, grad_loss, *_):
        return grpo_backward(ctx, grad_loss)
