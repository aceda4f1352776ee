"""The run loop and its components (RolloutSource, WeightSync, Evaluator) on fakes: a sampler, a
learner and a reward that need no model, no vLLM and no subprocess (tests/fakes.py). What the
end-to-end runs check about the schedule (which weights make each batch, when the sampler
receives new ones, what evals see) is checked here in milliseconds."""

import json

import pytest
from fakes import MESH, FakeLearner, FakeSampler, digits_config, digits_data, tokenizer_in

from engine.data.prompts import write_jsonl
from engine.evaluator import Evaluator
from engine.loop import RunLoop
from engine.metrics import MetricsLogger, read_metrics
from engine.rewards.errors import RewardErrorsExceeded
from engine.rollout.log import RolloutLog
from engine.rollout.source import RolloutSource
from engine.sync.weights import LogprobGapError, WeightSync


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tokenizer_in(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return digits_data(tmp_path_factory.mktemp("data"))


_cfg = digits_config


def _loop(cfg, tokenizer, tmp_path, sampler=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    sampler = sampler or FakeSampler(tokenizer)
    learner = FakeLearner()
    source = RolloutSource(cfg, tokenizer, sampler, driver=True, stop_ids=[tokenizer.eos_token_id], clock0=0.0)
    sync = WeightSync(cfg, learner, MESH, sampler=sampler, engine=sampler, probe_prompts=source.eval_ids,
                      stop_ids=source.stop_ids)
    evaluator = Evaluator(cfg, source, sync, MESH)
    loop = RunLoop(cfg, tmp_path, MESH, learner=learner, source=source, sync=sync, evaluator=evaluator,
                   logger=MetricsLogger(tmp_path, tensorboard=False), close_sampler=sampler.close,
                   rollout_log=RolloutLog(tmp_path, cfg.log.rollouts, tokenizer))
    return loop, sampler, learner


def _steps(tmp_path):
    rows = read_metrics(tmp_path / "metrics.jsonl")
    return {r["step"]: r for r in rows if r["step"] > 0}


@pytest.mark.parametrize("s, overlap, versions, pushes", [
    (1, False, [0, 1, 2, 3], 4),
    (2, False, [0, 0, 2, 2], 2),
    (2, True, [0, 0, 2, 2], 2),
    ("offline", False, [0, 0, 0, 0], 0),
])  # fmt: skip
def test_each_batch_is_made_with_the_weights_of_the_last_sync(data, tokenizer, tmp_path, s, overlap, versions, pushes):
    cfg = _cfg(data, sync_every=s, overlap=overlap)
    loop, sampler, learner = _loop(cfg, tokenizer, tmp_path)
    summary = loop.run()
    steps = _steps(tmp_path)
    assert [steps[t]["rollout/version"] for t in (1, 2, 3, 4)] == versions
    assert [steps[t]["rollout/staleness"] for t in (1, 2, 3, 4)] == [t - 1 - v for t, v in zip((1, 2, 3, 4), versions)]
    # the eval at the last step swaps the learner's weights in and the sampler's back when stale
    # (offline only: step 4 is a sync step for s = 1 and 2)
    assert len(sampler.pushes) == pushes + (2 if s == "offline" else 0)
    if s == 2:
        assert [float(p["w"]) for p in sampler.pushes] == [2.0, 4.0]
    if s == "offline":
        assert [float(p["w"]) for p in sampler.pushes] == [4.0, 0.0]  # eval swap in, the seed's weights back
        assert any("time/offline_generate" in r for r in read_metrics(tmp_path / "metrics.jsonl"))
        # probe, step 0 (the seed's baseline responses + its eval), the 4 steps' pool, the final eval
        assert len(sampler.generates) == 1 + 2 + 4 + 1
    assert learner.step == 4 and summary.final_checkpoint.endswith("final") and sampler.closed
    assert all(steps[t]["time/sync"] >= 0 and "time/train" in steps[t] for t in steps)
    assert 0 in summary.eval_accuracy and 4 in summary.eval_accuracy


def test_parity_gap_is_measured_on_fresh_batches_and_a_broken_sampler_stops_before_the_update(
        data, tokenizer, tmp_path):
    cfg = _cfg(data, sync_every=2)
    loop, _, learner = _loop(cfg, tokenizer, tmp_path / "ok")
    loop.run()
    steps = _steps(tmp_path / "ok")
    assert "parity/batch_gap" not in steps[2] and steps[3]["parity/batch_gap"] == 0.0  # step 3: right after a sync
    assert steps[4]["sync/logprob_gap"] == 0.0  # the last sync gets the probe

    broken = FakeSampler(tokenizer, logprob_shift=0.05)
    loop, _, learner = _loop(cfg, tokenizer, tmp_path / "broken", sampler=broken)
    with pytest.raises(LogprobGapError, match=r"5\.00e-02.*max_logprob_gap"):
        loop.run()  # the step-0 probe: the sampler does not hold the seed's weights
    assert learner.step == 0


def test_batch_check_raises_before_the_learner_updates(data, tokenizer, tmp_path):
    broken = FakeSampler(tokenizer, logprob_shift=0.01, shift_after_pushes=1)  # wrong after its first push
    loop, sampler, learner = _loop(_cfg(data, sync_every=1), tokenizer, tmp_path, sampler=broken)
    with pytest.raises(LogprobGapError, match="on the batch of optimizer step 2"):
        loop.run()
    assert learner.step == 1 and float(learner.w) == 1.0


def test_eval_swaps_the_learners_weights_in_and_the_samplers_back(data, tokenizer, tmp_path):
    cfg = _cfg(data, sync_every=4, **{"eval.every": 2})
    loop, sampler, learner = _loop(cfg, tokenizer, tmp_path)
    loop.run()
    seen = [g["weights"] for g in sampler.generates]
    # step 2's eval: pushes 1 (learner, w=2) and 2 (the seed's back); step 4: the sync itself (no swap)
    assert [float(p["w"]) for p in sampler.pushes] == [2.0, 0.0, 4.0]
    assert seen.count(1) >= 1  # generation with the swapped-in weights happened (the eval)
    assert loop.sync.version == 4


def test_source_checkpoint_state_is_the_learners_position_not_the_producers(data, tokenizer, tmp_path):
    cfg = _cfg(data, sync_every=1)

    def source():
        return RolloutSource(cfg, tokenizer, FakeSampler(tokenizer), driver=True, stop_ids=[0], clock0=0.0)

    def prompts(produced):
        return [r.prompt_index for r in produced.batch.rollouts]

    run = source()
    run.produce(1, 0)
    second = prompts(run.produce(2, 0))  # the producer is a step ahead of the learner
    resumed = source()
    resumed.restore(run.state_at(1), step=1)  # a checkpoint after step 1 holds the position after batch 1
    assert prompts(resumed.produce(2, 0)) == second
    run.forget_before(2)
    assert run.state_at(2).task_streams == resumed.state_at(2).task_streams


def test_weight_sync_remembers_the_samplers_weights_only_when_it_can_be_stale(data, tokenizer):
    learner = FakeLearner()
    assert not WeightSync(_cfg(data, sync_every=1), learner, MESH, sampler=None, engine=None, probe_prompts=[],
                          stop_ids=[]).remember
    assert WeightSync(_cfg(data, sync_every=3), learner, MESH, sampler=None, engine=None, probe_prompts=[],
                      stop_ids=[]).remember  # the last step's eval is not on a sync
    assert WeightSync(_cfg(data, sync_every="offline"), learner, MESH, sampler=None, engine=None, probe_prompts=[],
                      stop_ids=[]).remember


def test_training_runs_with_the_engine_quiet(data, tokenizer, tmp_path):
    cfg = _cfg(data, sync_every=1, steps=1)
    loop, sampler, learner = _loop(cfg, tokenizer, tmp_path)
    depths = []
    original = learner.backward

    def backward(batch, **kw):
        depths.append(sampler.quiet_depth)
        return original(batch, **kw)

    learner.backward = backward
    loop.run()
    assert depths == [1] and sampler.quiet_depth == 0


def test_rollout_logs_hold_what_was_sampled(data, tokenizer, tmp_path):
    cfg = _cfg(data, sync_every=2, **{"log.rollouts": 2})
    loop, sampler, _ = _loop(cfg, tokenizer, tmp_path)
    loop.run()
    logs = sorted(p.name for p in (tmp_path / "rollouts").iterdir())
    assert logs == ["step_000002.jsonl", "step_000004.jsonl"]
    rows = [json.loads(x) for x in (tmp_path / "rollouts" / "step_000004.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 4 and {r["version"] for r in rows} == {2} and {r["task"] for r in rows} == {"digits"}
    for r in rows:
        assert tokenizer.encode(r["prompt"], add_special_tokens=False) == r["prompt_ids"]
        assert r["response"].startswith(" Ans ") and r["reward"] in (0.0, 1.0)
        assert r["behaviour_logprobs"] == [-1.0] * len(r["response_ids"])


def test_a_task_whose_rewards_all_error_stops_the_run(data, tokenizer, tmp_path):
    cfg = _cfg(data, **{"tasks.digits.reward": "fakes:failing_reward", "reward.max_error_steps": 2,
                        "tasks.digits.eval_data": None})
    loop, _, learner = _loop(cfg, tokenizer, tmp_path)
    with pytest.raises(RewardErrorsExceeded, match=r"task 'digits'.*2 consecutive steps.*failing_reward returned None"):
        loop.run()
    assert learner.step == 1  # step 1 trained on nothing, step 2's rewards stopped the run


def test_offline_dpo_on_preference_rows_scores_the_reference_once(data, tokenizer, tmp_path):
    rows = [{"prompt": f"Q: {k}+1?\nA:", "chosen": f" {k + 1}", "rejected": f" {k + 2}"} for k in range(5)]
    write_jsonl(tmp_path / "prefs.jsonl", rows)
    cfg = _cfg(data, objective="dpo", sync_every="offline", tasks={}, steps=3,
               **{"rollout.prompts_per_step": 2, "data.preferences": str(tmp_path / "prefs.jsonl"),
                  "data.eval": str(data / "eval.jsonl"), "data.train": "unused"})
    loop, sampler, learner = _loop(cfg, tokenizer, tmp_path / "run")
    scored = []
    score = learner.score
    learner.score = lambda seqs, reference=False: scored.append((len(seqs), reference)) or score(seqs, reference)
    loop.run()
    assert scored[-1] == (10, True)  # every distinct (prompt, response) of the run, by the reference, once
    pairs = [p for b in learner.batches for p in b.parts[0].pairs]
    assert len(pairs) == 3 * 2 and all(p.chosen.ref_logprobs == [-1.0] * len(p.chosen.response_ids) for p in pairs)
    assert len(sampler.generates) == 1 + 1 + 1  # probe, step-0 eval, final eval: nothing is sampled to train
