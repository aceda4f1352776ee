"""GPU-only weight transport: CUDA IPC for an engine colocated on the learner's GPU.

UNTESTED: written on a machine without a GPU; `tests/engine/sampler/test_gpu_transport.py` runs
it when CUDA is present and skips otherwise. It implements the same `WeightTransport` protocol as
the CPU transports (`engine/sampler/transport.py`) and is selected by `VLLMSampler(...,
transport="cuda_ipc")` (`sampler.transport: cuda_ipc`).

How: the stream is cut into buckets of whole layers (`engine/sync/buckets.py`). For each bucket
the tensors, already on the learner's GPU, are packed into one contiguous CUDA buffer; its IPC
handle (`torch.multiprocessing.reductions.reduce_tensor`) and the (name, dtype, shape, offset)
table are pickled into a base64 string — a short text, so `collective_rpc` never serialises a
tensor — and every worker opens the buffer (`rebuild_cuda_tensor`), slices it and hands the views
to vLLM's in-place `reload_weights`. The buffer lives until the call returns, then the next
bucket is packed: the learner holds one bucket plus one layer on its GPU during a push.
Both processes must see the same physical device (colocated placement).

Not done here: an engine on GPUs of its own (`sampler.gpus`): NCCL through vLLM's weight-transfer
API (`init_weight_transfer_engine` / `update_weights`, which vLLM 0.32's `LLM` has from
`RLOfflineMixin`), in `engine/sampler/nccl_transfer.py`.
"""

from __future__ import annotations

import base64
import pickle
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import torch

from engine.sampler.transport import PushStats, WorkerWeightReloadExtension
from engine.sync.buckets import BucketStats, layer_buckets

if TYPE_CHECKING:
    from vllm import LLM


def pack_bucket(bucket: list[tuple[str, torch.Tensor]]) -> tuple[torch.Tensor, list[tuple[str, str, list[int], int]]]:
    """One contiguous uint8 buffer holding every tensor of the bucket, and its (name, dtype,
    shape, byte offset) table. Offsets are 16-byte aligned so every view is aligned."""
    table, offset = [], 0
    for name, t in bucket:
        table.append((name, str(t.dtype).removeprefix("torch."), list(t.shape), offset))
        offset += -(-t.numel() * t.element_size() // 16) * 16
    device = bucket[0][1].device
    buf = torch.empty(offset, dtype=torch.uint8, device=device)
    for (_, t), (_, _, _, start) in zip(bucket, table, strict=True):
        n = t.numel() * t.element_size()
        buf[start : start + n].copy_(t.detach().contiguous().reshape(-1).view(torch.uint8))
    return buf, table


def unpack_bucket(buf: torch.Tensor, table) -> Iterator[tuple[str, torch.Tensor]]:
    for name, dtype, shape, start in table:
        dt = getattr(torch, dtype)
        n = int(torch.Size(shape).numel()) * torch.empty((), dtype=dt).element_size()
        yield name, buf[start : start + n].view(dt).reshape(shape)


class CudaIpcReloadExtension(WorkerWeightReloadExtension):
    """Worker-side half, mixed into vLLM's worker (`LLM(worker_extension_cls=...)`)."""

    def semionline_reload_from_cuda_ipc(self, payload: str) -> int:
        from torch.multiprocessing.reductions import rebuild_cuda_tensor

        handle, table = pickle.loads(base64.b64decode(payload))
        args = list(handle)
        args[6] = torch.cuda.current_device()  # the device index as this process numbers it
        buf = rebuild_cuda_tensor(*args)
        self.reload_weights(weights_iterator=unpack_bucket(buf, table))  # vLLM Worker.reload_weights
        torch.cuda.synchronize()
        return len(table)


class CudaIpcTransport:
    """Learner-side half: packs each bucket on the GPU and sends its IPC handle."""

    name = "cuda_ipc"

    def __init__(self, llm: LLM, bucket_bytes: int = 256 << 20):
        if not torch.cuda.is_available():
            raise RuntimeError("CudaIpcTransport needs CUDA (it shares GPU memory with a colocated engine)")
        self._llm = llm
        self.bucket_bytes = bucket_bytes

    def push(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PushStats:
        from torch.multiprocessing.reductions import reduce_tensor

        start = time.perf_counter()
        stats = BucketStats()
        device = torch.device("cuda", torch.cuda.current_device())
        cuda_stream = ((n, t.detach().to(device)) for n, t in named_tensors)
        for bucket in layer_buckets(cuda_stream, self.bucket_bytes, stats):
            buf, table = pack_bucket(bucket)
            torch.cuda.synchronize()
            _, handle = reduce_tensor(buf)
            payload = base64.b64encode(pickle.dumps((handle, table))).decode()
            loaded = self._llm.collective_rpc("semionline_reload_from_cuda_ipc", args=(payload,))
            if any(n != len(table) for n in loaded):
                raise RuntimeError(f"cuda_ipc push: workers loaded {loaded} tensors, expected {len(table)}")
            del buf
        return PushStats(time.perf_counter() - start, stats.bytes, stats.tensors, stats.buckets, stats.peak_bytes)
