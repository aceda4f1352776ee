"""Running micro-batches through this rank's pipeline stages, with a loss owned by the last stage.

    pipe = Pipeline(model)                                  # model: this rank's `CausalLM` shard
    pipe.run([ids_0, ids_1, ...], loss_fn, backward=True)   # ids_i: (B_i, T_i) token ids

`loss_fn(hidden, i)` runs on the last stage only, once per micro-batch, with the final hidden
states `(B, T, H)` of micro-batch `i` (at pp > 1 right-padded to the run's common shape: the real
tokens keep their rows and columns, so index them as in `ids_i`). It returns the scalar to back-propagate (already carrying the global normalisation: nothing
is rescaled here) and keeps whatever else it needs (metrics, log-probs) itself. The side inputs of
a micro-batch (response positions, targets, advantages, reference log-probs...) never travel
through the pipeline: the learner builds them on every rank, and the last stage's `loss_fn` looks
them up by the index `i`. Only the hidden states (and their gradients) cross stages.

- pp = 1: a plain loop (forward, loss, backward per micro-batch); shapes may differ.
- pp > 1: `torch.distributed.pipelining`: `Schedule1F1B`, or `ScheduleInterleaved1F1B` when the
  model has several virtual stages per rank. `PipelineStage` needs one static activation shape
  per run, so the micro-batches are right-padded to a common (B, T) (causal attention: padding
  columns never change earlier positions, padding rows are never read), and the stages are built
  per call with static metadata (no shape-inference pass). 1F1B needs at least `pp` micro-batches
  (interleaved: a multiple of `pp`): missing ones are padding whose loss is `0 * sum(hidden)`.
  The micro-batch index reaches `loss_fn` as the schedule's `target`, `torch.arange(m)`, which the
  schedule splits into one element per micro-batch.

Must not know about objectives, optimizers or data parallelism.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleInterleaved1F1B

from engine.model.llama import CausalLM

LossFn = Callable[[torch.Tensor, int], torch.Tensor]  # (hidden (B, T, H), micro-batch index) -> scalar


@dataclass
class RunStats:
    """The last `run` on this rank (the benchmark reads them)."""

    seconds: float = 0.0
    microbatches: int = 0  # as given
    padding_microbatches: int = 0  # added to meet the schedule's minimum (pp > 1)


class Pipeline:
    def __init__(self, model: CausalLM, pad_id: int = 0):
        self.model, self.mesh, self.pad_id = model, model.mesh, pad_id
        self.stats = RunStats()

    @property
    def pp_size(self) -> int:
        return self.mesh.pp_size

    def run(self, micro_ids: Sequence[torch.Tensor], loss_fn: LossFn, *, backward: bool) -> None:
        """Forward (and with `backward`, backward) every micro-batch; collective over the PP group.
        Every rank of the pipeline passes the same number of micro-batches with the same shapes."""
        t0 = time.perf_counter()
        self.stats = RunStats(microbatches=len(micro_ids))
        grad = torch.enable_grad() if backward else torch.no_grad()
        with grad:
            if self.pp_size == 1:
                self._run_local(micro_ids, loss_fn, backward)
            else:
                self._run_pipelined(micro_ids, loss_fn, backward)
        self.stats.seconds = time.perf_counter() - t0

    def _run_local(self, micro_ids: Sequence[torch.Tensor], loss_fn: LossFn, backward: bool) -> None:
        (chunk,) = self.model.chunks
        for i, ids in enumerate(micro_ids):
            loss = loss_fn(chunk(ids.to(self.mesh.device)), i)
            if backward:
                loss.backward()

    def _run_pipelined(self, micro_ids: Sequence[torch.Tensor], loss_fn: LossFn, backward: bool) -> None:
        model, mesh = self.model, self.mesh
        n_real = len(micro_ids)
        n = max(n_real, self.pp_size)
        interleaved = len(model.chunks) > 1
        if interleaved:
            n = -(-n // self.pp_size) * self.pp_size
        B = max([ids.shape[0] for ids in micro_ids], default=1)
        T = max([ids.shape[1] for ids in micro_ids], default=1)
        padded = [
            F.pad(ids, (0, T - ids.shape[1], 0, B - ids.shape[0]), value=self.pad_id) for ids in micro_ids
        ]
        padded += [torch.full((B, T), self.pad_id, dtype=torch.long)] * (n - n_real)
        self.stats.padding_microbatches = n - n_real

        dtype = next(model.parameters()).dtype
        stages = []
        for chunk in model.chunks:
            ids_meta = torch.empty(B, T, dtype=torch.long, device="meta")
            act_meta = torch.empty(
                B, T, model.cfg.hidden_size, dtype=dtype, device="meta", requires_grad=backward
            )
            stages.append(PipelineStage(
                chunk, chunk.stage_id, model.num_stages, mesh.device,
                input_args=ids_meta if chunk.is_first else act_meta, output_args=act_meta, group=mesh.pp_group,
            ))  # fmt: skip

        def pipeline_loss(hidden: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
            i = int(index)
            return loss_fn(hidden, i) if i < n_real else hidden.sum() * 0.0

        if interleaved:
            schedule = ScheduleInterleaved1F1B(stages, n, loss_fn=pipeline_loss, scale_grads=False)
        else:
            schedule = Schedule1F1B(stages[0], n, loss_fn=pipeline_loss, scale_grads=False)
        args = (torch.cat(padded).to(mesh.device),) if model.chunks[0].is_first else ()
        kwargs = {}
        if model.chunks[-1].is_last:
            kwargs = {"target": torch.arange(n, device=mesh.device), "return_outputs": False}
        if backward:
            schedule.step(*args, **kwargs)
        else:
            schedule.eval(*args, **kwargs)
