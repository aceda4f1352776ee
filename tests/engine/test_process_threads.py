"""The learner's CPU thread count: every core unless the engine generates beside the training pass."""

from types import SimpleNamespace

import pytest
import torch
from fakes import digits_config, digits_data, fake_loop, tokenizer_in

from engine.config import RunConfig
from engine.process import learner_threads, overlap_threads


def _cfg(**kw) -> RunConfig:
    return RunConfig(model="m", **kw)


def test_the_synchronous_path_gives_the_learner_every_core():
    assert learner_threads(_cfg(), rank=0, cores=2) == 2
    assert learner_threads(_cfg(sync_every=4), rank=0, cores=16) == 16
    assert overlap_threads(_cfg(), rank=0, cores=2) is None


def test_overlap_leaves_a_core_to_the_engine_only_on_its_rank():
    cfg = _cfg(overlap=True, sync_every=2)
    assert learner_threads(cfg, rank=0, cores=2) == 1
    assert overlap_threads(cfg, rank=0, cores=2) == (2, 1)
    assert learner_threads(cfg, rank=1, cores=2) == 2  # another node's rank, one process per node
    assert overlap_threads(cfg, rank=1, cores=2) is None


def test_offline_and_an_explicit_count_are_fixed():
    offline = _cfg(overlap=True, sync_every="offline", objective="dpo")
    assert overlap_threads(offline, rank=0, cores=4) is None
    assert learner_threads(offline, rank=0, cores=4) == 4
    fixed = _cfg(overlap=True, sync_every=2, learner={"threads": 3})
    assert overlap_threads(fixed, rank=0, cores=8) is None
    assert learner_threads(fixed, rank=0, cores=8) == 3


def test_the_node_cores_are_split_over_its_ranks(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert learner_threads(_cfg(), rank=5, cores=16) == 4
    assert learner_threads(_cfg(), rank=5, cores=2) == 1  # never below one
    per_node = _cfg(overlap=True, sync_every=2, sampler={"engines": "per_node"})
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert overlap_threads(per_node, rank=4, cores=16) == (4, 3)  # drives its node's engine


@pytest.mark.parametrize("rank", [0, 3])
def test_at_least_one_thread(rank):
    assert learner_threads(_cfg(overlap=True, sync_every=2), rank=rank, cores=1) == 1


def test_the_loop_repicks_the_threads_between_training_micro_batches(tmp_path):
    """Under overlap the loop hands the learner a hook that gives it every core unless the producer
    is generating at that moment; on the synchronous path it sets none."""
    data, tok = digits_data(tmp_path / "data"), tokenizer_in(tmp_path / "tok")
    sync_loop = fake_loop(digits_config(data), tok, tmp_path / "sync")
    assert sync_loop._threads is None and not hasattr(sync_loop.learner, "micro_batch_hook")
    loop = fake_loop(digits_config(data, overlap=True, sync_every=2, **{"learner.threads": 0}), tok, tmp_path / "o")
    alone, beside = loop._threads
    assert alone == beside + 1 or alone == beside == 1
    assert loop.learner.micro_batch_hook == loop._pick_threads
    before = torch.get_num_threads()
    try:
        for generating, want in ((True, beside), (False, alone), (True, beside)):
            loop.pipeline = SimpleNamespace(generating=lambda g=generating: g)
            loop.learner.micro_batch_hook()
            assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)
