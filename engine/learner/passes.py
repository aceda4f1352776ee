"""The learner's passes over packed micro-batches, at any (tp, pp, dp) layout: forward-only
log-probs (reference, scoring), the training pass (forward, loss, backward), and the DPO and
GRPO objectives' passes built on one skeleton.

    policy = PipelinedModel(model, impl="torch", autocast=nullcontext)
    ref_tok = policy.logprobs(batches)                       # list of (N_i,), last stage only
    policy.train(batches, lambda i, logprobs, entropy: loss) # loss owned by the last stage
    sums = reduce_sums(sums, mesh)                           # metric sums: last stage -> all, DP summed
    result = grpo_pass(policy, reference, groups, cfg.grpo, micro_batch_size=4)  # PassResult | None

Data parallelism enters only through `dp_share` (which items this DP rank trains on) and
`reduce_sums`; pipeline parallelism only through `engine.parallel.pipeline.Pipeline`, whose last
stage computes the response log-probs from its hidden states
(`batch.response_logprobs_from_hidden`) and hands them to the objective's closure by micro-batch
index. `dpo_pass` and `grpo_pass` share `objective_pass`: DP share -> micro-batches -> side
forwards (reference, pre-update policy; each skipped when the objective does not need it, e.g.
GRPO with `kl_coef: 0` never runs the reference) -> training pass with the objective's loss per
micro-batch -> metric sums reduced over the mesh. No optimizer step here (`engine.learner.optim`).

    .venv/bin/python -m pytest tests/engine/learner/test_objective_passes.py -q
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from engine.learner.batch import PackedBatch, pack, response_logprobs_from_hidden
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh
from engine.parallel.pipeline import Pipeline
from engine.rollout.types import Group, PreferencePair, Rollout
from kernels.dpo import dpo_loss
from kernels.grpo import grpo_loss, token_weights

if TYPE_CHECKING:
    from engine.config import DPOConfig, GRPOConfig

# (micro-batch index, response log-probs (N_i,), entropy (N_i,)) -> scalar loss to back-propagate
MicroLoss = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """Consecutive slices of `items` of `size` (the last one shorter)."""
    for i in range(0, len(items), size):
        yield items[i : i + size]


def dp_share(items: Sequence, mesh: Mesh) -> Sequence:
    """This DP rank's contiguous share of `items` (the first `len % dp` ranks take one more)."""
    base, extra = divmod(len(items), mesh.dp_size)
    start = mesh.dp_rank * base + min(mesh.dp_rank, extra)
    return items[start : start + base + (1 if mesh.dp_rank < extra else 0)]


def by_length(items: Sequence, sequences: Callable[[Sequence], list[Rollout]]) -> list:
    """`items` in order of their longest sequence (stable), so that each micro-batch pads to about
    its own sequences' length rather than the step's longest. A step's loss and metrics are sums
    over items, so the order changes only the order of summation."""
    return sorted(items, key=lambda it: max(len(r.prompt_ids) + len(r.response_ids) for r in sequences([it])))


def reduce_sums(sums: dict[str, float], mesh: Mesh) -> dict[str, float]:
    """Metric sums accumulated by the last stage of each DP replica -> their total, on every rank
    (sum over PP, where other stages hold zeros, then over DP). fp64, so the DP split does not
    change the printed metrics."""
    if mesh.pp_size == 1 and mesh.dp_size == 1:
        return sums
    keys = list(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64)
    for group, size in ((mesh.pp_group, mesh.pp_size), (mesh.dp_group, mesh.dp_size)):
        if size > 1:
            dist.all_reduce(t, group=group)
    return dict(zip(keys, t.tolist(), strict=True))


class PipelinedModel:
    """A `CausalLM` shard with its `Pipeline`: what the learner runs micro-batches through."""

    def __init__(
        self,
        model: CausalLM,
        *,
        impl: str | None,
        autocast: Callable[[], contextlib.AbstractContextManager],
        pad_id: int = 0,
    ):
        self.model, self.mesh, self.impl, self.autocast = model, model.mesh, impl, autocast
        self.pipe = Pipeline(model, pad_id=pad_id)
        # called on the last stage after each training micro-batch's forward, before its loss and
        # backward (the run loop re-picks the CPU thread count there: engine/loop.py)
        self.before_backward: Callable[[], None] | None = None

    def _logprobs(self, hidden: torch.Tensor, batch: PackedBatch, with_entropy: bool):
        return response_logprobs_from_hidden(
            hidden,
            self.model.lm_head_weight,
            batch,
            tp_group=self.mesh.tp_group,
            with_entropy=with_entropy,
            impl=self.impl,
        )

    def logprobs(
        self, batches: Sequence[PackedBatch], *, broadcast: bool = False
    ) -> list[torch.Tensor | None]:
        """Per-token log-probs (N_i,) of each batch, no gradient. Computed by the last stage; with
        `broadcast`, sent to every stage of the pipeline (collective over PP), otherwise None on
        the other stages."""
        out: list[torch.Tensor | None] = [None] * len(batches)

        def collect(hidden: torch.Tensor, i: int) -> torch.Tensor:
            out[i] = self._logprobs(hidden, batches[i], with_entropy=False)
            return hidden.new_zeros(())

        with self.autocast():
            self.pipe.run([b.input_ids for b in batches], collect, backward=False)
        if broadcast and self.mesh.pp_size > 1:
            sizes = [b.targets.numel() for b in batches]
            last = self.mesh.is_last_stage
            flat = (
                torch.cat(out).float() if last and out else torch.empty(sum(sizes), device=self.mesh.device)
            )
            dist.broadcast(flat, src=self.mesh.pp_peer(self.mesh.pp_size - 1), group=self.mesh.pp_group)
            out = list(flat.split(sizes))
        return out

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> full-vocabulary logits (B, T, V) on every rank of the replica (TP-gathered,
        PP-broadcast). For tests and evaluation: it materialises all of them."""
        out: list[torch.Tensor] = []

        def collect(hidden: torch.Tensor, i: int) -> torch.Tensor:
            out.append(self.model.gather_logits(self.model.logits(hidden)).float())
            return hidden.new_zeros(())

        with self.autocast():
            self.pipe.run([input_ids], collect, backward=False)
        if self.mesh.pp_size == 1:
            return out[0]
        full = (
            out[0]
            if out
            else torch.empty(*input_ids.shape, self.model.cfg.vocab_size, device=self.mesh.device)
        )
        dist.broadcast(full, src=self.mesh.pp_peer(self.mesh.pp_size - 1), group=self.mesh.pp_group)
        return full

    def train(self, batches: Sequence[PackedBatch], micro_loss: MicroLoss) -> None:
        """Forward + backward of every batch; gradients accumulate in the parameters' `.grad`
        (this rank's share only: `engine.parallel.grads.sync_gradients` completes them)."""

        def loss_fn(hidden: torch.Tensor, i: int) -> torch.Tensor:
            if self.before_backward is not None:
                self.before_backward()
            logprobs, entropy = self._logprobs(hidden, batches[i], with_entropy=True)
            return micro_loss(i, logprobs, entropy)

        with self.autocast():
            self.pipe.run([b.input_ids for b in batches], loss_fn, backward=True)


# -- the objectives' shared skeleton ------------------------------------------------------------


@dataclass
class MicroBatch:
    """One micro-batch of an objective pass, as the objective's loss sees it (last stage)."""

    index: int
    batch: PackedBatch
    items: Sequence  # this micro-batch's items (pairs, (rollout, advantage), ...), in order
    sequences: list[Rollout]  # the packed sequences, in batch row order
    ref_logprobs: torch.Tensor | None  # (N,) under the reference; None when the pass skipped it
    old_logprobs: torch.Tensor | None  # (N,) under the pre-update policy; None unless asked for


# (micro-batch, response log-probs (N,), entropy (N,) detached, metric sums to add to) -> the
# micro-batch's share of the step's loss, already carrying the global normalisation
ObjectiveLoss = Callable[[MicroBatch, torch.Tensor, torch.Tensor, dict[str, float]], torch.Tensor]
# (sequences of a micro-batch, their log-probs (N,)) -> (sum |learner - sampler| over the fresh
# tokens, their count): the learner's batch parity check (`learner.fresh_gap` at its step)
Parity = Callable[[Sequence[Rollout], torch.Tensor], tuple[float, int]]


def reference_logprobs(reference: PipelinedModel, batches: Sequence[PackedBatch], seqs: Sequence[Sequence[Rollout]],
                       mesh: Mesh) -> list[torch.Tensor | None]:
    """The reference's log-probs of each micro-batch: carried by the rollouts when they were
    computed ahead (offline preference pairs: `engine/rollout/preferences.py`), else a forward."""
    if all(r.ref_logprobs is not None for s in seqs for r in s):
        return [torch.tensor([lp for r in s for lp in r.ref_logprobs], dtype=torch.float32, device=mesh.device)
                for s in seqs]
    return reference.logprobs(batches)


def objective_pass(
    policy: PipelinedModel,
    reference: PipelinedModel | None,
    items: Sequence,
    *,
    sequences: Callable[[Sequence], list[Rollout]],
    items_per_micro: int,
    loss: ObjectiveLoss,
    sums: dict[str, float],
    parity: Parity | None = None,
    with_old_logprobs: bool = False,
) -> dict[str, float]:
    """Forward + backward of one objective over a step's `items` (the same list on every rank);
    gradients accumulate in the policy's `.grad`, no optimizer step. Collective over the mesh.

    This DP rank takes its share (`dp_share`), sorts it by length (`by_length`) and cuts it into
    micro-batches of `items_per_micro` items packed as `sequences(chunk)`. Before training it runs the side forwards the objective needs:
    the reference's log-probs unless `reference` is None (`MicroBatch.ref_logprobs` is then None:
    e.g. GRPO with `kl_coef: 0` never runs the reference), and with `with_old_logprobs` the
    policy's own pre-update log-probs. `loss` runs on the last stage per micro-batch and adds its
    metrics to `sums`; `parity` (if given) adds `gap` / `gap_tokens`. Returns `sums` plus those
    two, reduced over PP and DP (`reduce_sums`): the same totals on every rank.

        sums = objective_pass(policy, reference, pairs, sequences=lambda c: [p.chosen for p in c]
                              + [p.rejected for p in c], items_per_micro=2, loss=my_loss,
                              sums={"loss": 0.0})
    """
    mesh = policy.mesh
    parts = [list(c) for c in chunks(by_length(dp_share(items, mesh), sequences), items_per_micro)]
    seqs = [sequences(part) for part in parts]
    batches = [pack([r.prompt_ids for r in s], [r.response_ids for r in s], device=mesh.device) for s in seqs]
    none: list[torch.Tensor | None] = [None] * len(batches)
    old = policy.logprobs(batches) if with_old_logprobs else none
    ref = reference_logprobs(reference, batches, seqs, mesh) if reference is not None else none
    sums = {**sums, "gap": 0.0, "gap_tokens": 0.0}

    def micro_loss(i: int, logprobs: torch.Tensor, entropy: torch.Tensor) -> torch.Tensor:
        if parity is not None:
            gap, gap_tokens = parity(seqs[i], logprobs)
            sums["gap"] += gap
            sums["gap_tokens"] += gap_tokens
        micro = MicroBatch(i, batches[i], parts[i], seqs[i], ref[i], old[i])
        return loss(micro, logprobs, entropy, sums)

    policy.train(batches, micro_loss)
    return reduce_sums(sums, mesh)


# -- the two objectives on it -------------------------------------------------------------------


@dataclass
class PassResult:
    """One objective's pass: its metrics (the same on every rank) and its batch-parity sums."""

    metrics: dict[str, float]
    gap_sum: float  # sum |learner - sampler| log-prob over the fresh tokens (`Parity`)
    gap_tokens: int


def needs_reference(objective: str, c: DPOConfig | GRPOConfig) -> bool:
    """Whether an objective reads the reference model: DPO always; GRPO only with a KL term."""
    return objective == "dpo" or c.kl_coef != 0.0


def _k3(ref: torch.Tensor, pol: torch.Tensor) -> torch.Tensor:
    delta = ref - pol
    return delta.exp() - delta - 1.0


def dpo_pass(policy: PipelinedModel, reference: PipelinedModel, pairs: Sequence[PreferencePair], c: DPOConfig,
             *, micro_batch_size: int, scale: float = 1.0, parity: Parity | None = None) -> PassResult:
    """Forward + backward of the DPO loss on `pairs` (times `scale`), no optimizer step. A
    micro-batch holds `micro_batch_size // 2` pairs: their chosen responses, then their rejected."""
    total = len(pairs)

    def loss(mb: MicroBatch, pol_tok: torch.Tensor, entropy: torch.Tensor, sums: dict[str, float]) -> torch.Tensor:
        batch, ref_tok, n = mb.batch, mb.ref_logprobs, len(mb.items)
        pol_seq, ref_seq = batch.seq_sum(pol_tok), batch.seq_sum(ref_tok)
        terms = dpo_loss(
            pol_seq[:n], pol_seq[n:], ref_seq[:n], ref_seq[n:], beta=c.beta,
            chosen_lengths=batch.lengths[:n], rejected_lengths=batch.lengths[n:],
            length_normalize=c.length_normalize, nll_weight=c.nll_weight, impl=policy.impl,
        )  # fmt: skip
        sums["loss"] += float(terms.loss.detach().sum())
        sums["chosen"] += float(pol_seq[:n].detach().sum())
        sums["rejected"] += float(pol_seq[n:].detach().sum())
        sums["margin"] += float(terms.margin.sum())
        sums["acc"] += float((terms.margin > 0).float().sum())
        sums["kl"] += float(_k3(ref_tok, pol_tok.detach()).sum())
        sums["ent"] += float(entropy.sum())
        sums["tokens"] += int(batch.targets.numel())
        return terms.loss.sum() / total if scale == 1.0 else terms.loss.sum() * (scale / total)

    sums = objective_pass(
        policy, reference, pairs, sequences=lambda part: [p.chosen for p in part] + [p.rejected for p in part],
        items_per_micro=max(1, micro_batch_size // 2), loss=loss, parity=parity,
        sums=dict(loss=0.0, chosen=0.0, rejected=0.0, margin=0.0, acc=0.0, kl=0.0, ent=0.0, tokens=0),
    )  # fmt: skip
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
    return PassResult(metrics, sums["gap"], int(sums["gap_tokens"]))


def grpo_pass(policy: PipelinedModel, reference: PipelinedModel | None, groups: Sequence[Group], c: GRPOConfig,
              *, micro_batch_size: int, scale: float = 1.0, parity: Parity | None = None) -> PassResult | None:
    """Forward + backward of the GRPO loss on `groups` (times `scale`), no optimizer step; None
    when no group has a non-empty response. With `kl_coef: 0` the reference never runs (pass
    None, or it is ignored) and `kl/ref` is NaN: not measured. With `tis_cap` the ratio is taken
    against the pre-update learner and the TIS weight against the sampler."""
    items = [(r, a) for g in groups for r, a in zip(g.rollouts, g.advantages, strict=False) if r.response_ids]
    if not items:
        return None
    total_tokens = sum(len(r.response_ids) for r, _ in items)
    with_kl = needs_reference("grpo", c)

    def loss(mb: MicroBatch, pol: torch.Tensor, entropy: torch.Tensor, sums: dict[str, float]) -> torch.Tensor:
        batch = mb.batch
        on = {"dtype": torch.float32, "device": pol.device}  # the learner's device (CUDA: the kernels')
        behaviour = torch.tensor([lp for r in mb.sequences for lp in r.behaviour_logprobs], **on)
        lengths = batch.lengths.to(pol.device)
        adv = torch.repeat_interleave(torch.tensor([a for _, a in mb.items], **on), lengths)
        weight = token_weights(lengths, reduction=c.reduction, total_tokens=total_tokens, total_sequences=len(items))
        old, tis = behaviour, None
        if mb.old_logprobs is not None:
            old = mb.old_logprobs
            tis = (old - behaviour).exp().clamp(max=c.tis_cap)
        ref = mb.ref_logprobs if with_kl else pol.detach()  # kl_coef 0: the KL term is exactly 0
        terms = grpo_loss(pol, old, ref, adv, weight, clip_eps=c.clip_eps, kl_coef=c.kl_coef, tis_weight=tis,
                          impl=policy.impl)
        sums["loss"] += float(terms.loss.detach())
        sums["clipped"] += float(terms.clipped.float().sum())
        sums["kl"] += float(terms.kl.sum())
        sums["ent"] += float(entropy.sum())
        sums["ratio"] += float(terms.ratio.sum())
        if tis is not None:
            sums["tis"] += float(tis.sum())
        return terms.loss * scale if scale != 1.0 else terms.loss

    sums = objective_pass(
        policy, reference if with_kl else None, items, sequences=lambda part: [r for r, _ in part],
        items_per_micro=micro_batch_size, loss=loss, parity=parity, with_old_logprobs=c.tis_cap is not None,
        sums=dict(loss=0.0, clipped=0.0, kl=0.0, ent=0.0, ratio=0.0, tis=0.0),
    )  # fmt: skip
    metrics = {
        "train/loss": sums["loss"],
        "train/sequences": float(len(items)),
        "train/tokens": float(total_tokens),
        "clip/fraction": sums["clipped"] / total_tokens,
        "kl/ref": sums["kl"] / total_tokens if with_kl else float("nan"),
        "policy/entropy": sums["ent"] / total_tokens,
        "policy/ratio_mean": sums["ratio"] / total_tokens,
    }
    if c.tis_cap is not None:
        metrics["tis/weight_mean"] = sums["tis"] / total_tokens
    return PassResult(metrics, sums["gap"], int(sums["gap_tokens"]))
