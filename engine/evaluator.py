"""A run's held-out evaluation: the learner's current weights, sampled at the eval settings.

    evaluator = Evaluator(cfg, source, sync, mesh, step0_cache=None)
    metrics = evaluator.evaluate(step)      # collective: the driver evaluates, every rank gets it

Math tasks get pass@1 (and maj@k) with math-verify (`engine/evaluate.py`); reward-model, judge and
callable tasks get the mean score and win rates against the seed's responses, which are sampled
at the first evaluation (step 0, the seed's weights) and kept (`baselines`, checkpointed).
`eval/accuracy` is the first math task's accuracy (else the first task's mean score).

`step0_cache`: a dict shared by the runs of a sweep (all from one seed model, with a fixed
`eval.seed`): the seed's step-0 evaluation is the same for each, so it is made once per eval
setting (`step0_key`).
"""

from __future__ import annotations

import json
from pathlib import Path

from engine.config import RunConfig
from engine.evaluate import baseline_responses, evaluate_math, evaluate_reward
from engine.parallel.mesh import Mesh
from engine.parallel.objects import broadcast_object
from engine.rollout.types import metric_prefix


class Evaluator:
    def __init__(self, cfg: RunConfig, source, sync, mesh: Mesh, *, step0_cache: dict | None = None):
        """`source`: the run's RolloutSource (its tasks and held-out prompts); `sync`: its
        WeightSync (the learner's weights are swapped into a stale sampler for the eval)."""
        self.cfg, self.source, self.sync, self.mesh = cfg, source, sync, mesh
        self.sampler, self.stop_ids = sync.sampler, source.stop_ids
        self.seed = cfg.seed if cfg.eval.seed is None else cfg.eval.seed
        self.baselines: dict[str, tuple[list[str], list[int]]] = {}  # task -> the seed's eval responses
        self._step0_cache = step0_cache

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every
        return step == self.cfg.steps or bool(every and step % every == 0)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics of the learner's current weights (collective)."""
        metrics: dict[str, float] = {}
        with self.sync.eval_weights():
            if self.sampler is not None:
                metrics = self._evaluate_tasks()
        return broadcast_object(metrics, self.mesh)

    def evaluate_seed(self) -> dict[str, float]:
        """Step 0: the seed's metrics, from the sweep's cache when another run made them."""
        key = self.step0_key() if self._step0_cache is not None else None
        if key is not None and key in self._step0_cache:
            cached, baselines = self._step0_cache[key]
            self.baselines = dict(baselines)
            return dict(cached)
        first = self.evaluate(0)
        if key is not None:
            self._step0_cache[key] = (dict(first), dict(self.baselines))
        return first

    def _evaluate_tasks(self) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for task in self.source.tasks:
            if not task.eval_rows:
                continue
            if task.verifiable:
                res = evaluate_math(self.sampler, task.eval_ids, task.eval_rows, self.cfg.eval,
                                    stop_token_ids=self.stop_ids, seed=self.seed)
                metrics.update(res.as_metrics(metric_prefix("eval", task.name)))
                metrics.setdefault("eval/accuracy", res.accuracy)
                continue
            metrics.update(self._evaluate_scored(task))
            metrics.setdefault("eval/reward", metrics[f"{metric_prefix('eval', task.name)}/reward"])
        if "eval/accuracy" not in metrics and "eval/reward" in metrics:
            metrics["eval/accuracy"] = metrics["eval/reward"]
        return metrics

    def _evaluate_scored(self, task) -> dict[str, float]:
        """Mean score and win rates against the seed's responses (made at the first evaluation)."""
        if task.name not in self.baselines:  # one seed response per prompt, at eval settings
            self.baselines[task.name] = baseline_responses(self.sampler, task.eval_ids, self.cfg.eval,
                                                           stop_token_ids=self.stop_ids, seed=self.seed + 1)
        res = evaluate_reward(self.sampler, task.eval_ids, task.eval_rows, self.cfg.eval, reward=task.reward,
                              baseline=self.baselines[task.name], stop_token_ids=self.stop_ids, seed=self.seed,
                              eval_reward=task.eval_reward)
        prefix = metric_prefix("eval", task.name)
        metrics = res.as_metrics(prefix)
        metrics[f"{prefix}/baseline_reward"] = res.baseline_mean_score
        metrics[f"{prefix}/failures"] = float(res.failures)
        return metrics

    def step0_key(self) -> str:
        """What the seed's step-0 evaluation depends on (the sweep's cache key)."""
        c = self.cfg
        fields = ("eval_data", "reward", "reward_model_path", "reward_max_length", "judge", "eval_reward",
                  "prompt_template", "chat_template", "max_tokens")
        tasks = {n: t.model_dump(include=set(fields)) for n, t in c.tasks.items()}
        return json.dumps({"model": str(Path(c.model).resolve()), "eval": c.eval.model_dump(), "seed": self.seed,
                           "data": c.data.model_dump(exclude={"train"}), "tasks": tasks}, sort_keys=True)
