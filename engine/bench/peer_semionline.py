"""semionline's side of `semionline bench peer`: a real `semionline train` run on a `PeerWork`, as a
subprocess, and its per-step phase seconds read back from the run's metrics.jsonl.

    config = write_config(work, Path("/tmp/x/semionline.yaml"))
    timings = run_semionline(work, config, run_dir, overrides=["sync_every=2", "overlap=true"])

The config selects exactly the work TRL does (engine/bench/peer_trl.py): same model, prompts,
prompts x samples, temperature / top-p, max tokens, AdamW settings, micro-batch size, no KL
(grpo.kl_coef 0), advantages r - mean(r), token-level loss, every group trained (no dropping of
uniform groups), and an eval as small as the config allows (one prompt, one token) whose seconds
are taken out of the step time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from engine.bench.peer_stats import RunTimings
from engine.bench.peer_work import PeerWork

REPO = Path(__file__).resolve().parents[2]
# Both sides run offline: no hub look-ups or telemetry threads during the timed steps.
QUIET_ENV = {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "1"}


def child_env() -> dict[str, str]:
    return {**os.environ, **QUIET_ENV}
# metrics.jsonl key -> phase name of the peer tables (engine/loop.py writes them every step)
PHASE_KEYS = {"generate": "time/generate", "reward": "time/reward", "train": "time/train",
              "sync": "time/sync", "idle": "time/idle"}


def grpo_config(work: PeerWork) -> dict:
    """The run config (as a YAML tree) for GRPO on `work`."""
    return {
        "objective": "grpo", "model": work.model, "steps": work.steps, "seed": work.seed,
        "sync_every": 1, "overlap": False,
        "data": {"train": work.data, "eval": work.data, "prompt_template": work.prompt_template,
                 "chat_template": work.chat_template},
        "rollout": {"prompts_per_step": work.prompts_per_step, "samples_per_prompt": work.samples_per_prompt,
                    "temperature": work.temperature, "top_p": work.top_p, "max_tokens": work.max_tokens},
        "optim": {"lr": work.lr, "adam_eps": work.adam_eps, "betas": list(work.betas),
                  "weight_decay": work.weight_decay, "grad_clip": work.grad_clip, "warmup_steps": 0},
        "grpo": {"kl_coef": 0.0, "clip_eps": 0.2, "std_normalize": False, "reduction": "token",
                 "drop_uniform_groups": False},
        "learner": {"micro_batch_size": work.micro_batch_size},
        "sampler": {"max_model_len": work.max_model_len},
        "eval": {"every": 0, "max_prompts": 1, "samples": 1, "max_tokens": 1},
    }  # fmt: skip


def dpo_config(work: PeerWork) -> dict:
    """The run config for offline DPO on the preference rows of `work` (reference log-probs are
    computed once, before step 1, by semionline itself)."""
    prompts = work.prompts or work.data
    return {
        "objective": "dpo", "model": work.model, "steps": work.steps, "seed": work.seed, "sync_every": "offline",
        "data": {"train": prompts, "eval": prompts, "preferences": work.data,
                 "prompt_template": work.prompt_template, "chat_template": work.chat_template},
        "rollout": {"prompts_per_step": work.prompts_per_step, "max_tokens": work.max_tokens},
        "optim": {"lr": work.lr, "adam_eps": work.adam_eps, "betas": list(work.betas),
                  "weight_decay": work.weight_decay, "grad_clip": work.grad_clip, "warmup_steps": 0},
        "dpo": {"beta": work.dpo_beta, "nll_weight": 0.0, "length_normalize": False},
        "learner": {"micro_batch_size": work.micro_batch_size},
        "sampler": {"max_model_len": work.max_model_len},
        "eval": {"every": 0, "max_prompts": 1, "samples": 1, "max_tokens": 1},
    }  # fmt: skip


def write_config(work: PeerWork, path: Path) -> Path:
    if work.objective == "dpo":
        reason = semionline_dpo_status()
        if reason:
            raise ValueError(reason)
    tree = grpo_config(work) if work.objective == "grpo" else dpo_config(work)
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


def semionline_dpo_status() -> str | None:
    """None when `semionline train` takes preference rows ({"prompt", "chosen", "rejected"}) for
    offline DPO (data.preferences); else why the semionline side of the DPO bench is not run."""
    from engine.config import DataConfig

    if "preferences" in DataConfig.model_fields:
        return None
    return ("`semionline train` does not take preference rows yet (no data.preferences key in engine/config.py); "
            "only TRL's DPOTrainer was measured")


def read_steps(metrics_path: Path) -> tuple[list[dict[str, float]], list[int]]:
    """Per optimizer step: phase seconds (step = time/step minus any eval), and response tokens."""
    steps, tokens = [], []
    for line in metrics_path.read_text().splitlines():
        row = json.loads(line)
        if row.get("step", 0) <= 0 or "time/step" not in row:
            continue
        phases = {"step": row["time/step"] - row.get("time/eval", 0.0)}
        phases.update({p: float(row[k]) for p, k in PHASE_KEYS.items() if k in row})
        steps.append(phases)
        tokens.append(int(row.get("rollout/response_tokens", 0)))
    return steps, tokens


def run_semionline(work: PeerWork, config: Path, run_dir: Path, *, label: str, repeat: int,
                   overrides: list[str], timeout_s: float) -> RunTimings:
    """One `semionline train` process; raises RuntimeError with the stderr tail when it fails."""
    cmd = [sys.executable, "-m", "engine.cli", "train", "--config", str(config), "--run-dir", str(run_dir),
           *overrides]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout_s)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} repeat {repeat} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{proc.stderr[-3000:]}")
    steps, tokens = read_steps(run_dir / "metrics.jsonl")
    if len(steps) != work.steps:
        raise RuntimeError(f"{run_dir}/metrics.jsonl: {len(steps)} timed steps, expected {work.steps}")
    return RunTimings(label, repeat, steps, wall, {"response_tokens": tokens, "overrides": overrides})
