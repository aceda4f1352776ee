"""Asynchronous overlap of rollout production and optimization (`overlap: true`).

    semionline train --config configs/demo/grpo.yaml overlap=true sync_every=4

A producer thread on the driver rank (the one that owns the sampler) calls a `produce(step)`
function — `RolloutSource.produce` — for steps start+1, start+2, … and puts each
batch, tagged with the sampler weight version that generated it, into a bounded queue; the main
thread takes them in step order. What this module must not do: collectives. Under torchrun only
the driver runs the producer; the main thread broadcasts each batch and pushes weights, so every
rank issues its collectives in the same order as in the synchronous path.

The staleness rule. The batch for optimizer step t may be generated once the sampler holds a
version v with `v >= t - 1 - max_staleness` (`RunConfig.staleness_bound`). With the default
`max_staleness = s - 1`, and the sampler receiving weights only after steps that are multiples of
s, the version used is exactly the one the synchronous path uses: the last multiple of s that is
<= t - 1. So `overlap: true` changes when a batch is made, never which weights make it; the
sampler works up to s - 1 steps ahead of the learner, and the first step after each sync waits
for generation. GRPO may set `max_staleness > s - 1` (async off-policy; pair it with
`grpo.tis_cap`), which lets generation run across syncs too.

The sampler is not thread-safe: every use of it (generate, weight push, the gap probe, eval)
holds `sampler_lock()`. The version gate is a condition on the same lock.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from engine.rollout.types import Produced


class _Stop(Exception):
    pass


class RolloutPipeline:
    """The sampler lock, the version gate and (with `overlap`) the producer thread and its queue."""

    def __init__(self, produce: Callable[[int], Produced], *, overlap: bool, max_staleness: int,
                 first_step: int, last_step: int, version: int):
        self._produce, self.overlap, self.max_staleness = produce, overlap, max_staleness
        self._steps = range(first_step, last_step + 1)
        self._cond = threading.Condition(threading.RLock())
        self._version = version
        self._stopping = False
        self._queue: queue.Queue[Produced | BaseException] = queue.Queue(maxsize=max_staleness + 1)
        self._thread: threading.Thread | None = None
        self._next = first_step  # the step the producer makes next (its last + 1)

    # -- used by the main thread -------------------------------------------------------------

    @contextmanager
    def sampler_lock(self) -> Iterator[None]:
        """Hold while using the sampler from the main thread (push, probe, eval)."""
        with self._cond:
            yield

    def publish_version(self, version: int) -> None:
        """The sampler now holds the weights of learner step `version` (call under the lock)."""
        with self._cond:
            self._version = version
            self._cond.notify_all()

    def start(self) -> None:
        if self.overlap and self._thread is None and len(self._steps):
            self._thread = threading.Thread(target=self._run, name="rollout-producer", daemon=True)
            self._thread.start()

    def take(self, step: int) -> tuple[Produced, float]:
        """The batch for `step` and the seconds the caller waited for it (the learner's idle time)."""
        t0 = time.perf_counter()
        if not self.overlap:
            with self._cond:
                produced = self._produce(step)
            return produced, time.perf_counter() - t0
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise RuntimeError(f"rollout producer failed while making the batch for step {step}") from item
        if item.batch.step != step:
            raise RuntimeError(f"rollout producer out of order: got step {item.batch.step}, expected {step}")
        return item, time.perf_counter() - t0

    def generating(self) -> bool:
        """Whether the producer is generating now or will start before the main thread's next
        sync: a step is left, its version gate is open and the queue has room. Between syncs only
        the producer changes this, so at the start of a training pass it says whether the pass
        shares the cores with generation."""
        if self._thread is None:  # read without the lock: the producer holds it while it generates
            return False
        step = self._next
        return (step in self._steps and not self._stopping and self._queue.qsize() < self._queue.maxsize
                and self._version >= step - 1 - self.max_staleness)

    def close(self) -> None:
        """Stop the producer (it finishes the batch in hand) and join it."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            while self._thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.1)
            self._thread = None

    # -- the producer thread -----------------------------------------------------------------

    def _run(self) -> None:
        try:
            for step in self._steps:
                with self._cond:
                    while not self._stopping and self._version < step - 1 - self.max_staleness:
                        self._cond.wait()
                    if self._stopping:
                        raise _Stop
                    produced = self._produce(step)
                self._queue.put(produced)
                self._next = step + 1
        except _Stop:
            return
        except BaseException as e:  # handed to the main thread, which raises it with context
            self._queue.put(e)
