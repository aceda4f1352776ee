"""The rollout pipeline's staleness gate and queue, with a fake producer (no sampler, no learner)."""

import threading
import time

import pytest

from engine.config import ConfigError
from engine.config_load import load_config
from engine.overlap import Produced, RolloutPipeline
from engine.rollout.types import RolloutBatch


def _run(sync_every: int, max_staleness: int, steps: int, overlap: bool = True) -> list[tuple[int, int]]:
    """Drive the pipeline like the orchestrator: take, 'train', sync every s. Returns (step, version)."""
    state = {"version": 0}

    def produce(step: int) -> Produced:
        time.sleep(0.002)
        return Produced(RolloutBatch(step=step, version=state["version"], rollouts=[]), {})

    pipe = RolloutPipeline(produce, overlap=overlap, max_staleness=max_staleness, first_step=1, last_step=steps,
                           version=0)
    pipe.start()
    seen = []
    try:
        for step in range(1, steps + 1):
            produced, _ = pipe.take(step)
            seen.append((step, produced.batch.version))
            time.sleep(0.005)  # train
            if step % sync_every == 0:
                with pipe.sampler_lock():
                    state["version"] = step
                    pipe.publish_version(step)
    finally:
        pipe.close()
    return seen


@pytest.mark.parametrize("s", [1, 2, 3])
def test_default_staleness_reproduces_the_synchronous_versions(s):
    seen = _run(s, s - 1, 9)
    assert seen == [(t, s * ((t - 1) // s)) for t in range(1, 10)]
    assert seen == _run(s, s - 1, 9, overlap=False)


def test_max_staleness_lets_grpo_run_across_syncs():
    seen = _run(1, 2, 12)
    assert all(t - 1 - v <= 2 for t, v in seen)
    assert any(t - 1 - v > 0 for t, v in seen)  # the producer did run ahead


def test_producer_error_reaches_the_main_thread():
    def produce(step: int) -> Produced:
        raise ValueError("boom")

    pipe = RolloutPipeline(produce, overlap=True, max_staleness=0, first_step=1, last_step=3, version=0)
    pipe.start()
    with pytest.raises(RuntimeError, match="step 1") as info:
        pipe.take(1)
    assert isinstance(info.value.__cause__, ValueError)
    pipe.close()
    assert threading.active_count() >= 1


def test_max_staleness_is_checked_at_load_time():
    assert load_config(overrides=["sync_every=4"]).staleness_bound == 3
    assert load_config(overrides=["objective=grpo", "max_staleness=2"]).staleness_bound == 2
    with pytest.raises(ConfigError, match="max_staleness=1 must be >= sync_every - 1"):
        load_config(overrides=["sync_every=4", "max_staleness=1"])
    with pytest.raises(ConfigError, match="needs objective=grpo"):
        load_config(overrides=["objective=dpo", "max_staleness=1"])


def test_time_sliced_placement_excludes_overlap():
    assert load_config(overrides=["sampler.placement=time_sliced"]).sampler.placement == "time_sliced"
    with pytest.raises(ConfigError, match="needs sampler.placement=resident"):
        load_config(overrides=["overlap=true", "sampler.placement=time_sliced"])


def _wait_until(cond, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.002)


def test_generating_says_whether_the_producer_works_beside_the_training_pass():
    """s = 2, default staleness (1): the pass of step 1 shares the cores with the making of step 2;
    the pass of step 2 does not (step 3 needs the weights of step 2); nor does a full queue or the
    last step. Without overlap nothing generates beside training."""
    release = {2: threading.Event(), 4: threading.Event()}

    def produce(step: int) -> Produced:
        if step in release:
            release[step].wait(5)
        return Produced(RolloutBatch(step=step, version=0, rollouts=[]), {})

    sync_pipe = RolloutPipeline(produce, overlap=False, max_staleness=1, first_step=1, last_step=4, version=0)
    assert not sync_pipe.generating()
    pipe = RolloutPipeline(produce, overlap=True, max_staleness=1, first_step=1, last_step=4, version=0)
    pipe.start()
    try:
        pipe.take(1)
        assert pipe.generating()  # step 2 is being made (blocked inside produce)
        release[2].set()
        pipe.take(2)
        _wait_until(lambda: pipe._next == 3)
        assert not pipe.generating()  # step 3's gate waits for the sync after step 2
        with pipe.sampler_lock():
            pipe.publish_version(2)
        pipe.take(3)
        assert pipe.generating()  # step 4, blocked in produce
        release[4].set()
        pipe.take(4)
        _wait_until(lambda: pipe._next == 5)
        assert not pipe.generating()  # nothing left to make
    finally:
        for e in release.values():
            e.set()
        pipe.close()


def test_generating_is_false_while_the_queue_is_full():
    def produce(step: int) -> Produced:
        return Produced(RolloutBatch(step=step, version=0, rollouts=[]), {})

    pipe = RolloutPipeline(produce, overlap=True, max_staleness=1, first_step=1, last_step=9, version=5)
    pipe.start()
    try:
        _wait_until(lambda: pipe._queue.full())
        assert not pipe.generating()  # the producer waits for room: nothing runs beside training
        pipe.take(1)
        _wait_until(lambda: pipe._queue.full())
        assert not pipe.generating()
    finally:
        pipe.close()
