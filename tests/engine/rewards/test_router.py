"""Every reward source behind the one interface."""

import pytest

from engine.data.prompts import PromptRow
from engine.demo.chat import chat_prompts
from engine.demo.rm_train import train_reward_model
from engine.rewards.router import build_reward


def test_math_source():
    rows = [PromptRow(prompt="Q: 2+3?\nA:", answer="5")] * 2
    out = build_reward("math")(rows, [" 2+3=5. The answer is 5.", " The answer is 6."])
    assert out.rewards == [1.0, 0.0] and out.timeouts == 0 and out.failures == 0


def test_reward_model_source(tmp_path):
    train_reward_model(tmp_path / "rm", steps=2, pairs_per_step=4, n_heldout_pairs=4, progress=False)
    row = chat_prompts(1, split="rl")[0]
    out = build_reward("reward_model", path=str(tmp_path / "rm"))([row, row], [" Hi.", " Bye."])
    assert len(out.rewards) == 2 and all(isinstance(r, float) for r in out.rewards)
    bf16 = build_reward("reward_model", path=str(tmp_path / "rm"), dtype="bfloat16", device="cpu", max_batch_tokens=64)
    assert bf16([row, row], [" Hi.", " Bye."]).rewards == pytest.approx(out.rewards, abs=4e-3)  # measured 1.5e-3


def test_callable_source_and_errors(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def shortness(prompts, responses, rows):\n"
        "    return [None if r == 'fail' else -len(r) for r in responses]\n"
        "def wrong_count(prompts, responses, rows):\n"
        "    return [1.0]\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    rows = [PromptRow(prompt="p", answer="", task="t")] * 3
    out = build_reward("my_rewards:shortness")(rows, ["ab", "fail", "abcd"])
    assert out.rewards == [-2.0, None, -4.0] and out.failures == 1
    with pytest.raises(ValueError, match="returned 1 values for 3"):
        build_reward("my_rewards:wrong_count")(rows, ["a", "b", "c"])
    with pytest.raises(ValueError, match="cannot import"):
        build_reward("my_rewards:nope")
    with pytest.raises(ValueError, match="unknown reward 'mathh'"):
        build_reward("mathh")
    with pytest.raises(ValueError, match="reward_model_path"):
        build_reward("reward_model")
