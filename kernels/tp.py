"""Tensor-parallel collectives, as named autograd functions with a one-line contract each
(megatron's `tensor_parallel/mappings.py` pattern, but with an explicit group: megatron's own read
the global `parallel_state`, and its gather allocates with `torch.cuda.current_device()`, so it
cannot run on CPU). Every TP collective of the kernels and of `engine/model` lives here.

Mirror pairs (forward of one is the backward of the other):

    CopyToTP      identity          | all-reduce(sum)     input replicated over TP, used per rank
    ReduceFromTP  all-reduce(sum)   | identity            partial results summed, then replicated
    GatherFromTP  all-gather (dim)  | keep own slice      shards concatenated on every rank
    ScatterToTP   keep own slice    | all-gather (dim)    a replicated tensor split into shards

    x = copy_to_tp(x, group); y = gather_from_tp(local_logits, group)   # dim=-1 by default
    full = all_gather_dim(shard, group, dim=0)     # no autograd: weight export (`engine/model/hf_io.py`)

A `None` group or a one-rank group makes each of them the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def tp_size_rank(group: dist.ProcessGroup | None) -> tuple[int, int]:
    """(size, rank) of `group`; (1, 0) for None or a one-rank group."""
    if group is None or dist.get_world_size(group) == 1:
        return 1, 0
    return dist.get_world_size(group), dist.get_rank(group)


def all_gather_dim(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int = -1) -> torch.Tensor:
    """Concatenate every rank's `x` (same shape on all ranks) along `dim`, in rank order; no autograd."""
    size, _ = tp_size_rank(group)
    if size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def own_slice(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int = -1) -> torch.Tensor:
    """This rank's contiguous 1/size slice of `x` along `dim` (which must divide evenly)."""
    size, rank = tp_size_rank(group)
    if size == 1:
        return x
    if x.shape[dim] % size:
        raise ValueError(f"own_slice: dim {dim} of shape {tuple(x.shape)} does not split over {size} TP ranks")
    return x.chunk(size, dim=dim)[rank].contiguous()


class CopyToTP(torch.autograd.Function):
    """Identity forward, all-reduce(sum) backward: the input is replicated across TP ranks and
    each rank's use of it contributes a partial gradient."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, grad):
        if tp_size_rank(ctx.group)[0] == 1:
            return grad, None
        grad = grad.contiguous()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class ReduceFromTP(torch.autograd.Function):
    """All-reduce(sum) forward, identity backward: every rank then holds the same replicated
    value and computes the same loss from it, so each rank's local gradient is already right."""

    @staticmethod
    def forward(ctx, x, group):
        if tp_size_rank(group)[0] == 1:
            return x
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class GatherFromTP(torch.autograd.Function):
    """All-gather along `dim` forward, this rank's slice backward: every rank holds the full
    tensor and computes the same loss from it, so its gradient's own slice is the shard's."""

    @staticmethod
    def forward(ctx, x, group, dim: int = -1):
        ctx.group, ctx.dim = group, dim
        return all_gather_dim(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return own_slice(grad, ctx.group, ctx.dim), None, None


class ScatterToTP(torch.autograd.Function):
    """This rank's slice along `dim` forward, all-gather backward: a replicated tensor is split
    into shards, and each shard's gradient completes the replicated one."""

    @staticmethod
    def forward(ctx, x, group, dim: int = -1):
        ctx.group, ctx.dim = group, dim
        return own_slice(x, group, dim)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_dim(grad, ctx.group, ctx.dim), None, None


def copy_to_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`CopyToTP`: identity forward, all-reduce backward."""
    return CopyToTP.apply(x, group)


def reduce_from_tp(x: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """`ReduceFromTP`: all-reduce forward, identity backward."""
    return ReduceFromTP.apply(x, group)


def gather_from_tp(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int = -1) -> torch.Tensor:
    """`GatherFromTP`: all-gather along `dim` forward, own slice backward."""
    return GatherFromTP.apply(x, group, dim)


def scatter_to_tp(x: torch.Tensor, group: dist.ProcessGroup | None, dim: int = -1) -> torch.Tensor:
    """`ScatterToTP`: own slice forward, all-gather along `dim` backward."""
    return ScatterToTP.apply(x, group, dim)
