"""Fakes for fast unit tests of the run's orchestration (no vLLM, no subprocess, no model):
a sampler, a learner and a reward with just the behaviour the components rely on.

    sampler = FakeSampler()                      # responses "Ans {k}", log-prob -1.0 per token
    learner = FakeLearner()                      # scores every token at -1.0: the sampler's parity twin
    tasks:  {t: {reward: "fakes:digit_reward"}}  # a callable reward by import path (tests/ is on sys.path)

The real components (RolloutSource, WeightSync, Evaluator, RunLoop) run on top of them.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

from engine.sampler.transport import PushStats
from engine.sampler.vllm_engine import Sample

TOKEN_LOGPROB = -1.0


def digit_reward(prompts, responses, rows):
    """1.0 when the response ends with the row's answer, else 0.0."""
    return [1.0 if r.strip().endswith(row.answer) else 0.0 for r, row in zip(responses, rows, strict=True)]


def failing_reward(prompts, responses, rows):
    """A reward source that is down: every sample fails (None), as a judge answering 503 would."""
    return [None] * len(responses)


@dataclass
class FakeSampler:
    """Each sample: "Ans <d>" with d from a generator seeded like vLLM's (seed + i * n + j)."""

    tokenizer: object
    logprob_shift: float = 0.0  # > 0: a sampler that does not hold the learner's weights...
    shift_after_pushes: int = 0  # ...once it has received this many pushes
    pushes: list[dict] = field(default_factory=list)  # every push: {name: tensor}
    generates: list[dict] = field(default_factory=list)  # every generate call's arguments
    quiet_depth: int = 0
    closed: bool = False
    engines: int = 1

    def generate(self, prompt_token_ids, *, n, temperature, top_p, max_tokens, stop_token_ids, seed=0):
        self.generates.append({"prompts": len(prompt_token_ids), "n": n, "seed": seed, "max_tokens": max_tokens,
                               "weights": len(self.pushes)})
        shift = self.logprob_shift if len(self.pushes) >= self.shift_after_pushes else 0.0
        out = []
        for i, _ in enumerate(prompt_token_ids):
            group = []
            for j in range(n):
                text = f" Ans {random.Random(seed + i * n + j).randrange(10)}"
                ids = self.tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
                group.append(Sample(token_ids=ids, logprobs=[TOKEN_LOGPROB + shift] * len(ids),
                                    text=text, finish_reason="stop"))
            out.append(group)
        return out

    def push_weights(self, named_tensors) -> PushStats:
        weights = {name: t.clone() for name, t in named_tensors}
        self.pushes.append(weights)
        size = sum(t.numel() * t.element_size() for t in weights.values())
        return PushStats(seconds=0.0, bytes=size, num_tensors=len(weights), num_buckets=1, peak_bytes=size)

    @contextlib.contextmanager
    def quiet(self):
        self.quiet_depth += 1
        try:
            yield
        finally:
            self.quiet_depth -= 1

    def close(self) -> None:
        self.closed = True


class FakeLearner:
    """One parameter `w` (value = optimizer steps taken); every token scores TOKEN_LOGPROB."""

    def __init__(self):
        self.step, self.skipping, self.param_bytes = 0, False, 4
        self.w = torch.zeros(1)
        self.reference = self
        self.batches: list = []
        self.saved: list[str] = []

    def score(self, seqs, reference: bool = False):
        return [torch.full((len(r),), TOKEN_LOGPROB) for _, r in seqs]

    def on_micro_batch(self, fn):
        self.micro_batch_hook = fn

    def backward(self, batch, *, dpo=None, grpo=None):
        self.batches.append(batch)
        units = sum(len(p.pairs) + len(p.groups) for p in batch.parts) + len(batch.pairs) + len(batch.groups)
        self.skipping = units == 0
        fresh = [r for r in batch.rollouts if r.version == self.step]
        out = {"train/loss": float(units)}
        if fresh and not self.skipping:
            gaps = [abs(lp - TOKEN_LOGPROB) for r in fresh for lp in r.behaviour_logprobs]
            out.update({"parity/batch_gap": sum(gaps) / len(gaps), "parity/batch_tokens": float(len(gaps))})
        return out

    def update(self):
        self.step += 1
        if not self.skipping:
            self.w += 1
        self.skipping = False
        return {"train/grad_norm": 1.0}

    def hf_weights(self):
        yield "w", self.w.clone()

    def save(self, out_dir: str) -> None:
        self.saved.append(out_dir)


# One process, no group: what the components need of a Mesh.
MESH = SimpleNamespace(rank=0, world_size=1, dp_rank=0, device=torch.device("cpu"), layout="tp1-pp1-dp1",
                       barrier=lambda: None)


def tokenizer_in(d: Path):
    """The engine's own character tokenizer, saved to `d` and loaded back."""
    from engine.data.tokenizer import load_tokenizer, save_tokenizer

    save_tokenizer(d)
    return load_tokenizer(d)


def digits_rows() -> list[dict]:
    """12 prompt rows "Q: k+0?" with answer k % 10."""
    return [{"prompt": f"Q: {k}+0?\nA:", "answer": str(k % 10)} for k in range(12)]


def digits_data(d: Path) -> Path:
    """train.jsonl (`digits_rows`) and eval.jsonl (their first 4) in `d`."""
    from engine.data.prompts import write_jsonl

    rows = digits_rows()
    write_jsonl(d / "train.jsonl", rows)
    write_jsonl(d / "eval.jsonl", rows[:4])
    return d


def digits_config(data: Path, **over):
    """A 4-step GRPO run on `digits_data` with `digit_reward`; `over`: dotted keys ("eval.every")."""
    from engine.config import RunConfig

    tree = {"steps": 4, "objective": "grpo", "sync_every": 1, "model": "unused",
            "rollout": {"prompts_per_step": 3, "samples_per_prompt": 4, "max_tokens": 8},
            "eval": {"every": 0, "max_prompts": 4, "max_tokens": 8},
            "tasks": {"digits": {"data": str(data / "train.jsonl"), "eval_data": str(data / "eval.jsonl"),
                                 "reward": "fakes:digit_reward"}}}
    for key, value in over.items():
        node = tree
        *path, leaf = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return RunConfig.model_validate(tree)


def fake_loop(cfg, tokenizer, run_dir: Path, mesh=MESH, step0_cache=None):
    """A `RunLoop` with every real component between a FakeSampler and a FakeLearner."""
    from engine.evaluator import Evaluator
    from engine.loop import RunLoop
    from engine.metrics import MetricsLogger
    from engine.rollout.source import RolloutSource
    from engine.sync.weights import WeightSync

    run_dir.mkdir(parents=True, exist_ok=True)
    sampler = FakeSampler(tokenizer)
    learner = FakeLearner()
    source = RolloutSource(cfg, tokenizer, sampler, driver=True, stop_ids=[tokenizer.eos_token_id], clock0=0.0)
    sync = WeightSync(cfg, learner, mesh, sampler=sampler, engine=sampler, probe_prompts=source.eval_ids,
                      stop_ids=source.stop_ids)
    evaluator = Evaluator(cfg, source, sync, mesh, step0_cache=step0_cache)
    return RunLoop(cfg, run_dir, mesh, learner=learner, source=source, sync=sync, evaluator=evaluator,
                   logger=MetricsLogger(run_dir, tensorboard=False), close_sampler=sampler.close)
