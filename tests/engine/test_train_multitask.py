"""A multi-task run through the real CLI: math prompts trained with GRPO (math-verify) and chat
prompts trained with DPO against a reward model, in the same optimizer steps."""

import json
import subprocess
import sys

import pytest

from engine.data.prompts import write_jsonl
from engine.demo.chat import chat_prompts, heldout_size
from engine.demo.rm_train import train_reward_model


@pytest.mark.slow
def test_math_grpo_plus_chat_dpo(seed_model, tmp_path):
    write_jsonl(tmp_path / "chat_train.jsonl", chat_prompts(40, split="rl"))
    write_jsonl(tmp_path / "chat_eval.jsonl", chat_prompts(heldout_size(), split="heldout"))
    train_reward_model(tmp_path / "rm", steps=5, pairs_per_step=8, n_heldout_pairs=8, progress=False)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "engine.cli", "train", "--run-dir", str(run), f"model={seed_model}", "steps=2",
           "sync_every=1", "objective=grpo", "rollout.prompts_per_step=6", "rollout.samples_per_prompt=4",
           "rollout.max_tokens=40", "eval.max_prompts=6", "eval.every=0", "eval.samples=2", "eval.max_tokens=40",
           "optim.lr=1e-4",
           f"tasks.math.data={seed_model}/data/train.jsonl", f"tasks.math.eval_data={seed_model}/data/heldout.jsonl",
           "tasks.math.weight=2",
           f"tasks.chat.data={tmp_path}/chat_train.jsonl", f"tasks.chat.eval_data={tmp_path}/chat_eval.jsonl",
           "tasks.chat.reward=reward_model", f"tasks.chat.reward_model_path={tmp_path}/rm", "tasks.chat.objective=dpo",
           "tasks.chat.dpo.beta=0.05"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    for m in (first, last):  # both tasks evaluated at the start and the end
        assert 0.0 <= m["eval/math/accuracy"] <= 1.0
        assert m["eval/chat/reward"] is not None and 0.0 <= m["eval/chat/win_rate"] <= 1.0
        assert 0.0 <= m["eval/chat/lc_win_rate"] <= 1.0
    for step in (r for r in rows if r["step"] > 0):
        assert "reward/mean/math" in step and "reward/mean/chat" in step
        assert step["train/units/chat"] >= 0 and step["reward/failures"] == 0
        assert step["sync/logprob_gap"] <= 1e-3
    trained = [r for r in rows if r["step"] > 0 and r.get("train/loss/chat") is not None]
    assert trained and all(r.get("dpo/margin/chat") is not None for r in trained)  # DPO on chat in the mixed step
    assert any(r.get("clip/fraction/math") is not None for r in rows if r["step"] > 0)  # GRPO on math
