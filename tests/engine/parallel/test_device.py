"""`learner.device` -> torch.device and the mesh's backends, on this (CPU-only) machine.

    .venv/bin/python -m pytest -q tests/engine/parallel/test_device.py
"""


import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engine.parallel.device import (
    CUDA_BACKEND,
    DeviceError,
    backend_for,
    local_rank,
    resolve_device,
)
from engine.parallel.mesh import Mesh

needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA behaviour")


def test_cpu_and_auto_resolve_to_cpu_without_cuda():
    assert resolve_device("cpu", 3) == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", 0) == torch.device("cpu")


@needs_no_cuda
def test_cuda_without_cuda_is_a_clear_error_naming_the_key():
    with pytest.raises(DeviceError, match=r"learner\.device=cuda but torch\.cuda\.is_available\(\) is False"):
        resolve_device("cuda", 0)


def test_bad_requests_name_the_key():
    with pytest.raises(DeviceError, match=r"learner\.device='gpu': expected one of auto, cpu, cuda"):
        resolve_device("gpu", 0)
    with pytest.raises(DeviceError, match="negative"):
        resolve_device("cpu", -1)


def test_local_rank_reads_torchrun_env(monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "5")
    assert local_rank() == 5
    monkeypatch.delenv("LOCAL_RANK")
    assert local_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(DeviceError, match="LOCAL_RANK='x'"):
        local_rank()


def test_backends():
    assert backend_for(torch.device("cpu")) == "gloo"
    assert backend_for(torch.device("cuda", 1)) == CUDA_BACKEND == "cpu:gloo,cuda:nccl"


def test_single_rank_mesh_on_cpu_has_gloo_groups_and_an_object_group():
    with Mesh.init(device=resolve_device("cpu", 0)) as mesh:
        assert mesh.device == torch.device("cpu") and mesh.backend == "gloo"
        assert mesh.object_group is dist.group.WORLD  # default gloo group over the same ranks
        box = [{"rollouts": [1, 2]}]
        dist.broadcast_object_list(box, src=0, group=mesh.object_group)
        assert box == [{"rollouts": [1, 2]}]


@needs_no_cuda
def test_nccl_backend_without_cuda_fails_before_any_group_is_made():
    with pytest.raises(DeviceError, match="backend='nccl'"):
        Mesh.init(backend="nccl")
    assert not dist.is_initialized()


def _sub_mesh_worker(rank: int, world: int, init_file: str, out: "mp.Queue") -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    mesh = Mesh.sub_mesh(2, 1, 1, device="cpu")  # ranks 0..1 of a 3-rank job
    if mesh is None:
        out.put((rank, None))
    else:
        box = [f"from {mesh.rank}"]
        dist.broadcast_object_list(box, src=1, group=mesh.object_group)
        t = torch.ones(1)
        dist.all_reduce(t, group=mesh.tp_group)
        out.put((rank, (box[0], float(t), dist.get_world_size(mesh.object_group), mesh.backend)))
        mesh.destroy()
    dist.barrier()
    dist.destroy_process_group()


def test_sub_mesh_object_group_spans_only_the_mesh_ranks(tmp_path):
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_sub_mesh_worker, args=(r, 3, str(tmp_path / "init"), out)) for r in range(3)]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert results == {0: ("from 1", 2.0, 2, "gloo"), 1: ("from 1", 2.0, 2, "gloo"), 2: None}


