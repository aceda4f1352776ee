"""The plain vocab-parallel log-prob path: against log_softmax, and TP=2 (gloo) against TP=1."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kernels.logprob import token_logprobs_reference


def _inputs(n=7, h=16, v=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, h, generator=g), torch.randn(v, h, generator=g), torch.randint(0, v, (n,), generator=g)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_matches_log_softmax(temperature):
    hidden, weight, targets = _inputs()
    lp, ent = token_logprobs_reference(hidden, weight, targets, temperature=temperature, return_entropy=True)
    logits = hidden @ weight.t() / temperature
    ref = torch.log_softmax(logits, -1)
    assert torch.allclose(lp, ref.gather(1, targets[:, None]).squeeze(1), atol=1e-5)
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-5)


def _tp_worker(rank, world, init_file, out_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    hidden, weight, targets = _inputs()
    shard = weight.chunk(world)[rank].clone().requires_grad_(True)
    h = hidden.clone().requires_grad_(True)
    lp, ent = token_logprobs_reference(h, shard, targets, tp_group=dist.group.WORLD, return_entropy=True)
    (lp * torch.arange(1.0, 8.0)).sum().backward()
    torch.save({"lp": lp.detach(), "ent": ent, "gh": h.grad, "gw": shard.grad}, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_tp2_equals_unsharded():
    hidden, weight, targets = _inputs()
    h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    lp, ent = token_logprobs_reference(h, w, targets, return_entropy=True)
    (lp * torch.arange(1.0, 8.0)).sum().backward()
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_tp_worker, args=(2, os.path.join(d, "init"), os.path.join(d, "out")), nprocs=2)
        outs = [torch.load(os.path.join(d, f"out.{r}")) for r in range(2)]
    for r, o in enumerate(outs):
        assert torch.allclose(o["lp"], lp.detach(), rtol=1e-5, atol=1e-6)
        assert torch.allclose(o["ent"], ent, rtol=1e-5, atol=1e-6)
        assert torch.allclose(o["gh"], h.grad, rtol=1e-5, atol=1e-6)
        assert torch.allclose(o["gw"], w.grad.chunk(2)[r], rtol=1e-5, atol=1e-6)
