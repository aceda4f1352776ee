"""`semionline bench e2e`'s summaries from metrics rows: per-rank phase times (torchrun runs log
`rank<r>/time/*`) and the weight sync's share of the step, which leaves out the run's last step
(its sync also runs the parity probe)."""

import pytest

from engine.bench.e2e import per_rank, summarize


def _row(step, **kw):
    base = {"step": step, "time/generate": 1.0, "time/reward": 0.1, "time/train": 2.0, "time/sync": 0.0,
            "time/idle": 0.0, "time/step": 3.2, "rollout/response_tokens": 100.0, "train/tokens": 400.0}
    return {**base, **kw}


def test_per_rank_means_over_steps_after_the_first():
    rows = [_row(1, **{"rank0/time/train": 9.0}),
            _row(2, **{"rank0/time/train": 1.0, "rank1/time/train": 1.1, "rank0/time/step": 2.0, "rank1/time/step": 2.0,
                       "rank1/time/idle": 0.8}),
            _row(3, **{"rank0/time/train": 1.2, "rank1/time/train": 1.3, "rank0/time/step": 2.2, "rank1/time/step": 2.4,
                       "rank1/time/idle": 0.9, "rank0/time/eval": 0.2})]
    table = per_rank(rows)
    assert table[0]["train"] == pytest.approx(1.1) and table[0]["wall"] == pytest.approx(2.0)
    assert table[1]["idle"] == pytest.approx(0.85) and table[1]["wall"] == pytest.approx(2.2)
    assert per_rank([_row(1), _row(2)]) == {}


def test_sync_share_leaves_out_the_last_step():
    sync = {"sync/bytes": 8.0, "sync/param_bytes": 8.0, "sync/seconds": 0.05}
    rows = [_row(1, **sync, **{"time/sync": 0.1}), _row(2, **sync, **{"time/sync": 0.1, "time/step": 3.3}),
            _row(3, **sync, **{"time/sync": 0.1, "time/step": 3.3}),
            _row(4, **sync, **{"time/sync": 0.5, "time/step": 3.7, "sync/logprob_gap": 1e-7})]
    s = summarize(rows)
    assert s["sync_share"] == pytest.approx(0.1 / 3.3) and s["gap_max"] == 1e-7 and s["sync_bytes"] == 8.0
