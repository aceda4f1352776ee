"""Stop a run whose rewards all error, with the reason, instead of training on nothing.

    tracker = RewardErrorTracker(max_error_steps=cfg.reward.max_error_steps)
    for step ...:
        out = task.score(indices, responses)                       # RewardOutput
        metrics |= reward_error_metrics(task.name, out)            # reward/errors/<task>
        tracker.observe(step, task.name, out)                      # raises RewardErrorsExceeded

Why. A judge that is down, a reward model that crashes on every input, or a math-verify set-up
that times out on everything does not raise: each sample's reward is dropped (None) or scored 0 and
counted, so a run would go on "training" for hours on empty or all-zero batches. A task whose every
sample errored for `max_error_steps` consecutive steps stops the run with the reasons the reward
gave (e.g. {"HTTP 503": 96}); a step where any sample was scored resets the count. Steps where a
task drew no samples leave its count as it is. 0 disables the check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from engine.rewards.router import RewardOutput


class RewardErrorsExceeded(RuntimeError):
    """Every reward of a task errored for `max_error_steps` consecutive steps."""


@dataclass
class RewardErrorTracker:
    max_error_steps: int  # consecutive all-error steps of one task that stop the run; 0: never
    streaks: dict[str, int] = field(default_factory=dict)  # task -> consecutive all-error steps
    first_step: dict[str, int] = field(default_factory=dict)  # task -> first step of its streak
    reasons: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> reasons summed over the streak

    def __post_init__(self) -> None:
        if self.max_error_steps < 0:
            raise ValueError(f"reward.max_error_steps={self.max_error_steps}: must be >= 0 (0 disables the check)")

    def update(self, step: int, task: str, samples: int, errors: int, reasons: Mapping[str, int] | None = None) -> None:
        """Record one step of one task: `errors` of its `samples` rewards could not be computed."""
        if not 0 <= errors <= samples:
            raise ValueError(f"task {task!r} step {step}: {errors} errors for {samples} samples")
        if samples == 0:
            return
        if errors < samples:
            self.streaks[task] = 0
            self.reasons.pop(task, None)
            return
        if not self.streaks.get(task):
            self.first_step[task] = step
        self.streaks[task] = self.streaks.get(task, 0) + 1
        summed = self.reasons.setdefault(task, {})
        for reason, count in (reasons or {"unknown": errors}).items():
            summed[reason] = summed.get(reason, 0) + count
        if self.max_error_steps and self.streaks[task] >= self.max_error_steps:
            top = ", ".join(f"{r!r} x {n}" for r, n in sorted(summed.items(), key=lambda kv: -kv[1])[:5])
            raise RewardErrorsExceeded(
                f"task {task!r}: every reward errored for {self.streaks[task]} consecutive steps "
                f"(steps {self.first_step[task]}-{step}; reward.max_error_steps={self.max_error_steps}); "
                f"reasons: {top}. The run stops rather than train on nothing: fix the reward source and resume")

    def observe(self, step: int, task: str, output: RewardOutput) -> None:
        """`update` from a reward function's output."""
        self.update(step, task, len(output.rewards), output.errors, output.error_reasons)


def reward_error_metrics(task: str, output: RewardOutput) -> dict[str, float]:
    """The per-task `reward/errors/<task>` count for metrics.jsonl."""
    return {f"reward/errors/{task}": float(output.errors)}
