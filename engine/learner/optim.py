"""AdamW with the paper's knobs, a linear-warmup LR schedule, and gradient clipping by the
global norm across tensor-parallel ranks.

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


def clip_grad_norm(params, max_norm: float, tp_group: dist.ProcessGroup | None = None) -> float:
    """Scale gradients in place so their global L2 norm is at most `max_norm`; returns the norm
    before clipping (the same value on every TP rank)."""
    grads_sharded, grads_replicated = [], []
    for p in params:
        if p.grad is None:
            continue
        (grads_sharded if getattr(p, "tensor_model_parallel", False) else grads_replicated).append(p.grad)
    sq = lambda gs: torch.stack([g.float().pow(2).sum() for g in gs]).sum() if gs else torch.zeros(())  # noqa: E731
    sharded = sq(grads_sharded)
    if tp_group is not None and dist.get_world_size(tp_group) > 1:
        dist.all_reduce(sharded, group=tp_group)
    total = math.sqrt(float(sharded + sq(grads_replicated)))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads_sharded + grads_replicated:
            g.mul_(coef)
    return total
