"""AdamW with the paper's knobs, a linear-warmup LR schedule, and gradient clipping by the
global norm across all TP, PP and DP ranks.

AdamW's state is not sharded: each rank keeps the moments of the parameters it holds (its TP x PP
shard), replicated across DP ranks like the parameters (see engine/parallel/grads.py).

Megatron marks sharded parameters with `tensor_model_parallel=True`; their squared norms are
summed over the TP group, replicated parameters (norms, row-parallel biases) are counted once.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from engine.config import OptimConfig


def build_optimizer(params, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    warmup = cfg.warmup_steps
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup) if warmup else 1.0)
    return opt, sched


def clip_grad_norm(params, max_norm: float, tp_group: dist.ProcessGroup | None = None,
                   pp_group: dist.ProcessGroup | None = None) -> float:
    """Scale gradients in place so their global L2 norm is at most `max_norm`; returns the norm
    before clipping (the same value on every rank of the TP and PP groups).

    Call after the data-parallel gradient sum (`engine.parallel.grads.sync_gradients`): gradients
    are then equal across DP replicas, so the norm over one replica's TP x PP shards is the global
    one. Sharded parameters (`tensor_model_parallel`) are summed over TP, replicated ones counted
    once; stage totals are summed over PP. A parameter marked `shared` (the last stage's copy of a
    tied embedding) is clipped but left out of the norm, which counts its first-stage twin.
    """
    grads_sharded, grads_replicated, grads_shared = [], [], []
    for p in params:
        if p.grad is None:
            continue
        if getattr(p, "shared", False):
            grads_shared.append(p.grad)
        elif getattr(p, "tensor_model_parallel", False):
            grads_sharded.append(p.grad)
        else:
            grads_replicated.append(p.grad)
    sq = lambda gs: torch.stack([g.float().pow(2).sum() for g in gs]).sum() if gs else torch.zeros(())  # noqa: E731
    sharded = sq(grads_sharded)
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        dist.all_reduce(sharded, group=tp_group)
    stage = sharded + sq(grads_replicated)
    if pp_group is not None and dist.get_world_size(pp_group) > 1:
        dist.all_reduce(stage, group=pp_group)
    total = math.sqrt(float(stage))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads_sharded + grads_replicated + grads_shared:
            g.mul_(coef)
    return total
