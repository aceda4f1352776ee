"""GPU-only weight transport for a disaggregated sampler: the engine on GPUs of its own
(`sampler.gpus`), weights over NCCL through vLLM's weight-transfer API.

UNTESTED ON A GPU: written on a machine without one. The CPU tests
(`tests/engine/sampler/test_nccl_transfer.py`) check everything here but NCCL and the engine: the
engine arguments, the handshake payload, each bucket's metadata and its send order (with a fake
engine and communicator), the errors; `tests/gpu/test_nccl_transfer_gpu.py` runs a tiny model end
to end on 2 GPUs. It implements the `WeightTransport` protocol (`engine/sampler/transport.py`) and
is picked by `VLLMSampler` when `sampler.gpus` is set.

How (vLLM 0.32, files under vllm/):
- Engine arguments (`engine_args`): `weight_transfer_config={"backend": "nccl"}` (engine/arg_utils.py
  `EngineArgs.weight_transfer_config`, a dict becomes config/weight_transfer.py
  `WeightTransferConfig(backend=...)`), so each worker builds distributed/weight_transfer/nccl_engine.py
  `NCCLWeightTransferEngine` after loading its model (v1/worker/gpu_worker.py `load_model`); and
  `device_ids=gpus` (engine/arg_utils.py `EngineArgs.device_ids`: indices into CUDA_VISIBLE_DEVICES,
  resolved to physical ids by `_resolve_device_ids`; `engine_device_ids` mirrors that).
- Handshake (`NcclWeightTransport.connect`), as distributed/weight_transfer/nccl_engine.py
  `NCCLTrainerWeightTransferEngine.trainer_init` does it: on a side thread, entrypoints/rl/offline.py
  `RLOfflineMixin.init_weight_transfer_engine(request: WeightTransferInitRequest | dict)` (the `LLM`
  class mixes it in; it is `collective_rpc("init_weight_transfer_engine", kwargs={"init_info": ...})`,
  v1/worker/gpu_worker.py `Worker.init_weight_transfer_engine(init_info: dict)`) with the payload of
  distributed/weight_transfer/nccl_common.py `NCCLWeightTransferInitInfo` (workers at rank_offset 1,
  world size 1 + workers, unpacked); here, distributed/weight_transfer/nccl_common.py
  `trainer_init(init_info: NCCLRendezvous | dict, rank: int = 0) -> PyNcclCommunicator` opens rank 0
  (a `StatelessProcessGroup` TCP rendezvous + `PyNcclCommunicator` on the current CUDA device).
- A push: `RLOfflineMixin.start_weight_update()` (worker: layerwise reload begins), then per bucket of
  whole layers `RLOfflineMixin.update_weights(request: WeightTransferUpdateRequest | dict)` with
  {"names", "dtype_names", "shapes"} (`NCCLWeightTransferUpdateInfo`) on a side thread while this
  thread broadcasts the bucket's tensors from rank 0 in the same order
  (`PyNcclCommunicator.broadcast(tensor, src, stream=None)`; the worker's
  `NCCLWeightTransferEngine.receive_weights` receives them one by one into `model.load_weights`),
  then `RLOfflineMixin.finish_weight_update(weight_version=None)` (layerwise reload finalised).
  The learner holds one bucket plus one layer on its GPU, as with the other transports.

A failed push leaves the transfer group unusable (a worker may wait in NCCL): the run stops.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import torch

from engine.config import SamplerConfig
from engine.sampler.transport import PushStats, checked_tensors
from engine.sync.buckets import BucketStats, layer_buckets

if TYPE_CHECKING:
    from vllm import LLM

BACKEND = "nccl"  # vllm/config/weight_transfer.py WeightTransferConfig.backend
TRAINER_RANK = 0  # the sender; vLLM's workers follow at rank_offset 1


def engine_args(cfg: SamplerConfig, cuda_visible: str | None = None) -> dict[str, Any]:
    """The `LLM(...)` keyword arguments that put the engine on `cfg.gpus` and enable vLLM's NCCL
    weight transfer in its workers; `cuda_visible` (this process's CUDA_VISIBLE_DEVICES) is only
    checked here, so that a GPU index out of range fails before vLLM starts."""
    if cfg.gpus is None:
        raise ValueError("nccl_transfer.engine_args: sampler.gpus is null (colocated); nothing to disaggregate")
    engine_device_ids(cfg.gpus, cuda_visible)
    return {"weight_transfer_config": {"backend": BACKEND}, "device_ids": list(cfg.gpus)}


def engine_device_ids(gpus: list[int], cuda_visible: str | None) -> list[str]:
    """The physical GPUs the engine's workers run on, worker order: `gpus` index this process's
    devices, i.e. the entries of CUDA_VISIBLE_DEVICES when it is set (ids or UUIDs), else they are
    the physical ids themselves (vllm/engine/arg_utils.py `EngineArgs._resolve_device_ids`)."""
    if not cuda_visible:
        return [str(g) for g in gpus]
    visible = [v.strip() for v in cuda_visible.split(",") if v.strip()]
    if bad := [g for g in gpus if not 0 <= g < len(visible)]:
        raise ValueError(f"sampler.gpus={gpus}: index(es) {bad} out of range for "
                         f"CUDA_VISIBLE_DEVICES={cuda_visible!r} ({len(visible)} device(s) visible)")
    return [visible[g] for g in gpus]


def transfer_world_size(num_workers: int) -> int:
    """The trainer<->engine NCCL group: this process (rank 0) and every vLLM worker."""
    if num_workers < 1:
        raise ValueError(f"the engine needs at least one worker, got {num_workers}")
    return 1 + num_workers


def worker_init_info(master_address: str, master_port: int, num_workers: int) -> dict[str, Any]:
    """The `init_info` dict the workers parse into vllm/distributed/weight_transfer/nccl_common.py
    `NCCLWeightTransferInitInfo` (TCP rendezvous; `worker_init_payload` leaves out the unset
    unique id the same way). Unpacked: each tensor is its own broadcast, received in metadata order."""
    return {"master_address": master_address, "master_port": int(master_port), "rank_offset": TRAINER_RANK + 1,
            "world_size": transfer_world_size(num_workers), "packed": False}


def dtype_name(dtype: torch.dtype) -> str:
    """How vLLM names a dtype on the wire (the worker turns it back with `getattr(torch, name)`)."""
    return str(dtype).split(".")[-1]


def bucket_update_info(bucket: list[tuple[str, torch.Tensor]]) -> dict[str, list]:
    """One bucket's `update_info` (vllm/distributed/weight_transfer/nccl_engine.py
    `NCCLWeightTransferUpdateInfo`): names, dtype names and shapes in the order its tensors are
    broadcast; the worker allocates and receives in exactly this order."""
    return {"names": [n for n, _ in bucket],
            "dtype_names": [dtype_name(t.dtype) for _, t in bucket],
            "shapes": [list(t.shape) for _, t in bucket]}


class NcclWeightTransport:
    """Learner-side half: rank 0 of the NCCL group with the engine's workers (driver only)."""

    name = "nccl"

    def __init__(self, llm: LLM, communicator, device: torch.device, bucket_bytes: int = 64 << 20):
        """`communicator`: rank 0's `PyNcclCommunicator` on `device` (see `connect`); tests pass a fake."""
        if bucket_bytes < 0:
            raise ValueError(f"NcclWeightTransport: bucket_bytes must be >= 0, got {bucket_bytes}")
        self._llm, self._comm, self.device = llm, communicator, torch.device(device)
        self.bucket_bytes = bucket_bytes
        self._rpc = ThreadPoolExecutor(max_workers=1, thread_name_prefix="semionline-nccl-rpc")

    @classmethod
    def connect(cls, llm: LLM, num_workers: int, bucket_bytes: int = 64 << 20) -> NcclWeightTransport:
        """The handshake (vllm/distributed/weight_transfer/nccl_engine.py
        `NCCLTrainerWeightTransferEngine.trainer_init`): the workers join the group inside
        `init_weight_transfer_engine` while this process opens rank 0 on its current CUDA device."""
        if not torch.cuda.is_available():
            raise RuntimeError("NcclWeightTransport needs CUDA (sampler.gpus: NCCL from the learner's GPU)")
        from vllm.distributed.weight_transfer.nccl_common import trainer_init
        from vllm.utils.network_utils import get_loopback_ip, get_open_port

        info = worker_init_info(get_loopback_ip(), get_open_port(), num_workers)
        with ThreadPoolExecutor(max_workers=1) as exe:
            # LLM.init_weight_transfer_engine (entrypoints/rl/offline.py) blocks in the rendezvous
            future = exe.submit(llm.init_weight_transfer_engine, {"init_info": info})
            communicator = trainer_init(info, rank=TRAINER_RANK)
            future.result()  # an engine-side init error surfaces here
        device = torch.device("cuda", torch.cuda.current_device())  # trainer_init's device
        return cls(llm, communicator, device, bucket_bytes=bucket_bytes)

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PushStats:
        start = time.perf_counter()
        stats = BucketStats()
        self._llm.start_weight_update()
        for bucket in layer_buckets(checked_tensors(named_tensors, self.device), self.bucket_bytes, stats):
            self._send(bucket)
        self._llm.finish_weight_update()
        return PushStats(time.perf_counter() - start, stats.bytes, stats.tensors, stats.buckets, stats.peak_bytes)

    def _send(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """The bucket's metadata through `update_weights` (side thread) while its tensors are
        broadcast here, in the metadata's order: both sides meet inside the same NCCL calls."""
        future = self._rpc.submit(self._llm.update_weights, {"update_info": bucket_update_info(bucket)})
        if future.done():  # rejected before any NCCL call: do not wait in a broadcast nobody joins
            future.result()
        for _, tensor in bucket:
            self._comm.broadcast(tensor, src=TRAINER_RANK)
        future.result()  # the workers have received and loaded the bucket (or their error is raised)
        if self.device.type == "cuda":  # the broadcasts are enqueued: keep the bucket alive until sent
            torch.cuda.current_stream(self.device).synchronize()

    def close(self) -> None:
        """Tear down rank 0's communicator (before the engine shuts down its side). Idempotent."""
        self._rpc.shutdown(wait=False)
        comm, self._comm = self._comm, None
        if comm is not None and hasattr(comm, "destroy"):
            comm.destroy()
