"""Process set-up for a run, done by the entry point (CLI `train`, the sweep per run) before any
component is built: the device and process groups (`init_mesh`: the one place `learner.device`
becomes cuda:LOCAL_RANK + NCCL or CPU + gloo), torch's seed, deterministic algorithms, and the
learner's thread count.

Threads: on CPU the driver rank leaves one core to the vLLM worker (it pins itself to a core and
busy-polls while it generates); `learner.threads` overrides.
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
        per_rank = max(1, (os.cpu_count() or 2) // mesh.world_size - (1 if mesh.rank == 0 else 0))
        torch.set_num_threads(cfg.learner.threads or per_rank)
