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

from engine.config import DPOConfig, GRPOConfig, RunConfig
from engine.data.prompts import PromptRow, load_prompts
from engine.data.tokenizer import encode_formatted_prompt
from engine.rewards.router import RewardFn, RewardOutput, build_reward
from engine.rollout.build import build_groups, build_pairs
from engine.rollout.types import Rollout, TaskBatch

DEFAULT = "default"


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
        part = TaskBatch(task=self.name, objective=self.objective, weight=self.weight)
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


def build_tasks(cfg: RunConfig, tokenizer, *, driver: bool = True) -> list[Task]:
    """The run's tasks (see the module docstring); `driver` builds the reward functions."""
    r = cfg.rollout
    specs = []
    if not cfg.tasks:
        specs.append((DEFAULT, cfg.data.train, cfg.data.eval, "math", None, None, cfg.objective, 1.0, None, None,
                      cfg.dpo, cfg.grpo, cfg.data.prompt_template, cfg.data.chat_template, None))
    for name, t in cfg.tasks.items():
        specs.append((name, t.data, t.eval_data, t.reward, t.reward_model_path, t.judge, t.objective or cfg.objective,
                      t.weight, t.samples_per_prompt, t.max_tokens, t.dpo or cfg.dpo, t.grpo or cfg.grpo,
                      t.prompt_template, t.chat_template, t.eval_reward))
    tasks = []
    for (name, data, eval_data, source, rm_path, judge, objective, weight, spp, max_tokens, dpo, grpo, template,
         chat, eval_source) in specs:

        def encode(row: PromptRow, template=template, chat=chat) -> list[int]:
            return encode_formatted_prompt(tokenizer, row.prompt, template=template, chat=chat)

        rows = load_prompts(data)
        eval_rows = load_prompts(eval_data)[: cfg.eval.max_prompts] if eval_data else []
        reward = eval_reward = None
        if driver:
            judge_cfg = None
            if judge is not None:
                from engine.rewards.judge import JudgeConfig

                judge_cfg = JudgeConfig(**judge.model_dump())
            max_length = cfg.tasks[name].reward_max_length if name in cfg.tasks else 2048
            reward = build_reward(source, path=rm_path, judge=judge_cfg, max_length=max_length)
            if eval_source:
                eval_reward = build_reward(eval_source, path=rm_path, judge=judge_cfg, max_length=max_length)
        tasks.append(Task(
            name=name, objective=objective, weight=weight, reward_source=source,
            samples_per_prompt=spp or r.samples_per_prompt, max_tokens=max_tokens or r.max_tokens, dpo=dpo,
            grpo=grpo, rows=rows, ids=[encode(x) for x in rows], eval_rows=eval_rows,
            eval_ids=[encode(x) for x in eval_rows], reward=reward, eval_reward=eval_reward,
        ))  # fmt: skip
    return tasks


@dataclass
class TaskSampleStats:
    timeouts: int = 0
    failures: int = 0  # samples dropped because their judgement failed
    reward_seconds: float = 0.0
    rewards: dict[str, list[float]] = field(default_factory=dict)  # task -> kept rewards (metrics)


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
