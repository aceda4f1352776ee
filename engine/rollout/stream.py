"""Shuffled passes over a task's prompts (or preference pairs), deterministic by seed; its state
goes into checkpoints, so a resumed run takes the same prompts next."""

from __future__ import annotations

import random


class PromptStream:
    """Shuffled passes over the training prompts, deterministic by seed."""

    def __init__(self, n: int, seed: int):
        self.n, self.rng, self.order = n, random.Random(seed), []

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if not self.order:
                self.order = list(range(self.n))
                self.rng.shuffle(self.order)
            out.append(self.order.pop())
        return out

    def state(self) -> tuple[list[int], tuple]:
        return list(self.order), self.rng.getstate()

    def restore(self, order: list[int], rng_state: tuple) -> None:
        self.order = list(order)
        self.rng.setstate(rng_state)
