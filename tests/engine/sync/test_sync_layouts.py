"""Weight sync parity at every learner layout: after a bucketed push the sampler's log-probs
match the sharded learner's within 1e-3 (fp32), and the bytes moved equal the parameter bytes.
One torchrun job of 4 gloo ranks (`layouts_worker.py`) covers (tp, pp) in {1,2} x {1,2} against a
vLLM TP = 1 sampler; a 2-rank job covers learner TP 1 and 2 against a vLLM TP = 2 sampler."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.mark.slow
def test_push_parity_at_every_learner_layout(seed_model, tmp_path):
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4",
           str(REPO / "tests/engine/sync/layouts_worker.py"), str(seed_model), str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert sorted(results) == ["tp1-pp1", "tp1-pp2", "tp2-pp1", "tp2-pp2"]
    for layout, r in results.items():
        assert r["tokens"] > 0
        assert r["logprob_gap"] <= 1e-3, (layout, r)
        assert r["bytes"] == r["param_bytes"], (layout, r)
        assert r["buckets"] == 4 + 3  # one per decoder layer, plus embedding, final norm, lm_head
        assert r["peak_buffer_bytes"] < r["param_bytes"] / 3  # about one layer, never the model


@pytest.mark.slow
def test_push_parity_with_sampler_tp2(seed_model, tmp_path):
    """vLLM's own TP = 2 on CPU (two workers, one per core): learner TP 1 != sampler TP 2, and
    learner TP 2 == sampler TP 2; full tensors are pushed and each vLLM worker takes its shard."""
    out = tmp_path / "results.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(REPO / "tests/engine/sync/layouts_worker.py"), str(seed_model), str(out),
           "--sampler-tp", "2", "--layouts", "1x1,2x1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert sorted(results) == ["tp1-pp1", "tp2-pp1"]
    for layout, r in results.items():
        assert r["tokens"] > 0
        assert r["logprob_gap"] <= 1e-3, (layout, r)
        assert r["bytes"] == r["param_bytes"], (layout, r)
