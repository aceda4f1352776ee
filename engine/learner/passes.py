"""The learner's two kinds of passes over packed micro-batches, at any (tp, pp, dp) layout:
forward-only log-probs (reference, scoring) and the training pass (forward, loss, backward).

    policy = PipelinedModel(model, impl="torch", autocast=nullcontext)
    ref_tok = policy.logprobs(batches)                       # list of (N_i,), last stage only
    policy.train(batches, lambda i, logprobs, entropy: loss) # loss owned by the last stage
    sums = reduce_sums(sums, mesh)                           # metric sums: last stage -> all, DP summed

Data parallelism enters only through `dp_share` (which items this DP rank trains on) and
`reduce_sums`; pipeline parallelism only through `engine.parallel.pipeline.Pipeline`, whose last
stage computes the response log-probs from its hidden states
(`batch.response_logprobs_from_hidden`) and hands them to the objective's closure by micro-batch
index.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import torch
import torch.distributed as dist

from engine.learner.batch import PackedBatch, response_logprobs_from_hidden
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh
from engine.parallel.pipeline import Pipeline

# (micro-batch index, response log-probs (N_i,), entropy (N_i,)) -> scalar loss to back-propagate
MicroLoss = Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor]


def dp_share(items: Sequence, mesh: Mesh) -> Sequence:
    """This DP rank's contiguous share of `items` (the first `len % dp` ranks take one more)."""
    base, extra = divmod(len(items), mesh.dp_size)
    start = mesh.dp_rank * base + min(mesh.dp_rank, extra)
    return items[start : start + base + (1 if mesh.dp_rank < extra else 0)]


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
            logprobs, entropy = self._logprobs(hidden, batches[i], with_entropy=True)
            return micro_loss(i, logprobs, entropy)

        with self.autocast():
            self.pipe.run([b.input_ids for b in batches], loss_fn, backward=True)
