"""The learner's part of a training-state checkpoint, written at one (tp, pp, dp) layout and
readable at any other.

    save_learner_state(learner, ckpt_dir)      # collective; into a directory `engine.checkpoint` commits
    load_learner_state(learner, ckpt_dir)      # collective; the learner may have another layout

Layout-free format: every tensor is stored whole, under its Hugging Face name, so loading at a
new layout is the same sliced read as loading a HF checkpoint (`hf_io.load_shards`):

    model/   config.json, tokenizer files, model-0000k-of-0000P.safetensors (one file per pipeline
             stage, TP-gathered, written by that stage's tp 0 / dp 0 rank) and
             model.safetensors.index.json: a sharded Hugging Face checkpoint (transformers and
             vLLM load it as it is)
    optim/   optim-0000k-of-0000P.safetensors: AdamW's `{hf_name}.exp_avg` / `.exp_avg_sq`, same
             split, and optim.safetensors.index.json
    learner.json  learner step, AdamW step count, LR scheduler state

AdamW's state is not sharded across DP (each replica holds it whole, like the parameters), so one
DP replica writes. The tied embedding's last-stage copy is not written; it is loaded from
`model.embed_tokens.weight` (and its moments from the embedding's), which it equals.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import save_file

from engine.model.hf_io import TOKENIZER_FILES, gather_hf, hf_config_dict, load_shards, tensor_files
from engine.model.llama import CausalLM
from engine.model.specs import weight_specs

MODEL_INDEX, OPTIM_INDEX = "model.safetensors.index.json", "optim.safetensors.index.json"
MOMENTS = ("exp_avg", "exp_avg_sq")


def _stage_file(prefix: str, pp_rank: int, pp_size: int) -> str:
    return f"{prefix}-{pp_rank + 1:05d}-of-{pp_size:05d}.safetensors"


def _write_stage(
    model: CausalLM,
    sources: list[tuple[dict[str, torch.Tensor], Callable[[str], str]]],
    out: Path,
    prefix: str,
    index_name: str,
) -> None:
    """TP-gather each source (local name -> tensor shaped like that parameter), stored under
    `key(hf_name)`, into this stage's file; rank 0 writes the index (it knows every stage's
    tensors from the layer split)."""
    mesh = model.mesh
    tensors, weight_map = {}, {}
    for local, key in sources:
        for name, full in gather_hf(model, local, pp_broadcast=False):
            tensors[key(name)] = full.to("cpu", copy=True).contiguous()
        for spec in weight_specs(model.cfg, mesh.tp_size):
            weight_map[key(spec.hf_name)] = _stage_file(
                prefix, model.pp_rank_of(spec.local_name), mesh.pp_size
            )
    out.mkdir(parents=True, exist_ok=True)
    if mesh.tp_rank == 0 and mesh.dp_rank == 0:
        save_file(tensors, out / _stage_file(prefix, mesh.pp_rank, mesh.pp_size), metadata={"format": "pt"})
    if mesh.rank == 0:
        (out / index_name).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}, indent=1) + "\n")


def save_learner_state(learner, out_dir: Path) -> None:
    """Write `learner`'s policy, AdamW moments and schedule under `out_dir` (collective over the
    mesh; `out_dir` must be on a file system every writing rank sees)."""
    policy, opt, mesh = learner.policy, learner.optimizer, learner.mesh
    params = dict(policy.named_parameters())
    _write_stage(policy, [(params, _same)], out_dir / "model", "model", MODEL_INDEX)
    adam_steps = {int(opt.state[p]["step"]) for p in params.values() if p in opt.state}
    if len(adam_steps) > 1:
        raise RuntimeError(
            f"save_learner_state: parameters are at different AdamW steps {sorted(adam_steps)}"
        )
    if adam_steps:
        sources = [
            ({name: opt.state[p][m] for name, p in params.items()}, lambda n, m=m: f"{n}.{m}")
            for m in MOMENTS
        ]
        _write_stage(policy, sources, out_dir / "optim", "optim", OPTIM_INDEX)
    if mesh.rank == 0:
        (out_dir / "model" / "config.json").write_text(json.dumps(hf_config_dict(policy), indent=2) + "\n")
        for name in TOKENIZER_FILES:  # so that the model folder is a complete HF checkpoint
            if (Path(learner.model_dir) / name).is_file():
                shutil.copy2(Path(learner.model_dir) / name, out_dir / "model" / name)
        state = {
            "step": learner.step,
            "adam_step": adam_steps.pop() if adam_steps else 0,
            "scheduler": learner.scheduler.state_dict(),
            "layout": mesh.layout,
        }
        (out_dir / "learner.json").write_text(json.dumps(state, indent=1) + "\n")


def _same(name: str) -> str:
    return name


def load_learner_state(learner, ckpt_dir: Path) -> None:
    """Restore what `save_learner_state` wrote, at this learner's layout (each rank reads only its
    shards). Bit-exact: tensors are stored whole in their own dtype."""
    policy, opt = learner.policy, learner.optimizer
    state = json.loads((ckpt_dir / "learner.json").read_text())
    params = dict(policy.named_parameters())
    load_shards(policy, params, tensor_files(ckpt_dir / "model", MODEL_INDEX))
    opt.state.clear()
    if state["adam_step"]:
        files = tensor_files(ckpt_dir / "optim", OPTIM_INDEX)
        for moment in MOMENTS:
            local = {name: torch.zeros_like(p) for name, p in params.items()}
            load_shards(policy, local, files, key=lambda n, m=moment: f"{n}.{m}")
            for name, p in params.items():
                opt.state[p][moment] = local[name]
        for p in params.values():
            opt.state[p]["step"] = torch.tensor(float(state["adam_step"]), dtype=torch.float32)
    learner.scheduler.load_state_dict(state["scheduler"])
    for group, lr in zip(opt.param_groups, learner.scheduler.get_last_lr(), strict=True):
        group["lr"] = lr  # the scheduler sets it on its next step; AdamW reads it before that
    learner.step = state["step"]
