"""One vLLM engine per node (`sampler.engines: per_node`): the driver's engine plus one on the
first rank of every other node, used by the driver as if they were one sampler.

    pool = EnginePool.build(local_engine_or_None, is_driver)     # every rank, same order
    pool.generate(prompts, n=8, ...)     # driver: the prompts are cut into one contiguous slice per engine
    pool.push_weights(named_tensors)     # driver: every engine gets every tensor, streamed
    pool.close()                         # driver: the other engines close too

Every node's engine holds the same weights. `generate` gives engine k a contiguous slice of the
prompts and the seed offset of that slice, so prompt i keeps the seed it would have on one engine
(`VLLMSampler.generate`: seed + i * n). `push_weights` streams each tensor once from the driver
(its learner's gathered full tensors) to the other engines over a gloo process group of the
engine ranks (CPU tensors over TCP between nodes, on GPU nodes too: vLLM's NCCL weight-transfer
API, GPU-only in vLLM, is not wired in yet) while the driver's own engine loads it; every engine
loads the whole model, so a push moves the parameter bytes once per remote node.

On the other nodes a service thread (`serve`) owns the engine and waits for the driver's
commands on that group; it never touches the learner's groups, so it runs beside the training
step of its rank. On the driver, whichever thread holds the run's sampler lock (WeightSync) issues
the commands, so they reach the group one at a time and in the same order everywhere.

Not here: choosing prompts, rewards, versions (RolloutSource and WeightSync do those on the driver).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import threading
import traceback
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.distributed as dist

from engine.parallel.split import even_split
from engine.sampler.transport import PushStats
from engine.sampler.vllm_engine import Sample, VLLMSampler


def place_engines(build: Callable[[], VLLMSampler], *, per_node: bool,
                  is_driver: bool) -> tuple[VLLMSampler | EnginePool | None, RemoteEngine | None]:
    """This rank's part of the sampler placement: (the driver's sampler, else None; this rank's
    remote engine, else None). With one engine (or one node) the driver builds it alone; with
    `per_node` every rank takes part (the leaders' gather and the engines' group are collectives)."""
    leaders = node_leaders() if per_node and dist.is_initialized() and dist.get_world_size() > 1 else [0]
    local = build() if is_driver else None
    if len(leaders) == 1:
        return local, None
    # gloo, CPU tensors, on GPU nodes too (vLLM's NCCL weight-transfer API is not wired in); a long
    # timeout, since a remote engine waits idle between commands
    group = dist.new_group(leaders, timeout=datetime.timedelta(days=7), backend="gloo")
    if is_driver:
        return EnginePool(local, group, leaders), None
    if dist.get_rank() in leaders:
        return None, RemoteEngine(build(), group, driver=0)
    return None, None


def node_leaders() -> list[int]:
    """Global ranks that are the first rank of their node (torchrun's LOCAL_RANK == 0), gathered
    over the default group; a collective, on every rank."""
    mine = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    flags = [None] * dist.get_world_size()
    dist.all_gather_object(flags, mine == 0)
    leaders = [r for r, first in enumerate(flags) if first]
    if not leaders or leaders[0] != 0:
        raise RuntimeError(f"sampler.engines=per_node: rank 0 must be the first rank of its node (leaders {leaders})")
    return leaders


class EnginePool:
    """The driver's handle on every node's engine (the `VLLMSampler` methods the run uses)."""

    def __init__(self, local: VLLMSampler, group, ranks: list[int]):
        self.local, self.group, self.ranks = local, group, ranks
        self._closed = False

    @property
    def engines(self) -> int:
        return len(self.ranks)

    def _command(self, cmd: tuple) -> None:
        dist.broadcast_object_list([cmd], src=self.ranks[0], group=self.group)

    def generate(self, prompt_token_ids: list[list[int]], *, n: int, temperature: float, top_p: float,
                 max_tokens: int, stop_token_ids: list[int] | None = None, seed: int | None = None) -> list[list[Sample]]:
        slices = even_split(len(prompt_token_ids), self.engines)
        kwargs = dict(n=n, temperature=temperature, top_p=top_p, max_tokens=max_tokens, stop_token_ids=stop_token_ids)
        jobs = [(prompt_token_ids[a:b], None if seed is None else seed + a * n) for a, b in slices]
        self._command(("generate", jobs, kwargs))
        ids, job_seed = jobs[0]
        mine: tuple = ("ok", self.local.generate(ids, seed=job_seed, **kwargs) if ids else [])
        gathered: list = [None] * self.engines
        dist.gather_object(mine, gathered, dst=self.ranks[0], group=self.group)
        out: list[list[Sample]] = []
        for rank, (status, value) in zip(self.ranks, gathered, strict=True):
            if status != "ok":
                raise RuntimeError(f"the vLLM engine on rank {rank} failed to generate:\n{value}")
            out.extend(value)
        return out

    def push_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PushStats:
        """Every engine gets every tensor; the stats are the driver's own engine's (bytes = the
        parameter bytes); remote engines' failures are raised after the push."""
        self._command(("push",))

        def forward() -> Iterator[tuple[str, torch.Tensor]]:
            for name, tensor in named_tensors:
                t = tensor.detach().contiguous()
                dist.broadcast_object_list([(name, tuple(t.shape), t.dtype)], src=self.ranks[0], group=self.group)
                dist.broadcast(t, src=self.ranks[0], group=self.group)
                yield name, tensor
            dist.broadcast_object_list([None], src=self.ranks[0], group=self.group)

        stats = self.local.push_weights(forward())
        self._collect("push")
        return stats

    def _collect(self, what: str) -> None:
        gathered: list = [None] * self.engines
        dist.gather_object(("ok", None), gathered, dst=self.ranks[0], group=self.group)
        for rank, (status, value) in zip(self.ranks, gathered, strict=True):
            if status != "ok":
                raise RuntimeError(f"the vLLM engine on rank {rank} failed to {what}:\n{value}")

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:  # each node's rank quiets its own engine while it trains
        with self.local.quiet():
            yield

    def sleep(self) -> None:  # time-sliced placement: each node's rank sleeps its own engine
        self.local.sleep()

    def wake_up(self) -> None:
        self.local.wake_up()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._command(("close",))
        finally:
            self.local.close()


def serve(engine: VLLMSampler, group, driver: int) -> None:
    """A remote node's service loop: run the driver's commands on this node's engine until it
    says close. Errors are sent back to the driver (which raises them), not raised here."""
    while True:
        box: list = [None]
        dist.broadcast_object_list(box, src=driver, group=group)
        cmd = box[0]
        if cmd[0] == "close":
            engine.close()
            return
        if cmd[0] == "generate":
            jobs, kwargs = cmd[1], cmd[2]
            ids, seed = jobs[dist.get_rank(group)]
            try:
                result: tuple = ("ok", engine.generate(ids, seed=seed, **kwargs) if ids else [])
            except Exception:
                result = ("error", traceback.format_exc())
            dist.gather_object(result, None, dst=driver, group=group)
        elif cmd[0] == "push":
            failure = _receive_push(engine, group, driver)
            dist.gather_object(("ok", None) if failure is None else ("error", failure), None, dst=driver, group=group)
        else:
            raise RuntimeError(f"engine pool: unknown command {cmd[0]!r}")


def _receive_push(engine: VLLMSampler, group, driver: int) -> str | None:
    """Take every tensor the driver broadcasts (all of them, even after a local failure, so the
    group stays in step) and load them into this node's engine."""

    def received() -> Iterator[tuple[str, torch.Tensor]]:
        while True:
            box: list = [None]
            dist.broadcast_object_list(box, src=driver, group=group)
            if box[0] is None:
                return
            name, shape, dtype = box[0]
            t = torch.empty(shape, dtype=dtype)
            dist.broadcast(t, src=driver, group=group)
            yield name, t

    stream = received()
    try:
        engine.push_weights(stream)
        return None
    except Exception:
        for _ in stream:  # drain the rest of the driver's broadcasts
            pass
        return traceback.format_exc()


class RemoteEngine:
    """A non-driver node's engine and its service thread (`serve`)."""

    def __init__(self, engine: VLLMSampler, group, driver: int):
        self.engine = engine
        self._thread = threading.Thread(target=serve, args=(engine, group, driver), name="engine-service", daemon=True)
        self._thread.start()

    def quiet(self):
        return self.engine.quiet()

    def sleep(self) -> None:
        self.engine.sleep()

    def wake_up(self) -> None:
        self.engine.wake_up()

    def join(self) -> None:
        """Wait for the driver's close (the end of the run), then make sure the engine is down."""
        self._thread.join()
        self.engine.close()
