"""Training-state checkpoints of a run: where they live, how they are committed, and the
run's own state (save_run / restore_run).

    RUN_DIR/checkpoints/step-000010/     one complete checkpoint (see below)
    RUN_DIR/checkpoints/latest           "step-000010": replaced atomically once that directory is whole
    RUN_DIR/checkpoints/.step-000012.tmp a checkpoint being written (ignored, removed on resume)

A checkpoint directory holds `meta.json` (written last), `run_state.pt` (`RunState`: the
run's step, sampler weight version, prompt-stream position, RNG states, pending rollouts),
the learner's `learner.json`, `model/` and `optim/` (`engine.learner.checkpoint`: every tensor
whole under its Hugging Face name, so it loads at any (tp, pp, dp)), and `sampler/` (the weights
the sampler held, when they are neither the seed's nor the learner's).

Atomicity: every rank writes into the `.tmp` directory; after a barrier rank 0 writes
`meta.json`, renames the directory into place and then replaces `latest`. A run killed at any
point (`kill -9` included) leaves either the previous `latest` or the new one, never a partial
checkpoint under a name `latest` points to. Multi-node runs need RUN_DIR on a shared file system.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from engine.parallel.mesh import Mesh
from engine.rollout.types import RolloutBatch

FORMAT_VERSION = 1


@dataclass
class RunState:
    """The run's part of a checkpoint (pickled with torch.save; small)."""

    step: int  # optimizer steps done
    version: int  # learner step whose weights the sampler holds
    prompt_order: list[int]  # unused since every run is a list of tasks (see task_streams); kept so
    prompt_rng: tuple | None  # older checkpoints still unpickle
    pair_rng: tuple  # the DPO pair builder's random.Random state
    accuracy: dict[int, float]  # step -> held-out accuracy so far
    pending: list[RolloutBatch] = field(default_factory=list)  # rollouts made, not yet trained on (offline)
    torch_rng: list[torch.Tensor] = field(default_factory=list)  # per global rank
    world_size: int = 1
    task_streams: list[tuple] = field(default_factory=list)  # each task's PromptStream state
    baselines: dict = field(default_factory=dict)  # scored tasks: the seed's eval responses (win rates)


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def step_name(step: int) -> str:
    return f"step-{step:06d}"


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run, or None."""
    root = checkpoints_dir(run_dir)
    pointer = root / "latest"
    if not pointer.is_file():
        return None
    path = root / pointer.read_text().strip()
    if not (path / "meta.json").is_file():
        raise FileNotFoundError(
            f"{pointer} names {path.name}, which is not a complete checkpoint (no meta.json)"
        )
    return path


def begin(run_dir: str | Path, step: int, mesh: Mesh) -> Path:
    """Create (rank 0) and return the temporary directory of checkpoint `step` (collective)."""
    tmp = checkpoints_dir(run_dir) / f".{step_name(step)}.tmp"
    if mesh.rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    mesh.barrier()
    return tmp


def commit(run_dir: str | Path, step: int, mesh: Mesh, keep: int, meta: dict) -> Path:
    """Publish checkpoint `step` once every rank has written its part (collective); keep the
    newest `keep` checkpoints."""
    root = checkpoints_dir(run_dir)
    tmp, final = root / f".{step_name(step)}.tmp", root / step_name(step)
    mesh.barrier()
    if mesh.rank == 0:
        _write_synced(
            tmp / "meta.json", json.dumps({"format": FORMAT_VERSION, "step": step, **meta}, indent=1)
        )
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_synced(root / "latest.tmp", final.name)
        os.replace(root / "latest.tmp", root / "latest")
        done = sorted(p for p in root.glob("step-*") if (p / "meta.json").is_file())
        for old in done[:-keep]:
            shutil.rmtree(old)
    mesh.barrier()
    return final


def remove_partial(run_dir: str | Path) -> None:
    """Delete checkpoints a killed run left half-written (rank 0, before resuming)."""
    for tmp in checkpoints_dir(run_dir).glob(".step-*.tmp"):
        shutil.rmtree(tmp)


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def gather_torch_rng(mesh: Mesh) -> list[torch.Tensor]:
    """Every global rank's torch CPU RNG state (collective over the job)."""
    state = torch.get_rng_state()
    if mesh.world_size == 1:
        return [state]
    states: list = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_torch_rng(state: RunState, rank: int, seed: int) -> None:
    """This rank's saved RNG state when the job has the same number of ranks; otherwise a fresh
    seed derived from (seed, step, rank): a new layout cannot replay another layout's streams."""
    if state.world_size == dist.get_world_size() and rank < len(state.torch_rng):
        torch.set_rng_state(state.torch_rng[rank])
    else:
        torch.manual_seed(random.Random(f"{seed}:{state.step}:{rank}").getrandbits(63))


# ----------------------------------------------------------------------------------------------
# A run's whole training state: the learner's, the rollout source's, the sampler's, the evaluator's.


def save_run(run, step: int) -> Path:
    """Checkpoint `run` (an `engine.loop.RunLoop`) after optimizer step `step` (collective; atomic)."""
    import time

    from engine.learner.checkpoint import save_learner_state

    t0 = time.perf_counter()
    tmp = begin(run.run_dir, step, run.mesh)
    save_learner_state(run.learner, tmp)
    torch_rng = gather_torch_rng(run.mesh)
    if run.is_driver:
        data = run.source.state_at(step)  # the producer may be ahead of the learner
        state = RunState(
            step=step, version=run.sync.version, prompt_order=[], prompt_rng=None, pair_rng=data.pair_rng, accuracy=dict(run.accuracy), pending=data.pending, torch_rng=torch_rng,
            world_size=run.mesh.world_size, task_streams=data.task_streams, baselines=dict(run.evaluator.baselines),
        )  # fmt: skip
        torch.save(state, tmp / "run_state.pt")
        run.sync.save(tmp, step)
    meta = {"layout": run.mesh.layout, "objective": run.cfg.objective, "sync_every": run.cfg.sync_every,
            "version": run.sync.version, "seconds": round(time.perf_counter() - t0, 3)}
    return commit(run.run_dir, step, run.mesh, run.cfg.checkpoint.keep, meta)


def restore_run(run, ckpt_dir: Path) -> RunState:
    """Load checkpoint `ckpt_dir` (any layout) into `run` before it starts: learner, data
    position, RNGs, pending rollouts, the evaluator's baselines. Returns the saved state."""
    from engine.learner.checkpoint import load_learner_state
    from engine.rollout.source import SourceState

    state: RunState = torch.load(ckpt_dir / "run_state.pt", weights_only=False)
    load_learner_state(run.learner, ckpt_dir)
    if run.learner.step != state.step:
        raise RuntimeError(f"{ckpt_dir}: learner step {run.learner.step} != run step {state.step}")
    streams = getattr(state, "task_streams", None) or []
    if len(streams) != len(run.source.tasks):
        raise RuntimeError(f"{ckpt_dir}: the checkpoint holds {len(streams)} prompt streams, the run has "
                           f"{len(run.source.tasks)} tasks (a checkpoint of another config, or of a version "
                           "before single-task runs became one-task runs)")
    run.source.restore(SourceState(pair_rng=state.pair_rng, task_streams=streams, pending=list(state.pending)),
                       state.step)
    run.evaluator.baselines = dict(getattr(state, "baselines", None) or {})  # the seed's eval responses
    restore_torch_rng(state, run.mesh.rank, run.cfg.seed)
    return state
