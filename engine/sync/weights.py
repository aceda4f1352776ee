"""Weight sync: which weights the sampler holds (`version`), pushing the learner's into it every `s`
steps, and the check that it really holds them (the parity policy).

    sync = WeightSync(cfg, learner, mesh, sampler=engine, probe_prompts=eval_ids, stop_ids=[eos])
    with sync.training():            # the engine quiets (CPU) or sleeps (time_sliced GPU) meanwhile
        metrics = learner.backward(batch)
        sync.check_batch(metrics, batch, step)   # raises before the update if the sampler disagrees
        metrics |= learner.update()
    metrics |= sync.sync(step)       # push + version (+ the probe: parity_check=probe, last sync)
    with sync.eval_weights():        # the learner's weights in the sampler for an eval, then back

The push itself: the learner streams full HF-named tensors (TP gather, PP broadcast:
`Learner.hf_weights`), the sampler cuts them into buckets of whole layers and hands them to its
transport (`engine/sampler/`). Every rank calls `push` (the gathers are collective); only the
driver owns an engine. The sampler is shared with the overlap producer thread: every use here
holds the pipeline's sampler lock (`attach`).

The parity policy (`sampler.parity_check`). batch: the training pass measures the learner's
log-probs of the freshly sampled tokens against the sampler's (`parity/batch_gap`), and a gap above
`sampler.max_logprob_gap` stops the run before the optimizer step; the last sync of a run, and a
step whose batch no training pass saw, get the probe instead. probe: after every push, sample
`gap_probe_prompts` prompts and score them with the learner.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch
from safetensors.torch import load_file, save_file

from engine.config import RunConfig
from engine.model.hf_io import iter_hf_weights
from engine.parallel.mesh import Mesh
from engine.parallel.objects import broadcast_object
from engine.rollout.types import RolloutBatch


class LogprobGapError(RuntimeError):
    """The sampler disagrees with the learner after a weight push: training on it would be wrong."""


def gap_error(gap: float, limit: float, where: str) -> LogprobGapError:
    return LogprobGapError(
        f"{where} the sampler's log-probs differ from the learner's by {gap:.2e} on average (limit "
        f"sampler.max_logprob_gap={limit:.0e}); the sampler does not hold the learner's weights — stopping "
        "instead of training on it")


class WeightSync:
    def __init__(self, cfg: RunConfig, learner, mesh: Mesh, *, sampler, engine, probe_prompts: list[list[int]],
                 stop_ids: list[int], shared: bool = False):
        """`sampler`: the driver's engine (None elsewhere); `engine`: the engine this rank quiets
        or puts to sleep while it trains (its own node's, or None); `shared`: the engine was handed
        in (a sweep's) and holds another run's weights."""
        self.cfg, self.learner, self.mesh, self.shared = cfg, learner, mesh, shared
        self.sampler, self.engine = sampler, engine
        self.probe_prompts, self.stop_ids = probe_prompts, stop_ids
        self.version = 0  # the learner step whose weights the sampler holds
        self.push_dtype = torch.bfloat16 if cfg.sampler_dtype == "bfloat16" else None
        self.kept: dict[str, torch.Tensor] | None = None  # a copy of the sampler's weights (eval swaps)
        # Evals happen at steps where the sampler may hold older weights (s > 1, offline): keep a
        # copy of its weights to swap back, also when a checkpoint may have to restore a stale one.
        every = cfg.eval.every
        needs_swap = cfg.offline or any(
            not cfg.sync_due(t) for t in range(1, cfg.steps + 1) if t == cfg.steps or (every and t % every == 0))
        self.remember = needs_swap or (cfg.checkpoint.every > 0 and not cfg.offline and int(cfg.sync_every) > 1)
        self._gaps: list[float] = []  # this step's parity measurements (means)
        self._gap_max = 0.0  # ... and the largest single-token gap among them
        self._pipeline = None

    def attach(self, pipeline) -> None:
        """The overlap pipeline whose sampler lock and version gate this sync serves."""
        self._pipeline = pipeline

    def lock(self):
        return self._pipeline.sampler_lock() if self._pipeline is not None else contextlib.nullcontext()

    # -- pushing -----------------------------------------------------------------------------

    def push(self, weights=None, remember: bool = False) -> dict[str, float]:
        """Stream the learner's weights (or a given HF-named dict) into the sampler, in buckets of
        whole layers (`sampler.bucket_mib`); with `remember`, keep a CPU copy so an eval swap can
        restore them. Returns the sync/* metrics (seconds, bytes, buckets, peak buffer bytes)."""
        t0 = time.perf_counter()
        kept: dict[str, torch.Tensor] = {}
        source = weights.items() if weights is not None else self.learner.hf_weights()

        def stream():
            for name, tensor in source:
                if self.push_dtype is not None:  # the sampler holds bf16: half the bytes to move
                    tensor = tensor.to(self.push_dtype)
                if remember:
                    kept[name] = tensor.detach().clone()
                yield name, tensor

        out = {"sync/bytes": 0.0}
        if self.sampler is not None:
            stats = self.sampler.push_weights(stream())
            out = {"sync/bytes": float(stats.bytes), "sync/buckets": float(stats.num_buckets),
                   "sync/peak_buffer_bytes": float(stats.peak_bytes)}
        elif self.mesh.dp_rank == 0:  # the driver's replica takes part in the TP gathers and PP
            for _ in stream():  # broadcasts; other DP replicas hold the same weights and skip
                pass
        if remember:
            self.kept = kept
        out["sync/seconds"] = time.perf_counter() - t0
        return out

    def remember_current(self) -> None:
        """Keep a copy of the weights the sampler starts with (the learner's, at step 0)."""
        if self.remember:
            self.kept = {n: t.detach().clone() for n, t in self.learner.hf_weights()}

    def start(self) -> None:
        """Step 0: a shared engine (a sweep's) gets the seed's weights; the sampler is checked."""
        if self.shared:  # it holds the previous run's weights
            self.push()
        self.remember_current()
        self.probe(0)

    def sync(self, step: int) -> dict[str, float]:
        """After optimizer step `step`: the sampler gets the learner's weights (collective)."""
        with self.lock():
            metrics = self.push(remember=self.remember)
            self.version = step
            # parity_check=batch: the next batch is checked in the training pass; the last sync
            # of the run has no next batch, so it gets the probe.
            if self.cfg.sampler.parity_check == "probe" or step == self.cfg.steps:
                self.probe(step)
            if self._pipeline is not None:
                self._pipeline.publish_version(step)
        metrics["sync/version"] = float(step)
        metrics["sync/param_bytes"] = float(self.learner.param_bytes)
        return metrics

    # -- parity ------------------------------------------------------------------------------

    def probe_gap(self, step: int) -> float:
        """Mean |learner - sampler| log-prob over freshly sampled tokens; fails the run if too big."""
        probe = None
        if self.sampler is not None:
            idx = list(range(min(self.cfg.sampler.gap_probe_prompts, len(self.probe_prompts))))
            outs = self.sampler.generate(
                [self.probe_prompts[i] for i in idx], n=1, temperature=1.0, top_p=1.0,
                max_tokens=self.cfg.rollout.max_tokens, stop_token_ids=self.stop_ids, seed=step,
            )  # fmt: skip
            probe = [(self.probe_prompts[i], list(o[0].token_ids), list(o[0].logprobs))
                     for i, o in zip(idx, outs, strict=True)]
        probe = broadcast_object(probe, self.mesh)
        learner = self.learner.score([(p, r) for p, r, _ in probe])
        diffs = torch.cat([(lp.float().cpu() - torch.tensor(s)).abs() for lp, (_, _, s) in zip(learner, probe, strict=True)])
        gap = float(diffs.mean()) if diffs.numel() else 0.0
        self._gap_max = max(self._gap_max, float(diffs.max()) if diffs.numel() else 0.0)
        if gap > self.cfg.logprob_gap_limit:
            raise gap_error(gap, self.cfg.logprob_gap_limit, f"after the weight push at step {step}")
        return gap

    def check_batch(self, metrics: dict[str, float], batch: RolloutBatch, step: int) -> bool:
        """Judge the training pass's parity measurement, before the optimizer step. Returns whether
        the batch needs the probe instead: sampled right after a sync, but no training pass saw it
        (no signal: the step is skipped); `probe(step)` then runs outside the training context."""
        c = self.cfg.sampler
        if "parity/batch_gap" in metrics:
            gap = metrics["parity/batch_gap"]
            limit = self.cfg.logprob_gap_limit
            if c.parity_check == "batch" and gap > limit:
                raise gap_error(gap, limit, f"on the batch of optimizer step {step} (sampled right after a sync)")
            self._gaps.append(gap)
            self._gap_max = max(self._gap_max, metrics.get("parity/batch_gap_max", 0.0))
            return False
        return (batch.version == self.learner.step and batch.version > 0 and self.learner.skipping
                and c.parity_check == "batch")

    def probe(self, step: int) -> None:
        if self.probe_prompts:  # a run on preference rows with no held-out prompts has none
            self._gaps.append(self.probe_gap(step))

    def step_gap(self) -> dict[str, float]:
        """`sync/logprob_gap`: the largest mean parity gap measured this step (absent if none was),
        with the largest single-token gap and the limit the mean is held to."""
        gaps, worst, self._gaps, self._gap_max = self._gaps, self._gap_max, [], 0.0
        if not gaps:
            return {}
        return {"sync/logprob_gap": max(gaps), "sync/logprob_gap_max": worst,
                "sync/logprob_gap_limit": self.cfg.logprob_gap_limit}

    # -- around training and evaluation ------------------------------------------------------

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """While the learner trains: the engine's processes block instead of spinning (quiet: they
        leave the cores to training, engine/sampler/vllm_plugin.py), and with
        `sampler.placement=time_sliced` (GPU) the engine sleeps."""
        if self.engine is None:
            yield
            return
        sliced = self.cfg.sampler.placement == "time_sliced"
        if sliced:
            self.engine.sleep()
        try:
            with self.engine.quiet():
                yield
        finally:
            if sliced:
                self.engine.wake_up()

    @contextlib.contextmanager
    def eval_weights(self) -> Iterator[None]:
        """The learner's current weights in the sampler for an evaluation (pushed in and back out
        when the sampler is stale, so semi-online/offline sampling is not disturbed)."""
        stale = self.version != self.learner.step
        with self.lock():
            if stale:
                self.push()
            yield
            if stale:  # restore the sampler's weights (kept from its last push)
                self.push(self.kept)

    # -- checkpoints -------------------------------------------------------------------------

    def save(self, ckpt_tmp, step: int) -> None:
        """The sampler's weights when no other file has them (stale, s > 1): driver only."""
        if self.version not in (0, step):
            (ckpt_tmp / "sampler").mkdir()
            save_file({n: t.contiguous() for n, t in self.kept.items()}, ckpt_tmp / "sampler" / "model.safetensors")

    def resume(self, step: int, version: int, ckpt_dir) -> None:
        """Give a fresh sampler the weights of `version` (collective), and check it when they are
        the learner's."""
        self.version = version
        if version == step:
            self.push(remember=self.remember)
            worst = self._gap_max  # parity_check=batch made no probe here: keep its max out of the metrics
            gap = self.probe_gap(step)  # the check the interrupted run made after this sync
            if self.cfg.sampler.parity_check == "batch":
                self._gap_max = worst
            if self.mesh.rank == 0:
                print(f"resumed at step {step}: sampler/learner log-prob gap {gap:.1e}", flush=True)
        elif version == 0:  # the seed's weights: the sampler starts with them
            if self.remember:
                self.kept = {n: t.detach().clone() for n, t in iter_hf_weights(self.learner.reference)}
        else:
            path = ckpt_dir / "sampler" / "model.safetensors"
            self.push(load_file(path) if self.mesh.rank == 0 else {}, remember=self.remember)
