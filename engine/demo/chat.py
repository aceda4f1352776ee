"""A small non-verifiable task for the CPU demo model: write a short note to someone about their things.

    from engine.demo.chat import chat_prompts, sample_response, note_quality
    rows = chat_prompts(200, split="heldout", seed=0)     # PromptRow(task="chat")
    text = sample_response(rows[0], random.Random(0))    # " Hi Ann! Your shells are lovely. Thank you."

    prompt    "Q: Write a note to Ann about her shells.\\nA:"
    response  " Hi Ann! Your shells are lovely. Thank you."

A response is up to three parts, a greeting, a remark and a closing, each drawn from a pool that
mixes good and poor choices ("Hi Ann!" / "Hey." / nothing; "Your shells are lovely." / "I have
no idea." / "The answer is 4."). Nothing checks a note: its reward comes from a reward model
(`engine/demo/rm_train.py`) trained with a Bradley-Terry loss on pairs of notes ranked by
`note_quality`. The quality rule is the hidden "human preference" that the reward model has to
learn from pairs; the policy only ever sees the reward model's score. A model that learns the
task from `sample_response` (the seed warm-up) writes every kind of note, so RL has room to move
towards the notes the reward model likes. Those notes name the person and talk kindly about their
things.

Splits: a prompt is held out iff a hash of (name, object) falls in the held-out bucket, as in
`engine/demo/synthetic.py`, so held-out prompts never appear in SFT, reward-model or RL data.
"""

from __future__ import annotations

import hashlib
import random
from typing import Literal

from engine.data.prompts import PromptRow

TASK = "chat"
HELDOUT_PERCENT = 15
Split = Literal["sft", "rl", "heldout"]

_NAMES = ("Ann", "Mia", "Lily", "Emma", "Sara", "Nora", "Zoe", "Ruth", "Kate", "Ivy", "Tom", "Ben", "Sam", "Leo",
          "Max", "Jack", "Omar", "Paul", "Tim", "Dan")
_FEMALE = set(_NAMES[:10])
_OBJECTS = ("apples", "marbles", "stickers", "pencils", "cards", "shells", "coins", "books", "eggs", "cookies",
            "kites", "hats", "cats", "plants", "shoes")

# (template, quality points). The quality rule: greet by name, be kind and on topic, close politely.
_GREETINGS = (("Hi {name}!", 2), ("Dear {name},", 2), ("Hello {name}.", 2), ("Hey.", 0), ("", 0))
_REMARKS = (
    ("Your {obj} are lovely.", 3), ("I love your {obj}.", 3), ("Your {obj} look great.", 3),
    ("I saw your {obj}.", 1), ("You have {obj}.", 1),
    ("I have no idea.", -1), ("The answer is 4.", -2), ("Your {obj} are bad.", -3),
)  # fmt: skip
_CLOSINGS = (("Thank you.", 1), ("Have a nice day.", 1), ("See you soon.", 1), ("Bye.", 0), ("", 0))


def is_heldout(name: str, obj: str) -> bool:
    bucket = int.from_bytes(hashlib.sha256(f"{name}|{obj}".encode()).digest()[:8], "big") % 100
    return bucket < HELDOUT_PERCENT


def heldout_size() -> int:
    """How many distinct held-out prompts exist."""
    return sum(is_heldout(a, b) for a in _NAMES for b in _OBJECTS)


def make_prompt(name: str, obj: str) -> PromptRow:
    pronoun = "her" if name in _FEMALE else "his"
    return PromptRow(prompt=f"Q: Write a note to {name} about {pronoun} {obj}.\nA:", answer="", task=TASK,
                     meta={"name": name, "obj": obj})


def chat_prompts(n: int, *, split: Split = "rl", seed: int = 0) -> list[PromptRow]:
    """`n` prompts of one split (with repeats in "sft"/"rl", distinct in "heldout")."""
    if split not in ("sft", "rl", "heldout"):
        raise ValueError(f"split must be 'sft', 'rl' or 'heldout', got {split!r}")
    pool = [(a, b) for a in _NAMES for b in _OBJECTS if is_heldout(a, b) == (split == "heldout")]
    rng = random.Random(f"semionline-chat:{seed}:{split}")
    if split == "heldout":
        if n > len(pool):
            raise ValueError(f"only {len(pool)} held-out chat prompts exist, asked for {n}")
        return [make_prompt(*p) for p in rng.sample(pool, n)]
    return [make_prompt(*rng.choice(pool)) for _ in range(n)]


def sample_response(row: PromptRow, rng: random.Random) -> str:
    """One note, every part drawn uniformly from its pool (what the seed warm-up trains on)."""
    parts = [rng.choice(pool)[0] for pool in (_GREETINGS, _REMARKS, _CLOSINGS)]
    text = " ".join(p for p in parts if p).format(name=row.meta["name"], obj=row.meta["obj"])
    return " " + text


def note_quality(row: PromptRow, response: str) -> float:
    """The hidden preference: points for the parts a note uses (unknown text scores what it
    matches; a note that is not one of the task's forms scores -4). Used only to label
    reward-model training pairs and to report what a policy really learned, never as a reward."""
    name, obj = row.meta["name"], row.meta["obj"]
    text = response.strip()
    best = None
    for g, gq in _GREETINGS:
        for r, rq in _REMARKS:
            for c, cq in _CLOSINGS:
                form = " ".join(p for p in (g, r, c) if p).format(name=name, obj=obj)
                if form == text:
                    best = gq + rq + cq if best is None else max(best, gq + rq + cq)
    return float(best) if best is not None else -4.0


def gold_quality(prompts, responses, rows) -> list[float]:
    """`note_quality` as a callable scorer (reward/eval_reward `engine.demo.chat:gold_quality`):
    the CPU chat task's gold judge, the stand-in for the paper's GPT-4 judge. Used to evaluate,
    never as a training reward in the sweep."""
    return [note_quality(row, text) for row, text in zip(rows, responses, strict=True)]
