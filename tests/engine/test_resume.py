"""Exact resume after `kill -9`, through the real CLI (vLLM sampler, math-verify rewards, learner).

    PYTHONPATH=. python -m pytest tests/engine/test_resume.py -q

Run A trains 4 GRPO steps uninterrupted (s = 2, a checkpoint after every step, deterministic
mode). Run B is the same command, killed with SIGKILL (its whole process group: the vLLM engine
too) half a second after its step-3 checkpoint is committed, i.e. in the middle of step 4; then
`semionline train --resume` continues it from step 3, where the sampler held step 2's weights
(s = 2): the resumed sampler gets them from the checkpoint. Every non-timing metric of B's steps
0-4 must equal A's, and B must end with the same weights. (A kill inside a checkpoint write
leaves the previous `latest`: `engine/checkpoint.py` commits by rename.) This costs three vLLM start-ups (~1.5 min on 2 cores);
learner-level resharding of the same checkpoints is covered, without vLLM, by
tests/engine/learner/test_parallel_step.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from safetensors.torch import load_file


def _train_cmd(seed_dir, *args):
    return [
        sys.executable,
        "-m",
        "engine.cli",
        "train",
        *map(str, args),
        f"model={seed_dir}",
        f"data.train={seed_dir}/data/train.jsonl",
        f"data.eval={seed_dir}/data/heldout.jsonl",
        "steps=4",
        "objective=grpo",
        "sync_every=2",
        # one thread on each side, as OMP_NUM_THREADS=1 below means: the run must reproduce
        # exactly, and 2-thread CPU runs differ from run to run in the last fp32 bits of the
        # step-0 parity gap (seen: 3.41e-7 against 3.39e-7 with both sides on 2 cores)
        "learner.threads=1",
        "sampler.cpu_cores=vllm",
        "rollout.prompts_per_step=4",
        "rollout.samples_per_prompt=4",
        "rollout.max_tokens=24",
        "eval.max_prompts=8",
        "eval.every=0",
        "eval.max_tokens=24",
        "sampler.gap_probe_prompts=4",
        "optim.lr=1e-4",
        "checkpoint.every=1",
        "deterministic=true",
        "learner.threads=1",
    ]


def _rows(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = {}
    for r in rows:
        steps.setdefault(r["step"], {}).update(r)
    return steps


def _comparable(row):
    return {k: v for k, v in row.items() if not k.startswith("time/") and k != "sync/seconds"}


def _multitask_args(tmp_path, seed_model) -> list[str]:
    """Math (GRPO) + chat (DPO against a reward model): two prompt streams, and the seed's eval
    responses that the chat win rates compare against, all in the checkpoint."""
    from engine.data.prompts import write_jsonl
    from engine.demo.chat import chat_prompts, heldout_size
    from engine.demo.rm_train import train_reward_model

    write_jsonl(tmp_path / "chat_train.jsonl", chat_prompts(40, split="rl"))
    write_jsonl(tmp_path / "chat_eval.jsonl", chat_prompts(heldout_size(), split="heldout")[:8])
    train_reward_model(tmp_path / "rm", steps=5, pairs_per_step=8, n_heldout_pairs=8, progress=False)
    return [f"tasks.math.data={seed_model}/data/train.jsonl", f"tasks.math.eval_data={seed_model}/data/heldout.jsonl",
            f"tasks.chat.data={tmp_path}/chat_train.jsonl", f"tasks.chat.eval_data={tmp_path}/chat_eval.jsonl",
            "tasks.chat.reward=reward_model", f"tasks.chat.reward_model_path={tmp_path}/rm", "tasks.chat.objective=dpo"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["overlap", "multitask"])  # a single-task run is a one-task run: multitask covers it
def test_kill_9_mid_step_then_resume_reproduces_the_run(seed_model, tmp_path, mode):
    """With overlap the producer is ahead of the learner when checkpoints are written (it made
    step 4's batch during step 3): the checkpoint must hold the learner's data position. The
    multi-task run also needs every task's prompt stream and the seed's eval responses back."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    a, b = tmp_path / "a", tmp_path / "b"
    extra = [f"overlap={str(mode == 'overlap').lower()}"]
    if mode == "multitask":
        extra += _multitask_args(tmp_path, seed_model)
    done = subprocess.run(
        _train_cmd(seed_model, "--run-dir", a, *extra), capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-3000:]

    proc = subprocess.Popen(
        _train_cmd(seed_model, "--run-dir", b, *extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300
        latest = b / "checkpoints" / "latest"
        while not (latest.exists() and latest.read_text() == "step-000003"):
            assert proc.poll() is None and time.monotonic() < deadline, (
                "run B ended before its step-3 checkpoint"
            )
            time.sleep(0.05)
        time.sleep(0.5)  # into step 4: generating, scoring or training
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the CLI and the vLLM engine processes it started
        proc.wait()
    assert 4 not in _rows(b) and not (b / "final").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "engine.cli", "train", "--resume", str(b)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert "from step-000003" in resumed.stdout

    rows_a, rows_b = _rows(a), _rows(b)
    assert sorted(rows_b) == sorted(rows_a) == [0, 1, 2, 3, 4]
    for step in range(5):
        assert _comparable(rows_b[step]) == _comparable(rows_a[step]), step
    wa, wb = load_file(a / "final" / "model.safetensors"), load_file(b / "final" / "model.safetensors")
    assert all((wa[n] == wb[n]).all() for n in wa)
    assert (b / "checkpoints" / "latest").read_text() == "step-000004"
    if mode == "multitask":
        assert "eval/chat/win_rate" in rows_b[4] and "reward/mean/chat" in rows_b[4]
    assert len(list((b / "checkpoints").glob("step-*"))) == 2  # checkpoint.keep
