"""Reward error accounting: RewardOutput.errors from real reward sources, and the tracker that stops
a run whose rewards all error for reward.max_error_steps steps (engine/rewards/errors.py).

    .venv/bin/python -m pytest -q tests/engine/rewards/test_errors.py
"""

import socket

import pytest

from engine.data.prompts import PromptRow
from engine.rewards.errors import RewardErrorsExceeded, RewardErrorTracker, reward_error_metrics
from engine.rewards.judge import JudgeConfig
from engine.rewards.router import RewardOutput, build_reward


def test_streak_stops_with_the_reasons_and_resets():
    tracker = RewardErrorTracker(max_error_steps=3)
    tracker.update(1, "chat", 8, 8, {"HTTP 503": 8})
    tracker.update(2, "chat", 8, 7, {"HTTP 503": 7})  # one sample scored: the streak starts over
    tracker.update(2, "math", 0, 0)  # no samples: no change
    tracker.update(3, "chat", 8, 8, {"HTTP 503": 6, "unparseable verdict": 2})
    tracker.update(4, "chat", 8, 8, {"HTTP 503": 8})
    tracker.update(4, "math", 16, 0)
    with pytest.raises(RewardErrorsExceeded) as err:
        tracker.update(5, "chat", 8, 8, {"HTTP 503": 8})
    assert str(err.value) == (
        "task 'chat': every reward errored for 3 consecutive steps (steps 3-5; reward.max_error_steps=3); "
        "reasons: 'HTTP 503' x 22, 'unparseable verdict' x 2. The run stops rather than train on nothing: fix the "
        "reward source and resume")
    off = RewardErrorTracker(max_error_steps=0)
    for step in range(100):
        off.update(step, "chat", 4, 4)
    with pytest.raises(ValueError, match="must be >= 0"):
        RewardErrorTracker(max_error_steps=-1)
    with pytest.raises(ValueError, match="5 errors for 4 samples"):
        off.update(1, "chat", 4, 5)


def test_a_dead_judge_stops_the_run_after_max_error_steps():
    with socket.socket() as s:  # a port nobody listens on: every judgement fails after its retries
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    reward = build_reward("judge", judge=JudgeConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m",
                                                     max_retries=0))
    rows = [PromptRow("Say hi.", task="chat")] * 4
    tracker = RewardErrorTracker(max_error_steps=2)
    out = reward(rows, ["hi"] * 4)
    assert out.rewards == [None] * 4 and out.errors == 4 and out.error_reasons == {"connection: ConnectionRefusedError": 4}
    assert reward_error_metrics("chat", out) == {"reward/errors/chat": 4.0}
    tracker.observe(1, "chat", out)
    with pytest.raises(RewardErrorsExceeded, match=r"'chat'.*steps 1-2.*'connection: ConnectionRefusedError' x 8"):
        tracker.observe(2, "chat", reward(rows, ["hi"] * 4))


def test_math_errors_and_prompt_only_rows():
    reward = build_reward("math", timeout_s=0.5)
    out = reward([PromptRow("q", "3"), PromptRow("q", "2")], ["\\boxed{10^{10^{10}}}", "\\boxed{2}"])
    assert out.rewards == [0.0, 1.0] and (out.timeouts, out.errors) == (1, 1)
    assert out.error_reasons == {"math-verify timeout": 1}
    with pytest.raises(ValueError, match=r"reward 'math' needs a reference answer, and prompt row data.jsonl:4 has "
                                         r"none \('Say hi.'\): set data.answer_key"):
        reward([PromptRow("q", "3"), PromptRow("Say hi.", origin="data.jsonl:4")], ["1", "2"])
    assert RewardOutput(rewards=[1.0]).errors == 0
