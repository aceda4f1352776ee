"""The one table mapping Hugging Face tensor names to this engine's local (megatron) parameters,
their tensor-parallel split and packing, and which pipeline stage owns them.

Loading (`hf_io.load_model`), seeded init (`llama.CausalLM`), export (`hf_io.iter_hf_weights`),
weight streaming to the sampler and the training-state checkpoint all go through it.
Per decoder layer i (local names under `layers.{i}.`, HF names under `model.layers.{i}.`; i is the
global layer index at every pipeline layout):

    HF name                         local param             TP split (HF dim)  packing in local dim 0
    self_attn.{q,k,v}_proj.weight   attn.qkv.weight         0                  [q_r; k_r; v_r]
    self_attn.{q,k,v}_proj.bias     attn.qkv.bias           0                  [q_r; k_r; v_r]  (Qwen2)
    self_attn.o_proj.weight         attn.out.weight         1
    self_attn.{q,k}_norm.weight     attn.{q,k}_norm.weight  replicated         (Qwen3; (head_dim,))
    mlp.{gate,up}_proj.weight       mlp.gate_up.weight      0                  [gate_r; up_r]
    mlp.down_proj.weight            mlp.down.weight         1
    input_layernorm.weight          attn_norm.weight        replicated
    post_attention_layernorm.weight mlp_norm.weight         replicated

plus `model.embed_tokens.weight` -> `embed.weight` (0, first stage), `model.norm.weight` ->
`norm.weight` (replicated, last stage), `lm_head.weight` -> `lm_head.weight` (0, last stage;
absent when embeddings are tied). With tied embeddings and pp > 1 the last stage holds a copy of
the embedding as `lm_head.weight` (`LocalTarget.tied_copy`): it loads from
`model.embed_tokens.weight` and is never exported. `x_r` is rank r's contiguous 1/tp slice of x.

Must not import the model (the model imports this).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from engine.model.config import ModelConfig

# (HF suffix, local suffix, TP dim of the HF tensor or None when replicated); packed entries of one
# local parameter are listed in their packing order.
_LAYER_TABLE: tuple[tuple[str, str, int | None], ...] = (
    ("self_attn.q_proj.weight", "attn.qkv.weight", 0),
    ("self_attn.k_proj.weight", "attn.qkv.weight", 0),
    ("self_attn.v_proj.weight", "attn.qkv.weight", 0),
    ("self_attn.q_proj.bias", "attn.qkv.bias", 0),
    ("self_attn.k_proj.bias", "attn.qkv.bias", 0),
    ("self_attn.v_proj.bias", "attn.qkv.bias", 0),
    ("self_attn.o_proj.weight", "attn.out.weight", 1),
    ("self_attn.q_norm.weight", "attn.q_norm.weight", None),
    ("self_attn.k_norm.weight", "attn.k_norm.weight", None),
    ("mlp.gate_proj.weight", "mlp.gate_up.weight", 0),
    ("mlp.up_proj.weight", "mlp.gate_up.weight", 0),
    ("mlp.down_proj.weight", "mlp.down.weight", 1),
    ("input_layernorm.weight", "attn_norm.weight", None),
    ("post_attention_layernorm.weight", "mlp_norm.weight", None),
)
EMBED = "model.embed_tokens.weight"


@dataclass(frozen=True)
class WeightSpec:
    """One HF tensor and where a rank's shard of it lives."""

    hf_name: str
    local_name: str
    hf_shape: tuple[int, ...]  # the full (unsharded) HF shape
    tp_dim: int | None  # HF dim split over TP ranks; None: replicated
    local_rows: tuple[int, int] | None  # [start, stop) in the packed local param's dim 0; None: all of it


@dataclass(frozen=True)
class LocalTarget:
    """Where one HF tensor lands on this rank: `spec.local_name` or, for the tied copy, `lm_head.weight`."""

    spec: WeightSpec
    param_name: str
    tied_copy: bool = False  # the last stage's copy of the tied embedding (loaded, never exported)


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.q_norm.weight": (cfg.head_dim,),
        "self_attn.k_norm.weight": (cfg.head_dim,),
        "mlp.gate_proj.weight": (cfg.intermediate_size, h),
        "mlp.up_proj.weight": (cfg.intermediate_size, h),
        "mlp.down_proj.weight": (h, cfg.intermediate_size),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }


def _in_model(hf_suffix: str, cfg: ModelConfig) -> bool:
    """Whether a `_LAYER_TABLE` row exists in this architecture (q/k/v bias: Qwen2; q/k norm: Qwen3)."""
    if hf_suffix.endswith(".bias"):
        return cfg.attention_bias
    if hf_suffix in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
        return cfg.qk_norm
    return True


def weight_specs(cfg: ModelConfig, tp_size: int) -> list[WeightSpec]:
    """Every HF tensor of `cfg`, in checkpoint order, with its local parameter and packing."""
    shapes = _hf_shapes(cfg)
    layer_rows: list[tuple[str, str, tuple[int, ...], int | None, tuple[int, int] | None]] = []
    packed_offset: dict[str, int] = {}
    packed = {local for _, local, _ in _LAYER_TABLE if sum(row[1] == local for row in _LAYER_TABLE) > 1}
    for hf, local, tp_dim in _LAYER_TABLE:
        if not _in_model(hf, cfg):
            continue
        rows = None
        if local in packed:
            start = packed_offset.get(local, 0)
            rows = (start, start + shapes[hf][0] // tp_size)
            packed_offset[local] = rows[1]
        layer_rows.append((hf, local, shapes[hf], tp_dim, rows))

    v, h = cfg.vocab_size, cfg.hidden_size
    specs = [WeightSpec(EMBED, "embed.weight", (v, h), 0, None)]
    for i in range(cfg.num_layers):
        specs += [
            WeightSpec(f"model.layers.{i}.{hf}", f"layers.{i}.{local}", shape, tp_dim, rows)
            for hf, local, shape, tp_dim, rows in layer_rows
        ]
    specs.append(WeightSpec("model.norm.weight", "norm.weight", (h,), None, None))
    if not cfg.tie_word_embeddings:
        specs.append(WeightSpec("lm_head.weight", "lm_head.weight", (v, h), 0, None))
    return specs


def local_targets(
    specs: Iterable[WeightSpec], param_names: Iterable[str], tied_copy: bool
) -> list[LocalTarget]:
    """The specs this rank holds a shard of (its pipeline stage's parameters), in checkpoint order;
    with `tied_copy`, the embedding also lands in this rank's `lm_head.weight`."""
    names = set(param_names)
    out = []
    for spec in specs:
        if spec.local_name in names:
            out.append(LocalTarget(spec, spec.local_name))
        if tied_copy and spec.hf_name == EMBED:
            out.append(LocalTarget(spec, "lm_head.weight", tied_copy=True))
    return out


def read_shard(tensor, spec: WeightSpec, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Rank `tp_rank`'s contiguous slice along `spec.tp_dim` of a full tensor or a safetensors slice
    (which reads only that slice from disk)."""
    if spec.tp_dim is None:
        return tensor[:]
    size = spec.hf_shape[spec.tp_dim] // tp_size
    part = slice(tp_rank * size, (tp_rank + 1) * size)
    return tensor[part] if spec.tp_dim == 0 else tensor[:, part]


def seeded_hf_tensor(spec: WeightSpec, std: float, generator: torch.Generator) -> torch.Tensor:
    """The seeded init of one HF tensor, drawn in full so a seed gives the same model at every
    layout: norms 1, biases 0, matrices N(0, std) (fp32). Draws in `weight_specs` order keep the
    generator in step on every rank, whichever shards it keeps."""
    if spec.hf_name.endswith("norm.weight"):
        return torch.ones(spec.hf_shape)
    if spec.hf_name.endswith(".bias"):
        return torch.zeros(spec.hf_shape)
    return torch.empty(spec.hf_shape).normal_(0.0, std, generator=generator)
