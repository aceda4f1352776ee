"""Per-token log-probs (and entropy) of chosen tokens from hidden states and the LM head,
vocab-parallel under tensor parallelism: `token_logprobs(...)` and its reference and torch paths
(the log-sum-exp bookkeeping they share with the Triton path is `kernels/lse.py`).

    lp = token_logprobs(hidden, lm_head_weight, targets, tp_group=group)            # (N,) fp32
    lp, ent = token_logprobs(hidden, w, targets, return_entropy=True, impl="torch")

Paths (one signature; `impl` picks, see `kernels/paths.py`):
- `reference`: plain PyTorch; materialises the `[N, V_local]` logits. Ground truth for tests and
  the benchmark's naive baseline.
- `torch`: `_ChunkedLogprobs`, a custom autograd function. The forward walks the vocabulary in
  chunks with an online max / sum-exp and keeps only O(N) statistics; the backward recomputes
  each chunk's logits to form the gradients of `hidden` and `lm_head_weight`. Never holds more
  than one `[N, chunk]` block (two with entropy).
- `triton` (`kernels/logprob_triton.py`, imported on first use): the forward is one fused kernel
  (tiled matmul + online log-sum-exp, no logits written); the backward recomputes dloss/dlogits
  one (row block, vocabulary slab) at a time in Triton and hands it to two cuBLAS GEMMs.

Vocabulary sharding follows megatron's `VocabParallelEmbedding` layout: rank r owns rows
`[r * V_local, (r + 1) * V_local)` of the LM head. Each rank computes its local max, sum-exp and
target logit; `lse.finish_stats` all-reduces them over `tp_group` (one MAX, then one SUM of a stacked
buffer), so the result equals the unsharded computation. The hidden states are replicated, so
their gradient is all-reduced over the group in the backward.

The entropy is a metric: it is returned detached on every path (no gradient flows through it).
All paths compute in fp32 after the matmul, whatever the input dtype; under autocast the matmul
runs in autocast's dtype, as the reference's `hidden @ W.T` does.

Must not import anything from `engine` (kernels are usable on their own).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kernels.lse import compute_dtype, finish_stats, local_targets
from kernels.paths import resolve_impl
from kernels.tp import CopyToTP, ReduceFromTP, tp_size_rank

# The torch path's chunk: about this many fp32 logits per [N, chunk] block (16 MiB).
CHUNK_ELEMENTS = 1 << 22
MIN_CHUNK = 128


def token_logprobs(
    hidden: torch.Tensor,  # (N, H) rows whose next token is scored (response positions only)
    lm_head_weight: torch.Tensor,  # (V_local, H) this rank's vocabulary shard
    targets: torch.Tensor,  # (N,) global token ids
    *,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    impl: str | None = None,  # "triton" | "torch" | "reference" | None (auto, see kernels.paths)
    chunk_size: int | None = None,  # torch path: vocabulary rows per chunk (None: CHUNK_ELEMENTS / N)
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ W.T / temperature)[targets] -> (N,) fp32; with entropy -> ((N,), (N,)).

    Differentiable with respect to `hidden` and `lm_head_weight`; the entropy is detached.
    """
    kwargs = dict(tp_group=tp_group, temperature=temperature, return_entropy=return_entropy)
    path = resolve_impl(impl, hidden.device)
    if path == "reference":
        return token_logprobs_reference(hidden, lm_head_weight, targets, **kwargs)
    if path == "triton":
        from kernels.logprob_triton import token_logprobs_triton

        return token_logprobs_triton(hidden, lm_head_weight, targets, **kwargs)
    return token_logprobs_torch(hidden, lm_head_weight, targets, chunk_size=chunk_size, **kwargs)


def token_logprobs_reference(
    hidden: torch.Tensor,  # (N, H)
    lm_head_weight: torch.Tensor,  # (V_local, H)
    targets: torch.Tensor,  # (N,)
    *,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Plain PyTorch over the full `[N, V_local]` logits; same contract as `token_logprobs`."""
    tp_size, tp_rank = tp_size_rank(tp_group)
    if tp_size > 1:
        hidden = CopyToTP.apply(hidden, tp_group)
    logits = (hidden @ lm_head_weight.t()).float()  # (N, V_local)
    if temperature != 1.0:
        logits = logits / temperature
    v_local = logits.shape[-1]
    local_max = logits.detach().max(dim=-1).values  # (N,)
    if tp_size > 1:
        dist.all_reduce(local_max, op=dist.ReduceOp.MAX, group=tp_group)
    shifted = logits - local_max[:, None]
    sum_exp = shifted.exp().sum(dim=-1)  # (N,)
    lo = tp_rank * v_local
    local_t = targets - lo
    in_shard = (local_t >= 0) & (local_t < v_local)
    target_logit = shifted.gather(1, local_t.clamp(0, v_local - 1)[:, None]).squeeze(1)
    target_logit = torch.where(in_shard, target_logit, torch.zeros_like(target_logit))
    if tp_size > 1:
        sum_exp = ReduceFromTP.apply(sum_exp, tp_group)
        target_logit = ReduceFromTP.apply(target_logit, tp_group)
    log_z = sum_exp.log()  # (N,) relative to the global max
    logprobs = target_logit - log_z
    if not return_entropy:
        return logprobs
    with torch.no_grad():
        probs = (shifted.detach() - log_z.detach()[:, None]).exp()
        p_dot_z = (probs * shifted.detach()).sum(dim=-1)
        if tp_size > 1:
            dist.all_reduce(p_dot_z, group=tp_group)
        entropy = log_z.detach() - p_dot_z
    return logprobs, entropy


# ----------------------------------------------------------------------------------------------
# The torch chunked path.


def auto_chunk(n_rows: int, v_local: int) -> int:
    """Vocabulary rows per chunk so that one [N, chunk] fp32 block holds ~CHUNK_ELEMENTS values."""
    chunk = max(MIN_CHUNK, (CHUNK_ELEMENTS // max(n_rows, 1)) // MIN_CHUNK * MIN_CHUNK)
    return min(chunk, v_local)


def token_logprobs_torch(
    hidden: torch.Tensor,  # (N, H)
    lm_head_weight: torch.Tensor,  # (V_local, H)
    targets: torch.Tensor,  # (N,)
    *,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    chunk_size: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The chunked path; same contract as `token_logprobs`."""
    v_local = lm_head_weight.shape[0]
    chunk = chunk_size or auto_chunk(hidden.shape[0], v_local)
    local_t = local_targets(targets, v_local, tp_group)
    lp, ent = _ChunkedLogprobs.apply(
        hidden, lm_head_weight, local_t, tp_group, 1.0 / temperature, chunk, return_entropy
    )
    return (lp, ent) if return_entropy else lp


class _ChunkedLogprobs(torch.autograd.Function):
    """Online log-sum-exp over vocabulary chunks; backward recomputes each chunk's logits.

    Saved for backward: the inputs, the local targets and log_z, i.e. O(N) beyond the inputs.
    Per chunk the forward keeps (lse_c, sum of p log p within the chunk) and merges them into the
    running (L, E). The backward scales each row of the chunk's (P - onehot) by -g/T once, then

        grad_x += G_c @ W_c        grad_W[c] = G_c.T @ x        with G_c = -g/T * (P_c - onehot_c)

    One [N, chunk] fp32 buffer (two with entropy) is reused across chunks: no allocation, hence no
    page faults, per chunk; besides the matmuls each chunk costs a few elementwise passes over it.
    """

    @staticmethod
    def forward(ctx, hidden, weight, local_t, group, inv_t: float, chunk: int, with_entropy: bool):
        cdt = compute_dtype(hidden, weight)
        n, v_local = hidden.shape[0], weight.shape[0]
        if v_local == 0:
            raise ValueError("lm_head_weight has no rows")
        with torch.autocast(hidden.device.type, enabled=False):
            x = hidden.to(cdt)
            buf = torch.empty(n * min(chunk, v_local), dtype=torch.float32, device=hidden.device)
            exp_buf = torch.empty_like(buf) if with_entropy else None
            lse = neg_ent = None
            tgt = torch.zeros(n, dtype=torch.float32, device=hidden.device)
            for v0 in range(0, v_local, chunk):
                v1 = min(v0 + chunk, v_local)
                z = _logits(x, weight[v0:v1].to(cdt), inv_t, buf)  # (N, C) fp32, a view of buf
                in_chunk = (local_t >= v0) & (local_t < v1)
                picked = z.gather(1, (local_t - v0).clamp(0, v1 - v0 - 1)[:, None]).squeeze(1)
                tgt = torch.where(in_chunk, picked, tgt)
                m_c = z.amax(dim=1)
                z.sub_(m_c[:, None])
                if with_entropy:
                    p = torch.exp(z, out=exp_buf[: z.numel()].view(z.shape))
                    s_c = p.sum(dim=1)
                    lse_c = m_c + s_c.log()
                    # sum over the chunk of p_c log p_c, with p_c = p / s_c and log p_c = z - log s_c
                    b_c = torch.bmm(p[:, None, :], z[:, :, None]).view(-1) / s_c - s_c.log()
                else:
                    lse_c = m_c + z.exp_().sum(dim=1).log()
                if lse is None:
                    lse, neg_ent = lse_c, (b_c if with_entropy else None)
                    continue
                new = torch.logaddexp(lse, lse_c)
                if with_entropy:  # E = sum_j p_j log p_j over the chunks so far, rebased on `new`
                    w_old, w_c = (lse - new).exp(), (lse_c - new).exp()
                    neg_ent = w_old * (neg_ent + (lse - new)) + w_c * (b_c + (lse_c - new))
                lse = new
            del buf, exp_buf
        # As (max, sum-exp, sum-exp * shifted logit) statistics relative to m = lse: s = 1, a = E.
        logprobs, log_z, entropy = finish_stats(lse, torch.ones_like(lse), neg_ent, tgt, group)
        ctx.save_for_backward(hidden, weight, local_t, log_z)
        ctx.group, ctx.inv_t, ctx.chunk, ctx.cdt = group, inv_t, chunk, cdt
        if entropy is None:
            entropy = logprobs.new_zeros(0)
        ctx.mark_non_differentiable(entropy)
        return logprobs, entropy

    @staticmethod
    def backward(ctx, grad_lp, _grad_entropy):
        hidden, weight, local_t, log_z = ctx.saved_tensors
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cdt, inv_t, chunk = ctx.cdt, ctx.inv_t, ctx.chunk
        n, v_local = hidden.shape[0], weight.shape[0]
        neg_g = (grad_lp.float() * -inv_t)[:, None]  # (N, 1)
        with torch.autocast(hidden.device.type, enabled=False):
            x = hidden.to(cdt)
            grad_x = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_x else None
            grad_w = torch.empty(weight.shape, dtype=cdt, device=weight.device) if need_w else None
            buf = torch.empty(n * min(chunk, v_local), dtype=torch.float32, device=hidden.device)
            for v0 in range(0, v_local, chunk):
                v1 = min(v0 + chunk, v_local)
                w = weight[v0:v1].to(cdt)
                gz = _logits(x, w, inv_t, buf, sub=log_z).exp_()  # (N, C) probabilities
                in_chunk = (local_t >= v0) & (local_t < v1)
                idx = (local_t - v0).clamp(0, v1 - v0 - 1)[:, None]
                gz.scatter_add_(1, idx, -in_chunk.float()[:, None])  # P - onehot
                gz = gz.mul_(neg_g).to(cdt)  # d loss / d logits of this chunk
                if need_x:
                    if cdt == torch.float32:
                        grad_x.addmm_(gz, w)
                    else:
                        grad_x += torch.mm(gz, w).float()
                if need_w:
                    torch.mm(gz.t(), x, out=grad_w[v0:v1])
                del gz
            del buf
        if need_x:
            if tp_size_rank(ctx.group)[0] > 1:
                dist.all_reduce(grad_x, group=ctx.group)
            grad_x = grad_x.to(hidden.dtype)
        grad_w = grad_w.to(weight.dtype) if need_w else None
        return grad_x, grad_w, None, None, None, None, None


def _logits(
    x: torch.Tensor, w: torch.Tensor, inv_t: float, buf: torch.Tensor, sub: torch.Tensor | None = None
):
    """(x @ w.T) * inv_t (- sub[:, None]) in fp32, written into the front of the flat `buf` and
    returned as an [N, C] view. In fp32 the scale and the shift ride on the GEMM (addmm); in low
    precision the product is rounded to its dtype first, as the reference's `(h @ W.T).float()`."""
    z = buf[: x.shape[0] * w.shape[0]].view(x.shape[0], w.shape[0])
    if x.dtype == torch.float32 and w.dtype == torch.float32:
        if sub is None:
            torch.mm(x, w.t(), out=z)
            return z.mul_(inv_t) if inv_t != 1.0 else z
        return torch.addmm(-sub[:, None], x, w.t(), alpha=inv_t, out=z)
    z.copy_(torch.mm(x, w.t()))
    if inv_t != 1.0:
        z.mul_(inv_t)
    return z.sub_(sub[:, None]) if sub is not None else z
