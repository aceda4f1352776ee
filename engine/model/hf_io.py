"""Hugging Face checkpoints <-> tensor-parallel `CausalLM` shards.

    model = load_model("ckpt/", mesh)                 # each rank reads only its shard
    for name, full in iter_hf_weights(model): ...     # HF names, TP-gathered (collective)
    save_hf(model, "out/", tokenizer_dir="ckpt/")     # config.json + model.safetensors, atomic

`weight_specs` is the one table mapping HF tensor names to local (megatron) parameters and their
packing; loading, saving and weight streaming to the sampler all go through it. Per decoder
layer i (local names under `layers.{i}.`, HF names under `model.layers.{i}.`):

    HF name                         local param          TP split (HF dim)  packing in local dim 0
    self_attn.{q,k,v}_proj.weight   attn.qkv.weight      0                  [q_r; k_r; v_r]
    self_attn.{q,k,v}_proj.bias     attn.qkv.bias        0                  [q_r; k_r; v_r]
    self_attn.o_proj.weight         attn.out.weight      1
    mlp.{gate,up}_proj.weight       mlp.gate_up.weight   0                  [gate_r; up_r]
    mlp.down_proj.weight            mlp.down.weight      1
    input_layernorm.weight          attn_norm.weight     replicated
    post_attention_layernorm.weight mlp_norm.weight      replicated

plus `model.embed_tokens.weight` -> `embed.weight` (0), `model.norm.weight` -> `norm.weight`
(replicated), `lm_head.weight` -> `lm_head.weight` (0; absent when embeddings are tied).
`x_r` is rank r's contiguous 1/tp slice of x along the TP dim.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from engine.model.config import ModelConfig
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh

_INDEX_FILE = "model.safetensors.index.json"
class CheckpointError(ValueError):
    """A model directory that cannot be loaded: the message names the directory and what is wrong."""


def check_checkpoint_dir(model_dir: str | Path) -> Path:
    """Fail early, with one message, when `model_dir` is not a Hugging Face checkpoint folder
    (before a tokenizer or engine load reports something less direct)."""
    path = Path(model_dir)
    if not path.is_dir():
        raise CheckpointError(f"model directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{path} has no config.json (expected a Hugging Face checkpoint folder)")
    if not any(path.glob("*.safetensors")):
        raise CheckpointError(f"{path} has no *.safetensors weight files")
    return path


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                    "generation_config.json")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}

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
    ("mlp.gate_proj.weight", "mlp.gate_up.weight", 0),
    ("mlp.up_proj.weight", "mlp.gate_up.weight", 0),
    ("mlp.down_proj.weight", "mlp.down.weight", 1),
    ("input_layernorm.weight", "attn_norm.weight", None),
    ("post_attention_layernorm.weight", "mlp_norm.weight", None),
)


@dataclass(frozen=True)
class WeightSpec:
    """One HF tensor and where this rank's shard of it lives."""

    hf_name: str
    local_name: str
    hf_shape: tuple[int, ...]  # the full (unsharded) HF shape
    tp_dim: int | None  # HF dim split over TP ranks; None: replicated
    local_rows: tuple[int, int] | None  # [start, stop) in the packed local param's dim 0; None: all of it


def _hf_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    h, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    return {
        "self_attn.q_proj.weight": (q, h), "self_attn.k_proj.weight": (kv, h), "self_attn.v_proj.weight": (kv, h),
        "self_attn.q_proj.bias": (q,), "self_attn.k_proj.bias": (kv,), "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (cfg.intermediate_size, h), "mlp.up_proj.weight": (cfg.intermediate_size, h),
        "mlp.down_proj.weight": (h, cfg.intermediate_size),
        "input_layernorm.weight": (h,), "post_attention_layernorm.weight": (h,),
    }


def weight_specs(cfg: ModelConfig, tp_size: int) -> list[WeightSpec]:
    """Every HF tensor of `cfg`, in checkpoint order, with its local parameter and packing."""
    shapes = _hf_shapes(cfg)
    layer_rows: list[tuple[str, str, tuple[int, ...], int | None, tuple[int, int] | None]] = []
    packed_offset: dict[str, int] = {}
    packed = {local for _, local, _ in _LAYER_TABLE if sum(row[1] == local for row in _LAYER_TABLE) > 1}
    for hf, local, tp_dim in _LAYER_TABLE:
        if hf.endswith(".bias") and not cfg.attention_bias:
            continue
        rows = None
        if local in packed:
            start = packed_offset.get(local, 0)
            rows = (start, start + shapes[hf][0] // tp_size)
            packed_offset[local] = rows[1]
        layer_rows.append((hf, local, shapes[hf], tp_dim, rows))

    v, h = cfg.vocab_size, cfg.hidden_size
    specs = [WeightSpec("model.embed_tokens.weight", "embed.weight", (v, h), 0, None)]
    for i in range(cfg.num_layers):
        specs += [WeightSpec(f"model.layers.{i}.{hf}", f"layers.{i}.{local}", shape, tp_dim, rows)
                  for hf, local, shape, tp_dim, rows in layer_rows]
    specs.append(WeightSpec("model.norm.weight", "norm.weight", (h,), None, None))
    if not cfg.tie_word_embeddings:
        specs.append(WeightSpec("lm_head.weight", "lm_head.weight", (v, h), 0, None))
    return specs


def _ignorable(name: str, cfg: ModelConfig) -> bool:
    """Tensors HF checkpoints may carry that carry no information for this model."""
    return name.endswith("rotary_emb.inv_freq") or (cfg.tie_word_embeddings and name == "lm_head.weight")


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (single file or sharded with an index)."""
    index_path = model_dir / _INDEX_FILE
    if index_path.exists():
        weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        files = {name: model_dir / file for name, file in weight_map.items()}
        absent = sorted({str(p.name) for p in files.values() if not p.exists()})
        if absent:
            raise FileNotFoundError(f"load_model: {index_path} lists weight files missing from {model_dir}: {absent}")
        return files
    paths = sorted(model_dir.glob("*.safetensors"))
    if not paths:
        others = sorted(p.name for p in model_dir.glob("*.bin")) + sorted(p.name for p in model_dir.glob("*.pt"))
        hint = f" (found {others}; only safetensors is read)" if others else ""
        raise FileNotFoundError(f"load_model: {model_dir} has no *.safetensors weight files{hint}")
    files: dict[str, Path] = {}
    for path in paths:
        with safe_open(path, framework="pt") as f:
            for name in f.keys():
                if name in files:
                    raise CheckpointError(f"load_model: tensor {name!r} is in both {files[name]} and {path}")
                files[name] = path
    return files


def load_model(model_dir: str | os.PathLike, mesh: Mesh, params_dtype: torch.dtype = torch.float32) -> CausalLM:
    """Build a `CausalLM` from a HF checkpoint directory; each rank reads only its own shard.

    Collective only in that every rank of `mesh.tp_group` must call it (no communication).
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"load_model: model directory {model_dir} does not exist")
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"load_model: {model_dir} has no config.json")
    try:
        cfg = ModelConfig.from_hf_dict(json.loads(config_path.read_text()))
        cfg.check_tensor_parallel(mesh.tp_size)
    except ValueError as e:
        raise CheckpointError(f"load_model: {config_path}: {e}") from e

    files = _tensor_files(model_dir)
    specs = weight_specs(cfg, mesh.tp_size)
    expected = {s.hf_name for s in specs}
    missing = sorted(expected - files.keys())
    unexpected = sorted(n for n in files.keys() - expected if not _ignorable(n, cfg))
    if missing or unexpected:
        raise CheckpointError(f"load_model: tensors in {model_dir} do not match its config.json ({cfg.model_type}, "
                         f"{cfg.num_layers} layers, tie_word_embeddings={cfg.tie_word_embeddings}): "
                         f"missing {_preview(missing)}, unexpected {_preview(unexpected)}")

    model = CausalLM(cfg, mesh, params_dtype, init_weights=False)
    params = dict(model.named_parameters())
    filled = {name: 0 for name in params}
    with ExitStack() as stack, torch.no_grad():
        handles = {p: stack.enter_context(safe_open(p, framework="pt")) for p in sorted(set(files.values()))}
        for spec in specs:
            tensor = handles[files[spec.hf_name]].get_slice(spec.hf_name)
            shape = tuple(tensor.get_shape())
            if shape != spec.hf_shape:
                raise CheckpointError(f"load_model: {files[spec.hf_name]}: tensor {spec.hf_name!r} has shape {shape}, "
                                 f"config.json implies {spec.hf_shape}")
            shard = _read_shard(tensor, spec, mesh)
            target = params[spec.local_name]
            rows = slice(*spec.local_rows) if spec.local_rows else slice(None)
            target[rows].copy_(shard)
            filled[spec.local_name] += shard.numel()
    unfilled = [name for name, p in params.items() if filled[name] != p.numel()]
    assert not unfilled, f"weight_specs does not cover local parameters {unfilled}"
    return model


def _read_shard(tensor, spec: WeightSpec, mesh: Mesh) -> torch.Tensor:
    """Read rank `mesh.tp_rank`'s contiguous slice of a safetensors slice along `spec.tp_dim`."""
    if spec.tp_dim is None:
        return tensor[:]
    size = spec.hf_shape[spec.tp_dim] // mesh.tp_size
    part = slice(mesh.tp_rank * size, (mesh.tp_rank + 1) * size)
    return tensor[part] if spec.tp_dim == 0 else tensor[:, part]


def _preview(names: list[str], limit: int = 6) -> str:
    if not names:
        return "none"
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {names[:limit]}{more}"


def iter_hf_weights(model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, full tensor) one parameter at a time, in checkpoint order.

    Collective: every rank of the model's TP group must iterate to the end, in step; every rank
    receives the full tensor. Tensors keep the parameters' dtype and device; they may share
    storage with the parameters (copy them to keep them past the next optimizer step).
    """
    mesh = model.mesh
    params = dict(model.named_parameters())
    for spec in weight_specs(model.cfg, mesh.tp_size):
        local = params[spec.local_name].detach()
        if spec.local_rows is not None:
            local = local[slice(*spec.local_rows)]
        if spec.tp_dim is None or mesh.tp_size == 1:
            yield spec.hf_name, local
            continue
        parts = [torch.empty_like(local) for _ in range(mesh.tp_size)]
        dist.all_gather(parts, local.contiguous(), group=mesh.tp_group)
        yield spec.hf_name, torch.cat(parts, dim=spec.tp_dim)


def save_hf(model: CausalLM, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None) -> None:
    """Write `config.json` + `model.safetensors` (+ tokenizer files) to `out_dir`, atomically.

    Collective over the TP group (all ranks gather); only TP rank 0 of DP replica 0 writes. The
    files go into a temporary sibling directory that is then renamed onto `out_dir` (an existing
    `out_dir` is moved aside first and removed after), so readers never see a partial checkpoint.
    """
    out_dir = Path(out_dir)
    mesh = model.mesh
    tokenizer_files = _tokenizer_files(Path(tokenizer_dir)) if tokenizer_dir is not None else []
    writer = mesh.tp_rank == 0 and mesh.dp_rank == 0
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in iter_hf_weights(model):
        if writer:
            tensors[name] = tensor.to("cpu", copy=True).contiguous()
    if writer:
        dtype = _DTYPE_NAMES[model.lm_head_weight.dtype]
        cfg = dataclasses.replace(model.cfg, dtype=dtype)
        _write_atomically(out_dir, cfg, tensors, tokenizer_files)
    dist.barrier(group=mesh.tp_group)


def _tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    found = [tokenizer_dir / name for name in _TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if not found:
        raise FileNotFoundError(f"save_hf: tokenizer_dir {tokenizer_dir} holds none of {list(_TOKENIZER_FILES)}")
    return found


def _write_atomically(out_dir: Path, cfg: ModelConfig, tensors: dict[str, torch.Tensor],
                      tokenizer_files: list[Path]) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(cfg.to_hf_dict(), indent=2) + "\n")
    for path in tokenizer_files:
        shutil.copy2(path, tmp / path.name)
    if out_dir.exists():
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
