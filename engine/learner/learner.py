"""The learner: policy and frozen reference (both megatron-core TP models), AdamW, and one
optimizer step per rollout batch for DPO or GRPO.

Every rank receives the whole rollout batch. Each DP replica trains on its share of the pairs or
groups (`passes.dp_share`); within a replica every TP rank runs the same code (the loss is
replicated; TP shards the weights) and the pipeline's last stage computes the log-probs and the
loss (`passes.PipelinedModel`). Micro-batches and DP shares accumulate gradients exactly: losses
are normalised by global counts worked out before the first micro-batch, gradients are summed
over DP (`engine.parallel.grads`), and metric sums are reduced to every rank.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch

from engine.config import RunConfig
from engine.learner.batch import pack
from engine.learner.objectives import dpo_loss, grpo_loss, token_weights
from engine.learner.optim import build_optimizer, clip_grad_norm
from engine.learner.passes import PipelinedModel, dp_share, reduce_sums
from engine.model.hf_io import iter_hf_weights, load_model, save_hf, weight_specs
from engine.parallel.grads import sync_gradients
from engine.parallel.mesh import Mesh
from engine.rollout.types import Group, PreferencePair, Rollout, TaskBatch
from kernels.paths import resolve_impl


def _chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _k3(ref: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
    delta = ref - pol
    return delta.exp() - delta - 1.0


class LogprobGapError(RuntimeError):
    """The sampler disagrees with the learner after a weight push: training on it would be wrong."""


def gap_error(gap: float, limit: float, where: str) -> LogprobGapError:
    return LogprobGapError(
        f"{where} the sampler's log-probs differ from the learner's by {gap:.2e} on average (limit "
        f"sampler.max_logprob_gap={limit:.0e}); the sampler does not hold the learner's weights — stopping "
        "instead of training on it")


def fresh_gap(seqs: Sequence[Rollout], pol_tok: torch.Tensor, step: int) -> tuple[float, int]:
    """Sum and count of |learner - sampler| log-prob over the tokens of the rollouts that were
    sampled with the learner's current weights (version == step): the parity check on the batch
    itself, from the training forward pass (`pol_tok`: the responses' tokens, in `seqs` order)."""
    fresh = [r.version == step for r in seqs]
    if not any(fresh):
        return 0.0, 0
    behaviour = torch.tensor([lp for r in seqs for lp in r.behaviour_logprobs], dtype=torch.float32)
    mask = torch.repeat_interleave(torch.tensor(fresh), torch.tensor([len(r.response_ids) for r in seqs]))
    diff = (pol_tok.detach().float() - behaviour)[mask].abs()
    return float(diff.sum()), int(diff.numel())


class Learner:
    def __init__(self, cfg: RunConfig, mesh: Mesh):
        self.cfg = cfg
        self.mesh = mesh
        self.policy = load_model(cfg.model, mesh, virtual_stages=cfg.learner.virtual_stages)
        self.reference = load_model(cfg.model, mesh, virtual_stages=cfg.learner.virtual_stages)
        self.reference.eval().requires_grad_(False)
        self.optimizer, self.scheduler = build_optimizer(self.policy.parameters(), cfg.optim)
        self.kernels = resolve_impl(cfg.kernels, mesh.device)  # log-prob and loss kernel path
        self.policy_passes = PipelinedModel(self.policy, impl=self.kernels, autocast=self._autocast)
        self.reference_passes = PipelinedModel(self.reference, impl=self.kernels, autocast=self._autocast)
        self.step = 0
        self._parity = [0.0, 0]  # this step's fresh-token |learner - sampler| sum and count
        self.last_step_skipped = False

    # -- scoring ---------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.learner.dtype == "bfloat16":
            return torch.autocast(device_type=self.mesh.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def score(self, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], reference: bool = False) -> list[torch.Tensor]:
        """Per-token log-probs of each (prompt_ids, response_ids) under the policy (or reference),
        on every rank (collective over the mesh's TP and PP groups; each DP replica scores all)."""
        passes = self.reference_passes if reference else self.policy_passes
        batches = [pack([p for p, _ in chunk], [r for _, r in chunk])
                   for chunk in _chunks(list(seqs), self.cfg.learner.micro_batch_size)]
        logprobs = passes.logprobs(batches, broadcast=True)
        return [lp for batch, lps in zip(batches, logprobs, strict=True) for lp in batch.split(lps)]

    # -- optimizer steps -------------------------------------------------------------------

    def _parity_metrics(self) -> dict[str, float]:
        """The batch parity check: before the optimizer step (`sampler.parity_check=batch`), a gap
        above the limit stops the run on every rank (the sums are reduced over the mesh)."""
        total, n = self._parity
        self._parity = [0.0, 0]
        if not n:
            return {}
        gap, limit = total / n, self.cfg.sampler.max_logprob_gap
        if self.cfg.sampler.parity_check == "batch" and gap > limit:
            raise gap_error(gap, limit, f"on the batch of optimizer step {self.step + 1} (sampled right after a sync)")
        return {"parity/batch_gap": gap, "parity/batch_tokens": float(n)}

    def _finish_step(self) -> dict[str, float]:
        parity = self._parity_metrics()
        self.last_step_skipped = False
        sync_gradients(self.policy)
        grad_norm = clip_grad_norm(self.policy.parameters(), self.cfg.optim.grad_clip, self.mesh.tp_group,
                                   self.mesh.pp_group)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return {"train/grad_norm": grad_norm, "train/lr": lr, **parity}

    def _skip_step(self, metrics: dict[str, float]) -> dict[str, float]:
        """No training signal this step (e.g. every prompt's rewards were equal): no update, but the
        step counts so `s` keeps its meaning. Loss-side metrics are NaN (null in metrics.jsonl)."""
        self._parity = [0.0, 0]
        self.last_step_skipped = True
        self.step += 1
        self.scheduler.step()
        nan = float("nan")
        return {**metrics, "train/loss": nan, "train/grad_norm": 0.0, "kl/ref": nan, "policy/entropy": nan,
                "train/lr": self.scheduler.get_last_lr()[0]}

    def train_dpo(self, pairs: Sequence[PreferencePair]) -> dict[str, float]:
        """One optimizer step on DPO pairs; an empty list (no informative prompt) skips the update
        but still counts the step, so `s` keeps its meaning."""
        if not pairs:
            return self._skip_step({"train/pairs": 0.0})
        metrics = self._dpo_pass(pairs, self.cfg.dpo)
        metrics.update(self._finish_step())
        return metrics

    def train_grpo(self, groups: Sequence[Group]) -> dict[str, float]:
        """One optimizer step on GRPO groups (clipped ratio vs behaviour log-probs, k3 KL)."""
        metrics = self._grpo_pass(groups, self.cfg.grpo)
        if metrics is None:
            return self._skip_step({"train/sequences": 0.0})
        metrics.update(self._finish_step())
        return metrics

    def train_tasks(self, parts: Sequence[TaskBatch]) -> dict[str, float]:
        """One optimizer step on several tasks at once, each with its own objective: the loss is
        sum_t (w_t / sum_all w) * L_t, where L_t is task t's loss as in a single-task step and the
        weights are normalised over all configured tasks (so a task's gradient scale does not
        jump when another task has no signal this step). Metrics come per task
        (`train/loss/<task>`, `dpo/margin/<task>`, ...) plus the weighted `train/loss`."""
        total_weight = sum(p.weight for p in parts)
        metrics: dict[str, float] = {}
        loss, active = 0.0, 0
        for part in parts:
            scale = part.weight / total_weight
            if part.objective == "dpo":
                m = self._dpo_pass(part.pairs, self.task_dpo(part.task), scale) if part.pairs else None
            else:
                m = self._grpo_pass(part.groups, self.task_grpo(part.task), scale)
            if m is None:
                metrics[f"train/skipped/{part.task}"] = 1.0
                continue
            active += 1
            loss += scale * m["train/loss"]
            metrics.update({f"{k}/{part.task}": v for k, v in m.items()})
        if not active:
            return self._skip_step(metrics)
        metrics["train/loss"] = loss
        metrics.update(self._finish_step())
        return metrics

    def task_dpo(self, task: str):
        t = self.cfg.tasks.get(task)
        return t.dpo if t is not None and t.dpo is not None else self.cfg.dpo

    def task_grpo(self, task: str):
        t = self.cfg.tasks.get(task)
        return t.grpo if t is not None and t.grpo is not None else self.cfg.grpo

    def _dpo_pass(self, pairs: Sequence[PreferencePair], c, scale: float = 1.0) -> dict[str, float]:
        """Forward + backward of the DPO loss on `pairs` (times `scale`), no optimizer step."""
        pairs_per_micro = max(1, self.cfg.learner.micro_batch_size // 2)
        total = len(pairs)
        sums = dict(loss=0.0, chosen=0.0, rejected=0.0, margin=0.0, acc=0.0, kl=0.0, ent=0.0, tokens=0, gap=0.0,
                    gap_tokens=0)
        chunks = list(_chunks(list(dp_share(pairs, self.mesh)), pairs_per_micro))
        batches = [pack([r.prompt_ids for r in seqs], [r.response_ids for r in seqs])
                   for seqs in ([p.chosen for p in chunk] + [p.rejected for p in chunk] for chunk in chunks)]
        ref = self.reference_passes.logprobs(batches)

        def micro_loss(i: int, pol_tok: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:  # last stage
            batch, ref_tok, n = batches[i], ref[i], len(chunks[i])
            pol_seq, ref_seq = batch.seq_sum(pol_tok), batch.seq_sum(ref_tok)
            terms = dpo_loss(
                pol_seq[:n], pol_seq[n:], ref_seq[:n], ref_seq[n:], beta=c.beta,
                chosen_lengths=batch.lengths[:n], rejected_lengths=batch.lengths[n:],
                length_normalize=c.length_normalize, nll_weight=c.nll_weight, impl=self.kernels,
            )  # fmt: skip
            sums["loss"] += float(terms.loss.detach().sum())
            sums["chosen"] += float(pol_seq[:n].detach().sum())
            sums["rejected"] += float(pol_seq[n:].detach().sum())
            sums["margin"] += float(terms.margin.sum())
            sums["acc"] += float((terms.margin > 0).float().sum())
            sums["kl"] += float(_k3(ref_tok, pol_tok.detach()).sum())
            sums["ent"] += float(entropy.sum())
            sums["tokens"] += int(batch.targets.numel())
            gap, gap_n = fresh_gap([p.chosen for p in chunks[i]] + [p.rejected for p in chunks[i]], pol_tok, self.step)
            sums["gap"] += gap
            sums["gap_tokens"] += gap_n
            return terms.loss.sum() / total if scale == 1.0 else terms.loss.sum() * (scale / total)

        self.policy_passes.train(batches, micro_loss)
        sums = reduce_sums(sums, self.mesh)
        self._parity[0] += sums["gap"]
        self._parity[1] += int(sums["gap_tokens"])
        tokens = max(sums["tokens"], 1)
        metrics = {
            "train/loss": sums["loss"] / total,
            "train/pairs": float(total),
            "logprob/chosen": sums["chosen"] / total,
            "logprob/rejected": sums["rejected"] / total,
            "dpo/margin": sums["margin"] / total,
            "dpo/accuracy": sums["acc"] / total,
            "kl/ref": sums["kl"] / tokens,
            "policy/entropy": sums["ent"] / tokens,
            "train/tokens": float(sums["tokens"]),
        }
        return metrics

    def _grpo_pass(self, groups: Sequence[Group], c, scale: float = 1.0) -> dict[str, float] | None:
        """Forward + backward of the GRPO loss on `groups` (times `scale`), no optimizer step;
        None when no group has a non-empty response."""
        items: list[tuple[Rollout, float]] = [(r, a) for g in groups for r, a in zip(g.rollouts, g.advantages, strict=False)]
        items = [(r, a) for r, a in items if r.response_ids]
        if not items:
            return None
        total_tokens = sum(len(r.response_ids) for r, _ in items)
        chunks = list(_chunks(list(dp_share(items, self.mesh)), self.cfg.learner.micro_batch_size))
        batches = [pack([r.prompt_ids for r, _ in chunk], [r.response_ids for r, _ in chunk]) for chunk in chunks]
        old_learner = None
        if c.tis_cap is not None:  # ratio against the pre-update learner, TIS weight vs sampler
            old_learner = self.policy_passes.logprobs(batches)
        ref_tok = self.reference_passes.logprobs(batches)
        sums = dict(loss=0.0, clipped=0.0, kl=0.0, ent=0.0, ratio=0.0, tis=0.0, gap=0.0, gap_tokens=0)

        def micro_loss(i: int, pol: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:  # last stage
            chunk, batch, ref = chunks[i], batches[i], ref_tok[i]
            behaviour = torch.tensor([lp for r, _ in chunk for lp in r.behaviour_logprobs], dtype=torch.float32)
            adv = torch.repeat_interleave(torch.tensor([a for _, a in chunk], dtype=torch.float32), batch.lengths)
            weight = token_weights(
                batch.lengths, reduction=c.reduction, total_tokens=total_tokens, total_sequences=len(items)
            )
            tis = None
            old = behaviour
            if old_learner is not None:
                old = old_learner[i]
                tis = (old - behaviour).exp().clamp(max=c.tis_cap)
            terms = grpo_loss(
                pol, old, ref, adv, weight, clip_eps=c.clip_eps, kl_coef=c.kl_coef, tis_weight=tis,
                impl=self.kernels,
            )  # fmt: skip
            sums["loss"] += float(terms.loss.detach())
            sums["clipped"] += float(terms.clipped.float().sum())
            sums["kl"] += float(terms.kl.sum())
            sums["ent"] += float(entropy.sum())
            sums["ratio"] += float(terms.ratio.sum())
            if tis is not None:
                sums["tis"] += float(tis.sum())
            gap, gap_n = fresh_gap([r for r, _ in chunk], pol, self.step)
            sums["gap"] += gap
            sums["gap_tokens"] += gap_n
            return terms.loss * scale if scale != 1.0 else terms.loss

        self.policy_passes.train(batches, micro_loss)
        sums = reduce_sums(sums, self.mesh)
        self._parity[0] += sums["gap"]
        self._parity[1] += int(sums["gap_tokens"])
        metrics = {
            "train/loss": sums["loss"],
            "train/sequences": float(len(items)),
            "train/tokens": float(total_tokens),
            "clip/fraction": sums["clipped"] / total_tokens,
            "kl/ref": sums["kl"] / total_tokens,
            "policy/entropy": sums["ent"] / total_tokens,
            "policy/ratio_mean": sums["ratio"] / total_tokens,
        }
        if c.tis_cap is not None:
            metrics["tis/weight_mean"] = sums["tis"] / total_tokens
        return metrics

    # -- weights out -----------------------------------------------------------------------

    @property
    def param_bytes(self) -> int:
        """Bytes of the full (unsharded) policy in HF layout: what one weight sync must move."""
        size = torch.empty((), dtype=next(self.policy.parameters()).dtype).element_size()
        return sum(math.prod(spec.hf_shape) for spec in weight_specs(self.policy.cfg, 1)) * size

    def hf_weights(self):
        """Full HF-named tensors, one at a time, on every rank (collective over TP and PP): the
        weight-push seam."""
        return iter_hf_weights(self.policy)

    def save(self, out_dir: str, tokenizer_dir: str | None = None) -> None:
        save_hf(self.policy, out_dir, tokenizer_dir=tokenizer_dir or self.cfg.model)
