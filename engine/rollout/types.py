"""Typed records that cross module boundaries in the rollout path.

A `Rollout` is one sampled response with its reward and the weight version that produced it;
DPO consumes `PreferencePair`s, GRPO consumes `Group`s with advantages.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
