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
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from engine.config import DPOConfig, GRPOConfig, LearnerConfig, OptimConfig
from engine.learner.batch import pack
from engine.learner.optim import build_optimizer, clip_grad_norm
from engine.learner.passes import PassResult, PipelinedModel, chunks, dp_share, dpo_pass, grpo_pass
from engine.model.hf_io import iter_hf_weights, load_model, save_hf, weight_specs
from engine.model.te import resolve_te, te_layer_class
from engine.parallel.grads import sync_gradients
from engine.parallel.mesh import Mesh
from engine.rollout.types import (
    DEFAULT,
    Group,
    PreferencePair,
    Rollout,
    RolloutBatch,
    TaskBatch,
    metric_prefix,
)
from kernels.paths import resolve_impl


def fresh_gap(seqs: Sequence[Rollout], pol_tok: torch.Tensor, step: int) -> tuple[float, int, float]:
    """Sum, count and max of |learner - sampler| log-prob over the tokens of the rollouts that were
    sampled with the learner's current weights (version == step): the parity check on the batch
    itself, from the training forward pass (`pol_tok`: the responses' tokens, in `seqs` order)."""
    fresh = [r.version == step for r in seqs]
    if not any(fresh):
        return 0.0, 0, 0.0
    behaviour = torch.tensor([lp for r in seqs for lp in r.behaviour_logprobs], dtype=torch.float32)
    mask = torch.repeat_interleave(torch.tensor(fresh), torch.tensor([len(r.response_ids) for r in seqs]))
    diff = (pol_tok.detach().float().cpu() - behaviour)[mask].abs()
    return float(diff.sum()), int(diff.numel()), float(diff.max()) if diff.numel() else 0.0


@torch.no_grad()
def score_sequences(passes: PipelinedModel, seqs: Sequence[tuple[Sequence[int], Sequence[int]]],
                    micro_batch_size: int, dp_mesh: Mesh | None = None) -> list[torch.Tensor]:
    """Per-token log-probs (response tokens only) of each (prompt_ids, response_ids), on every rank
    (collective over TP and PP). With `dp_mesh`, each DP replica scores a contiguous share of the
    micro-batches and the shares are gathered (`semionline score`); without, every replica scores
    all of them (the learner's own checks)."""
    batches = [pack([p for p, _ in chunk], [r for _, r in chunk], device=passes.mesh.device)
               for chunk in chunks(list(seqs), micro_batch_size)]
    mine = dp_share(batches, dp_mesh) if dp_mesh is not None else batches
    out = [lp for b, lps in zip(mine, passes.logprobs(mine, broadcast=True), strict=True) for lp in b.split(lps)]
    if dp_mesh is not None and dp_mesh.dp_size > 1:
        shares: list = [None] * dp_mesh.dp_size
        dist.all_gather_object(shares, out, group=dp_mesh.dp_group)
        out = [lp for share in shares for lp in share]
    return out


class Learner:
    """The policy and its frozen reference at this rank's (tp, pp, dp) place, and their optimizer.

        learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
        metrics = learner.backward(batch, dpo=cfg.dpo, grpo=cfg.grpo)  # forward + backward, no update
        metrics |= learner.update()                                    # clip + optimizer step

    Between the two the caller may judge `parity/batch_gap` (the learner's log-probs of freshly
    sampled tokens against the sampler's; `engine/sync/weights.py`) and stop before the update.
    """

    def __init__(self, model: str, cfg: LearnerConfig, optim: OptimConfig, mesh: Mesh, *, kernels: str | None = None):
        self.model_dir, self.cfg, self.optim_cfg, self.mesh = model, cfg, optim, mesh
        # Transformer Engine's fused layers on CUDA when installed (learner.te), else megatron-core's
        layers = te_layer_class(resolve_te(cfg.te, mesh.device))
        self.policy = load_model(model, mesh, virtual_stages=cfg.virtual_stages, layer_class=layers)
        self.reference = load_model(model, mesh, virtual_stages=cfg.virtual_stages, layer_class=layers)
        self.reference.eval().requires_grad_(False)
        self.optimizer, self.scheduler = build_optimizer(self.policy.parameters(), optim)
        self.kernels = resolve_impl(kernels, mesh.device)  # log-prob and loss kernel path
        self.policy_passes = PipelinedModel(self.policy, impl=self.kernels, autocast=self._autocast)
        self.reference_passes = PipelinedModel(self.reference, impl=self.kernels, autocast=self._autocast)
        self.step = 0
        self._parity = [0.0, 0]  # this step's fresh-token |learner - sampler| sum and count
        self._parity_max = 0.0  # ... and its largest (this rank)
        self.skipping = False  # the step in hand has no training signal (`backward` found none)

    # -- scoring ---------------------------------------------------------------------------

    def _autocast(self):
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(device_type=self.mesh.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def score(self, seqs: Sequence[tuple[Sequence[int], Sequence[int]]], reference: bool = False) -> list[torch.Tensor]:
        """Per-token log-probs of each (prompt_ids, response_ids) under the policy (or reference),
        on every rank (collective over the mesh's TP and PP groups; each DP replica scores all)."""
        passes = self.reference_passes if reference else self.policy_passes
        return score_sequences(passes, seqs, self.cfg.micro_batch_size)

    def on_micro_batch(self, fn: Callable[[], None] | None) -> None:
        """Call `fn` between the training micro-batches of every pass (after each forward, before
        its backward), on the main thread; None removes it."""
        self.policy_passes.before_backward = fn

    # -- optimizer steps -------------------------------------------------------------------

    def backward(self, batch: RolloutBatch, *, dpo: DPOConfig | None = None,
                 grpo: GRPOConfig | None = None) -> dict[str, float]:
        """Forward + backward of one step's loss (gradients accumulate; no update yet): the batch's
        task parts, else its DPO pairs (`dpo` given) or its GRPO groups (`grpo`). A batch with no
        training signal marks the step as skipped (`update` then only counts it). The metrics
        carry `parity/batch_gap` when the batch holds tokens sampled with these weights."""
        if batch.parts:
            metrics = self._tasks_pass(batch.parts)
        elif dpo is not None:
            metrics = self._dpo_pass(batch.pairs, dpo) if batch.pairs else {"train/pairs": 0.0, "_skip": True}
        else:
            metrics = self._grpo_pass(batch.groups, grpo) or {"train/sequences": 0.0, "_skip": True}
        total, n = self._parity
        self._parity = [0.0, 0]
        worst = self._reduced_parity_max()
        self.skipping = bool(metrics.pop("_skip", False))
        if n and not self.skipping:
            metrics.update({"parity/batch_gap": total / n, "parity/batch_gap_max": worst,
                            "parity/batch_tokens": float(n)})
        return metrics

    def update(self) -> dict[str, float]:
        """The optimizer step on the accumulated gradients, or, for a skipped step, no update but
        the step still counts so `s` keeps its meaning (loss-side metrics NaN: null in metrics.jsonl)."""
        self.step += 1
        if self.skipping:
            self.skipping = False
            self.scheduler.step()
            nan = float("nan")
            return {"train/loss": nan, "train/grad_norm": 0.0, "kl/ref": nan, "policy/entropy": nan,
                    "train/lr": self.scheduler.get_last_lr()[0]}
        sync_gradients(self.policy)
        grad_norm = clip_grad_norm(self.policy.parameters(), self.optim_cfg.grad_clip, self.mesh.tp_group,
                                   self.mesh.pp_group)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"train/grad_norm": grad_norm, "train/lr": lr}

    def train_dpo(self, pairs: Sequence[PreferencePair], c: DPOConfig = DPOConfig()) -> dict[str, float]:
        """`backward` + `update` on DPO pairs (benches and tests; the run loop checks parity between)."""
        return self._train(RolloutBatch(step=0, version=-1, rollouts=[], pairs=list(pairs)), dpo=c)

    def train_grpo(self, groups: Sequence[Group], c: GRPOConfig = GRPOConfig()) -> dict[str, float]:
        """`backward` + `update` on GRPO groups (clipped ratio vs behaviour log-probs, k3 KL)."""
        return self._train(RolloutBatch(step=0, version=-1, rollouts=[], groups=list(groups)), grpo=c)

    def train_tasks(self, parts: Sequence[TaskBatch]) -> dict[str, float]:
        """`backward` + `update` on several tasks at once (see `_tasks_pass`)."""
        return self._train(RolloutBatch(step=0, version=-1, rollouts=[], parts=list(parts)))

    def _train(self, batch: RolloutBatch, **objectives) -> dict[str, float]:
        metrics = self.backward(batch, **objectives)
        return {**metrics, **self.update()}

    def _tasks_pass(self, parts: Sequence[TaskBatch]) -> dict[str, float] | None:
        """Several tasks at once, each with its own objective: the loss is
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
                m = self._dpo_pass(part.pairs, part.dpo or DPOConfig(), scale) if part.pairs else None
            else:
                m = self._grpo_pass(part.groups, part.grpo or GRPOConfig(), scale)
            if m is None:
                if part.task == DEFAULT:  # the run's one task: no units to train on
                    metrics["train/pairs" if part.objective == "dpo" else "train/sequences"] = 0.0
                else:
                    metrics[f"train/skipped/{part.task}"] = 1.0
                continue
            active += 1
            loss += scale * m["train/loss"]
            metrics.update({metric_prefix(k, part.task): v for k, v in m.items()})
        if not active:
            return {**metrics, "_skip": True}
        metrics["train/loss"] = loss
        return metrics

    def _dpo_pass(self, pairs: Sequence[PreferencePair], c: DPOConfig, scale: float = 1.0) -> dict[str, float]:
        """Forward + backward of the DPO loss on `pairs` (times `scale`), no optimizer step."""
        return self._counted(dpo_pass(self.policy_passes, self.reference_passes, pairs, c, scale=scale,
                                      micro_batch_size=self.cfg.micro_batch_size, parity=self._fresh_gap))

    def _grpo_pass(self, groups: Sequence[Group], c: GRPOConfig, scale: float = 1.0) -> dict[str, float] | None:
        """Forward + backward of the GRPO loss on `groups` (times `scale`); None with no tokens."""
        r = grpo_pass(self.policy_passes, self.reference_passes, groups, c, scale=scale,
                      micro_batch_size=self.cfg.micro_batch_size, parity=self._fresh_gap)
        return None if r is None else self._counted(r)

    def _fresh_gap(self, seqs: Sequence[Rollout], logprobs: torch.Tensor) -> tuple[float, int]:
        total, count, worst = fresh_gap(seqs, logprobs, self.step)
        self._parity_max = max(self._parity_max, worst)
        return total, count

    def _reduced_parity_max(self) -> float:
        """This step's largest fresh-token gap over the mesh (each last stage saw its DP share)."""
        worst, self._parity_max = self._parity_max, 0.0
        if self.mesh.world_size == 1:
            return worst
        t = torch.tensor([worst], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=getattr(self.mesh, "object_group", None))
        return float(t)

    def _counted(self, result: PassResult) -> dict[str, float]:
        """A pass's metrics; its parity sums go into this step's batch parity check."""
        self._parity[0] += result.gap_sum
        self._parity[1] += result.gap_tokens
        return result.metrics

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
        save_hf(self.policy, out_dir, tokenizer_dir=tokenizer_dir or self.model_dir)
