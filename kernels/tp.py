"""Tensor-parallel collectives for the vocab-parallel kernels, as named autograd functions with a
one-line contract each (megatron's `tensor_parallel/mappings.py` pattern, but with an explicit
group: megatron's own read the global `parallel_state`, which this project never sets).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def tp_size_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(size, rank) of `group`; (1, 0) for None or a one-rank group."""
    if group is None or dist.get_world_size(group) == 1:
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


class CopyToTP(torch.autograd.Function):
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


class ReduceFromTP(torch.autograd.Function):
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
