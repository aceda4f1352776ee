"""Per-token log-probs (and entropy) of chosen tokens from hidden states and the LM head,
vocab-parallel under tensor parallelism.

This file holds the plain PyTorch path (`token_logprobs_reference`): it materialises the
`[N, V_local]` logits of the rows it is given, so it is the correctness reference and the
baseline that the fused chunked/Triton paths are measured against. Vocabulary sharding follows
megatron's `VocabParallelEmbedding` layout: rank r owns rows `[r * V_local, (r + 1) * V_local)`
of the LM head. Each rank computes its local max, sum-exp and target logit and all-reduces them
over `tp_group`, so the result equals the unsharded computation.

Must not import anything from `engine` (kernels are usable on their own).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _CopyToTP(torch.autograd.Function):
    """Identity forward, all-reduce(sum) backward: the input is replicated across TP ranks and
    each rank's use of it contributes a partial gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class _ReduceFromTP(torch.autograd.Function):
    """All-reduce(sum) forward, identity backward: every rank then holds the same replicated
    value and computes the same loss from it, so each rank's local gradient is already right."""

    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _tp(group) -> tuple[int, int]:
    if group is None or dist.get_world_size(group) == 1:
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def token_logprobs_reference(
    hidden: torch.Tensor,  # (N, H) rows whose next token is scored
    lm_head_weight: torch.Tensor,  # (V_local, H) this rank's vocabulary shard
    targets: torch.Tensor,  # (N,) global token ids
    *,
    tp_group: dist.ProcessGroup | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """log softmax(hidden @ W.T / temperature)[targets] -> (N,) fp32; with entropy -> ((N,), (N,)).

    Differentiable with respect to `hidden` and `lm_head_weight` (the entropy is detached: it is
    a metric here). Computes in fp32 whatever the input dtype.
    """
    tp_size, tp_rank = _tp(tp_group)
    if tp_size > 1:
        hidden = _CopyToTP.apply(hidden, tp_group)
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
        sum_exp = _ReduceFromTP.apply(sum_exp, tp_group)
        target_logit = _ReduceFromTP.apply(target_logit, tp_group)
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
