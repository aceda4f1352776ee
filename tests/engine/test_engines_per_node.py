"""One vLLM engine per node (`sampler.engines=per_node`, engine/sampler/pool.py), on 2 simulated
nodes on localhost (launch/train_multi_node.sh, one rank per node, so each node's rank owns an
engine): the run with two engines, overlapped, gives exactly the metrics of the run where rank 0's
one engine makes every rollout, synchronously. Seeded prompts keep their seeds whichever engine
samples them; a remote engine that missed a weight push would fail the batch parity check."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KEYS = ("train/loss", "reward/mean", "rollout/response_tokens", "parity/batch_tokens", "eval/accuracy")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_nodes(seed_model: Path, run_dir: Path, *overrides: str) -> list[dict]:
    port = free_port()
    procs = []
    for node in (0, 1):
        # each node's engine worker on its own core (vLLM's auto binding would put both on core 0)
        env = dict(os.environ, VLLM_CPU_OMP_THREADS_BIND=str(node % (os.cpu_count() or 1)),
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")  # the script's python
        cmd = ["bash", str(REPO / "launch/train_multi_node.sh"), f"127.0.0.1:{port}", "2", str(node), "1",
               "--config", str(REPO / "configs/demo/dpo.yaml"), "--run-dir", str(run_dir), f"model={seed_model}",
               "steps=2", "sync_every=1", "eval.every=0", "eval.max_prompts=8", "rollout.prompts_per_step=8",
               "deterministic=true", *overrides]
        procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for node, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"node {node}:\n{out[-4000:]}"
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_engine_per_node_matches_one_engine(seed_model, tmp_path):
    pooled = run_two_nodes(seed_model, tmp_path / "per_node", "sampler.engines=per_node", "overlap=true")
    single = run_two_nodes(seed_model, tmp_path / "one", "sampler.engines=one", "overlap=false")
    assert pooled[0]["sampler/engines"] == 2 and single[0]["sampler/engines"] == 1
    assert [r["step"] for r in pooled] == [r["step"] for r in single] == [0, 1, 2]
    for a, b in zip(pooled, single):
        for key in KEYS:
            assert (key in a) == (key in b), key
            if key in a:
                assert a[key] == b[key], (a["step"], key, a[key], b[key])
        if a["step"] > 0:  # the fresh batch after each push was checked against the learner
            assert a["parity/batch_tokens"] > 0 and a["parity/batch_gap"] <= 1e-3
