"""Held-out math evaluation through the vLLM sampler: pass@1 averaged over `samples` per prompt
(the paper: 50 samples at temperature 0.6, top-p 0.9) and maj@k when `samples > 1`.

    semionline eval --model runs/demo-grpo/final --data .cache/seed/data/heldout.jsonl
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

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


def sample_eval(sampler, prompt_ids: Sequence[list[int]], cfg: EvalConfig, *, stop_token_ids: list[int],
                seed: int = 0):
    """The eval protocol's samples: `cfg.samples` per prompt at `cfg.temperature` / `cfg.top_p`,
    or one greedy sample when the temperature is 0. Returns (outputs per prompt, samples per prompt)."""
    greedy = cfg.temperature == 0.0
    n = 1 if greedy else cfg.samples
    outs = sampler.generate(
        list(prompt_ids), n=n, temperature=cfg.temperature, top_p=1.0 if greedy else cfg.top_p,
        max_tokens=cfg.max_tokens, stop_token_ids=stop_token_ids, seed=seed,
    )  # fmt: skip
    return outs, n


def evaluate_math(sampler, prompt_ids: Sequence[list[int]], rows: Sequence[PromptRow], cfg: EvalConfig, *,
                  stop_token_ids: list[int], seed: int = 0) -> EvalResult:
    outs, n = sample_eval(sampler, prompt_ids, cfg, stop_token_ids=stop_token_ids, seed=seed)
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


# -- tasks scored by a model (reward model or judge) ---------------------------------------------


@dataclass
class WinRates:
    win_rate: float  # P(policy's response scores above the baseline's; ties count 1/2)
    lc_win_rate: float  # the same with the length difference regressed out (AlpacaEval 2.0 LC)
    pairs: int


def win_rates(scores: Sequence[float], baseline_scores: Sequence[float], lengths: Sequence[float],
              baseline_lengths: Sequence[float], *, iters: int = 100) -> WinRates:
    """Win rate of paired responses, raw and length-controlled.

    The LC version follows AlpacaEval 2.0 in a small form. Fit a logistic model of the outcome
    y_i ∈ {0, ½, 1} on z_i = tanh((len_i − baseline_len_i) / sd): P(win) = σ(θ0 + θ1·z_i). Report
    σ(θ0), the win rate the model predicts when both responses have the same length. With no
    length spread it is the raw win rate. The fit is Newton's method with a tiny ridge.
    """
    import torch

    n = len(scores)
    if not n == len(baseline_scores) == len(lengths) == len(baseline_lengths):
        raise ValueError("win_rates needs equally many scores, baseline scores and lengths")
    if n == 0:
        return WinRates(float("nan"), float("nan"), 0)
    s, b = torch.tensor(scores, dtype=torch.float64), torch.tensor(baseline_scores, dtype=torch.float64)
    y = (s > b).double() + 0.5 * (s == b).double()
    diff = torch.tensor(lengths, dtype=torch.float64) - torch.tensor(baseline_lengths, dtype=torch.float64)
    sd = float(diff.std()) if n > 1 else 0.0
    if sd == 0.0:
        return WinRates(float(y.mean()), float(y.mean()), n)
    x = torch.stack([torch.ones(n, dtype=torch.float64), torch.tanh(diff / sd)], dim=1)
    theta = torch.zeros(2, dtype=torch.float64)
    for _ in range(iters):
        p = torch.sigmoid(x @ theta)
        grad = x.t() @ (p - y) + 1e-6 * theta
        hess = (x * (p * (1 - p))[:, None]).t() @ x + 1e-6 * torch.eye(2, dtype=torch.float64)
        step = torch.linalg.solve(hess, grad)
        theta -= step
        if float(step.abs().max()) < 1e-10:
            break
    return WinRates(float(y.mean()), float(torch.sigmoid(theta[0])), n)


@dataclass
class ScoreSummary:
    """One scorer's view of the eval samples against the baseline's responses."""

    mean_score: float
    baseline_mean_score: float
    win_rate: float
    lc_win_rate: float
    failures: int


@dataclass
class ScoredEvalResult:
    mean_score: float  # mean reward-model / judge score of the policy's responses
    baseline_mean_score: float
    win_rate: float  # against the baseline (seed) responses to the same prompts
    lc_win_rate: float
    prompts: int
    samples: int
    mean_length: float
    failures: int  # judgements that failed after retries (dropped from the means)
    extra: dict[str, ScoreSummary] = field(default_factory=dict)  # eval-only scorers, by name

    def as_metrics(self, prefix: str) -> dict[str, float]:
        out = {f"{prefix}/reward": self.mean_score, f"{prefix}/win_rate": self.win_rate,
               f"{prefix}/lc_win_rate": self.lc_win_rate, f"{prefix}/response_length": self.mean_length}
        for name, x in self.extra.items():
            out.update({f"{prefix}/{name}/score": x.mean_score, f"{prefix}/{name}/baseline_score": x.baseline_mean_score,
                        f"{prefix}/{name}/win_rate": x.win_rate, f"{prefix}/{name}/lc_win_rate": x.lc_win_rate})
        return out


def _against_baseline(scorer, prompts, texts, lengths, base_prompts, baseline, base_len, group_sizes) -> ScoreSummary:
    all_scores = scorer(list(prompts) + list(base_prompts), list(texts) + list(baseline))
    scores, base_scores = all_scores[: len(texts)], all_scores[len(texts) :]
    base_per_sample = [base_scores[i] for i, k in enumerate(group_sizes) for _ in range(k)]
    keep = [i for i in range(len(texts)) if scores[i] is not None and base_per_sample[i] is not None]
    rates = win_rates([scores[i] for i in keep], [base_per_sample[i] for i in keep],
                      [lengths[i] for i in keep], [base_len[i] for i in keep])
    ok_base = [b for b in base_scores if b is not None]
    return ScoreSummary(mean_score=sum(scores[i] for i in keep) / max(1, len(keep)),
                        baseline_mean_score=sum(ok_base) / max(1, len(ok_base)), win_rate=rates.win_rate,
                        lc_win_rate=rates.lc_win_rate, failures=sum(s is None for s in all_scores))


def evaluate_scored(sampler, prompt_ids: Sequence[list[int]], rows: Sequence[PromptRow], cfg: EvalConfig, *,
                    scorer, baseline: Sequence[str], baseline_lengths: Sequence[int], stop_token_ids: list[int],
                    seed: int = 0, extra_scorers: dict | None = None) -> ScoredEvalResult:
    """Sample `cfg.samples` responses per prompt and score them with `scorer(prompts, responses)
    -> list[float | None]`. The baseline is one response per prompt (the seed's, made once at
    step 0 by the caller, with its token count), and each sample is compared with the baseline of
    its prompt. Failed judgements (None) are dropped from every average and counted.
    `extra_scorers` ({name: scorer}) score the same samples and baseline a second way, e.g. the
    stronger judge an evaluation trusts more than the training reward (the paper: train on a
    reward model, report GPT-4-judged win rates)."""
    if not len(baseline) == len(baseline_lengths) == len(rows):
        raise ValueError(f"{len(baseline)} baseline responses ({len(baseline_lengths)} lengths) for {len(rows)} prompts")
    outs, n = sample_eval(sampler, prompt_ids, cfg, stop_token_ids=stop_token_ids, seed=seed)
    prompts = [row.prompt for row, group in zip(rows, outs, strict=True) for _ in group]
    texts = [s.text for group in outs for s in group]
    lengths = [len(s.token_ids) for group in outs for s in group]
    base_len = [n_tok for n_tok, group in zip(baseline_lengths, outs, strict=True) for _ in group]
    args = (prompts, texts, lengths, [r.prompt for r in rows], baseline, base_len, [len(g) for g in outs])
    main = _against_baseline(scorer, *args)
    return ScoredEvalResult(
        mean_score=main.mean_score, baseline_mean_score=main.baseline_mean_score, win_rate=main.win_rate,
        lc_win_rate=main.lc_win_rate, prompts=len(outs), samples=n, mean_length=sum(lengths) / max(1, len(lengths)),
        failures=main.failures, extra={name: _against_baseline(fn, *args) for name, fn in (extra_scorers or {}).items()},
    )  # fmt: skip


def baseline_responses(sampler, prompt_ids: Sequence[list[int]], cfg: EvalConfig, *, stop_token_ids: list[int],
                       seed: int) -> tuple[list[str], list[int]]:
    """One response per prompt at the eval settings (texts, token counts): the baseline a scored
    evaluation compares against (the seed's, made once; or another model's for `semionline eval`)."""
    outs, _ = sample_eval(sampler, prompt_ids, cfg.model_copy(update={"samples": 1}), stop_token_ids=stop_token_ids,
                          seed=seed)
    return [o[0].text for o in outs], [len(o[0].token_ids) for o in outs]


def evaluate_reward(sampler, prompt_ids: Sequence[list[int]], rows: Sequence[PromptRow], cfg: EvalConfig, *,
                    reward, baseline: tuple[list[str], list[int]], stop_token_ids: list[int], seed: int,
                    eval_reward=None) -> ScoredEvalResult:
    """`evaluate_scored` with a reward function (`engine/rewards/router.py`: rows, responses ->
    RewardOutput) as the scorer, and `eval_reward` (if any) as the extra "gold" scorer."""
    by_prompt = {row.prompt: row for row in rows}

    def scorer(prompts, responses, fn=reward):
        return fn([by_prompt[p] for p in prompts], responses).rewards

    extra = {"gold": lambda p, r: scorer(p, r, fn=eval_reward)} if eval_reward is not None else None
    return evaluate_scored(sampler, prompt_ids, rows, cfg, scorer=scorer, baseline=baseline[0],
                           baseline_lengths=baseline[1], stop_token_ids=stop_token_ids, seed=seed, extra_scorers=extra)
