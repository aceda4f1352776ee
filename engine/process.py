"""Process set-up for a run, done by the entry point (CLI `train`, the sweep per run) before any
component is built: the device and process groups (`init_mesh`: the one place `learner.device`
becomes cuda:LOCAL_RANK + NCCL or CPU + gloo), torch's seed, deterministic algorithms, and the
learner's thread count.

Threads (`learner_threads`): on CPU each rank takes its node's cores split over the node's ranks.
Only when the sampler generates while the learner trains (`overlap`) does the sampler's rank
leave one core to the vLLM worker (it pins itself to a core); on the synchronous path the worker
waits quietly while the learner trains, so the learner takes every core. `learner.threads`
overrides.
"""

from __future__ import annotations

import os

import torch

from engine.config import RunConfig
from engine.parallel.device import check_sampler_gpus, local_rank, local_world_size, resolve_device
from engine.parallel.mesh import Mesh


def init_mesh(cfg: RunConfig) -> Mesh:
    """This process's mesh on its device; `learner.device=cuda` without CUDA, or `sampler.gpus`
    without a CUDA learner or on the learner's GPUs, fails here, before anything loads
    (DeviceError, naming the key)."""
    device = resolve_device(cfg.learner.device, local_rank())
    cuda = device.type == "cuda"
    check_sampler_gpus(cfg.sampler.gpus, device, learner_gpus=range(local_world_size()) if cuda else (),
                       device_count=torch.cuda.device_count() if cuda else None)
    return Mesh.init(tp_size=cfg.learner.tp, pp_size=cfg.learner.pp, device=device)


def setup_process(cfg: RunConfig, mesh: Mesh) -> None:
    torch.manual_seed(cfg.seed)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True)
    if mesh.device.type == "cpu":
        torch.set_num_threads(learner_threads(cfg, mesh.rank))


def learner_threads(cfg: RunConfig, rank: int, cores: int | None = None, *, beside: bool | None = None) -> int:
    """Torch intra-op threads of a CPU rank (see the module docstring); `cores`: this process's
    usable cores (its CPU affinity) unless given; `beside`: whether the engine generates while
    this rank trains (default: it may, under overlap, on a rank that drives an engine)."""
    if cfg.learner.threads:
        return cfg.learner.threads
    cores = cores or len(os.sched_getaffinity(0))
    if beside is None:
        beside = overlap_threads(cfg, rank) is not None
    return max(1, cores // local_world_size() - (1 if beside else 0))


def overlap_threads(cfg: RunConfig, rank: int, cores: int | None = None) -> tuple[int, int] | None:
    """(threads when nothing generates beside the training pass, threads when the producer does),
    for a CPU rank that drives an engine under overlap with `learner.threads: 0`; else None (the
    count set at start-up stands). The loop picks one per training pass (`RolloutPipeline.generating`)."""
    drives_engine = rank == 0 or (cfg.sampler.engines == "per_node" and local_rank() == 0)
    if cfg.learner.threads or not (cfg.overlap and not cfg.offline and drives_engine):
        return None
    return learner_threads(cfg, rank, cores, beside=False), learner_threads(cfg, rank, cores, beside=True)
