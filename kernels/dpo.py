"""The DPO loss on summed response log-probs, fused with its backward: `dpo_loss(...)`, its torch
path and `dpo_loss_reference` (plain PyTorch autograd, the tests' ground truth).

    terms = dpo_loss(pol_chosen, pol_rejected, ref_chosen, ref_rejected, beta=0.1)   # (P,) losses
    (terms.loss.sum() / global_pairs).backward()

Per pair: -log sigmoid(beta * [(pi_c - ref_c) - (pi_r - ref_r)]) (+ nll_weight * NLL of the chosen
response per token); with `length_normalize` every summed log-prob is divided by its length
first. Per-pair losses (not a mean) so that micro-batches accumulate exactly: the caller divides
by the global pair count.

The fused paths (torch: `_FusedDPO`; Triton: `kernels/losses_triton.py`) compute the loss and its
derivatives in one pass and keep only sigmoid(-margin) for the backward
(`kernels/loss_backward.py`), instead of the autograd graph of a dozen elementwise ops.
Gradients flow to all four log-prob inputs.

Must not import anything from `engine`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from kernels.loss_backward import dpo_backward, save_for_dpo_backward
from kernels.paths import resolve_impl


@dataclass
class DPOTerms:
    loss: torch.Tensor  # (P,) per-pair loss, differentiable
    margin: torch.Tensor  # (P,) beta * [(pi_c - ref_c) - (pi_r - ref_r)], detached


def dpo_loss(
    policy_chosen: torch.Tensor,  # (P,) summed response log-probs under the policy
    policy_rejected: torch.Tensor,  # (P,)
    ref_chosen: torch.Tensor,  # (P,) same under the reference (no grad in training)
    ref_rejected: torch.Tensor,  # (P,)
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,  # (P,) response token counts
    rejected_lengths: torch.Tensor | None = None,
    length_normalize: bool = False,
    nll_weight: float = 0.0,
    impl: str | None = None,  # "triton" | "torch" | "reference" | None (auto, see kernels.paths)
) -> DPOTerms:
    """The DPO loss per pair (see the module docstring); every path gives the same terms."""
    kwargs = dict(
        beta=beta,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        length_normalize=length_normalize,
        nll_weight=nll_weight,
    )
    path = resolve_impl(impl, policy_chosen.device)
    if path == "reference":
        return dpo_loss_reference(policy_chosen, policy_rejected, ref_chosen, ref_rejected, **kwargs)
    lc, lr = length_factors(chosen_lengths, rejected_lengths, length_normalize, nll_weight, policy_chosen)
    args = (
        policy_chosen,
        policy_rejected,
        ref_chosen,
        ref_rejected,
        lc,
        lr,
        beta,
        length_normalize,
        nll_weight,
    )
    if path == "triton":
        from kernels.losses_triton import dpo_loss_triton

        loss, margin = dpo_loss_triton(*args)
    else:
        loss, margin = _FusedDPO.apply(*args)
    return DPOTerms(loss=loss, margin=margin)


def dpo_loss_reference(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    *,
    beta: float,
    chosen_lengths: torch.Tensor | None = None,
    rejected_lengths: torch.Tensor | None = None,
    length_normalize: bool = False,
    nll_weight: float = 0.0,
) -> DPOTerms:
    """Plain PyTorch autograd; same contract as `dpo_loss`."""
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


def length_factors(
    chosen_lengths, rejected_lengths, length_normalize: bool, nll_weight: float, like: torch.Tensor
):
    """(P,) fp32 lengths clamped to >= 1 (ones when neither length_normalize nor nll_weight needs them)."""
    if not (length_normalize or nll_weight):
        ones = torch.ones(like.shape, dtype=torch.float32, device=like.device)
        return ones, ones
    if chosen_lengths is None or rejected_lengths is None:
        raise ValueError("length_normalize / nll_weight need chosen_lengths and rejected_lengths")
    return chosen_lengths.clamp(min=1).float(), rejected_lengths.clamp(min=1).float()


class _FusedDPO(torch.autograd.Function):
    """Loss, margin and sigmoid(-margin) in one pass (fp32); the backward is `dpo_backward`."""

    @staticmethod
    def forward(ctx, pc, pr, rc, rr, lc, lr, beta: float, length_normalize: bool, nll_weight: float):
        nc, nr = (lc, lr) if length_normalize else (torch.ones_like(lc), torch.ones_like(lr))
        margin = beta * ((pc.float() - rc.float()) / nc - (pr.float() - rr.float()) / nr)
        loss = -F.logsigmoid(margin)
        if nll_weight:
            loss = loss - nll_weight * pc.float() / lc
        save_for_dpo_backward(
            ctx, torch.sigmoid(-margin), (pc, pr, rc, rr), lc, lr, beta, length_normalize, nll_weight
        )
        ctx.mark_non_differentiable(margin)
        return loss, margin

    @staticmethod
    def backward(ctx, grad_loss, _grad_margin):
        return dpo_backward(ctx, grad_loss)
