"""The learner's process mesh: which rank holds which shard, and the explicit process groups.

Every parallel layer and collective receives its group from a `Mesh` (``tp_group=mesh.tp_group``,
``group=mesh.pp_group``); nothing in the engine reads megatron's global ``parallel_state``, and
this module must not set it.

Rank order is Megatron's default (``tp-dp-pp``: TP fastest, PP slowest)::

    rank = (pp_rank * dp_size + dp_rank) * tp_size + tp_rank

so the ranks of one TP group are consecutive (one node's GPUs), a DP group strides by `tp_size`,
and a pipeline group strides by `tp_size * dp_size`. E.g. tp=2, pp=2, dp=2 (8 ranks):

    pp_rank 0: dp 0 -> ranks 0 1 (one TP group), dp 1 -> ranks 2 3
    pp_rank 1: dp 0 -> ranks 4 5,                dp 1 -> ranks 6 7
    pp groups: {0,4} {1,5} {2,6} {3,7}; dp groups: {0,2} {1,3} {4,6} {5,7}

Groups (all real process groups, size 1 included, so callers never branch on None):

    tp_group     the ranks sharding one stage's weights (megatron layers, vocab-parallel log-probs)
    pp_group     the stages of one pipeline (`torch.distributed.pipelining` P2P, metric broadcast)
    dp_group     the replicas of one shard (gradient all-reduce)
    embed_group  first + last stage of one pipeline, for the tied-embedding gradient sum
                 (only when pp_size > 1; None otherwise)
    object_group gloo over all ranks of the mesh: pickled objects (`engine.parallel.objects`),
                 whatever backend the tensor groups use

The device comes from `engine.parallel.device.resolve_device` (``learner.device``): on CUDA the
tensor groups are ``cpu:gloo,cuda:nccl`` (NCCL for CUDA tensors, gloo for stray CPU scalars) and
the rank computes on ``cuda:LOCAL_RANK``; on CPU everything is gloo.

    mesh = Mesh.init(tp_size=2, pp_size=2)     # under `torchrun --nproc-per-node 8 …`: dp = 2
    mesh = Mesh.init()                         # plain `python …`: a 1-rank gloo group, no network
    mesh = Mesh.init(tp_size=2, device=resolve_device("auto", local_rank()))  # cuda:LOCAL_RANK + NCCL
    with Mesh.init(tp_size=1) as mesh:         # destroys what it created on exit (tests)
        ...
    mesh = Mesh.sub_mesh(2, 1, 1)              # tests/benchmarks: a layout over ranks 0..1 of a
                                               # larger job (None on the other ranks)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from engine.parallel.device import OBJECT_BACKEND, backend_for, device_for_backend, local_rank

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Mesh:
    """A TP × DP × PP grid of ranks with one explicit group per axis."""

    world_size: int  # ranks in this mesh (tp * dp * pp)
    rank: int  # this rank's index in the mesh (= its global rank: a mesh spans ranks 0..world_size-1)
    tp_size: int
    tp_rank: int
    tp_group: dist.ProcessGroup
    dp_size: int = 1
    dp_rank: int = 0
    dp_group: dist.ProcessGroup | None = None
    pp_size: int = 1
    pp_rank: int = 0
    pp_group: dist.ProcessGroup | None = None
    embed_group: dist.ProcessGroup | None = None  # first + last stage; None when pp_size == 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_default_group: bool = False  # True when `init` created the default process group
    object_group: dist.ProcessGroup | None = None  # gloo, all mesh ranks: pickled objects
    backend: str = "gloo"  # the tensor groups' backend (`device.backend_for(device)`)

    # -- construction ------------------------------------------------------------------------

    @classmethod
    def init(cls, tp_size: int = 1, pp_size: int = 1, backend: str | None = None, *,
             device: torch.device | str | None = None) -> Mesh:
        """Build the mesh for this process (collective: every rank of the job must call it).

        The data-parallel size is what is left: ``world_size // (tp_size * pp_size)``.
        Initialises torch.distributed if nobody has: from torchrun's environment variables when
        they are set, otherwise as a single-rank group backed by an in-process store (no port,
        no network), so that megatron layers always receive a real group.

        `device` (from `resolve_device`) picks the backend; without it, `backend` picks the device
        (``"nccl"`` -> ``cuda:LOCAL_RANK``, the older call), and with neither it is CPU + gloo.
        """
        device = _pick_device(device, backend)
        if backend is None:
            backend = backend_for(device)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        owns = _ensure_default_group(backend)
        world_size = dist.get_world_size()
        if tp_size < 1 or pp_size < 1 or world_size % (tp_size * pp_size) != 0:
            raise ValueError(
                f"Mesh.init: tp_size={tp_size} x pp_size={pp_size} must divide the number of ranks "
                f"world_size={world_size} (the data-parallel size is the quotient)"
            )
        mesh = cls._build(tp_size, pp_size, world_size // (tp_size * pp_size), owns, device)
        assert mesh is not None
        return mesh

    @classmethod
    def sub_mesh(cls, tp_size: int, pp_size: int, dp_size: int, *,
                 device: torch.device | str | None = None) -> Mesh | None:
        """A mesh over global ranks ``0 .. tp*pp*dp - 1`` of an already initialised job; None on
        the ranks outside it. Collective over the whole job (group creation). Lets one torchrun
        job test or benchmark several layouts without re-spawning processes. Without `device`,
        CUDA when the job's default backend includes NCCL, else CPU."""
        n = tp_size * pp_size * dp_size
        if n > dist.get_world_size():
            raise ValueError(
                f"Mesh.sub_mesh: {tp_size}x{pp_size}x{dp_size} needs {n} ranks, "
                f"the job has {dist.get_world_size()}"
            )
        return cls._build(tp_size, pp_size, dp_size, False, _pick_device(device, dist.get_backend()))

    @classmethod
    def _build(cls, tp: int, pp: int, dp: int, owns: bool, device: torch.device) -> Mesh | None:
        rank = dist.get_rank()
        backend = backend_for(device)

        def coord_rank(t: int, d: int, p: int) -> int:
            return (p * dp + d) * tp + t

        # new_group is collective over the whole job: every rank creates every group, in order.
        mine: dict[str, dist.ProcessGroup] = {}

        def make(axis: str, ranks: list[int]) -> None:
            group = dist.new_group(ranks, backend=backend)
            if rank in ranks:
                mine[axis] = group

        for p in range(pp):
            for d in range(dp):
                make("tp", [coord_rank(t, d, p) for t in range(tp)])
        for p in range(pp):
            for t in range(tp):
                make("dp", [coord_rank(t, d, p) for d in range(dp)])
        for d in range(dp):
            for t in range(tp):
                make("pp", [coord_rank(t, d, p) for p in range(pp)])
        if pp > 1:
            for d in range(dp):
                for t in range(tp):
                    make("embed", [coord_rank(t, d, 0), coord_rank(t, d, pp - 1)])
        n = tp * pp * dp
        if n == dist.get_world_size() and dist.get_backend() == OBJECT_BACKEND:
            object_group = dist.group.WORLD  # the default group already is gloo over these ranks
        else:
            object_group = dist.new_group(list(range(n)), backend=OBJECT_BACKEND)
        if rank >= n:
            return None
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return cls(
            world_size=tp * pp * dp,
            rank=rank,
            tp_size=tp,
            tp_rank=rank % tp,
            tp_group=mine["tp"],
            dp_size=dp,
            dp_rank=(rank // tp) % dp,
            dp_group=mine["dp"],
            pp_size=pp,
            pp_rank=rank // (tp * dp),
            pp_group=mine["pp"],
            embed_group=mine.get("embed"),
            device=device,
            owns_default_group=owns,
            object_group=object_group,
            backend=backend,
        )

    # -- queries -----------------------------------------------------------------------------

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    def pp_peer(self, pp_rank: int) -> int:
        """Global rank of the stage `pp_rank` of this rank's pipeline (same tp and dp rank)."""
        return (pp_rank * self.dp_size + self.dp_rank) * self.tp_size + self.tp_rank

    @property
    def layout(self) -> str:
        return f"tp{self.tp_size}-pp{self.pp_size}-dp{self.dp_size}"

    def barrier(self) -> None:
        """Wait for every rank of this mesh (and only those): an all-reduce along each axis in turn
        carries every rank's arrival to every other rank."""
        flag = torch.zeros(1, device=self.device)
        for group in (self.tp_group, self.pp_group, self.dp_group):
            if group is not None and dist.get_world_size(group) > 1:
                dist.all_reduce(flag, group=group)

    # -- teardown ----------------------------------------------------------------------------

    def destroy(self) -> None:
        """Destroy this mesh's groups, and the default group if `init` created it."""
        if not dist.is_initialized():
            return
        if self.owns_default_group:
            dist.destroy_process_group()  # destroys every group
            return
        for group in (self.tp_group, self.dp_group, self.pp_group, self.embed_group, self.object_group):
            if group is not None and group is not dist.group.WORLD:
                dist.destroy_process_group(group)

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()


def _pick_device(device: torch.device | str | None, backend: str | None) -> torch.device:
    if device is None:
        return device_for_backend(backend or "gloo", local_rank())
    device = torch.device(device)
    return torch.device("cuda", local_rank()) if device.type == "cuda" and device.index is None else device


def _ensure_default_group(backend: str) -> bool:
    """Initialise the default group if needed; True when this call created it."""
    if dist.is_initialized():
        return False
    if all(v in os.environ for v in _TORCHRUN_VARS):
        dist.init_process_group(backend)
    elif "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1":
        missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
        raise RuntimeError(f"Mesh.init: WORLD_SIZE is set but {missing} are not; launch with torchrun")
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    return True
