"""Rollout logs: what the sampler produced, one file per logged step, for a person to read first
when a run goes wrong (`log.rollouts: N` logs every N-th step; 0 = off):

    RUN_DIR/rollouts/step_000012.jsonl   one row per sample: prompt (text, as the model saw it,
        chat template included) and its ids, response text and ids, behaviour log-probs, reward,
        task, the weight version that sampled it, and why sampling stopped
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.files import atomic_write_text
from engine.rollout.types import RolloutBatch


class RolloutLog:
    def __init__(self, run_dir: str | Path, every: int, tokenizer):
        self.dir, self.every, self.tokenizer = Path(run_dir) / "rollouts", every, tokenizer

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def write(self, step: int, batch: RolloutBatch) -> Path:
        rows = [{
            "step": step, "task": r.task, "version": r.version, "reward": r.reward, "finish_reason": r.finish_reason,
            "prompt": self.tokenizer.decode(r.prompt_ids, skip_special_tokens=False), "prompt_ids": list(r.prompt_ids),
            "response": r.text, "response_ids": list(r.response_ids), "behaviour_logprobs": list(r.behaviour_logprobs),
        } for r in batch.rollouts]  # fmt: skip
        return atomic_write_text(self.dir / f"step_{step:06d}.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
