"""Triton paths of the fused DPO and GRPO losses (contracts and math: `kernels/dpo.py`,
`kernels/grpo.py`). Each is one elementwise kernel that writes the per-item loss, the metrics and
d loss / d input; the backward multiplies that derivative by the incoming gradient (torch,
`kernels/loss_backward.py`, shared with the torch paths).

Imported on first use, like `kernels/logprob_triton.py` (the interpreter is chosen at import).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.loss_backward import dpo_backward, grpo_backward, save_for_dpo_backward
from kernels.paths import triton_interpret


def _block() -> int:
    return 32 if triton_interpret() else 1024


@triton.jit
def _dpo_kernel(
    PC,
    PR,
    RC,
    RR,
    LC,
    LR,
    LOSS,
    MARGIN,
    SIG,
    P,
    beta,
    nll_weight,
    LENGTH_NORMALIZE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < P
    pc = tl.load(PC + i, mask=ok, other=0.0).to(tl.float32)
    pr = tl.load(PR + i, mask=ok, other=0.0).to(tl.float32)
    rc = tl.load(RC + i, mask=ok, other=0.0).to(tl.float32)
    rr = tl.load(RR + i, mask=ok, other=0.0).to(tl.float32)
    lc = tl.load(LC + i, mask=ok, other=1.0)
    lr = tl.load(LR + i, mask=ok, other=1.0)
    if LENGTH_NORMALIZE:
        margin = beta * ((pc - rc) / lc - (pr - rr) / lr)
    else:
        margin = beta * ((pc - rc) - (pr - rr))
    loss = tl.maximum(-margin, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(margin)))  # -log sigmoid(margin)
    loss = loss - nll_weight * pc / lc
    tl.store(LOSS + i, loss, mask=ok)
    tl.store(MARGIN + i, margin, mask=ok)
    tl.store(SIG + i, 1.0 / (1.0 + tl.exp(margin)), mask=ok)  # sigmoid(-margin)


class _TritonDPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pc, pr, rc, rr, lc, lr, beta: float, length_normalize: bool, nll_weight: float):
        inputs = [t.contiguous() for t in (pc, pr, rc, rr, lc, lr)]
        n = pc.numel()
        loss, margin, sig = (torch.empty(n, dtype=torch.float32, device=pc.device) for _ in range(3))
        if n > 0:
            block = _block()
            _dpo_kernel[(triton.cdiv(n, block),)](
                *inputs,
                loss,
                margin,
                sig,
                n,
                beta,
                nll_weight,
                LENGTH_NORMALIZE=length_normalize,
                BLOCK=block,
            )
        save_for_dpo_backward(ctx, sig, (pc, pr, rc, rr), lc, lr, beta, length_normalize, nll_weight)
        ctx.mark_non_differentiable(margin)
        return loss, margin

    @staticmethod
    def backward(ctx, grad_loss, _grad_margin):
        return dpo_backward(ctx, grad_loss)


def dpo_loss_triton(pc, pr, rc, rr, lc, lr, beta, length_normalize, nll_weight):
    """-> (loss (P,), margin (P,) detached)."""
    return _TritonDPO.apply(pc, pr, rc, rr, lc, lr, beta, length_normalize, nll_weight)


@triton.jit
def _grpo_kernel(
    LP,
    OLD,
    REF,
    ADV,
    WEIGHT,
    TIS,
    LOSS,
    DLP,
    CLIPPED,
    KL,
    RATIO,
    N,
    clip_eps,
    kl_coef,
    HAS_TIS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < N
    lp = tl.load(LP + i, mask=ok, other=0.0).to(tl.float32)
    old = tl.load(OLD + i, mask=ok, other=0.0).to(tl.float32)
    ref = tl.load(REF + i, mask=ok, other=0.0).to(tl.float32)
    adv = tl.load(ADV + i, mask=ok, other=0.0).to(tl.float32)
    weight = tl.load(WEIGHT + i, mask=ok, other=0.0).to(tl.float32)
    ratio = tl.exp(lp - old)
    unclipped = ratio * adv
    clipped = tl.minimum(tl.maximum(ratio, 1.0 - clip_eps), 1.0 + clip_eps) * adv
    in_range = tl.where((ratio >= 1.0 - clip_eps) & (ratio <= 1.0 + clip_eps), 1.0, 0.0)
    take_u = tl.where(unclipped < clipped, 1.0, tl.where(unclipped > clipped, 0.0, 0.5))
    pg = -tl.minimum(unclipped, clipped)
    d_pg = -unclipped * (take_u + (1.0 - take_u) * in_range)
    if HAS_TIS:
        tis = tl.load(TIS + i, mask=ok, other=0.0).to(tl.float32)
        pg = pg * tis
        d_pg = d_pg * tis
    delta = ref - lp
    e = tl.exp(delta)
    kl = e - delta - 1.0
    tl.store(LOSS + i, weight * (pg + kl_coef * kl), mask=ok)
    tl.store(DLP + i, weight * (d_pg + kl_coef * (1.0 - e)), mask=ok)
    tl.store(CLIPPED + i, (clipped < unclipped).to(tl.int8), mask=ok)
    tl.store(KL + i, kl, mask=ok)
    tl.store(RATIO + i, ratio, mask=ok)


class _TritonGRPO(torch.autograd.Function):
    @staticmethod
    def forward(ctx, lp, old, ref, adv, weight, tis, clip_eps: float, kl_coef: float):
        n = lp.numel()
        per_token, d_lp, kl, ratio = (torch.empty(n, dtype=torch.float32, device=lp.device) for _ in range(4))
        clipped = torch.empty(n, dtype=torch.int8, device=lp.device)
        if n > 0:
            block = _block()
            data = [t.contiguous() for t in (lp, old, ref, adv, weight)]
            _grpo_kernel[(triton.cdiv(n, block),)](
                *data,
                tis.contiguous() if tis is not None else data[0],
                per_token,
                d_lp,
                clipped,
                kl,
                ratio,
                n,
                clip_eps,
                kl_coef,
                HAS_TIS=tis is not None,
                BLOCK=block,
            )
        ctx.save_for_backward(d_lp)
        ctx.lp_dtype = lp.dtype
        clipped = clipped.bool()
        ctx.mark_non_differentiable(clipped, kl, ratio)
        return per_token.sum(), clipped, kl, ratio

    @staticmethod
    def backward(ctx, grad_loss, *_):
        return grpo_backward(ctx, grad_loss)


def grpo_loss_triton(lp, old, ref, adv, weight, tis, clip_eps, kl_coef):
    """-> (loss scalar, clipped (N,) bool, kl (N,), ratio (N,)); the last three detached."""
    return _TritonGRPO.apply(lp, old, ref, adv, weight, tis, clip_eps, kl_coef)
