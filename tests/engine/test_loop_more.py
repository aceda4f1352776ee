"""More of the run loop's components on the fakes of tests/fakes.py (no model, no vLLM, no
subprocess): the sweep's step-0 eval cache, the offline rollout pool file, per-rank times, the
probe for a batch no training pass saw, WeightSync's push variants and training context, the
overlap pipeline's edge cases, and the metrics file a resumed run truncates."""

import contextlib
import json
import queue
import threading
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
from fakes import (
    MESH,
    FakeLearner,
    FakeSampler,
    digits_config,
    digits_data,
    digits_rows,
    fake_loop,
    tokenizer_in,
)

from engine.data.prompts import write_jsonl
from engine.evaluator import Evaluator
from engine.loop import RANK_TIMES
from engine.metrics import MetricsLogger, read_metrics, truncate_metrics
from engine.overlap import Produced, RolloutPipeline
from engine.rollout.offline import cached_pool, pool_key
from engine.rollout.types import RolloutBatch
from engine.sync.weights import WeightSync


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return tokenizer_in(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = digits_data(tmp_path_factory.mktemp("data"))
    write_jsonl(d / "unanswerable.jsonl", [{**r, "answer": "never"} for r in digits_rows()])  # every reward 0.0
    return d


_cfg = digits_config


_loop = fake_loop


def _rows(run_dir, step):
    out = {}
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if r["step"] == step:
            out.update({k: v for k, v in r.items() if not k.startswith("time/") and k != "sync/seconds"})
    return out


def _prompts(learner):
    return [[(r.prompt_index, r.text, r.reward) for r in b.rollouts] for b in learner.batches]


@pytest.fixture(scope="module")
def process_group():
    """A one-process default group, as Mesh.init makes for a plain `python` run."""
    created = not dist.is_initialized()
    if created:
        dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    if created:
        dist.destroy_process_group()


# -- the evaluator's step-0 cache (a sweep's runs share the seed's evaluation) ---------------------


def test_a_sweeps_second_run_takes_the_seeds_eval_from_the_cache(data, tokenizer, tmp_path):
    cache: dict = {}
    cfg = _cfg(data, steps=1)
    first = _loop(cfg, tokenizer, tmp_path / "a", step0_cache=cache)
    first.run()
    assert list(cache) == [first.evaluator.step0_key()] and first.evaluator.baselines
    second = _loop(_cfg(data, steps=1, sync_every=2), tokenizer, tmp_path / "b", step0_cache=cache)
    second.run()
    # first: probe, the seed's baseline responses (eval seed + 1), its eval, step 1's rollouts, the
    # last sync's probe, the final eval; second: neither the baselines nor the seed's eval again
    assert [(g["n"], g["seed"]) for g in first.sync.sampler.generates] == [(1, 0), (1, 1), (1, 0), (4, 101), (1, 1),
                                                                             (1, 0)]
    assert [(g["n"], g["seed"]) for g in second.sync.sampler.generates] == [(1, 0), (4, 101), (1, 0)]
    assert second.evaluator.baselines == first.evaluator.baselines
    assert second.evaluator.baselines is not cache[first.evaluator.step0_key()][1]  # a copy
    step0 = {k: v for k, v in _rows(tmp_path / "a", 0).items() if k.startswith("eval/")}
    assert step0 and step0 == {k: v for k, v in _rows(tmp_path / "b", 0).items() if k.startswith("eval/")}
    assert second.accuracy[0] == first.accuracy[0]


def test_step0_key_depends_on_what_the_seeds_eval_depends_on(data, tmp_path):
    def key(**over):
        cfg = _cfg(data, **over)
        return Evaluator(cfg, SimpleNamespace(stop_ids=[]), SimpleNamespace(sampler=None), MESH).step0_key()

    base = key()
    assert key(sync_every=3, steps=9, **{"rollout.prompts_per_step": 5}) == base  # training settings: shared
    assert key(**{"eval.max_tokens": 6}) != base
    assert key(seed=1) != base and key(seed=1, **{"eval.seed": 0}) == key(**{"eval.seed": 0})
    assert key(**{"tasks.digits.eval_data": str(data / "train.jsonl")}) != base
    assert key(model=str(tmp_path / "m")) != base
    assert json.loads(base)["model"].endswith("unused")  # resolved: the same seed from another cwd


# -- the offline rollout pool file ---------------------------------------------------------------


def test_pool_key_follows_the_seed_weights_and_the_sampling_not_the_eval(data, tmp_path):
    model = tmp_path / "seed"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-1")

    def key(**over):
        return pool_key(_cfg(data, model=str(model), sync_every="offline", **over))

    base = key()
    assert key(**{"eval.max_tokens": 3}) == base
    assert key(steps=5) != base and key(**{"rollout.temperature": 0.5}) != base
    (model / "model.safetensors").write_bytes(b"weights-2")
    assert key() != base


def test_cached_pool_is_made_once_per_key(tmp_path, capsys):
    made = []

    def make(tag):
        def inner():
            made.append(tag)
            return [tag, {"rows": [1, 2]}]
        return inner

    path = tmp_path / "pool.pt"
    assert cached_pool(path, "k1", make("a")) == ["a", {"rows": [1, 2]}] and path.is_file()
    assert cached_pool(path, "k1", make("b")) == ["a", {"rows": [1, 2]}]  # loaded, not made
    assert made == ["a"] and f"loaded {path}" in capsys.readouterr().out
    assert cached_pool(path, "k2", make("c")) == ["c", {"rows": [1, 2]}]  # other settings: made again
    assert "made for other settings" in capsys.readouterr().out
    assert cached_pool(path, "k2", make("d")) == ["c", {"rows": [1, 2]}] and made == ["a", "c"]
    assert [p.name for p in tmp_path.iterdir()] == ["pool.pt"]  # written atomically: no temp file left


def test_offline_runs_naming_one_pool_file_share_the_seeds_rollouts(data, tokenizer, tmp_path):
    cfg = _cfg(data, sync_every="offline", offline_rollouts=str(tmp_path / "pool.pt"))
    first = _loop(cfg, tokenizer, tmp_path / "a")
    first.run()
    second = _loop(cfg, tokenizer, tmp_path / "b")
    second.run()
    # the second run sampled no training rollouts: only its probe, step-0 eval (+ baselines), final eval
    assert len(first.sync.sampler.generates) == 1 + 2 + 4 + 1
    assert len(second.sync.sampler.generates) == 1 + 2 + 1
    assert _prompts(second.learner) == _prompts(first.learner) and len(first.learner.batches) == 4
    assert all(b.version == 0 for b in second.learner.batches)


# -- the loop ------------------------------------------------------------------------------------


def test_under_torchrun_each_ranks_phase_times_are_logged(data, tokenizer, tmp_path, monkeypatch, process_group):
    two = SimpleNamespace(**{**vars(MESH), "world_size": 2})
    gathered = []

    def all_gather(obj, mesh):  # rank 1 reports times 1 s longer than the driver's
        gathered.append(obj)
        return [obj, {k: v + 1.0 for k, v in obj.items()}]

    monkeypatch.setattr("engine.loop.all_gather_objects", all_gather)
    cfg = _cfg(data, steps=2)
    _loop(cfg, tokenizer, tmp_path, mesh=two).run()
    rows = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] > 0]
    assert [r["step"] for r in rows] == [1, 2] and len(gathered) == 2
    assert set(gathered[0]) == {"time/train", "time/sync", "time/idle", "time/step"}  # no eval at step 1
    assert set(gathered[1]) == set(RANK_TIMES)
    for row in rows:
        for k in gathered[row["step"] - 1]:
            assert row[f"rank0/{k}"] == row[k] and row[f"rank1/{k}"] == pytest.approx(row[k] + 1.0)


def test_a_fresh_batch_no_training_pass_saw_gets_the_probe_outside_training(data, tokenizer, tmp_path):
    # every reward 0 and uniform groups dropped: the learner skips every step, so no training
    # pass measures the sampler right after a sync
    cfg = _cfg(data, **{"tasks.digits.data": str(data / "unanswerable.jsonl"), "grpo.drop_uniform_groups": True})
    loop = _loop(cfg, tokenizer, tmp_path)
    probes = []
    probe_gap = loop.sync.probe_gap

    def recording(step):
        probes.append((step, loop.sync.sampler.quiet_depth))
        return probe_gap(step)

    loop.sync.probe_gap = recording
    loop.run()
    # step 0: the seed; steps 2-4: batches sampled right after a sync (step 1's is the seed's);
    # step 4 once more: the run's last sync
    assert probes == [(0, 0), (2, 0), (3, 0), (4, 0), (4, 0)]
    rows = {r["step"]: r for r in read_metrics(tmp_path / "metrics.jsonl") if r["step"] > 0}
    assert "sync/logprob_gap" not in rows[1] and all(rows[t]["sync/logprob_gap"] == 0.0 for t in (2, 3, 4))
    assert loop.learner.step == 4 and float(loop.learner.w) == 0.0


# -- WeightSync ----------------------------------------------------------------------------------


def test_a_bfloat16_sampler_gets_half_the_bytes_and_keeps_them(data, tokenizer):
    sampler = FakeSampler(tokenizer)
    learner = FakeLearner()
    learner.w += 1.5
    cfg = _cfg(data, sync_every=2, **{"sampler.dtype": "bfloat16"})
    sync = WeightSync(cfg, learner, MESH, sampler=sampler, engine=None, probe_prompts=[], stop_ids=[])
    out = sync.push(remember=True)
    assert sampler.pushes[0]["w"].dtype == torch.bfloat16 and float(sampler.pushes[0]["w"]) == 1.5
    assert out["sync/bytes"] == 2.0 and sync.kept["w"].dtype == torch.bfloat16
    fp32 = WeightSync(_cfg(data, sync_every=2), learner, MESH, sampler=FakeSampler(tokenizer), engine=None,
                      probe_prompts=[], stop_ids=[])
    assert fp32.push()["sync/bytes"] == 4.0 and fp32.kept is None


@pytest.mark.parametrize("dp_rank, gathered", [(0, True), (1, False)])
def test_a_rank_without_the_sampler_joins_the_gathers_only_in_the_drivers_replica(data, dp_rank, gathered):
    learner = FakeLearner()
    calls = []
    hf_weights = learner.hf_weights

    def counting():
        for item in hf_weights():
            calls.append(item[0])
            yield item

    learner.hf_weights = counting
    mesh = SimpleNamespace(**{**vars(MESH), "rank": 1 + dp_rank, "dp_rank": dp_rank})
    sync = WeightSync(_cfg(data, sync_every=2), learner, mesh, sampler=None, engine=None, probe_prompts=[],
                      stop_ids=[])
    out = sync.push(remember=True)
    assert out["sync/bytes"] == 0.0 and set(out) == {"sync/bytes", "sync/seconds"}
    assert calls == (["w"] if gathered else [])
    assert {n: float(t) for n, t in sync.kept.items()} == ({"w": 0.0} if gathered else {})


def test_a_shared_engine_gets_the_seeds_weights_before_the_first_probe(data, tokenizer):
    sampler = FakeSampler(tokenizer)
    sampler.pushes.append({"w": torch.full((1,), 7.0)})  # the previous run of the sweep left its weights
    learner = FakeLearner()
    sync = WeightSync(_cfg(data), learner, MESH, sampler=sampler, engine=sampler, probe_prompts=[[1, 2, 3]],
                      stop_ids=[0], shared=True)
    sync.start()
    assert float(sampler.pushes[-1]["w"]) == 0.0 and len(sampler.pushes) == 2
    assert [g["weights"] for g in sampler.generates] == [2]  # the probe sampled with the seed's weights
    assert sync.step_gap()["sync/logprob_gap"] == 0.0
    unshared = FakeSampler(tokenizer)
    WeightSync(_cfg(data), learner, MESH, sampler=unshared, engine=unshared, probe_prompts=[[1, 2, 3]],
               stop_ids=[0]).start()
    assert unshared.pushes == [] and len(unshared.generates) == 1


class _Engine:
    def __init__(self):
        self.events = []

    def sleep(self):
        self.events.append("sleep")

    def wake_up(self):
        self.events.append("wake_up")

    @contextlib.contextmanager
    def quiet(self):
        self.events.append("quiet")
        try:
            yield
        finally:
            self.events.append("loud")


@pytest.mark.parametrize("placement, events", [
    ("resident", ["quiet", "train", "loud"]),
    ("time_sliced", ["sleep", "quiet", "train", "loud", "wake_up"]),
])  # fmt: skip
def test_training_quiets_or_sleeps_the_engine_and_always_wakes_it(data, placement, events):
    engine = _Engine()
    sync = WeightSync(_cfg(data, **{"sampler.placement": placement}), FakeLearner(), MESH, sampler=None,
                      engine=engine, probe_prompts=[], stop_ids=[])
    with sync.training():
        engine.events.append("train")
    assert engine.events == events
    engine.events.clear()
    with pytest.raises(ValueError, match="boom"), sync.training():
        engine.events.append("train")
        raise ValueError("boom")
    assert engine.events == events


def test_training_without_an_engine_on_this_rank_just_trains(data):
    sync = WeightSync(_cfg(data, **{"sampler.placement": "time_sliced"}), FakeLearner(), MESH, sampler=None,
                      engine=None, probe_prompts=[], stop_ids=[])
    ran = []
    with sync.training():
        ran.append(True)
    assert ran == [True]


# -- the overlap pipeline ------------------------------------------------------------------------


def test_a_producer_handing_over_the_wrong_step_is_an_error():
    pipe = RolloutPipeline(lambda step: Produced(RolloutBatch(step=step + 1, version=0, rollouts=[]), {}),
                           overlap=True, max_staleness=0, first_step=1, last_step=2, version=0)
    pipe.start()
    try:
        with pytest.raises(RuntimeError, match="out of order: got step 2, expected 1"):
            pipe.take(1)
    finally:
        pipe.close()


def test_close_waits_for_a_producer_that_is_handing_over_a_batch_and_stops_it():
    made = []

    def produce(step):
        made.append(step)
        return Produced(RolloutBatch(step=step, version=0, rollouts=[]), {})

    class SlowHandOver(queue.Queue):
        """put() waits (outside the pipeline's lock) until released: a producer between batches."""

        def __init__(self):
            super().__init__(maxsize=8)
            self.entered, self.release = threading.Event(), threading.Event()

        def put(self, item, block=True, timeout=None):
            self.entered.set()
            assert self.release.wait(timeout=10)
            super().put(item, block, timeout)

    pipe = RolloutPipeline(produce, overlap=True, max_staleness=5, first_step=1, last_step=50, version=0)
    handover = pipe._queue = SlowHandOver()
    pipe.start()
    assert handover.entered.wait(timeout=10)
    timer = threading.Timer(0.3, handover.release.set)
    timer.start()
    t0 = time.perf_counter()
    pipe.close()  # the queue is empty while the producer is alive: close keeps joining until it ends
    assert time.perf_counter() - t0 >= 0.25
    assert pipe._thread is None and made == [1]  # it finished the batch in hand, then stopped
    timer.join()


# -- metrics -------------------------------------------------------------------------------------


def test_a_disabled_logger_writes_nothing(tmp_path):
    logger = MetricsLogger(tmp_path, enabled=False)
    logger.log(1, {"reward/mean": 1.0})
    logger.close()
    assert list(tmp_path.iterdir()) == []


def test_truncate_metrics_drops_rows_after_the_checkpoint_and_a_torn_line(tmp_path):
    truncate_metrics(tmp_path, 3)  # nothing logged yet: nothing to do
    assert not (tmp_path / "metrics.jsonl").exists()
    logger = MetricsLogger(tmp_path, tensorboard=False)
    for step in (0, 0, 1, 2, 3):
        logger.log(step, {"reward/mean": float(step), "eval/accuracy": float("nan")})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "rew')  # killed mid-write
    truncate_metrics(tmp_path, 1)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 0, 1] and rows[2] == {"step": 1, "reward/mean": 1.0, "eval/accuracy": None}
    assert (tmp_path / "metrics.jsonl").read_text().endswith("}\n")
    logger = MetricsLogger(tmp_path, tensorboard=False)  # the resumed run appends after them
    logger.log(2, {"reward/mean": 5.0})
    logger.close()
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [0, 0, 1, 2]
