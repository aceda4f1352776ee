import random

import pytest

from engine.rollout.build import build_groups, build_pairs, group_advantages
from engine.rollout.types import Rollout


def _r(reward, tag):
    return Rollout(prompt_index=0, prompt_ids=[1], response_ids=[tag], behaviour_logprobs=[-1.0], text=str(tag),
                   reward=reward, version=0)


def test_pairs_binary_random_correct_vs_incorrect():
    group = [_r(1.0, 1), _r(0.0, 2), _r(1.0, 3), _r(0.0, 4)]
    rng = random.Random(0)
    seen_c, seen_r = set(), set()
    for _ in range(50):
        (pair,) = build_pairs([group], rng)
        assert pair.chosen.reward == 1.0 and pair.rejected.reward == 0.0
        seen_c.add(pair.chosen.response_ids[0])
        seen_r.add(pair.rejected.response_ids[0])
    assert seen_c == {1, 3} and seen_r == {2, 4}  # random among the correct / incorrect


def test_pairs_extremes_and_ties_dropped():
    groups = [[_r(0.2, 1), _r(0.9, 2), _r(0.5, 3)], [_r(1.0, 4), _r(1.0, 5)], [_r(0.0, 6), _r(0.0, 7)]]
    pairs = build_pairs(groups, random.Random(0), mode="extremes")
    assert len(pairs) == 1
    assert pairs[0].chosen.response_ids == [2] and pairs[0].rejected.response_ids == [1]


def test_group_advantages_by_hand():
    assert group_advantages([1.0, 0.0, 0.0, 1.0]) == [0.5, -0.5, -0.5, 0.5]
    adv = group_advantages([1.0, 0.0, 0.0, 0.0], std_normalize=True)
    std = (sum(a * a for a in [0.75, -0.25, -0.25, -0.25]) / 3) ** 0.5
    assert adv[0] == pytest.approx(0.75 / std, rel=1e-5)


def test_groups_keep_or_drop_uniform():
    groups = [[_r(1.0, 1), _r(1.0, 2)], [_r(1.0, 3), _r(0.0, 4)]]
    assert [g.advantages for g in build_groups(groups)] == [[0.0, 0.0], [0.5, -0.5]]
    assert len(build_groups(groups, drop_uniform=True)) == 1
