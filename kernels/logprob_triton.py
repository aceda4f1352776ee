"""The Triton path of `token_logprobs` (see `kernels/logprob.py` for the contract and the math,
`kernels/lse.py` for the statistics it shares with the torch path).

Forward (`_fwd_kernel`, fully fused): a 2-D grid of (row block, vocabulary split). Each program
walks its split in [BLOCK_N, BLOCK_V] logit tiles, each a K-loop of `tl.dot` over H, and keeps an
online max, sum-exp, sum-exp * shifted logit (entropy) and the target logit per row: O(N * splits)
floats out, merged in torch (`merge_partials`), then across TP ranks (`finish_stats`). Splitting
the vocabulary keeps every SM busy when N is small. No logits are ever written.

Backward: for each (row block, vocabulary slab), `_grad_logits_kernel` recomputes the logits
with the same tiling and writes G = dloss/dlogits = -g/T * (P - onehot) for that block only; two
cuBLAS GEMMs then add G @ W_slab into an fp32 grad_x accumulator of the row block and G.T @ x
into grad_W (one recompute in total, as in the torch path; no atomics). Row blocks and slabs are
sized so that the accumulator and G each take about 1/16 of the inputs' bytes, which bounds the
memory above inputs + gradients; with several row blocks grad_W is accumulated in its own dtype.

This module is imported on first use: `@triton.jit` decides at import time whether kernels are
compiled or run by the CPU interpreter (`TRITON_INTERPRET=1`), and tests set that per test.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import triton
import triton.language as tl

from kernels.lse import compute_dtype, finish_stats, local_targets, merge_partials
from kernels.paths import triton_interpret
from kernels.tp import tp_size_rank

# (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages) for 16-bit and fp32 inputs (fp32 tiles are
# twice the shared memory; the 16-bit tile is the best of a sweep on an H200, engine/bench/logprob_tune.py).
# The interpreter's blocks are tiny so that tests at N, V, H of a few
# dozen still cross block edges; tl.dot needs 16 at least.
GPU_BLOCKS_16 = (128, 256, 64, 8, 3)
GPU_BLOCKS_32 = (64, 64, 32, 4, 2)
INTERPRET_BLOCKS = (16, 32, 16, 1, 1)
# Backward working set: the fp32 grad_x accumulator and the G block each take about
# (inputs' bytes) / BUDGET_DIVISOR, and at least MIN_BUDGET on a GPU.
BUDGET_DIVISOR = 16
MIN_BUDGET = 8 << 20


def _blocks(dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    if triton_interpret():
        return INTERPRET_BLOCKS
    return GPU_BLOCKS_32 if dtype == torch.float32 else GPU_BLOCKS_16


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """tl.dot with fp32 accumulation; UPCAST feeds it fp32 (the interpreter's 16-bit dot is broken)."""
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _fwd_kernel(
    X,
    W,
    LOCAL_T,
    M_OUT,
    S_OUT,
    A_OUT,
    TGT_OUT,
    N,
    V,
    H,
    stride_x,
    stride_w,
    inv_t,
    v_per_split,
    n_splits,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    WITH_ENTROPY: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    t = tl.load(LOCAL_T + rows, mask=row_ok, other=-1)
    m = tl.full((BLOCK_N,), -1e30, tl.float32)  # finite, so (m - m_new) * s stays 0 at the start
    s = tl.full((BLOCK_N,), 0.0, tl.float32)
    a = tl.full((BLOCK_N,), 0.0, tl.float32)
    tgt = tl.full((BLOCK_N,), 0.0, tl.float32)
    v_start = split * v_per_split
    v_stop = tl.minimum(v_start + v_per_split, V)
    for v0 in range(v_start, v_stop, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        col_ok = cols < v_stop
        acc = tl.full((BLOCK_N, BLOCK_V), 0.0, tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hs = h0 + tl.arange(0, BLOCK_H)
            h_ok = hs < H
            x = tl.load(
                X + rows[:, None] * stride_x + hs[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0
            )
            w = tl.load(
                W + cols[:, None] * stride_w + hs[None, :], mask=col_ok[:, None] & h_ok[None, :], other=0.0
            )
            acc = _dot(x, tl.trans(w), acc, PRECISION, UPCAST)
        z = tl.where(col_ok[None, :], acc * inv_t, float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=1))
        alpha = tl.exp(m - m_new)
        e = tl.exp(z - m_new[:, None])
        if WITH_ENTROPY:
            shifted = tl.where(col_ok[None, :], z - m_new[:, None], 0.0)
            a = alpha * (a + (m - m_new) * s) + tl.sum(e * shifted, axis=1)
        s = s * alpha + tl.sum(e, axis=1)
        tgt += tl.sum(tl.where(cols[None, :] == t[:, None], z, 0.0), axis=1)
        m = m_new
    out = rows * n_splits + split
    tl.store(M_OUT + out, m, mask=row_ok)
    tl.store(S_OUT + out, s, mask=row_ok)
    tl.store(TGT_OUT + out, tgt, mask=row_ok)
    if WITH_ENTROPY:
        tl.store(A_OUT + out, a, mask=row_ok)


@triton.jit
def _grad_logits_kernel(
    X,
    W,
    LOCAL_T,
    LOG_Z,
    NEG_G,
    G,
    N,
    V,
    H,
    stride_x,
    stride_w,
    stride_g,
    inv_t,
    BLOCK_N: tl.constexpr,
    BLOCK_V: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
    UPCAST: tl.constexpr,
):
    """G[rows, cols] = -g/T * (softmax - onehot) for one [BLOCK_N, BLOCK_V] tile, in G's dtype."""
    pid_n = tl.program_id(0)
    pid_v = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    row_ok = rows < N
    col_ok = cols < V
    t = tl.load(LOCAL_T + rows, mask=row_ok, other=-1)
    log_z = tl.load(LOG_Z + rows, mask=row_ok, other=0.0)
    neg_g = tl.load(NEG_G + rows, mask=row_ok, other=0.0)  # -g / T
    acc = tl.full((BLOCK_N, BLOCK_V), 0.0, tl.float32)
    for h0 in range(0, H, BLOCK_H):
        hs = h0 + tl.arange(0, BLOCK_H)
        h_ok = hs < H
        x = tl.load(
            X + rows[:, None] * stride_x + hs[None, :], mask=row_ok[:, None] & h_ok[None, :], other=0.0
        )
        w = tl.load(
            W + cols[:, None] * stride_w + hs[None, :], mask=col_ok[:, None] & h_ok[None, :], other=0.0
        )
        acc = _dot(x, tl.trans(w), acc, PRECISION, UPCAST)
    p = tl.exp(acc * inv_t - log_z[:, None])
    onehot = tl.where(cols[None, :] == t[:, None], 1.0, 0.0)
    gz = (p - onehot) * neg_g[:, None]
    tl.store(
        G + rows[:, None] * stride_g + cols[None, :],
        gz.to(G.dtype.element_ty),
        mask=row_ok[:, None] & col_ok[None, :],
    )


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"  # "tf32" is the default; unused for 16-bit inputs


def _n_splits(n: int, v: int, block_n: int, block_v: int, device: torch.device) -> int:
    """Vocabulary splits so that the forward grid has a few programs per SM."""
    if device.type == "cuda":
        target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    else:
        target = 4  # the interpreter: enough to exercise the split merge in tests
    row_blocks = max(1, triton.cdiv(n, block_n))
    return max(1, min(triton.cdiv(v, block_v), triton.cdiv(target, row_blocks)))


class _TritonLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, local_t, group, inv_t: float, with_entropy: bool):
        cdt = compute_dtype(hidden, weight)
        x, w = hidden.to(cdt).contiguous(), weight.to(cdt).contiguous()
        n, h = x.shape
        v = w.shape[0]
        block_n, block_v, block_h, warps, stages = _blocks(cdt)
        splits = _n_splits(n, v, block_n, block_v, x.device)
        v_per_split = triton.cdiv(triton.cdiv(v, splits), block_v) * block_v
        splits = triton.cdiv(v, v_per_split)
        m, s, a, tgt = (torch.empty(n, splits, dtype=torch.float32, device=x.device) for _ in range(4))
        if n > 0:
            grid = (triton.cdiv(n, block_n), splits)
            _fwd_kernel[grid](
                x, w, local_t, m, s, a, tgt, n, v, h, x.stride(0), w.stride(0), inv_t, v_per_split, splits,
                BLOCK_N=block_n, BLOCK_V=block_v, BLOCK_H=block_h, WITH_ENTROPY=with_entropy,
                PRECISION=_precision(cdt), UPCAST=triton_interpret(), num_warps=warps, num_stages=stages,
            )  # fmt: skip
        m, s, a = merge_partials(m, s, a if with_entropy else None)
        logprobs, log_z, entropy = finish_stats(m, s, a, tgt.sum(-1), group)
        ctx.save_for_backward(hidden, weight, local_t, log_z)
        ctx.group, ctx.inv_t = group, inv_t
        if entropy is None:
            entropy = logprobs.new_zeros(0)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_lp, _grad_entropy):
        hidden, weight, local_t, log_z = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cdt = compute_dtype(hidden, weight)
        x, w = hidden.to(cdt).contiguous(), weight.to(cdt).contiguous()
        n, h = x.shape
        v = w.shape[0]
        block_n, block_v, block_h, warps, stages = _blocks(cdt)
        rows, slab = _backward_blocks(x, w, block_n, block_v)
        neg_g = (grad_lp.float() * -ctx.inv_t).contiguous()
        grad_x = torch.empty(hidden.shape, dtype=hidden.dtype, device=x.device) if need_x else None
        grad_w = torch.zeros(w.shape, dtype=cdt, device=x.device) if need_w else None
        acc = torch.empty(min(rows, n), h, dtype=torch.float32, device=x.device) if need_x else None
        g_buf = torch.empty(min(rows, n) * min(slab, v), dtype=cdt, device=x.device)
        tp_size = tp_size_rank(ctx.group)[0]
        for r0 in range(0, n, rows):
            r1 = min(r0 + rows, n)
            if need_x:
                acc_r = acc[: r1 - r0].zero_()
            for s0 in range(0, v, slab):
                s1 = min(s0 + slab, v)
                g = g_buf[: (r1 - r0) * (s1 - s0)].view(r1 - r0, s1 - s0)
                grid = (triton.cdiv(r1 - r0, block_n), triton.cdiv(s1 - s0, block_v))
                _grad_logits_kernel[grid](
                    x[r0:r1], w[s0:s1], local_t[r0:r1] - s0, log_z[r0:r1], neg_g[r0:r1], g, r1 - r0, s1 - s0, h,
                    x.stride(0), w.stride(0), g.stride(0), ctx.inv_t, BLOCK_N=block_n, BLOCK_V=block_v,
                    BLOCK_H=block_h, PRECISION=_precision(cdt), UPCAST=triton_interpret(), num_warps=warps,
                    num_stages=stages,
                )  # fmt: skip
                if need_x:
                    if cdt == torch.float32:
                        acc_r.addmm_(g, w[s0:s1])
                    else:
                        acc_r.add_(torch.mm(g, w[s0:s1]))
                if need_w:
                    grad_w[s0:s1].addmm_(g.t(), x[r0:r1])
            if need_x:
                if tp_size > 1:
                    dist.all_reduce(acc_r, group=ctx.group)
                grad_x[r0:r1].copy_(acc_r)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        return grad_x, grad_w, None, None, None, None


def _backward_blocks(x: torch.Tensor, w: torch.Tensor, block_n: int, block_v: int) -> tuple[int, int]:
    """(rows per row block, vocabulary rows per slab) for the backward's working set."""
    budget = (x.numel() * x.element_size() + w.numel() * w.element_size()) // BUDGET_DIVISOR
    if not triton_interpret():
        budget = max(budget, MIN_BUDGET)
    n, h = x.shape
    rows = max(block_n, min(n, budget // (4 * h)) // block_n * block_n)
    slab = max(
        block_v, min(w.shape[0], budget // (min(rows, max(n, 1)) * x.element_size())) // block_v * block_v
    )
    return rows, slab


def token_logprobs_triton(
    hidden: torch.Tensor,  # (N, H)
    lm_head_weight: torch.Tensor,  # (V_local, H)
    targets: torch.Tensor,  # (N,)
    *,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The Triton path; same contract as `kernels.logprob.token_logprobs`."""
    local_t = local_targets(targets, lm_head_weight.shape[0], tp_group).contiguous()
    lp, ent = _TritonLogprobs.apply(
        hidden, lm_head_weight, local_t, tp_group, 1.0 / temperature, return_entropy
    )
    return (lp, ent) if return_entropy else lp
