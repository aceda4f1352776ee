"""One reward interface over every reward source, picked per task.

    reward = build_reward("math")                                    # math-verify
    reward = build_reward("reward_model", path=".cache/rm", device="cuda", dtype="bfloat16")
    reward = build_reward("judge", judge=JudgeConfig(...))           # OpenAI-compatible endpoint
    reward = build_reward("my_pkg.rewards:length_penalty")           # any callable, by import path
    out = reward(rows, responses)     # RewardOutput: rewards (None = failed, drop), counts, errors

A callable given by import path is called as `fn(prompts: list[str], responses: list[str],
rows: list[PromptRow]) -> list[float | None]`. A math reward that times out scores 0 and is
counted in `timeouts` (the answer could not be checked in time, which is the response's own fault).
A judge that fails after its retries gives None and is counted in `failures`: the sample is
dropped from training, because the failure says nothing about the response. `errors` counts every
sample whose reward could not be computed (judge / callable failures, math-verify crashes and
timeouts), with `error_reasons`; engine/rewards/errors.py stops a run whose rewards all error for
`max_error_steps` steps. A judge answering 401/403/404 raises `JudgeError` at once. The math
reward refuses prompt-only rows (no reference answer), naming the row.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from engine.data.prompts import PromptRow

SOURCES = ("math", "reward_model", "judge")


@dataclass
class RewardOutput:
    rewards: list[float | None]
    timeouts: int = 0  # math answers that could not be verified in time (scored 0)
    failures: int = 0  # judgements that failed after retries (None: dropped)
    errors: int = 0  # samples whose reward could not be computed (failures, math-verify crashes and timeouts)
    error_reasons: dict[str, int] = field(default_factory=dict)  # why, e.g. {"HTTP 503": 12}


RewardFn = Callable[[Sequence[PromptRow], Sequence[str]], RewardOutput]


def _math(timeout_s: float) -> RewardFn:
    from engine.rewards.math import math_reward_batch

    def reward(rows: Sequence[PromptRow], responses: Sequence[str]) -> RewardOutput:
        for k, row in enumerate(rows):
            if not row.answer.strip():
                raise ValueError(f"reward 'math' needs a reference answer, and prompt row {row.origin or k} has none "
                                 f"({row.prompt[:60]!r}): set data.answer_key to the answer column, or score "
                                 "prompt-only data with a judge or reward model")
        rewards, stats = math_reward_batch(list(responses), [r.answer for r in rows], timeout_s=timeout_s)
        reasons = {k: v for k, v in (("math-verify timeout", stats.timeouts), ("math-verify error", stats.errors)) if v}
        return RewardOutput(rewards=list(rewards), timeouts=stats.timeouts, errors=stats.timeouts + stats.errors,
                            error_reasons=reasons)

    return reward


def _reward_model(path: str, **options) -> RewardFn:
    from engine.rewards.reward_model import RewardModel

    model = RewardModel(path, **options)

    def reward(rows: Sequence[PromptRow], responses: Sequence[str]) -> RewardOutput:
        return RewardOutput(rewards=model.score([r.prompt for r in rows], list(responses)))

    return reward


def _judge(cfg) -> RewardFn:
    from engine.rewards.judge import Judge

    judge = Judge(cfg)

    def reward(rows: Sequence[PromptRow], responses: Sequence[str]) -> RewardOutput:
        result = judge.score([r.prompt for r in rows], list(responses))
        return RewardOutput(rewards=result.scores, failures=result.failures, errors=result.failures,
                            error_reasons=dict(result.errors))

    return reward


def _callable(spec: str) -> RewardFn:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"reward {spec!r}: a callable reward is 'package.module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"reward {spec!r}: cannot import it ({e})") from None

    def reward(rows: Sequence[PromptRow], responses: Sequence[str]) -> RewardOutput:
        values = list(fn([r.prompt for r in rows], list(responses), list(rows)))
        if len(values) != len(responses):
            raise ValueError(f"reward {spec!r} returned {len(values)} values for {len(responses)} responses")
        failed = sum(v is None for v in values)
        return RewardOutput(rewards=[None if v is None else float(v) for v in values], failures=failed,
                            errors=failed, error_reasons={f"{spec} returned None": failed} if failed else {})

    return reward


def build_reward(source: str, *, path: str | None = None, judge=None, timeout_s: float = 5.0,
                 max_length: int = 2048, batch_size: int = 16, max_batch_tokens: int = 16384,
                 device: str = "cpu", dtype: str = "float32", trust_remote_code: bool = False) -> RewardFn:
    """The reward function of one task (see the module docstring). `judge`: a JudgeConfig. The
    reward model runs on `device` / `dtype` (pass the learner's), batched by `max_batch_tokens`."""
    if source == "math":
        return _math(timeout_s)
    if source == "reward_model":
        if not path:
            raise ValueError("reward 'reward_model' needs the reward model's directory (reward_model_path)")
        return _reward_model(path, max_length=max_length, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                             device=device, dtype=dtype, trust_remote_code=trust_remote_code)
    if source == "judge":
        if judge is None:
            raise ValueError("reward 'judge' needs a judge configuration (judge.base_url, judge.model)")
        return _judge(judge)
    if ":" in source:
        return _callable(source)
    raise ValueError(f"unknown reward {source!r}: use one of {', '.join(SOURCES)} or 'package.module:function'")
