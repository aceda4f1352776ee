"""The synthetic arithmetic task: deterministic, self-consistent, and a held-out split that shares
no computation with the SFT / RL sets."""

import re

import pytest

from engine.data.tokenizer import ALPHABET
from engine.demo.synthetic import (
    Difficulty,
    generate_problems,
    heldout_prompts,
    is_heldout,
    rl_prompts,
    sft_problems,
)

STEP = re.compile(r"(\d+)([+\-*])(\d+)=(\d+)\.")


def test_same_seed_same_problems_other_seed_other_problems():
    assert sft_problems(200, seed=3) == sft_problems(200, seed=3)
    assert heldout_prompts(50, seed=3) == heldout_prompts(50, seed=3)
    assert sft_problems(200, seed=3) != sft_problems(200, seed=4)
    assert [r.prompt for r in rl_prompts(200, seed=3)] != [p.prompt for p in sft_problems(200, seed=3)]


def test_heldout_is_disjoint_from_training_by_computation():
    train = sft_problems(3000, seed=0) + generate_problems(3000, seed=1, split="rl")
    heldout = generate_problems(200, seed=0, split="heldout") + generate_problems(200, seed=7, split="heldout")
    train_canon = {p.canonical for p in train}
    assert not any(is_heldout(c) for c in train_canon)
    assert all(is_heldout(p.canonical) for p in heldout)
    assert train_canon.isdisjoint({p.canonical for p in heldout})
    assert {p.prompt for p in train}.isdisjoint({p.prompt for p in heldout})
    one_seed = generate_problems(200, seed=0, split="heldout")
    assert len({p.canonical for p in one_seed}) == 200  # distinct computations
    # the split is a property of the computation, not of the seed
    assert 0.05 < sum(is_heldout(f"{a}+{b}") for a in range(2, 40) for b in range(1, 40)) / (38 * 39) < 0.15


HARD = Difficulty(max_ops=3, max_start=20, max_operand=10, max_factor=4, max_total=99)


@pytest.mark.parametrize("difficulty", [Difficulty(), HARD], ids=["default", "hard"])
def test_solutions_are_correct_and_in_the_response_format(difficulty):
    problems = sft_problems(500, seed=0, difficulty=difficulty)
    problems += generate_problems(100, seed=0, split="heldout", difficulty=difficulty)
    for p in problems:
        assert p.prompt.startswith("Q: ") and p.prompt.endswith("?\nA:")
        assert p.solution.startswith(" ") and p.solution.endswith(f" The answer is {p.answer}.")
        steps = STEP.findall(p.solution)
        assert difficulty.min_ops <= len(steps) <= difficulty.max_ops
        total = None
        for a, op, b, c in steps:
            a, b, c = int(a), int(b), int(c)
            assert total is None or a == total  # each step continues the running total
            assert c == {"+": a + b, "-": a - b, "*": a * b}[op]
            total = c
        assert str(total) == p.answer and 0 <= total <= difficulty.max_total
        assert set(p.prompt + p.solution) <= set(ALPHABET)


def test_templates_and_op_counts_are_all_used():
    problems = sft_problems(1000, seed=0)
    assert {p.template for p in problems} == {"items", "groups", "money", "class"}
    assert {len(STEP.findall(p.solution)) for p in problems} == {1, 2}
    assert {len(STEP.findall(p.solution)) for p in sft_problems(300, seed=0, difficulty=HARD)} == {1, 2, 3}
    assert {op for p in problems for _, op, _, _ in STEP.findall(p.solution)} == {"+", "-", "*"}


def test_math_verify_checks_the_final_answer():
    from math_verify import parse, verify

    p = sft_problems(1, seed=0)[0]
    final = p.solution.rsplit("The answer is", 1)[1]
    assert verify(parse(p.answer), parse(final))
    assert not verify(parse(str(int(p.answer) + 1)), parse(final))


def test_difficulty_is_validated():
    with pytest.raises(ValueError, match="min_ops"):
        Difficulty(min_ops=3, max_ops=2)
    with pytest.raises(RuntimeError, match="too small"):
        generate_problems(400, split="heldout")  # the default space holds ~290 held-out computations
    with pytest.raises(ValueError, match="split"):
        generate_problems(1, split="test")  # type: ignore[arg-type]
