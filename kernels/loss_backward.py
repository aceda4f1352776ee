"""The closed-form backwards of the fused DPO and GRPO losses, shared by their torch paths
(`kernels/dpo.py`, `kernels/grpo.py`) and their Triton paths (`kernels/losses_triton.py`).

Each fused forward computes the loss and what its derivative needs in one pass; these functions
save that state on the autograd `ctx` and turn it into input gradients. They live in their own
module so that the ops and their Triton kernels import them without importing each other.

Must not import anything from `engine`.
"""

from __future__ import annotations

import torch


def save_for_dpo_backward(ctx, sig, inputs, lc, lr, beta, length_normalize, nll_weight) -> None:
    """What `dpo_backward` needs: sigmoid(-margin) (P,), the length factors, the input dtypes."""
    nc, nr = (lc, lr) if length_normalize else (torch.ones_like(lc), torch.ones_like(lr))
    ctx.save_for_backward(sig, nc, nr, lc)
    ctx.beta, ctx.nll_weight = beta, nll_weight
    ctx.dtypes = tuple(t.dtype for t in inputs)


def dpo_backward(ctx, grad_loss: torch.Tensor) -> tuple:
    """Closed form, with sig = sigmoid(-margin) and n = length (length_normalize) or 1:

    d loss/d pi_c = -beta * sig / n_c - nll_weight / l_c     d loss/d pi_r = beta * sig / n_r
    d loss/d ref_c = beta * sig / n_c                        d loss/d ref_r = -beta * sig / n_r
    """
    sig, nc, nr, lc = ctx.saved_tensors
    g = grad_loss.float()
    gc, gr = g * ctx.beta * sig / nc, g * ctx.beta * sig / nr
    g_pc = -gc - g * ctx.nll_weight / lc if ctx.nll_weight else -gc
    grads = (g_pc, gr, gc, -gr)
    return (*(t.to(dt) for t, dt in zip(grads, ctx.dtypes, strict=True)), None, None, None, None, None)


def grpo_backward(ctx, grad_loss: torch.Tensor) -> tuple:
    """d loss / d logprob = grad_loss * the saved derivative (`ctx.saved_tensors[0]`, (N,), and
    `ctx.lp_dtype`); the other inputs are data."""
    (d_lp,) = ctx.saved_tensors
    return (grad_loss * d_lp).to(ctx.lp_dtype), None, None, None, None, None, None, None
