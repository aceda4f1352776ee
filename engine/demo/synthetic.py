"""Procedurally generated arithmetic word problems: the CPU demo's task, checkable by math-verify.

    from engine.demo.synthetic import sft_problems, rl_prompts, heldout_prompts
    heldout = heldout_prompts(200, seed=0)        # list[PromptRow]

A problem is a short story over a running integer total with 1-2 operations (+, -, *; up to
`Difficulty.max_ops`) on small numbers:

    prompt   "Q: Ann has 7 apples. She buys 5 more. She gives away 3. How many apples does Ann have?\\nA:"
    solution " 7+5=12. 12-3=9. The answer is 9."
    answer   "9"

The response a model should produce is `solution` followed by EOS; the final phrase is always
"The answer is N." with N a non-negative integer.

Splits. A problem's `canonical` form is its arithmetic alone (e.g. "7+5-3"), without names,
objects or wording. A problem is held out iff a hash of `canonical` falls in the held-out bucket
(`HELDOUT_PERCENT` of all computations), so the held-out set shares no computation with the SFT or
RL sets, whatever their seeds: disjoint by construction, not by bookkeeping. Held-out problems
are never trained on. The SFT, RL and held-out sets draw from independent random streams derived
from one `seed`; each is deterministic in (`seed`, `n`, `difficulty`).

`Difficulty` is the knob that sets how hard the task is (and so the seed model's accuracy). The
defaults are tuned with engine/demo/seed.py's worked-solutions warm-up (600 steps of 16): ~50% greedy
held-out accuracy for seed 0 (before the seed's bare-answer phase). A 3-operation, totals-up-to-99
variant left it near 15%. The default space has ~2,800 distinct computations, ~290 of them held
out, so ask for at most ~250 held-out prompts.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Literal

from engine.data.prompts import PromptRow

HELDOUT_PERCENT = 10
Split = Literal["sft", "rl", "heldout"]


@dataclass(frozen=True)
class Difficulty:
    """Number ranges and operation counts of generated problems."""

    min_ops: int = 1
    max_ops: int = 2
    max_start: int = 10  # the opening quantity is in [2, max_start]
    max_operand: int = 9  # added / removed amounts are in [1, max_operand]
    max_factor: int = 3  # multipliers and group counts are in [2, max_factor]
    max_group: int = 9  # items per group, in [2, max_group]
    max_total: int = 30  # the running total never exceeds this

    def __post_init__(self) -> None:
        if not 1 <= self.min_ops <= self.max_ops <= 4:
            raise ValueError(f"Difficulty needs 1 <= min_ops <= max_ops <= 4, got {self.min_ops}, {self.max_ops}")
        if min(self.max_start, self.max_operand, self.max_factor, self.max_group) < 2:
            raise ValueError(f"Difficulty ranges must be >= 2: {self}")
        if self.max_total < max(self.max_start, self.max_factor * self.max_group):
            raise ValueError(f"Difficulty.max_total={self.max_total} is below an opening quantity: {self}")


@dataclass(frozen=True)
class Problem:
    prompt: str  # "Q: ...\nA:"
    solution: str  # " a+b=c. ... The answer is N." (the response, without EOS)
    answer: str  # "N"
    template: str  # which story template
    canonical: str  # the arithmetic alone, e.g. "7+5-3"; decides the split

    def row(self) -> PromptRow:
        return PromptRow(prompt=self.prompt, answer=self.answer, task="math",
                         meta={"template": self.template, "canonical": self.canonical})


@dataclass(frozen=True)
class _Person:
    name: str
    subject: str  # "She"


_PEOPLE = [_Person(n, "She") for n in ("Ann", "Mia", "Lily", "Emma", "Sara", "Nora", "Zoe", "Ruth")] + [
    _Person(n, "He") for n in ("Tom", "Ben", "Sam", "Leo", "Max", "Jack", "Omar", "Paul")
]
_OBJECTS = ("apples", "marbles", "stickers", "pencils", "cards", "shells", "coins", "books", "eggs", "cookies")
_CONTAINERS = ("boxes", "bags", "jars", "baskets", "packs")

# Per story: sentences for +b, -b and *b on the running total, and the closing question.
_ADD = {
    "items": ("{S} buys {b} more.", "{S} finds {b} more.", "{S} gets {b} more."),
    "money": ("{S} earns {b} dollars.", "{S} finds {b} dollars.", "{S} gets {b} dollars."),
    "class": ("{b} students join.", "{b} students arrive.", "{b} more students come."),
}
_SUB = {
    "items": ("{S} gives away {b}.", "{S} loses {b}.", "{S} sells {b}."),
    "money": ("{S} spends {b} dollars.", "{S} loses {b} dollars.", "{S} pays {b} dollars."),
    "class": ("{b} students leave.", "{b} students go home.", "{b} students quit."),
}
_MUL = {
    "items": ("Then {S_low} has {b} times as many.",),
    "money": ("Then {S_low} has {b} times as much.",),
    "class": ("Then the class is {b} times as big.",),
}
_QUESTION = {
    "items": "How many {obj} does {N} have?",
    "money": "How many dollars does {N} have?",
    "class": "How many students are there?",
}
_TEMPLATES = ("items", "groups", "money", "class")


def is_heldout(canonical: str) -> bool:
    """True iff the computation `canonical` belongs to the held-out split (a stable hash bucket)."""
    bucket = int.from_bytes(hashlib.sha256(canonical.encode()).digest()[:8], "big") % 100
    return bucket < HELDOUT_PERCENT


def make_problem(rng: random.Random, difficulty: Difficulty = Difficulty()) -> Problem:
    """One random problem (any split); `rng` is the only source of randomness."""
    d = difficulty
    template = rng.choice(_TEMPLATES)
    person = rng.choice(_PEOPLE)
    obj = rng.choice(_OBJECTS)
    fields = {"N": person.name, "S": person.subject, "S_low": person.subject.lower(), "obj": obj}
    n_ops = rng.randint(d.min_ops, d.max_ops)

    steps: list[str] = []  # " a+b=c"
    if template == "groups":
        groups, per_group = rng.randint(2, d.max_factor), rng.randint(2, d.max_group)
        container = rng.choice(_CONTAINERS)
        sentences = [f"{person.name} has {groups} {container} of {per_group} {obj}."]
        total = groups * per_group
        steps.append(f"{groups}*{per_group}={total}")
        canonical = f"{groups}*{per_group}"
        n_ops -= 1
        story = "items"
    else:
        total = rng.randint(2, d.max_start)
        opening = {"items": f"{person.name} has {total} {obj}.",
                   "money": f"{person.name} has {total} dollars.",
                   "class": f"There are {total} students in a class."}[template]
        sentences, canonical, story = [opening], str(total), template

    for _ in range(n_ops):
        ops = []
        if total + 1 <= d.max_total:
            ops.append("+")
        if total >= 2:
            ops.append("-")
        if 2 * total <= d.max_total:
            ops.append("*")
        op = rng.choice(ops)
        if op == "+":
            b = rng.randint(1, min(d.max_operand, d.max_total - total))
            new, table = total + b, _ADD
        elif op == "-":
            b = rng.randint(1, min(d.max_operand, total - 1))
            new, table = total - b, _SUB
        else:
            b = rng.randint(2, min(d.max_factor, d.max_total // total))
            new, table = total * b, _MUL
        sentences.append(rng.choice(table[story]).format(**fields, b=b))
        steps.append(f"{total}{op}{b}={new}")
        canonical += f"{op}{b}"
        total = new

    sentences.append(_QUESTION[story].format(**fields))
    prompt = "Q: " + " ".join(sentences) + "\nA:"
    solution = "".join(f" {s}." for s in steps) + f" The answer is {total}."
    return Problem(prompt=prompt, solution=solution, answer=str(total), template=template, canonical=canonical)


def generate_problems(n: int, *, seed: int = 0, split: Split = "sft",
                      difficulty: Difficulty = Difficulty()) -> list[Problem]:
    """`n` problems of one split, deterministic in (seed, split, n, difficulty).

    "sft" and "rl" draw from the training computations with independent streams (they may share
    computations with each other, as any two samples of one distribution do); "heldout" draws
    distinct held-out computations, disjoint from both by construction (see module docstring).
    """
    if split not in ("sft", "rl", "heldout"):
        raise ValueError(f"split must be 'sft', 'rl' or 'heldout', got {split!r}")
    rng = random.Random(f"semionline-synthetic:{seed}:{split}")
    want_heldout = split == "heldout"
    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 200 * n + 10_000:
            raise RuntimeError(f"could not draw {n} distinct {split} problems with {difficulty}; "
                               f"got {len(problems)} (the held-out space is too small for n)")
        problem = make_problem(rng, difficulty)
        if is_heldout(problem.canonical) != want_heldout:
            continue
        if want_heldout:
            if problem.canonical in seen:
                continue
            seen.add(problem.canonical)
        problems.append(problem)
    return problems


def sft_problems(n: int, *, seed: int = 0, difficulty: Difficulty = Difficulty()) -> list[Problem]:
    """Supervised warm-up set: prompts with their worked solutions (training computations only)."""
    return generate_problems(n, seed=seed, split="sft", difficulty=difficulty)


def rl_prompts(n: int, *, seed: int = 0, difficulty: Difficulty = Difficulty()) -> list[PromptRow]:
    """RL prompt set: the training distribution, disjoint from held-out."""
    return [p.row() for p in generate_problems(n, seed=seed, split="rl", difficulty=difficulty)]


def heldout_prompts(n: int, *, seed: int = 0, difficulty: Difficulty = Difficulty()) -> list[PromptRow]:
    """Held-out evaluation prompts: distinct computations never seen in SFT or RL."""
    return [p.row() for p in generate_problems(n, seed=seed, split="heldout", difficulty=difficulty)]
