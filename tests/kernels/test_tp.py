"""`kernels/tp.py`: each TP collective's forward and backward at TP=2 on gloo, and the identity at
TP=1 / no group.

    .venv/bin/python -m pytest tests/kernels/test_tp.py -q
"""

import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kernels.tp import (
    all_gather_dim,
    copy_to_tp,
    gather_from_tp,
    own_slice,
    reduce_from_tp,
    scatter_to_tp,
    tp_size_rank,
)

WORLD = 2


def _rank_input(rank: int) -> torch.Tensor:
    return torch.arange(12, dtype=torch.float32).view(3, 4) + 100 * rank  # (3, 4), differs per rank


def _upstream() -> torch.Tensor:
    return torch.linspace(-1.0, 1.0, 24).view(3, 8)


def _worker(rank: int, init_file: str, out_file: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    group = dist.group.WORLD
    out = {"size_rank": tp_size_rank(group)}
    x = _rank_input(rank).requires_grad_(True)
    y = copy_to_tp(x, group)
    (y * (rank + 1)).sum().backward()  # each rank's use contributes (rank + 1): grads sum to 3
    out["copy"] = (y.detach(), x.grad)
    x = _rank_input(rank).requires_grad_(True)
    y = reduce_from_tp(x, group)
    (y * (rank + 1)).sum().backward()
    out["reduce"] = (y.detach(), x.grad)
    x = _rank_input(rank).requires_grad_(True)
    y = gather_from_tp(x, group, dim=-1)  # (3, 8)
    (y * _upstream()).sum().backward()
    out["gather"] = (y.detach(), x.grad)
    full = _rank_input(0)[:, :4].repeat(1, 2).requires_grad_(True)  # (3, 8), replicated
    y = scatter_to_tp(full, group, dim=-1)  # (3, 4)
    (y * (rank + 1)).sum().backward()
    out["scatter"] = (y.detach(), full.grad)
    out["all_gather_dim0"] = all_gather_dim(_rank_input(rank), group, dim=0)
    try:
        own_slice(torch.zeros(3, 5), group)
    except ValueError as e:
        out["uneven"] = str(e)
    torch.save(out, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_tp2_collectives_forward_and_backward():
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(os.path.join(d, "init"), os.path.join(d, "out")), nprocs=WORLD)
        outs = [torch.load(os.path.join(d, f"out.{r}")) for r in range(WORLD)]
    x0, x1 = _rank_input(0), _rank_input(1)
    for rank, out in enumerate(outs):
        assert out["size_rank"] == (2, rank)
        y, g = out["copy"]
        assert torch.equal(y, _rank_input(rank)) and torch.equal(g, torch.full((3, 4), 3.0))
        y, g = out["reduce"]
        assert torch.equal(y, x0 + x1) and torch.equal(g, torch.full((3, 4), float(rank + 1)))
        y, g = out["gather"]
        assert torch.equal(y, torch.cat([x0, x1], dim=-1))
        assert torch.equal(g, _upstream()[:, 4 * rank : 4 * rank + 4])
        y, g = out["scatter"]
        assert torch.equal(y, x0)  # both halves of `full` are x0
        assert torch.equal(g, torch.cat([torch.full((3, 4), 1.0), torch.full((3, 4), 2.0)], dim=-1))
        assert torch.equal(out["all_gather_dim0"], torch.cat([x0, x1], dim=0))
        assert out["uneven"] == "own_slice: dim -1 of shape (3, 5) does not split over 2 TP ranks"


def test_no_group_is_the_identity():
    x = _rank_input(0).requires_grad_(True)
    for fn in (copy_to_tp, reduce_from_tp, gather_from_tp, scatter_to_tp):
        y = fn(x, None)
        assert torch.equal(y, x)
        y.sum().backward()
    assert torch.equal(x.grad, torch.full((3, 4), 4.0))
    assert tp_size_rank(None) == (1, 0) and all_gather_dim(x, None, 0) is x
