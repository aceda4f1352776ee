"""From sampled responses with rewards to training units: DPO pairs and GRPO groups.

Pairs (DESIGN.md): verifiable reward -> chosen is a random correct response, rejected a random
incorrect one (mode "random"); reward-model scores -> chosen is the highest, rejected the lowest
(mode "extremes"). Prompts whose rewards are all equal give no pair. GRPO advantages are
r - mean(r_group) (the paper), optionally divided by the group's std.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from engine.rollout.types import Group, PreferencePair, Rollout


def build_pair(group: Sequence[Rollout], rng: random.Random, mode: str = "random") -> PreferencePair | None:
    rewards = [r.reward for r in group]
    hi, lo = max(rewards), min(rewards)
    if hi == lo:
        return None
    if mode == "random":
        chosen = rng.choice([r for r in group if r.reward == hi])
        rejected = rng.choice([r for r in group if r.reward < hi])
    elif mode == "extremes":
        chosen = rng.choice([r for r in group if r.reward == hi])
        rejected = rng.choice([r for r in group if r.reward == lo])
    else:
        raise ValueError(f"unknown pair mode {mode!r}; expected 'random' or 'extremes'")
    return PreferencePair(chosen=chosen, rejected=rejected)


def build_pairs(groups: Sequence[Sequence[Rollout]], rng: random.Random, mode: str = "random") -> list[PreferencePair]:
    pairs = (build_pair(g, rng, mode) for g in groups)
    return [p for p in pairs if p is not None]


def group_advantages(rewards: Sequence[float], std_normalize: bool = False, eps: float = 1e-6) -> list[float]:
    n = len(rewards)
    mean = sum(rewards) / n
    adv = [r - mean for r in rewards]
    if std_normalize:
        std = (sum(a * a for a in adv) / max(n - 1, 1)) ** 0.5
        adv = [a / (std + eps) for a in adv]
    return adv


def build_groups(
    groups: Sequence[Sequence[Rollout]], std_normalize: bool = False, drop_uniform: bool = False
) -> list[Group]:
    out = []
    for g in groups:
        rewards = [r.reward for r in g]
        if drop_uniform and max(rewards) == min(rewards):
            continue
        out.append(Group(rollouts=list(g), advantages=group_advantages(rewards, std_normalize)))
    return out
