"""Rollout production: the run's prompts, sampling, rewards, and the pairs or groups a step trains on.

    source = RolloutSource(cfg, tokenizer, sampler, driver=True)
    source.prepare_offline()                 # sync_every=offline: every step's rollouts from the seed
    produced = source.produce(step, version) # sample + reward + pairs/groups for optimizer step `step`
    state = source.state_at(step)            # its part of a checkpoint (the learner's position)

The driver rank owns it (sampler and rewards live there); it issues no collectives, so the
overlap producer thread can call `produce` while the main thread trains. Its own state is the
prompt streams, the pair RNG and the offline pool; `state_at(step)` is where the data stood right
after the batch of `step` was made, which with overlap is behind where the producer now is.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from engine.config import RunConfig
from engine.data.preferences import load_preference_rows
from engine.rewards.errors import RewardErrorTracker
from engine.rollout.offline import cached_pool, pool_key
from engine.rollout.preferences import preference_batches
from engine.rollout.stream import PromptStream
from engine.rollout.types import Produced, RolloutBatch
from engine.tasks import Task, build_parts, build_tasks, sample_task_groups


@dataclass
class SourceState:
    """RolloutSource's part of a checkpoint."""

    pair_rng: tuple  # the DPO pair builder's random.Random state
    task_streams: list[tuple]  # each task's PromptStream state
    pending: list[RolloutBatch]  # offline: the batches of the steps still to train


class RolloutSource:
    def __init__(self, cfg: RunConfig, tokenizer, sampler, *, driver: bool, stop_ids: list[int], clock0: float,
                 device: str = "cpu"):
        self.cfg, self.sampler, self.driver, self.stop_ids, self.tokenizer = cfg, sampler, driver, stop_ids, tokenizer
        self.rng = random.Random(cfg.seed)
        # Every run is a list of tasks (engine/tasks.py): a config without `tasks:` is one task,
        # "default", made from `data`, `objective`, `dpo`/`grpo` and the math reward.
        self.tasks: list[Task] = build_tasks(cfg, tokenizer, driver=driver, device=device)
        self.task_streams = [PromptStream(len(t.rows), cfg.seed + 7919 * (k + 1)) for k, t in enumerate(self.tasks)]
        # the sampler parity probe uses the first task with held-out prompts
        first = next((t for t in self.tasks if t.eval_rows), self.tasks[0])
        self.eval_ids = first.eval_ids or first.ids[:8]
        self.offline: list[RolloutBatch | None] = []  # indexed by step - 1
        self.reward_errors = RewardErrorTracker(cfg.reward.max_error_steps)
        self._errors: dict[str, int] = {}  # the last sampled step's reward errors per task
        self._positions: dict[int, tuple] = {}  # step -> data position right after its batch was made
        self._reward_seconds = 0.0
        self.clock0 = clock0  # origin of the time/at_* metrics (a timeline)

    # -- producing ---------------------------------------------------------------------------

    def produce(self, step: int, version: int) -> Produced:
        """Sampling + rewards + pairs/groups for optimizer step `step` (1-based) with the sampler
        holding the weights of learner step `version` (driver; the caller holds the sampler lock)."""
        times = {"time/generate": 0.0, "time/reward": 0.0}
        if self.cfg.offline:
            return Produced(self.offline[step - 1], times)
        t0 = time.perf_counter()
        self._reward_seconds = 0.0
        task_groups, stats = self._sample_task_groups(step, version)
        batch = self._task_batch(step, version, task_groups, stats.timeouts, stats.failures)
        self._positions[step] = self._position()
        t1 = time.perf_counter()
        times["time/reward"] = self._reward_seconds
        times["time/generate"] = t1 - t0 - self._reward_seconds
        times["time/at_produce_start"], times["time/at_produce_end"] = t0 - self.clock0, t1 - self.clock0
        return Produced(batch, times)

    def prepare_offline(self) -> float:
        """Offline: every rollout of the run from the seed, before training (driver). With
        `offline_rollouts`, the pool is loaded from that file when it was made for the same
        settings (else made and written), and its batches are taken in this run's seed's order."""
        t0 = time.perf_counter()
        if self.driver and self.cfg.data.preferences:  # pairs from a file: nothing to sample
            d = self.cfg.data
            rows = load_preference_rows(d.preferences, self.tokenizer, prompt_template=d.prompt_template,
                                        chat_template=d.chat_template, system_prompt=d.system_prompt,
                                        stop_ids=self.stop_ids)
            self.offline = preference_batches(rows, self.cfg)
        elif self.driver:
            pool = self._offline_pool()
            order = list(range(len(pool)))
            if self.cfg.offline_rollouts:
                self.rng.shuffle(order)
            for s, k in enumerate(order):
                raw, timeouts, failures = pool[k]
                self.offline.append(self._task_batch(s + 1, 0, raw, timeouts, failures))
        return time.perf_counter() - t0

    def _offline_pool(self) -> list[tuple[list, int, int]]:
        """Per step: (the seed's scored groups, or per task its groups; timeouts; failures)."""
        if self.cfg.offline_rollouts:
            return cached_pool(Path(self.cfg.offline_rollouts), pool_key(self.cfg), self._make_offline_pool)
        return self._make_offline_pool()

    def _make_offline_pool(self) -> list[tuple[list, int, int]]:
        pool = []
        for step in range(1, self.cfg.steps + 1):
            task_groups, stats = self._sample_task_groups(step, 0)
            pool.append((task_groups, stats.timeouts, stats.failures))
        return pool

    def _sample_task_groups(self, step: int, version: int):
        r = self.cfg.rollout
        task_groups, stats = sample_task_groups(
            self.tasks, self.task_streams, self.sampler, prompts_per_step=r.prompts_per_step, step=step,
            version=version, temperature=r.temperature, top_p=r.top_p, stop_token_ids=self.stop_ids,
            seed=self.cfg.seed,
        )  # fmt: skip
        self._reward_seconds += stats.reward_seconds
        for name, out in stats.outputs.items():  # a reward source that only errors stops the run
            self.reward_errors.observe(step, name, out)
        self._errors = {name: out.errors for name, out in stats.outputs.items()}
        return task_groups, stats

    def _task_batch(self, step: int, version: int, task_groups, timeouts: int, failures: int) -> RolloutBatch:
        parts, rollouts = build_parts(self.tasks, task_groups, self.rng)
        return RolloutBatch(step=step, version=version, rollouts=rollouts, reward_timeouts=timeouts, parts=parts,
                            reward_failures=failures, reward_errors=dict(self._errors))

    # -- checkpoint state --------------------------------------------------------------------

    def _position(self) -> tuple:
        return self.rng.getstate(), [t.state() for t in self.task_streams]

    def forget_before(self, step: int) -> None:
        """Drop the data positions of steps before `step` (trained; no checkpoint will ask)."""
        for done in [k for k in self._positions if k < step]:
            del self._positions[done]

    def state_at(self, step: int) -> SourceState:
        """Where the data stood right after the batch of `step` was made (the producer may be ahead)."""
        pair_rng, task_streams = self._positions.get(step, self._position())
        return SourceState(pair_rng=pair_rng, task_streams=task_streams, pending=self.offline[step:])

    def restore(self, state: SourceState, step: int) -> None:
        for stream, (order, rng_state) in zip(self.task_streams, state.task_streams, strict=True):
            stream.restore(order, rng_state)
        self.rng.setstate(state.pair_rng)
        self.offline = [None] * step + list(state.pending)
