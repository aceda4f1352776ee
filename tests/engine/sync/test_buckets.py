"""Cutting the weight stream into buckets of whole layers (no sampler needed)."""

import pytest
import torch

from engine.sync.buckets import BucketStats, layer_buckets, layer_key


def _stream(layers: int = 3):
    yield "model.embed_tokens.weight", torch.zeros(10, 4)  # 160 bytes
    for i in range(layers):
        for part in ("self_attn.q_proj.weight", "self_attn.k_proj.weight", "mlp.gate_proj.weight"):
            yield f"model.layers.{i}.{part}", torch.zeros(5, 4)  # 80 bytes each, 240 per layer
    yield "model.norm.weight", torch.zeros(4)
    yield "lm_head.weight", torch.zeros(10, 4)


def test_layer_key():
    assert layer_key("model.layers.12.mlp.up_proj.weight") == "model.layers.12"
    assert layer_key("model.norm.weight") == "model.norm.weight"


@pytest.mark.parametrize("bucket_bytes", [0, 200, 500, 10_000])
def test_buckets_hold_whole_layers_and_bound_memory(bucket_bytes):
    stats = BucketStats()
    buckets = list(layer_buckets(_stream(), bucket_bytes, stats))
    flat = [n for b in buckets for n, _ in b]
    assert flat == [n for n, _ in _stream()]
    for b in buckets:  # no layer is split across buckets
        keys = [layer_key(n) for n, _ in b]
        for other in buckets:
            if other is not b:
                assert not set(keys) & {layer_key(n) for n, _ in other}
    sizes = [sum(t.numel() * 4 for _, t in b) for b in buckets]
    assert all(s >= bucket_bytes for s in sizes[:-1])
    assert stats.bytes == sum(sizes) and stats.tensors == len(flat) and stats.buckets == len(buckets)
    assert stats.peak_bytes <= max(bucket_bytes, 0) + 2 * 240  # about one bucket plus one layer
    if bucket_bytes == 0:
        assert len(buckets) == 6


def test_a_split_layer_is_refused():
    bad = [("model.layers.0.a", torch.zeros(1)), ("model.layers.1.a", torch.zeros(1)), ("model.layers.0.b", torch.zeros(1))]
    with pytest.raises(ValueError, match="not contiguous"):
        list(layer_buckets(bad, 0))
