"""Tasks of a run: where each task's prompts come from, how its samples are rewarded, and how they
become training units (DPO pairs or GRPO groups) with the task's own hyperparameters.

    tasks = build_tasks(cfg, tokenizer)              # [Task], one per `cfg.tasks` entry (or one)
    counts = split_prompts([t.weight for t in tasks], cfg.rollout.prompts_per_step)
    part = tasks[0].to_part(groups, rng)            # TaskBatch for Learner.train_tasks

A run without `tasks` has one task, "default", built from `data`, `objective` and the math
reward, which is exactly the single-task run. With `tasks`, every task has its own prompt file,
reward source (engine/rewards/router.py), objective, mixture weight, samples per prompt and
DPO/GRPO settings. Reward models and judges are built only where rewards are computed (the
driver rank).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.config import ConfigError, DPOConfig, GRPOConfig, RunConfig, TaskConfig
from engine.data.datasets import load_prompt_rows, parse_source
from engine.data.encoding import encode_prompt_row
from engine.data.prompts import PromptFileError, PromptRow
from engine.rewards.router import RewardFn, RewardOutput, build_reward
from engine.rollout.build import build_groups, build_pairs
from engine.rollout.types import Rollout, TaskBatch


@dataclass
class Task:
    name: str
    objective: str  # "dpo" | "grpo"
    weight: float
    reward_source: str  # "math", "reward_model", "judge" or "package.module:function"
    samples_per_prompt: int
    max_tokens: int
    dpo: DPOConfig
    grpo: GRPOConfig
    rows: list[PromptRow]
    ids: list[list[int]]
    eval_rows: list[PromptRow] = field(default_factory=list)
    eval_ids: list[list[int]] = field(default_factory=list)
    reward: RewardFn | None = None  # built on the driver only
    eval_reward: RewardFn | None = None  # eval-only scorer (TaskConfig.eval_reward), driver only

    @property
    def verifiable(self) -> bool:
        return self.reward_source == "math"

    def score(self, indices: Sequence[int], responses: Sequence[str]) -> RewardOutput:
        if self.reward is None:
            raise RuntimeError(f"task {self.name!r}: rewards are computed on the driver rank only")
        return self.reward([self.rows[i] for i in indices], responses)

    def to_part(self, groups: Sequence[Sequence[Rollout]], rng: random.Random) -> TaskBatch:
        """Training units from this task's scored groups. Samples whose reward failed (None) were
        already dropped by the caller; a group left with fewer than 2 samples carries no signal."""
        groups = [g for g in groups if len(g) >= 2]
        part = TaskBatch(task=self.name, objective=self.objective, weight=self.weight, dpo=self.dpo, grpo=self.grpo)
        if self.objective == "dpo":
            # Verifiable rewards: a random correct vs a random incorrect response; model scores:
            # the highest vs the lowest (DESIGN.md).
            mode = self.dpo.pairs if self.verifiable else "extremes"
            part.pairs = build_pairs(groups, rng, mode)
        else:
            part.groups = build_groups(groups, self.grpo.std_normalize, self.grpo.drop_uniform_groups)
        return part


def split_prompts(weights: Sequence[float], total: int) -> list[int]:
    """`total` prompts split in proportion to `weights` (largest remainder; each task gets at
    least one prompt while total allows, so no task silently drops out of the mix)."""
    if total < 1 or not weights:
        raise ValueError(f"split_prompts needs total >= 1 and some weights, got {total}, {list(weights)}")
    s = sum(weights)
    exact = [total * w / s for w in weights]
    counts = [int(x) for x in exact]
    for i in sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)[: total - sum(counts)]:
        counts[i] += 1
    for i in range(len(counts)):  # lift zeros from the largest shares
        if counts[i] == 0 and total >= len(counts):
            j = max(range(len(counts)), key=lambda k: counts[k])
            counts[j] -= 1
            counts[i] = 1
    return counts


def build_tasks(cfg: RunConfig, tokenizer, *, driver: bool = True, device: str = "cpu") -> list[Task]:
    """The run's tasks (`RunConfig.run_tasks()`: a config without `tasks:` is one task, "default");
    `driver` builds the reward functions (reward models on `device`, the learner's)."""
    tasks = []
    for name, t in cfg.run_tasks().items():
        # offline DPO on preference rows: nothing is sampled, only the held-out prompts are needed
        rows = _load_rows(f"{_key(cfg, name)}.data", t.data, t) if not cfg.data.preferences else []
        eval_rows = _load_rows(f"{_key(cfg, name)}.eval_data", t.eval_data, t)[: cfg.eval.max_prompts]
        reward = eval_reward = None
        if driver:
            options = {"path": t.reward_model_path, "judge": t.judge, "max_length": t.reward_max_length,
                       "max_batch_tokens": cfg.reward.max_batch_tokens, "device": cfg.reward.device or device,
                       "dtype": cfg.reward.dtype or cfg.learner.dtype, "trust_remote_code": cfg.reward.trust_remote_code}
            reward = build_reward(t.reward, **options)
            eval_reward = build_reward(t.eval_reward, **options) if t.eval_reward else None

        def encode(row: PromptRow, t=t) -> list[int]:
            return encode_prompt_row(tokenizer, row, prompt_template=t.prompt_template, chat_template=t.chat_template,
                                     system_prompt=t.system_prompt)

        tasks.append(Task(
            name=name, objective=t.objective or cfg.objective, weight=t.weight, reward_source=t.reward,
            samples_per_prompt=t.samples_per_prompt or cfg.rollout.samples_per_prompt,
            max_tokens=t.max_tokens or cfg.rollout.max_tokens, dpo=t.dpo or cfg.dpo, grpo=t.grpo or cfg.grpo,
            rows=rows, ids=[encode(x) for x in rows], eval_rows=eval_rows, eval_ids=[encode(x) for x in eval_rows],
            reward=reward, eval_reward=eval_reward,
        ))  # fmt: skip
    return tasks


def _key(cfg: RunConfig, name: str) -> str:
    return "data" if not cfg.tasks else f"tasks.{name}"


def _load_rows(key: str, source: str | None, t: TaskConfig) -> list[PromptRow]:
    """A task's prompt rows; a math task's rows must carry a reference answer (named by file and row)."""
    if not source:
        return []
    rows = load_prompt_rows(source, t.prompt_key, t.answer_key)
    if t.reward == "math" or t.eval_reward == "math":
        missing = next((r for r in rows if not r.answer.strip()), None)
        if missing is not None:
            raise PromptFileError(f"{missing.origin}: no reference answer, which the math reward of "
                                  f"'{key}' needs (set the answer column with answer_key)")
    return rows


def check_paths(cfg: RunConfig) -> None:
    """Every data source and reward-model directory the run will read exists; else a ConfigError
    naming the key and the path. Called by `train` right after loading, before anything heavy."""
    sources: list[tuple[str, str | None]] = []
    for name, task in cfg.run_tasks().items():
        where = "data" if not cfg.tasks else f"tasks.{name}"
        if not cfg.data.preferences:  # a preference run samples nothing: no training prompts
            sources.append((f"{where}.{'train' if not cfg.tasks else 'data'}", task.data))
        sources.append((f"{where}.{'eval' if not cfg.tasks else 'eval_data'}", task.eval_data))
    sources.append(("data.preferences", cfg.data.preferences))
    for key, source in sources:
        if source is not None:
            try:
                parse_source(source)
            except PromptFileError as e:
                raise ConfigError(f"config key '{key}': {e}") from None
    for name, task in cfg.run_tasks().items():
        where = "data" if not cfg.tasks else f"tasks.{name}"
        if "reward_model" in (task.reward, task.eval_reward):
            if not task.reward_model_path:
                raise ConfigError(f"config key '{where}.reward_model_path': needed for reward 'reward_model'")
            if not Path(task.reward_model_path).is_dir():
                raise ConfigError(f"config key '{where}.reward_model_path': directory not found: {task.reward_model_path}")
        if task.reward == "judge" and task.judge is None:
            raise ConfigError(f"config key '{where}.judge': needed for reward 'judge' (base_url, model)")


@dataclass
class TaskSampleStats:
    timeouts: int = 0
    failures: int = 0  # samples dropped because their judgement failed
    reward_seconds: float = 0.0
    rewards: dict[str, list[float]] = field(default_factory=dict)  # task -> kept rewards (metrics)
    outputs: dict[str, RewardOutput] = field(default_factory=dict)  # task -> its reward output (errors)


def sample_task_groups(tasks: Sequence[Task], streams: Sequence, sampler, *, prompts_per_step: int, step: int,
                       version: int, temperature: float, top_p: float, stop_token_ids: list[int],
                       seed: int) -> tuple[list[list[list[Rollout]]], TaskSampleStats]:
    """One step's scored rollouts for every task (driver only): each task's share of the prompts
    (`split_prompts`), `samples_per_prompt` responses each, rewards from the task's source.
    `streams[i]` hands out task i's prompt indices (`take(k)`). Returns, per task, its groups
    (one per prompt; samples whose judgement failed are dropped)."""
    import time

    counts = split_prompts([t.weight for t in tasks], prompts_per_step)
    task_groups, stats = [], TaskSampleStats()
    for t, (task, stream, k) in enumerate(zip(tasks, streams, counts, strict=True)):
        indices = stream.take(k)
        outs = sampler.generate(
            [task.ids[i] for i in indices], n=task.samples_per_prompt, temperature=temperature, top_p=top_p,
            max_tokens=task.max_tokens, stop_token_ids=stop_token_ids, seed=seed * 100003 + step * 101 + t,
        )  # fmt: skip
        t0 = time.perf_counter()
        out = task.score([i for i, g in zip(indices, outs, strict=True) for _ in g], [s.text for g in outs for s in g])
        stats.reward_seconds += time.perf_counter() - t0
        stats.timeouts += out.timeouts
        stats.failures += out.failures
        stats.outputs[task.name] = out
        groups, k_out = [], 0
        for i, group in zip(indices, outs, strict=True):
            kept = []
            for s in group:
                reward = out.rewards[k_out]
                k_out += 1
                if reward is None:  # the judgement failed: drop the sample, it says nothing
                    continue
                kept.append(Rollout(
                    prompt_index=i, prompt_ids=task.ids[i], response_ids=list(s.token_ids),
                    behaviour_logprobs=list(s.logprobs), text=s.text, reward=reward, version=version,
                    finish_reason=s.finish_reason, task=task.name,
                ))  # fmt: skip
            groups.append(kept)
        stats.rewards[task.name] = [r.reward for g in groups for r in g]
        task_groups.append(groups)
    return task_groups, stats


def build_parts(tasks: Sequence[Task], task_groups: Sequence[Sequence[Sequence[Rollout]]],
                rng: random.Random) -> tuple[list[TaskBatch], list[Rollout]]:
    """Each task's training units from its scored groups, and every rollout (for metrics)."""
    parts = [task.to_part(groups, rng) for task, groups in zip(tasks, task_groups, strict=True)]
    return parts, [r for groups in task_groups for g in groups for r in g]
