"""Cut a stream of (HF name, full tensor) into buckets of whole decoder layers, so a weight push
holds about one bucket plus one layer at a time, never the whole model.

    stats = BucketStats()
    for bucket in layer_buckets(learner.hf_weights(), bucket_bytes=64 << 20, stats=stats):
        transport.send(bucket)             # e.g. one /dev/shm file + one in-place reload
    stats.peak_bytes                       # the most tensor bytes held at once

Why whole layers: vLLM's in-place reload (`reload_weights`) is layer-wise — a layer that gets any
of its tensors must get all of them in the same call (q/k/v into one qkv_proj, gate/up into one
gate_up_proj), or its unloaded part is left uninitialised. Layers outside a call keep their
weights, so a push may be split across calls at layer boundaries. Names outside
`model.layers.{i}.` (embedding, final norm, lm_head) are single-tensor modules: each is its own unit.
A bucket closes at the first layer boundary at or past `bucket_bytes`; `bucket_bytes=0` sends one
layer per bucket. This module only groups; it does not copy, rename or reshard.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch

_LAYER = re.compile(r"^(.*?\.layers\.\d+)\.")


def layer_key(name: str) -> str:
    """The unit a tensor must be reloaded with: its decoder layer's prefix, or its own name."""
    m = _LAYER.match(name)
    return m.group(1) if m else name


@dataclass
class BucketStats:
    """Filled in while `layer_buckets` runs."""

    buckets: int = 0
    tensors: int = 0
    bytes: int = 0  # every tensor's numel * element_size, summed
    peak_bytes: int = 0  # the most bytes held at once (the open bucket + the layer being filled)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def layer_buckets(named_tensors: Iterable[tuple[str, torch.Tensor]], bucket_bytes: int,
                  stats: BucketStats | None = None) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Yield lists of (name, tensor) made of whole layers, each >= `bucket_bytes` but the last.
    Tensors of one layer must arrive together (the HF checkpoint order does this)."""
    stats = stats if stats is not None else BucketStats()
    bucket: list[tuple[str, torch.Tensor]] = []
    layer: list[tuple[str, torch.Tensor]] = []
    bucket_held = layer_held = 0
    key, done = None, set()
    for name, tensor in named_tensors:
        k = layer_key(name)
        if k != key:
            if k in done:
                raise ValueError(f"weight stream: tensors of {k!r} are not contiguous ({name!r} came late)")
            if key is not None:
                done.add(key)
            bucket += layer
            bucket_held += layer_held
            layer, layer_held, key = [], 0, k
            if bucket and bucket_held >= bucket_bytes:
                stats.buckets += 1
                yield bucket
                bucket, bucket_held = [], 0
        n = _nbytes(tensor)
        layer.append((name, tensor))
        layer_held += n
        stats.tensors += 1
        stats.bytes += n
        stats.peak_bytes = max(stats.peak_bytes, bucket_held + layer_held)
    bucket += layer
    if bucket:
        stats.buckets += 1
        yield bucket
