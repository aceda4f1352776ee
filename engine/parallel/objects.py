"""Python objects across the job (rollout batches, eval metrics, probe prompts): rank 0 makes them,
every rank needs them. They travel over the mesh's CPU group (gloo), whatever backend the
tensor groups use, so NCCL never sees a pickled object."""

from __future__ import annotations

from typing import TypeVar

import torch.distributed as dist

from engine.parallel.mesh import Mesh

T = TypeVar("T")


def broadcast_object(obj: T, mesh: Mesh, src: int = 0) -> T:
    """`obj` as rank `src` has it, on every rank (no-op on one process)."""
    if mesh.world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=getattr(mesh, "object_group", None))
    return box[0]


def all_gather_objects(obj: T, mesh: Mesh) -> list[T]:
    """Every rank's `obj`, in rank order, on every rank."""
    if mesh.world_size == 1:
        return [obj]
    out: list = [None] * mesh.world_size
    dist.all_gather_object(out, obj, group=getattr(mesh, "object_group", None))
    return out
