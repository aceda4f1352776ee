"""Hugging Face checkpoints <-> tensor- and pipeline-parallel `CausalLM` shards, at any (tp, pp).

    model = load_model("ckpt/", mesh)                 # each rank reads only its shard of its stages
    for name, full in iter_hf_weights(model): ...     # HF names, TP-gathered + PP-broadcast (collective)
    save_hf(model, "out/", tokenizer_dir="ckpt/")     # config.json + model.safetensors, atomic

`specs.weight_specs` is the one table mapping HF tensor names to local (megatron) parameters and
their packing (see `engine/model/specs.py`); loading, saving, the training-state checkpoint and
weight streaming to the sampler all go through it. Loading reads `safe_open(...).get_slice`
slices, so a rank never reads another rank's shard: resharding to any layout is just loading.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save_file

from engine.model.config import ModelConfig
from engine.model.llama import CausalLM, stage_layers
from engine.model.specs import WeightSpec, local_targets, read_shard, weight_specs
from engine.parallel.mesh import Mesh
from kernels.tp import all_gather_dim

__all__ = ["CheckpointError", "WeightSpec", "check_checkpoint_dir", "gather_hf", "iter_hf_weights", "load_model",
           "load_shards", "hf_config_dict", "save_hf", "tensor_files", "tokenizer_files", "weight_specs",
           "TOKENIZER_FILES"]

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


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                    "generation_config.json")
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def _ignorable(name: str, cfg: ModelConfig) -> bool:
    """Tensors HF checkpoints may carry that carry no information for this model."""
    return name.endswith("rotary_emb.inv_freq") or (cfg.tie_word_embeddings and name == "lm_head.weight")


def tensor_files(model_dir: Path, index_name: str = _INDEX_FILE) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it (single file or sharded with an index)."""
    index_path = model_dir / index_name
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


def read_model_config(model_dir: Path, mesh: Mesh) -> ModelConfig:
    """`config.json` of a checkpoint folder, checked against the mesh's TP size."""
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
    return cfg


def load_model(model_dir: str | os.PathLike, mesh: Mesh, params_dtype: torch.dtype = torch.float32, *,
               virtual_stages: int = 1, layer_class: type | None = None) -> CausalLM:
    """Build a `CausalLM` from a HF checkpoint directory at any (tp, pp): each rank reads only the
    slices of its own stages' tensors (`safe_open(...).get_slice`). No communication; every rank
    of the mesh calls it."""
    model_dir = Path(model_dir)
    cfg = read_model_config(model_dir, mesh)
    files = tensor_files(model_dir)
    specs = weight_specs(cfg, mesh.tp_size)
    expected = {s.hf_name for s in specs}
    missing = sorted(expected - files.keys())
    unexpected = sorted(n for n in files.keys() - expected if not _ignorable(n, cfg))
    if missing or unexpected:
        raise CheckpointError(f"load_model: tensors in {model_dir} do not match its config.json ({cfg.model_type}, "
                              f"{cfg.num_layers} layers, tie_word_embeddings={cfg.tie_word_embeddings}): "
                              f"missing {_preview(missing)}, unexpected {_preview(unexpected)}")
    try:
        stage_layers(cfg.num_layers, mesh.pp_size, virtual_stages)
    except ValueError as e:
        raise CheckpointError(f"load_model: {model_dir}: {e}") from e
    model = CausalLM(cfg, mesh, params_dtype, init_weights=False, virtual_stages=virtual_stages,
                     layer_class=layer_class)
    load_shards(model, dict(model.named_parameters()), files)
    return model


def load_shards(model: CausalLM, dest: dict[str, torch.Tensor], files: dict[str, Path],
                key: Callable[[str], str] = lambda hf_name: hf_name) -> None:
    """Fill `dest` (local parameter name -> tensor shaped like that parameter: the parameters, or
    optimizer moments) with this rank's shards of the tensors `key(hf_name)` found in `files`
    (tensor name -> safetensors file). Every element of every `dest` tensor must be covered."""
    mesh = model.mesh
    specs = weight_specs(model.cfg, mesh.tp_size)
    filled = {name: 0 for name in dest}
    with ExitStack() as stack, torch.no_grad():
        handles: dict[Path, object] = {}
        for t in local_targets(specs, dest, model.has_tied_copy):
            spec, name = t.spec, key(t.spec.hf_name)
            if name not in files:
                raise CheckpointError(f"load: tensor {name!r} is missing")
            path = files[name]
            if path not in handles:
                handles[path] = stack.enter_context(safe_open(path, framework="pt"))
            tensor = handles[path].get_slice(name)
            shape = tuple(tensor.get_shape())
            if shape != spec.hf_shape:
                raise CheckpointError(f"load_model: {path}: tensor {name!r} has shape {shape}, "
                                      f"config.json implies {spec.hf_shape}")
            shard = read_shard(tensor, spec, mesh.tp_rank, mesh.tp_size)
            rows = slice(*spec.local_rows) if spec.local_rows else slice(None)
            dest[t.param_name][rows].copy_(shard)
            filled[t.param_name] += shard.numel()
    unfilled = [name for name, p in dest.items() if filled[name] != p.numel()]
    assert not unfilled, f"weight_specs does not cover local parameters {unfilled}"


def _preview(names: list[str], limit: int = 6) -> str:
    if not names:
        return "none"
    more = f" … and {len(names) - limit} more" if len(names) > limit else ""
    return f"{len(names)} {names[:limit]}{more}"


def iter_hf_weights(model: CausalLM) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (HF name, full tensor) one parameter at a time, in checkpoint order.

    Collective: every rank of the model's TP and PP groups must iterate to the end, in step; every
    rank receives the full tensor (gathered over TP by its stage, then broadcast over PP). Tensors
    keep the parameters' dtype and device; they may share storage with the parameters (copy them
    to keep them past the next optimizer step).
    """
    yield from gather_hf(model, dict(model.named_parameters()), pp_broadcast=True)


def gather_hf(model: CausalLM, local: dict[str, torch.Tensor], *,
              pp_broadcast: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(HF name, full tensor) of `local` (local parameter name -> tensor shaped like that
    parameter). TP-gathered; with `pp_broadcast` every stage receives every tensor (collective
    over TP and PP), otherwise each stage yields only the tensors it owns (collective over TP)."""
    mesh = model.mesh
    dtype = next(iter(local.values())).dtype
    for spec in weight_specs(model.cfg, mesh.tp_size):
        owner = model.pp_rank_of(spec.local_name)
        full = None
        if owner == mesh.pp_rank:
            shard = local[spec.local_name].detach()
            if spec.local_rows is not None:
                shard = shard[slice(*spec.local_rows)]
            full = shard if spec.tp_dim is None else all_gather_dim(shard, mesh.tp_group, dim=spec.tp_dim)
        elif not pp_broadcast:
            continue
        if pp_broadcast and mesh.pp_size > 1:
            if full is None:
                full = torch.empty(spec.hf_shape, dtype=dtype, device=mesh.device)
            full = full.contiguous()
            dist.broadcast(full, src=mesh.pp_peer(owner), group=mesh.pp_group)
        yield spec.hf_name, full


def save_hf(model: CausalLM, out_dir: str | os.PathLike, tokenizer_dir: str | os.PathLike | None = None) -> None:
    """Write `config.json` + `model.safetensors` (+ tokenizer files) to `out_dir`, atomically.

    Collective over the mesh (TP gather, PP broadcast); only rank 0 (tp 0, dp 0, pp 0) writes. The
    files go into a temporary sibling directory that is then renamed onto `out_dir` (an existing
    `out_dir` is moved aside first and removed after), so readers never see a partial checkpoint.
    """
    out_dir = Path(out_dir)
    mesh = model.mesh
    tok_files = tokenizer_files(Path(tokenizer_dir)) if tokenizer_dir is not None else []
    writer = mesh.rank == 0
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in iter_hf_weights(model):
        if writer:
            tensors[name] = tensor.to("cpu", copy=True).contiguous()
    if writer:
        _write_atomically(out_dir, hf_config_dict(model), tensors, tok_files)
    mesh.barrier()


def tokenizer_files(tokenizer_dir: Path) -> list[Path]:
    found = [tokenizer_dir / name for name in TOKENIZER_FILES if (tokenizer_dir / name).is_file()]
    if not found:
        raise FileNotFoundError(f"save_hf: tokenizer_dir {tokenizer_dir} holds none of {list(TOKENIZER_FILES)}")
    return found


def hf_config_dict(model: CausalLM) -> dict:
    """The `config.json` of `model`, with the dtype its parameters have."""
    return dataclasses.replace(model.cfg, dtype=_DTYPE_NAMES[next(model.parameters()).dtype]).to_hf_dict()


def _write_atomically(out_dir: Path, config: dict, tensors: dict[str, torch.Tensor],
                      tok_files: list[Path]) -> None:
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}"
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    for stale in (tmp, old):
        if stale.exists():
            shutil.rmtree(stale)
    tmp.mkdir()
    save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for path in tok_files:
        shutil.copy2(path, tmp / path.name)
    if out_dir.exists():
        os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out_dir)
