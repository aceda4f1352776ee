"""Offline DPO straight from preference rows (`data.preferences`, as TRL users hold them): each
step trains on `rollout.prompts_per_step` pairs, taken in shuffled passes over the file; nothing is
sampled. The reference model's log-probs of every pair are computed once, before the first step
(`reference_logprobs`), and travel with the pairs: the training step runs the policy only.

    batches = preference_batches(rows, cfg)          # one RolloutBatch per step (driver)
    seconds = cache_reference(learner, batches, mesh) # collective: every rank scores, the driver keeps
"""

from __future__ import annotations

import time

from engine.config import RunConfig
from engine.data.preferences import PreferenceRow
from engine.parallel.objects import broadcast_object
from engine.rollout.stream import PromptStream
from engine.rollout.types import DEFAULT, PreferencePair, Rollout, RolloutBatch, TaskBatch

NO_VERSION = -1  # not sampled by any weights the learner had: no sampler/learner parity check


def _rollout(index: int, prompt_ids: list[int], response_ids: list[int], reward: float) -> Rollout:
    return Rollout(prompt_index=index, prompt_ids=list(prompt_ids), response_ids=list(response_ids),
                   behaviour_logprobs=[], text="", reward=reward, version=NO_VERSION, task=DEFAULT)


def preference_batches(rows: list[PreferenceRow], cfg: RunConfig) -> list[RolloutBatch]:
    """`cfg.steps` batches of `prompts_per_step` pairs, in shuffled passes (seeded by `cfg.seed`)."""
    stream, per_step = PromptStream(len(rows), cfg.seed), cfg.rollout.prompts_per_step
    batches = []
    for step in range(1, cfg.steps + 1):
        pairs = [PreferencePair(chosen=_rollout(i, rows[i].prompt_ids, rows[i].chosen_ids, 1.0),
                                rejected=_rollout(i, rows[i].prompt_ids, rows[i].rejected_ids, 0.0))
                 for i in stream.take(per_step)]
        part = TaskBatch(task=DEFAULT, objective="dpo", weight=1.0, pairs=pairs, dpo=cfg.dpo)
        rollouts = [r for p in pairs for r in (p.chosen, p.rejected)]
        batches.append(RolloutBatch(step=step, version=NO_VERSION, rollouts=rollouts, parts=[part]))
    return batches


def cache_reference(learner, batches: list[RolloutBatch] | None, mesh) -> float:
    """The reference log-probs of every sequence in `batches` (the driver's; None elsewhere),
    computed once (collective over the mesh) and stored on the driver's rollouts."""
    t0 = time.perf_counter()
    rollouts = [r for b in batches for r in b.rollouts] if batches is not None else None
    seqs = broadcast_object([(r.prompt_ids, r.response_ids) for r in rollouts] if rollouts is not None else None, mesh)
    unique = {key: k for k, key in enumerate(dict.fromkeys((tuple(p), tuple(r)) for p, r in seqs))}
    scored = learner.score([(list(p), list(r)) for p, r in unique], reference=True)
    if rollouts is not None:
        for r in rollouts:
            r.ref_logprobs = scored[unique[(tuple(r.prompt_ids), tuple(r.response_ids))]].tolist()
    return time.perf_counter() - t0
