"""Per-step metrics of a rollout batch: rewards, lengths, versions and staleness, per-task means."""

from __future__ import annotations

from engine.rollout.types import DEFAULT, RolloutBatch, metric_prefix


def _mean(values) -> float:
    return sum(values) / len(values) if values else float("nan")


def rollout_metrics(batch: RolloutBatch, sampler_version: int) -> dict[str, float]:
    rewards = [r.reward for r in batch.rollouts]
    lengths = [len(r.response_ids) for r in batch.rollouts]
    units = [batch, *batch.parts]  # single-task: the batch's own groups/pairs; multi-task: each part's
    trained = [r for u in units for g in u.groups for r in g.rollouts]
    trained += [r for u in units for p in u.pairs for r in (p.chosen, p.rejected)]
    return {
        "rollout/response_tokens": float(sum(lengths)),
        "train/tokens": float(sum(len(r.prompt_ids) + len(r.response_ids) for r in trained)),
        "reward/mean": _mean(rewards),  # NaN when every sample's reward failed (none kept)
        "response/length": _mean(lengths),
        "response/truncated": _mean([float(r.finish_reason == "length") for r in batch.rollouts]),
        # the paper's answer format: how often a response puts an answer in \boxed{}
        "response/boxed": _mean([float("\\boxed{" in r.text) for r in batch.rollouts]),
        "reward/timeouts": float(batch.reward_timeouts),
        "rollout/version": float(batch.version),
        "rollout/staleness": float(batch.step - 1 - batch.version),
        **{metric_prefix("reward/errors", task): float(n) for task, n in batch.reward_errors.items()},
        "sampler/version": float(sampler_version),
        **task_metrics(batch),
    }


def task_metrics(batch: RolloutBatch) -> dict[str, float]:
    """Per-task reward means and unit counts of a multi-task batch (empty otherwise)."""
    if not batch.parts or [p.task for p in batch.parts] == [DEFAULT]:
        return {}
    out = {"reward/failures": float(batch.reward_failures)}
    for part in batch.parts:
        rewards = [r.reward for r in batch.rollouts if r.task == part.task]
        if rewards:
            out[f"reward/mean/{part.task}"] = sum(rewards) / len(rewards)
        out[f"train/units/{part.task}"] = float(len(part.pairs) if part.objective == "dpo" else len(part.groups))
    return out

