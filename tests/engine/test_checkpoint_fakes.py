"""Training-state checkpoints and exact resume (engine/checkpoint.py, RunLoop.restore,
WeightSync.save/resume) on the fakes of tests/fakes.py: no model, no vLLM, no subprocess.

A run killed after its step-k checkpoint and resumed from it must log the same metrics, train on
the same batches and push the same weights as the run that was never interrupted (the fakes are
deterministic). The learner's own state (engine/learner/checkpoint.py, which needs a real model)
is replaced by a two-number file; its layout-free format is tested with the real learner in
tests/engine/learner/. tests/engine/test_resume.py does the same through the CLI with kill -9 (slow)."""

import json
import random

import pytest
import torch
import torch.distributed as dist
from fakes import MESH, FakeLearner, FakeSampler, digits_config, digits_data, digits_rows, tokenizer_in

from engine import checkpoint
from engine.config import RunConfig
from engine.data.prompts import write_jsonl
from engine.evaluator import Evaluator
from engine.loop import RunLoop
from engine.metrics import MetricsLogger, read_metrics
from engine.rollout.source import RolloutSource
from engine.sync.weights import WeightSync


class Killed(Exception):
    """Stands for kill -9 in the middle of a step."""


@pytest.fixture(scope="module")
def process_group():
    """A one-process default group, as Mesh.init makes for a plain `python` run (restore reads the
    job's world size from it)."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if created:
        dist.destroy_process_group()


@pytest.fixture(autouse=True)
def fake_learner_state(monkeypatch):
    """The learner's part of a checkpoint for FakeLearner: its step and its one weight. The seed's
    weights (the reference) are read the fake's way."""
    import engine.learner.checkpoint as learner_checkpoint

    def save(learner, out_dir):
        (out_dir / "learner.json").write_text(json.dumps({"step": learner.step, "w": float(learner.w)}))

    def load(learner, ckpt_dir):
        state = json.loads((ckpt_dir / "learner.json").read_text())
        learner.step, learner.w = state["step"], torch.full((1,), state["w"])

    monkeypatch.setattr(learner_checkpoint, "save_learner_state", save)
    monkeypatch.setattr(learner_checkpoint, "load_learner_state", load)
    monkeypatch.setattr("engine.sync.weights.iter_hf_weights", lambda model: model.hf_weights())


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tokenizer_in(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = digits_data(tmp_path_factory.mktemp("data"))
    write_jsonl(d / "other.jsonl", digits_rows()[4:8])
    return d


def _cfg(data, **over) -> RunConfig:
    """`digits_config` with a checkpoint after every step."""
    return digits_config(data, **{"checkpoint.every": 1, **over})


def _loop(cfg, tokenizer, run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    sampler = FakeSampler(tokenizer)
    learner = FakeLearner()
    learner.reference = FakeLearner()  # the frozen seed (w = 0)
    source = RolloutSource(cfg, tokenizer, sampler, driver=True, stop_ids=[tokenizer.eos_token_id], clock0=0.0)
    sync = WeightSync(cfg, learner, MESH, sampler=sampler, engine=sampler, probe_prompts=source.eval_ids,
                      stop_ids=source.stop_ids)
    evaluator = Evaluator(cfg, source, sync, MESH)
    return RunLoop(cfg, run_dir, MESH, learner=learner, source=source, sync=sync, evaluator=evaluator,
                   logger=MetricsLogger(run_dir, tensorboard=False), close_sampler=sampler.close)


def _comparable(run_dir) -> list[tuple[int, dict]]:
    """Every logged row in order, without wall-clock values."""
    return [(r["step"], {k: v for k, v in r.items() if not k.startswith("time/") and k != "sync/seconds"})
            for r in read_metrics(run_dir / "metrics.jsonl")]


def _prompts(learner) -> list[list[int]]:
    return [[r.prompt_index for r in b.rollouts] for b in learner.batches]


def _kill_during(loop, step: int) -> None:
    """Run `loop` until the training pass of `step`, then die there (after the previous step's
    checkpoint was committed)."""
    backward = loop.learner.backward

    def dying(batch, **kw):
        if batch.step == step:
            raise Killed
        return backward(batch, **kw)

    loop.learner.backward = dying
    with pytest.raises(Killed):
        loop.run()
    loop.logger.close()


def _resume(cfg, tokenizer, run_dir) -> RunLoop:
    """What `semionline train --resume RUN_DIR` does (engine/cli.py:_restore), on the fakes."""
    loop = _loop(cfg, tokenizer, run_dir)
    checkpoint.remove_partial(run_dir)
    ckpt = checkpoint.latest_checkpoint(run_dir)
    loop.restore(ckpt)
    return loop


@pytest.mark.parametrize("over, killed_in, resumed_pushes", [
    ({"sync_every": 1}, 4, [3.0, 4.0]),  # the sampler held the learner's step-3 weights: pushed, probed
    ({"sync_every": 2, "overlap": True}, 4, [2.0, 4.0]),  # it held step 2's: from checkpoint/sampler/
    ({"sync_every": 3, "eval.every": 2}, 2, [2.0, 0.0, 3.0, 4.0, 3.0]),  # the seed's: kept for the eval swap
    ({"sync_every": "offline"}, 3, [4.0, 0.0]),  # the rollouts not yet trained on are in the checkpoint
    ({"sync_every": 2, "objective": "dpo"}, 2, [2.0, 4.0]),  # the pair RNG's position
])  # fmt: skip
def test_a_run_resumed_from_its_checkpoint_matches_the_uninterrupted_run(
        data, tokenizer, tmp_path, process_group, over, killed_in, resumed_pushes):
    cfg = _cfg(data, **over)
    whole = _loop(cfg, tokenizer, tmp_path / "whole")
    whole_summary = whole.run()

    killed = _loop(cfg, tokenizer, tmp_path / "killed")
    _kill_during(killed, killed_in)
    ckpts = tmp_path / "killed" / "checkpoints"
    assert (ckpts / "latest").read_text() == checkpoint.step_name(killed_in - 1)
    # what a kill leaves besides the checkpoint: a half-written next one, rows logged after it, a torn line
    (ckpts / f".{checkpoint.step_name(killed_in)}.tmp" / "model").mkdir(parents=True)
    with open(tmp_path / "killed" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": killed_in, "reward/mean": -1.0}) + '\n{"step": ')

    resumed = _resume(cfg, tokenizer, tmp_path / "killed")
    assert not list(ckpts.glob(".step-*.tmp"))
    assert resumed.start_step == killed_in - 1 and resumed.learner.step == killed_in - 1
    assert resumed.evaluator.baselines == whole.evaluator.baselines and resumed.evaluator.baselines
    summary = resumed.run()

    assert _comparable(tmp_path / "killed") == _comparable(tmp_path / "whole")
    assert summary.eval_accuracy == whole_summary.eval_accuracy and {0, 4} <= set(summary.eval_accuracy)
    assert _prompts(resumed.learner) == _prompts(whole.learner)[killed_in - 1:]
    assert float(resumed.learner.w) == float(whole.learner.w) and resumed.learner.step == 4
    assert resumed.sync.version == whole.sync.version
    whole_pushes = [float(p["w"]) for p in whole.sync.sampler.pushes]
    pushes = [float(p["w"]) for p in resumed.sync.sampler.pushes]
    assert pushes == whole_pushes[len(whole_pushes) - len(pushes):]
    if over.get("objective") != "dpo":  # DPO steps without a pair leave w alone
        assert pushes == resumed_pushes


def test_checkpoints_are_committed_with_meta_the_stale_samplers_weights_and_the_newest_kept(
        data, tokenizer, tmp_path, process_group):
    cfg = _cfg(data, sync_every=2, **{"checkpoint.keep": 2})
    loop = _loop(cfg, tokenizer, tmp_path)
    loop.run()
    ckpts = tmp_path / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step-000003", "step-000004"]
    assert checkpoint.latest_checkpoint(tmp_path) == ckpts / "step-000004"
    meta = json.loads((ckpts / "step-000003" / "meta.json").read_text())
    assert meta["format"] == checkpoint.FORMAT_VERSION and meta["step"] == 3 and meta["version"] == 2
    assert (meta["layout"], meta["objective"], meta["sync_every"]) == ("tp1-pp1-dp1", "grpo", 2)
    # step 3: the sampler holds step 2's weights, which no other file has; step 4: the learner's own
    from safetensors.torch import load_file

    assert float(load_file(ckpts / "step-000003" / "sampler" / "model.safetensors")["w"]) == 2.0
    assert not (ckpts / "step-000004" / "sampler").exists()
    state = torch.load(ckpts / "step-000003" / "run_state.pt", weights_only=False)
    assert (state.step, state.version, state.world_size, len(state.task_streams)) == (3, 2, 1, 1)
    assert state.accuracy == {0: loop.accuracy[0]} and state.pending == []
    assert json.loads((ckpts / "step-000003" / "learner.json").read_text()) == {"step": 3, "w": 3.0}


def test_begin_and_commit_replace_leftovers_of_the_same_step(tmp_path):
    tmp = checkpoint.begin(tmp_path, 5, MESH)
    (tmp / "junk").write_text("from a killed attempt")
    tmp = checkpoint.begin(tmp_path, 5, MESH)  # the killed attempt's directory is started afresh
    assert tmp.name == ".step-000005.tmp" and list(tmp.iterdir()) == []
    (tmp / "part").write_text("1")
    first = checkpoint.commit(tmp_path, 5, MESH, keep=3, meta={"note": "a"})
    tmp = checkpoint.begin(tmp_path, 5, MESH)
    (tmp / "part").write_text("2")
    again = checkpoint.commit(tmp_path, 5, MESH, keep=3, meta={"note": "b"})
    assert again == first and (again / "part").read_text() == "2"
    assert json.loads((again / "meta.json").read_text()) == {"format": 1, "step": 5, "note": "b"}
    assert not (tmp_path / "checkpoints" / "latest.tmp").exists()
    for step in (6, 7, 8):
        checkpoint.begin(tmp_path, step, MESH)
        checkpoint.commit(tmp_path, step, MESH, keep=3, meta={})
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == [
        "step-000006", "step-000007", "step-000008"]
    assert checkpoint.latest_checkpoint(tmp_path).name == "step-000008"


def test_latest_checkpoint_none_before_the_first_and_an_error_naming_an_incomplete_one(tmp_path):
    assert checkpoint.latest_checkpoint(tmp_path) is None
    checkpoint.begin(tmp_path, 1, MESH)
    assert checkpoint.latest_checkpoint(tmp_path) is None  # a checkpoint being written is not one
    checkpoint.commit(tmp_path, 1, MESH, keep=2, meta={})
    (tmp_path / "checkpoints" / "step-000001" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"latest names step-000001, which is not a complete checkpoint"):
        checkpoint.latest_checkpoint(tmp_path)
    (tmp_path / "checkpoints" / "latest").write_text("step-000009\n")  # pruned or never written
    with pytest.raises(FileNotFoundError, match="step-000009"):
        checkpoint.latest_checkpoint(tmp_path)


def test_restore_refuses_a_checkpoint_of_another_run(data, tokenizer, tmp_path, process_group):
    cfg = _cfg(data, steps=2)
    _loop(cfg, tokenizer, tmp_path / "run").run()
    ckpt = checkpoint.latest_checkpoint(tmp_path / "run")
    two_tasks = _cfg(data, steps=2, **{"tasks.more": {"data": str(data / "other.jsonl"),
                                                       "reward": "fakes:digit_reward"}})
    with pytest.raises(RuntimeError, match="holds 1 prompt streams, the run has 2 tasks"):
        _loop(two_tasks, tokenizer, tmp_path / "other").restore(ckpt)

    learner_json = ckpt / "learner.json"  # a learner state that is not this step's
    learner_json.write_text(json.dumps({"step": 1, "w": 1.0}))
    with pytest.raises(RuntimeError, match=r"step-000002: learner step 1 != run step 2"):
        _loop(cfg, tokenizer, tmp_path / "again").restore(ckpt)


def test_torch_rng_is_replayed_at_the_same_world_size_and_reseeded_at_another(process_group):
    torch.manual_seed(123)
    saved = checkpoint.gather_torch_rng(MESH)
    assert len(saved) == 1 and torch.equal(saved[0], torch.get_rng_state())
    expected = torch.rand(4)
    state = checkpoint.RunState(step=7, version=6, prompt_order=[], prompt_rng=None, pair_rng=random.Random(0).getstate(),
                                accuracy={}, torch_rng=saved, world_size=1)
    torch.manual_seed(999)
    checkpoint.restore_torch_rng(state, rank=0, seed=1)
    assert torch.equal(torch.rand(4), expected)

    state.world_size = 2  # saved by a job of another size: a fresh stream per (seed, step, rank)
    draws = {}
    for rank in (0, 1, 0):
        checkpoint.restore_torch_rng(state, rank=rank, seed=1)
        draws.setdefault(rank, []).append(torch.rand(4))
    assert torch.equal(draws[0][0], draws[0][1]) and not torch.equal(draws[0][0], draws[1][0])
    assert not torch.equal(draws[0][0], expected)
    checkpoint.restore_torch_rng(state, rank=0, seed=2)
    assert not torch.equal(torch.rand(4), draws[0][0])


def test_the_resume_check_of_the_samplers_weights_stays_out_of_the_next_steps_metrics(
        data, tokenizer, tmp_path, process_group):
    """parity_check=batch: the interrupted run made no probe after its last sync, so the check made
    on resume (a probe) must not show up in the resumed step's sync/logprob_gap_max."""
    cfg = _cfg(data, **{"sampler.max_logprob_gap": 0.1})

    def shifted(run_dir):
        loop = _loop(cfg, tokenizer, run_dir)
        loop.sync.sampler.logprob_shift = 0.02  # every sampled token 0.02 off the learner's log-prob
        return loop

    shifted(tmp_path / "whole").run()
    killed = shifted(tmp_path / "killed")
    _kill_during(killed, 3)
    loop = shifted(tmp_path / "killed")
    checkpoint.remove_partial(tmp_path / "killed")
    loop.restore(checkpoint.latest_checkpoint(tmp_path / "killed"))
    loop.run()
    whole, resumed = dict(_comparable(tmp_path / "whole")), dict(_comparable(tmp_path / "killed"))
    assert resumed[3].get("sync/logprob_gap_max") == whole[3].get("sync/logprob_gap_max")
    assert resumed == whole
