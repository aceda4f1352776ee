"""A vLLM general plugin (entry point `vllm.general_plugins`, see pyproject.toml): on a machine
with few cores, stop vLLM's processes from spinning while they wait for each other, at the times
the caller says another job needs the cores (the learner training beside the sampler).

vLLM's engine-core process and its model workers talk through shared-memory ring buffers
(`vllm.distributed.device_communicators.shm_broadcast`). A reader that has read a message in the
last second waits for the next one by spinning on `sched_yield()`; only after a second of silence
does it block on the writer's zmq notification. On a GPU node that costs a spare CPU core. On
the 2-core CPU machine it costs half of the machine: while the worker runs the model, the
engine core spins waiting for its output, and that spinning takes a core from either the worker
or the learner training beside it (measured: both phases ran ~30% slower when overlapped).
Blocking is not free either: with nothing else to run, generation alone was 10-20% slower with
blocking waits than with vLLM's spin (each wake-up of an idle core costs). Hence a switch.

The sampler (`VLLMSampler(quiet_wait_ms=...)`) sets two variables before vLLM starts its
processes: `SEMIONLINE_VLLM_QUIET_WAIT_MS`, the longest a quiet wait blocks before it re-reads
the shared flag (the writer notifies on every message, so the bound only matters if a
notification were lost), and `SEMIONLINE_VLLM_QUIET_FLAG`, a one-page file whose first byte the
sampler sets to 1 while waits must be quiet (`VLLMSampler.quiet()`), 0 for vLLM's own wait. Every
wait reads that byte (a memory read). Without the flag file, waits are always quiet; without
the first variable, this plugin changes nothing, so other vLLM engines in the same environment
keep vLLM's behaviour. vLLM loads general plugins in every process it starts (engine core,
workers); the patch is on the class, so ring buffers built before it follow it too.
"""

from __future__ import annotations

import mmap
import os

ENV = "SEMIONLINE_VLLM_QUIET_WAIT_MS"
FLAG_ENV = "SEMIONLINE_VLLM_QUIET_FLAG"
FLAG_BYTES = mmap.PAGESIZE


def quiet_wait_ms() -> float | None:
    value = os.environ.get(ENV)
    if not value:
        return None
    ms = float(value)
    if ms < 1:  # zmq's poll takes whole milliseconds: below 1 it would not block at all
        raise ValueError(f"{ENV} must be a number of milliseconds >= 1, got {value!r}")
    return ms


def open_flag(path: str) -> mmap.mmap:
    """Map the flag file (made by `make_flag`) shared by the sampler and vLLM's processes."""
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), FLAG_BYTES)


def make_flag(directory: str | None = None) -> str:
    """A new flag file, cleared (vLLM's own wait); the caller unlinks it when done."""
    import tempfile

    if directory is None and os.path.isdir("/dev/shm"):
        directory = "/dev/shm"
    fd, path = tempfile.mkstemp(prefix="semionline-quiet-", dir=directory)
    with os.fdopen(fd, "wb") as f:
        f.write(b"\0" * FLAG_BYTES)
    return path


def register() -> None:
    """The plugin's entry point (vLLM calls it in each of its processes; safe to call twice)."""
    cap = quiet_wait_ms()
    if cap is None:
        return
    from vllm.distributed.device_communicators import shm_broadcast

    cls = shm_broadcast.SpinCondition
    if getattr(cls.wait, "_semionline_quiet", False):
        return
    vllm_wait = cls.wait
    flag_path = os.environ.get(FLAG_ENV)
    flag = open_flag(flag_path) if flag_path else None

    def wait(self, timeout_ms: int | None = None) -> None:
        if flag is not None and not flag[0]:
            return vllm_wait(self, timeout_ms)
        assert self.is_reader, "Only readers can wait"
        bound = int(cap if timeout_ms is None else min(cap, timeout_ms))
        events = dict(self.poller.poll(timeout=bound))
        if self.local_notify_socket in events:  # CONFLATE: at most one pending notification
            self.local_notify_socket.recv(flags=shm_broadcast.zmq.NOBLOCK, copy=False)

    wait._semionline_quiet = True  # type: ignore[attr-defined]
    wait._vllm_wait = vllm_wait  # type: ignore[attr-defined]
    cls.wait = wait
