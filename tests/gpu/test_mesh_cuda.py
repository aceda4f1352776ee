"""`learner.device=cuda`: the mesh on `cuda:LOCAL_RANK`, NCCL for CUDA tensors, gloo for CPU
tensors on the same groups, pickled objects on the gloo `object_group` (one GPU, one rank).

    pytest -m gpu tests/gpu/test_mesh_cuda.py -q
"""

import pytest
import torch
import torch.distributed as dist

from engine.parallel.device import CUDA_BACKEND, resolve_device
from engine.parallel.mesh import Mesh

pytestmark = pytest.mark.gpu


def test_auto_resolves_to_cuda_local_rank():
    assert resolve_device("auto", 0) == torch.device("cuda", 0)
    assert resolve_device("cuda", 0) == torch.device("cuda", 0)


def test_cuda_mesh_reduces_cuda_and_cpu_tensors_and_objects():
    with Mesh.init(device=resolve_device("cuda", 0)) as mesh:
        assert mesh.device == torch.device("cuda", 0) and mesh.backend == CUDA_BACKEND
        assert torch.cuda.current_device() == 0
        on_gpu = torch.ones(3, device=mesh.device)
        dist.all_reduce(on_gpu, group=mesh.tp_group)  # NCCL
        on_cpu = torch.ones(3, dtype=torch.float64)
        dist.all_reduce(on_cpu, group=mesh.dp_group)  # gloo, same group object
        box = [{"rollouts": [1, 2, 3]}]
        dist.broadcast_object_list(box, src=0, group=mesh.object_group)
        mesh.barrier()
        assert on_gpu.tolist() == [1.0] * 3 and on_cpu.tolist() == [1.0] * 3 and box[0] == {"rollouts": [1, 2, 3]}


def test_backend_name_alone_still_means_cuda():
    with Mesh.init(backend="nccl") as mesh:  # the pre-`learner.device` call
        assert mesh.device.type == "cuda"
