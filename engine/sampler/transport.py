"""Weight transports: how a full set of HF-named tensors reaches the vLLM worker(s).

The sampler (`engine/sampler/vllm_engine.py`) owns one transport and calls `push(named_tensors)`
every sync. A transport only moves tensors and hands them to vLLM's in-place reload
(`Worker.reload_weights(weights_iterator=...)`); it never renames, reshards or casts — that is the
job of `engine/sync/`. Every transport implements the same `WeightTransport` protocol; the GPU-only
ones live in `engine/sampler/gpu_transport.py` (CUDA IPC, colocated) and
`engine/sampler/nccl_transfer.py` (NCCL through vLLM's weight-transfer API, `sampler.gpus`).

Two CPU transports:

- `InProcessTransport`: the engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`);
  the tensors are handed over as a Python iterator, zero-copy up to vLLM's own copy.
- `SharedMemoryFileTransport`: the engine runs in its own process(es). The stream is cut into
  buckets of whole layers (`engine/sync/buckets.py`, `bucket_bytes`); each bucket is written to
  one safetensors file under /dev/shm (a RAM-backed tmpfs, unique name, removed right after) and
  every worker is told the *path* via `collective_rpc` and reloads those layers in place, so the
  caller holds about one bucket plus one layer, never the whole model; the worker method comes from
  `WorkerWeightReloadExtension`, which vLLM mixes into its worker class
  (`LLM(worker_extension_cls=...)`), so no callable is pickled and
  `VLLM_ALLOW_INSECURE_SERIALIZATION` is not needed. Tensors are never sent through the RPC
  socket: vLLM serialises tensor arguments as nested Python lists.

Contract of a push (from vLLM's layer-wise reload): each layer that receives any tensor must
receive all of its tensors (q/k/v together, gate/up together), or its unloaded part is left
uninitialised; layers that receive none keep their old weights. Pushing the full state dict in
HF order (layer by layer) satisfies this and keeps vLLM's staging buffers to one layer.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch

if TYPE_CHECKING:
    from vllm import LLM

# Qualified name passed to `LLM(worker_extension_cls=...)`; resolved by import inside the worker.
WORKER_EXTENSION_QUALNAME = "engine.sampler.transport.WorkerWeightReloadExtension"


@dataclass(frozen=True)
class PushStats:
    """What one weight push cost, measured on the caller's side (write + transfer + reload)."""

    seconds: float
    bytes: int  # sum of numel * element_size over the pushed tensors
    num_tensors: int
    num_buckets: int = 1  # in-place reload calls
    peak_bytes: int = 0  # most tensor bytes the transport held at once (its buffer bound)


class WeightTransport(Protocol):
    """Moves HF-named full tensors into the engine's model and returns what it cost."""

    name: str

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PushStats: ...


class WorkerWeightReloadExtension:
    """Mixed into vLLM's worker class; its methods are callable by name through `collective_rpc`.

    Method names carry a `semionline_` prefix because vLLM refuses an extension whose attribute
    names collide with the worker's own.
    """

    def semionline_reload_from_safetensors(self, path: str) -> int:
        """Load every tensor of the safetensors file at `path` into the model in place.

        Returns the number of tensors read. Tensors are streamed one by one from the (mmapped)
        file, in file order, so the worker holds at most vLLM's per-layer staging buffer.
        """
        from safetensors import safe_open

        with safe_open(path, framework="pt", device="cpu") as f:
            names = list(f.keys())

            def weights() -> Iterator[tuple[str, torch.Tensor]]:
                for name in names:
                    yield name, f.get_tensor(name)

            self.reload_weights(weights_iterator=weights())  # vLLM Worker.reload_weights
        return len(names)


def checked_tensors(named_tensors: Iterable[tuple[str, torch.Tensor]],
                    device: torch.device | str = "cpu") -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, detached contiguous tensor on `device`), refusing duplicate names and
    non-tensors (every transport sends numel elements from a contiguous buffer)."""
    seen: set[str] = set()
    for name, tensor in named_tensors:
        if name in seen:
            raise ValueError(f"push_weights: tensor name {name!r} given twice")
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"push_weights: {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        seen.add(name)
        yield name, tensor.detach().to(device).contiguous()


class InProcessTransport:
    """Hands the tensors to the worker living in this process (uni-process executor)."""

    name = "in_process"

    def __init__(self, llm: LLM):
        self._llm = llm

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PushStats:
        counts = {"bytes": 0, "tensors": 0, "peak": 0}

        def counted() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in checked_tensors(named_tensors):
                n = tensor.numel() * tensor.element_size()
                counts["bytes"] += n
                counts["tensors"] += 1
                counts["peak"] = max(counts["peak"], n)
                yield name, tensor

        start = time.perf_counter()
        # The uni-process executor calls the worker method directly: the iterator is not serialised,
        # and the stream is consumed one tensor at a time (vLLM stages one layer).
        self._llm.collective_rpc("reload_weights", kwargs={"weights_iterator": counted()})
        return PushStats(time.perf_counter() - start, counts["bytes"], counts["tensors"], 1, counts["peak"])


class SharedMemoryFileTransport:
    """Writes one safetensors file to a RAM-backed folder and has each worker load it by path."""

    name = "shm_file"

    def __init__(self, llm: LLM, shm_dir: str = "/dev/shm", bucket_bytes: int = 64 << 20):
        if not os.path.isdir(shm_dir):
            raise FileNotFoundError(
                f"shared-memory folder {shm_dir!r} does not exist (needed to push weights)"
            )
        if bucket_bytes < 0:
            raise ValueError(f"SharedMemoryFileTransport: bucket_bytes must be >= 0, got {bucket_bytes}")
        self._llm = llm
        self._shm_dir = shm_dir
        self.bucket_bytes = bucket_bytes

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PushStats:
        from engine.sync.buckets import BucketStats, layer_buckets

        start = time.perf_counter()
        stats = BucketStats()
        for bucket in layer_buckets(checked_tensors(named_tensors), self.bucket_bytes, stats):
            self._send(bucket)
        return PushStats(time.perf_counter() - start, stats.bytes, stats.tensors, stats.buckets, stats.peak_bytes)

    def _send(self, bucket: list[tuple[str, torch.Tensor]]) -> None:
        """One safetensors file in shared memory, reloaded in place by every worker, then removed."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        storages: set[int] = set()
        for name, tensor in bucket:
            # safetensors refuses tensors sharing storage (e.g. tied embeddings): copy the alias.
            ptr = tensor.untyped_storage().data_ptr()
            tensors[name] = tensor.clone() if ptr in storages else tensor
            storages.add(ptr)
        path = os.path.join(self._shm_dir, f"semionline-weights-{os.getpid()}-{uuid.uuid4().hex}.safetensors")
        try:
            save_file(tensors, path)
            loaded = self._llm.collective_rpc("semionline_reload_from_safetensors", args=(path,))
        finally:
            if os.path.exists(path):
                os.remove(path)
        if any(n != len(tensors) for n in loaded):
            raise RuntimeError(
                f"weight push: workers loaded {loaded} tensors from {path}, expected {len(tensors)}"
            )
