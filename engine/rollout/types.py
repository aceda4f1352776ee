"""Typed records that cross module boundaries in the rollout path.

A `Rollout` is one sampled response with its reward and the weight version that produced it;
DPO consumes `PreferencePair`s, GRPO consumes `Group`s with advantages.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.config import DPOConfig, GRPOConfig

DEFAULT = "default"  # the one task of a run without `tasks:`


def metric_prefix(prefix: str, task: str) -> str:
    """`prefix/task`, or `prefix` alone for the default task (its metrics are the run's:
    `eval/accuracy`, `logprob/chosen`, ...)."""
    return prefix if task == DEFAULT else f"{prefix}/{task}"


@dataclass
class Rollout:
    prompt_index: int  # row index in the prompt set
    prompt_ids: list[int]
    response_ids: list[int]  # sampled tokens, including EOS when generation stopped on it
    behaviour_logprobs: list[float]  # (len(response_ids),) under the sampler's weights
    text: str
    reward: float
    version: int  # sampler weight version that generated it
    finish_reason: str = "stop"
    task: str = "math"
    ref_logprobs: list[float] | None = None  # (len(response_ids),) the reference's, when computed ahead


@dataclass
class PreferencePair:
    chosen: Rollout
    rejected: Rollout


@dataclass
class Group:
    rollouts: list[Rollout]  # G responses to one prompt
    advantages: list[float]  # (G,)


@dataclass
class TaskBatch:
    """One task's share of a multi-task step: its pairs (DPO) or groups (GRPO)."""

    task: str
    objective: str  # "dpo" | "grpo"
    weight: float  # mixture weight (normalised over all tasks by the learner)
    pairs: list[PreferencePair] = field(default_factory=list)
    groups: list[Group] = field(default_factory=list)
    dpo: DPOConfig | None = None  # the task's DPO settings (None: DPOConfig's defaults)
    grpo: GRPOConfig | None = None  # the task's GRPO settings


@dataclass
class RolloutBatch:
    """What rollout production hands to the learner for one optimizer step."""

    step: int
    version: int
    rollouts: list[Rollout]  # every sample, for metrics
    pairs: list[PreferencePair] = field(default_factory=list)  # DPO
    groups: list[Group] = field(default_factory=list)  # GRPO
    reward_timeouts: int = 0
    parts: list[TaskBatch] = field(default_factory=list)  # multi-task runs: one per task
    reward_failures: int = 0  # judgements dropped after retries
    reward_errors: dict[str, int] = field(default_factory=dict)  # task -> samples whose reward errored


@dataclass
class Produced:
    """One step's batch and what producing it cost (measured where it was made, e.g. the
    overlap producer thread)."""

    batch: RolloutBatch
    times: dict[str, float]  # time/generate, time/reward (seconds), time/at_produce_start|end
