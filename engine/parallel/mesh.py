"""The learner's process mesh: which rank holds which shard, and the explicit process groups.

Every parallel layer receives its group from a `Mesh` (``tp_group=mesh.tp_group``); nothing in
the engine reads megatron's global ``parallel_state``, and this module must not set it.

Rank order is Megatron's default (``tp-dp-pp``: TP fastest, PP slowest)::

    rank = (pp_rank * dp_size + dp_rank) * tp_size + tp_rank

so the ranks of one TP group are consecutive (one node's GPUs). Pipeline parallelism comes in a
later issue: ``pp_size`` is 1 for now and the formula already reserves its place.

    mesh = Mesh.init(tp_size=2)          # under `torchrun --nproc-per-node 2 …`
    mesh = Mesh.init(tp_size=1)          # plain `python …`: a 1-rank gloo group, no network
    with Mesh.init(tp_size=1) as mesh:   # destroys what it created on exit (tests)
        ...
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class Mesh:
    """A TP × DP (× PP later) grid of ranks with one explicit group per axis."""

    world_size: int
    rank: int
    tp_size: int
    tp_rank: int
    tp_group: dist.ProcessGroup
    dp_size: int = 1
    dp_rank: int = 0
    dp_group: dist.ProcessGroup | None = None  # None only when dp_size == 1
    pp_size: int = 1
    pp_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_default_group: bool = False  # True when `init` created the default process group

    @classmethod
    def init(cls, tp_size: int, backend: str = "gloo") -> Mesh:
        """Build the mesh for this process (collective: every rank of the job must call it).

        Initialises torch.distributed if nobody has: from torchrun's environment variables when
        they are set, otherwise as a single-rank group backed by an in-process store (no port,
        no network), so that megatron layers always receive a real group.
        """
        owns = False
        if not dist.is_initialized():
            if all(v in os.environ for v in _TORCHRUN_VARS):
                dist.init_process_group(backend)
            elif "WORLD_SIZE" in os.environ and os.environ["WORLD_SIZE"] != "1":
                missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
                raise RuntimeError(f"Mesh.init: WORLD_SIZE is set but {missing} are not; launch with torchrun")
            else:
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
            owns = True
        world_size, rank = dist.get_world_size(), dist.get_rank()
        if tp_size < 1 or world_size % tp_size != 0:
            raise ValueError(f"Mesh.init: tp_size={tp_size} must be >= 1 and divide world_size={world_size}")
        dp_size = world_size // tp_size

        # new_group is collective over the whole job: every rank creates every group, in order.
        tp_group = dp_group = None
        for dp in range(dp_size):
            ranks = [dp * tp_size + tp for tp in range(tp_size)]
            group = dist.new_group(ranks)
            if rank in ranks:
                tp_group = group
        if dp_size > 1:
            for tp in range(tp_size):
                ranks = [dp * tp_size + tp for dp in range(dp_size)]
                group = dist.new_group(ranks)
                if rank in ranks:
                    dp_group = group
        assert tp_group is not None

        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device)
        return cls(
            world_size=world_size,
            rank=rank,
            tp_size=tp_size,
            tp_rank=rank % tp_size,
            tp_group=tp_group,
            dp_size=dp_size,
            dp_rank=rank // tp_size,
            dp_group=dp_group,
            device=device,
            owns_default_group=owns,
        )

    def destroy(self) -> None:
        """Destroy this mesh's groups, and the default group if `init` created it."""
        if not dist.is_initialized():
            return
        if self.owns_default_group:
            dist.destroy_process_group()  # destroys every group
            return
        for group in (self.tp_group, self.dp_group):
            if group is not None:
                dist.destroy_process_group(group)

    def __enter__(self) -> Mesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
