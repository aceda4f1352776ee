"""AdamW with the paper's knobs, a linear-warmup LR schedule, and gradient clipping by the
global norm across all TP, PP and DP ranks.

AdamW's state is not sharded: each rank keeps the moments of the parameters it holds (its TP x PP
shard), replicated across DP ranks like the parameters (see engine/parallel/grads.py).

Megatron marks sharded parameters with `tensor_model_parallel=True`; their squared norms are
summed over the TP group, replicated parameters (norms, row-parallel biases) are counted once.

Precision (docs/decisions.d/gpu.md): the parameters *are* the fp32 master weights. With
`learner.dtype=bfloat16` the passes compute under `torch.autocast(bfloat16)` (bf16 matmuls and
attention, fp32 norms, softmax and residual stream), gradients land in fp32 on the fp32 parameters,
and AdamW updates them in fp32; there is no second copy. `precision_cost` gives the bytes per
parameter; `build_optimizer` refuses low-precision parameters, which would silently drop the
small updates (lr 1e-6) that bf16 cannot represent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist

from engine.config import OptimConfig


@dataclass(frozen=True)
class PrecisionCost:
    """Bytes per parameter of this rank's shard during training (AdamW, state not sharded over DP)."""

    param: int  # the fp32 master weight itself
    grad: int  # its fp32 gradient
    adam: int  # exp_avg + exp_avg_sq, fp32
    cast_cache: int  # bf16 copy autocast keeps while a pass runs (transient, freed after the pass)

    @property
    def steady(self) -> int:
        return self.param + self.grad + self.adam

    @property
    def peak(self) -> int:
        return self.steady + self.cast_cache


def precision_cost(dtype: str) -> PrecisionCost:
    """`learner.dtype` -> bytes per trained parameter (the frozen reference adds 4, fp32, + 2 during
    its bf16 passes). fp32: 16. bfloat16: the same 16 steady + 2 transient, because the fp32
    parameters are the master weights (Megatron's bf16 + fp32-main-params scheme: 2 + 4 + 4 + 8 = 18)."""
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"learner.dtype={dtype!r}: expected float32 or bfloat16")
    return PrecisionCost(param=4, grad=4, adam=8, cast_cache=2 if dtype == "bfloat16" else 0)


def check_master_weights(params) -> None:
    """The optimizer steps fp32 master weights whatever `learner.dtype` is; a bf16 parameter here
    would lose every update smaller than its 8-bit mantissa can hold."""
    low = [tuple(p.shape) for p in params if p.requires_grad and p.dtype != torch.float32]
    if low:
        raise ValueError(
            f"build_optimizer: {len(low)} trainable parameters are not fp32 (shapes {low[:3]}...): the "
            "parameters are the optimizer's master weights; keep them fp32 and set learner.dtype=bfloat16 for "
            "bf16 compute (autocast)")


def build_optimizer(params, cfg: OptimConfig) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    params = [p for p in params if p.requires_grad]
    check_master_weights(params)
    # fused: one kernel over all parameters (CPU and CUDA); 4x faster than the foreach default on
    # SmolLM2-135M's 135M parameters on 2 cores (0.08 s against 0.33 s a step)
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") for p in params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.adam_eps, weight_decay=cfg.weight_decay,
                            fused=fused or None)
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
    device = next((g.device for g in grads_sharded + grads_replicated), torch.device("cpu"))
    sq = lambda gs: torch.stack([g.float().pow(2).sum() for g in gs]).sum() if gs else torch.zeros((), device=device)  # noqa: E731
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
