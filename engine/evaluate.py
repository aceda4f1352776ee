"""Held-out math evaluation through the vLLM sampler: pass@1 averaged over `samples` per prompt
(the paper: 50 samples at temperature 0.6, top-p 0.9) and maj@k when `samples > 1`.

    semionline eval --model runs/demo-grpo/final --data .cache/seed/data/heldout.jsonl
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from engine.config import EvalConfig
from engine.data.prompts import PromptRow
from engine.rewards.math import extract_answer, math_reward_batch


@dataclass
class EvalResult:
    accuracy: float  # pass@1 averaged over samples
    maj_accuracy: float  # majority vote over the samples of each prompt
    prompts: int
    samples: int
    mean_length: float  # response tokens
    reward_timeouts: int

    def as_metrics(self, prefix: str = "eval") -> dict[str, float]:
        return {
            f"{prefix}/accuracy": self.accuracy,
            f"{prefix}/maj_accuracy": self.maj_accuracy,
            f"{prefix}/response_length": self.mean_length,
        }


def evaluate_math(sampler, prompt_ids: Sequence[list[int]], rows: Sequence[PromptRow], cfg: EvalConfig, *,
                  stop_token_ids: list[int], seed: int = 0) -> EvalResult:
    greedy = cfg.temperature == 0.0
    n = 1 if greedy else cfg.samples
    outs = sampler.generate(
        list(prompt_ids), n=n, temperature=cfg.temperature, top_p=1.0 if greedy else cfg.top_p,
        max_tokens=cfg.max_tokens, stop_token_ids=stop_token_ids, seed=seed,
    )  # fmt: skip
    texts = [s.text for group in outs for s in group]
    refs = [row.answer for row, group in zip(rows, outs, strict=True) for _ in group]
    rewards, stats = math_reward_batch(texts, refs)
    correct, maj, lengths, i = 0.0, 0.0, [], 0
    for group in outs:
        group_rewards = rewards[i : i + len(group)]
        correct += sum(group_rewards) / len(group)
        answers = [extract_answer(s.text) for s in group]
        votes = Counter(a for a in answers if a is not None)
        if votes:
            top = votes.most_common(1)[0][0]
            maj += group_rewards[answers.index(top)]
        lengths.extend(len(s.token_ids) for s in group)
        i += len(group)
    return EvalResult(
        accuracy=correct / len(outs),
        maj_accuracy=maj / len(outs),
        prompts=len(outs),
        samples=n,
        mean_length=sum(lengths) / max(len(lengths), 1),
        reward_timeouts=stats.timeouts,
    )
