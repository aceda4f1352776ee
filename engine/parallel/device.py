"""Where the learner runs: `learner.device` (auto | cpu | cuda) -> `torch.device` and the process
group backends, decided once, before anything is loaded.

    device = resolve_device(cfg.learner.device, local_rank())   # cuda:LOCAL_RANK or cpu
    mesh = Mesh.init(tp_size=cfg.learner.tp, pp_size=cfg.learner.pp, device=device)

On CUDA the tensor groups (TP / PP / DP / embedding) use ``cpu:gloo,cuda:nccl``: CUDA tensors go
through NCCL, the few CPU tensors the learner reduces (metric sums, gradient-norm scalars) through
gloo, on the same group object. Pickled Python objects (rollout batches, RNG states, eval
metrics) travel on the mesh's separate gloo `object_group`, so NCCL never sees a pickle.

Must not import the model, the learner or the sampler: entry points call it first, so that
`learner.device=cuda` on a machine without CUDA fails before any weight is read.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Literal

import torch

DeviceRequest = Literal["auto", "cpu", "cuda"]
DEVICE_REQUESTS: tuple[str, ...] = ("auto", "cpu", "cuda")
CPU_BACKEND = "gloo"
CUDA_BACKEND = "cpu:gloo,cuda:nccl"  # one group, two backends: NCCL for CUDA tensors, gloo for CPU ones
OBJECT_BACKEND = "gloo"


class DeviceError(RuntimeError):
    """`learner.device` cannot be honoured on this machine; raised before anything loads."""


def local_rank() -> int:
    """This process's index on its node: torchrun's LOCAL_RANK, 0 for a plain `python …`."""
    raw = os.environ.get("LOCAL_RANK", "0")
    try:
        return int(raw)
    except ValueError:
        raise DeviceError(f"LOCAL_RANK={raw!r} is not an integer (torchrun sets it per process)") from None


def resolve_device(requested: str, local_rank: int = 0, *, key: str = "learner.device") -> torch.device:
    """`requested` (auto | cpu | cuda) -> the device this rank computes on.

    auto: ``cuda:local_rank`` when ``torch.cuda.is_available()``, else cpu. cuda without a usable
    CUDA device, or a `local_rank` past the visible devices, is a `DeviceError` naming `key`.
    Does not touch CUDA state (no `set_device`): `Mesh.init` does that.
    """
    if requested not in DEVICE_REQUESTS:
        raise DeviceError(f"{key}={requested!r}: expected one of {', '.join(DEVICE_REQUESTS)}")
    if local_rank < 0:
        raise DeviceError(f"{key}: local rank {local_rank} is negative (LOCAL_RANK)")
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only torch build)"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        hint = f"; CUDA_VISIBLE_DEVICES={visible!r}" if visible is not None else ""
        raise DeviceError(
            f"{key}=cuda but torch.cuda.is_available() is False (torch {torch.__version__}, CUDA build "
            f"{built}{hint}); set {key}=cpu, or {key}=auto to use CUDA only where present")
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise DeviceError(
            f"{key}=cuda: local rank {local_rank} (LOCAL_RANK) has no GPU: this node shows {count} "
            f"CUDA device(s); start at most {count} processes per node (torchrun --nproc-per-node {count})")
    return torch.device("cuda", local_rank)


def backend_for(device: torch.device) -> str:
    """The process-group backend for tensor collectives of a mesh on `device`."""
    return CUDA_BACKEND if torch.device(device).type == "cuda" else CPU_BACKEND


def device_for_backend(backend: str, local_rank: int = 0) -> torch.device:
    """The device a mesh built with only a backend name (the pre-`learner.device` API) runs on:
    CUDA when the backend includes NCCL, else CPU."""
    return resolve_device("cuda", local_rank, key=f"backend={backend!r}") if "nccl" in backend else torch.device("cpu")


def local_world_size() -> int:
    """Processes on this node: torchrun's LOCAL_WORLD_SIZE, 1 for a plain `python …`."""
    raw = os.environ.get("LOCAL_WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise DeviceError(f"LOCAL_WORLD_SIZE={raw!r} is not an integer (torchrun sets it per process)") from None


def check_sampler_gpus(gpus: list[int] | None, device: torch.device, learner_gpus: Iterable[int],
                       device_count: int | None = None, *, key: str = "sampler.gpus") -> None:
    """A disaggregated sampler (`sampler.gpus`) needs a CUDA learner and GPUs of its own: none of
    `learner_gpus` (the node's learner ranks compute on cuda:0..LOCAL_WORLD_SIZE-1), all below
    `device_count` when known. A `DeviceError` naming `key`; nothing to check when `gpus` is None."""
    if gpus is None:
        return
    if torch.device(device).type != "cuda":
        raise DeviceError(
            f"{key}={gpus} (a disaggregated sampler, weights over NCCL) needs the learner on CUDA, but "
            f"learner.device resolved to {device}; set {key}=null (colocated) or run the learner on CUDA")
    if device_count is not None and (bad := [g for g in gpus if g >= device_count]):
        raise DeviceError(f"{key}={gpus}: GPU(s) {bad} do not exist, this node shows {device_count} CUDA device(s)")
    learner = sorted(set(learner_gpus))
    if shared := sorted(set(gpus) & set(learner)):
        raise DeviceError(
            f"{key}={gpus} overlaps the learner's GPUs {learner} (cuda:LOCAL_RANK of the {len(learner)} "
            f"process(es) on this node) at {shared}; give the sampler other GPUs, or set {key}=null to colocate")
