"""`token_logprobs`: the torch chunked and Triton paths against the plain reference, values and
gradients, fp32 and bf16, odd shapes (N and V off the block/chunk grid, one token), temperature,
autocast, and TP=2 (gloo) against the unsharded reference. Without CUDA the Triton code runs in
its interpreter at tiny shapes (blocks 16 x 32 x 16); the compiled kernels are tested on a GPU.
"""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from kernels.logprob import token_logprobs, token_logprobs_reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CHUNK = 32  # the torch path's chunk in these tests: V = 50, 130, 200 leave remainders
# (N, H, V): N below / across / at one interpreter row block, H off the 16-wide K block
SHAPES = [(1, 24, 130), (5, 16, 50), (33, 40, 200)]
# max |got - want| / max(1, max |want|). fp32: the paths only reorder sums (seen: <= 4e-7).
# bf16: against the fp32 reference on the same bf16-valued inputs, which the bf16 reference must
# meet as well (seen: lp 1e-3, grads 5e-3 for the reference; grads 7.5e-3 for Triton, which
# rounds G = dloss/dlogits to bf16 before its two matmuls as the reference's autograd does).
# The entropy (a detached metric) has its own limits, from the H200 run at (1000, 520, 5003): the
# torch path's chunk merges (157 chunks of 32) give 5.7e-6 in fp32; in bf16 the bf16 reference
# itself is 8.5e-3 off the fp32 one (each logit is rounded to bf16 before the softmax).
TOL = {
    torch.float32: dict(lp=2e-6, grad=2e-6, entropy=8e-6),
    torch.bfloat16: dict(lp=4e-3, grad=1.5e-2, entropy=1e-2),
}


def _tol(tol: dict, key: str) -> float:
    return tol["grad"] if key.startswith("grad") else tol[key]


def _assert_close(name, got, want, tol):
    """max |got - want| <= tol * max(1, max |want|), in fp32."""
    got, want = got.detach().float(), want.detach().float()
    assert got.shape == want.shape, name
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"{name}: max abs diff {err:.3g}"


def _inputs(n, h, v, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g)
    weight = torch.randn(v, h, generator=g) * (2.0 / h**0.5)  # logits ~ N(0, 4): peaked rows too
    targets = torch.randint(0, v, (n,), generator=g)
    upstream = torch.randn(n, generator=g)  # d loss / d logprob
    return hidden.to(device), weight.to(device), targets.to(device), upstream.to(device)


def _run(impl, hidden, weight, targets, upstream, dtype, **kw):
    h = hidden.detach().to(dtype, copy=True).requires_grad_(True)
    w = weight.detach().to(dtype, copy=True).requires_grad_(True)
    if impl == "reference":
        lp, ent = token_logprobs_reference(h, w, targets, return_entropy=True, **kw)
    else:
        lp, ent = token_logprobs(h, w, targets, return_entropy=True, impl=impl, **kw)
    assert lp.dtype == torch.float32 and not ent.requires_grad
    (lp * upstream).sum().backward()
    assert h.grad.dtype == dtype and w.grad.dtype == dtype
    return {"lp": lp, "entropy": ent, "grad_hidden": h.grad, "grad_weight": w.grad}


def _check(impl, shape, dtype, temperature=1.0, device="cpu"):
    hidden, weight, targets, upstream = _inputs(*shape, device=device)
    if dtype != torch.float32:  # the ground truth sees exactly the bf16 values
        hidden, weight = hidden.to(dtype).float(), weight.to(dtype).float()
    want = _run("reference", hidden, weight, targets, upstream, torch.float32, temperature=temperature)
    kw = dict(chunk_size=CHUNK) if impl == "torch" else {}
    got = _run(impl, hidden, weight, targets, upstream, dtype, temperature=temperature, **kw)
    tol = TOL[dtype]
    for key in want:
        _assert_close(f"{impl} {key}", got[key], want[key], _tol(tol, key))
    if dtype != torch.float32:  # the tolerance is one the bf16 reference itself meets
        ref16 = _run("reference", hidden, weight, targets, upstream, dtype, temperature=temperature)
        for key in want:
            _assert_close(
                f"reference {key}", ref16[key], want[key], _tol(tol, key)
            )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_torch_path_matches_reference(shape, dtype):
    _check("torch", shape, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_triton_path_matches_reference(shape, dtype, triton_interpret):
    _check("triton", shape, dtype)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_temperature(impl, request):
    if impl == "triton":
        request.getfixturevalue("triton_interpret")
    _check(impl, (9, 32, 70), torch.float32, temperature=0.7)


def test_torch_path_chunk_sizes_agree():
    hidden, weight, targets, upstream = _inputs(6, 16, 97)
    want = _run("reference", hidden, weight, targets, upstream, torch.float32)
    for chunk in (1, 7, 96, 97, 1000):
        got = _run("torch", hidden, weight, targets, upstream, torch.float32, chunk_size=chunk)
        for key in want:
            _assert_close(f"chunk {chunk} {key}", got[key], want[key], 2e-6)


def test_torch_path_under_autocast_matches_reference():
    """The learner's bf16 mode: fp32 parameters, bf16 autocast; the matmul runs in bf16 on both
    paths and the gradients come back in fp32."""
    hidden, weight, targets, upstream = _inputs(7, 32, 90)
    out = {}
    for impl in ("reference", "torch"):
        h, w = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            lp = token_logprobs(h, w, targets, impl=impl, chunk_size=CHUNK)
        (lp * upstream).sum().backward()
        out[impl] = (lp, h.grad, w.grad)
        assert h.grad.dtype == torch.float32
    # lp: the same bf16 logits (seen 5e-8); grads: G is rounded to bf16 at different points (seen 4e-3)
    for name, got, want, tol in zip(
        ("lp", "grad_hidden", "grad_weight"), out["torch"], out["reference"], (1e-6, 1e-2, 1e-2)
    ):
        _assert_close(name, got, want, tol)


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_no_rows(impl, request):
    if impl == "triton":
        request.getfixturevalue("triton_interpret")
    hidden, weight, _, _ = _inputs(0, 16, 40)
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    lp, ent = token_logprobs(h, w, torch.zeros(0, dtype=torch.long), return_entropy=True, impl=impl)
    assert lp.shape == ent.shape == (0,)
    lp.sum().backward()
    assert h.grad.shape == (0, 16) and torch.equal(w.grad, torch.zeros_like(w))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    hidden, weight, targets, _ = _inputs(3, 16, 40)
    with pytest.raises(ValueError, match="kernels=triton needs CUDA tensors"):
        token_logprobs(hidden, weight, targets, impl="triton")
    with pytest.raises(ValueError, match="expected one of triton, torch, reference"):
        token_logprobs(hidden, weight, targets, impl="cuda")


# -- TP=2 on gloo: each rank holds half the vocabulary ------------------------------------------

TP_SHAPE = (9, 24, 70)  # 35 vocabulary rows per rank: off the chunk (32) and block (32) grid


def _tp_worker(rank, world, init_file, out_file, impls):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    hidden, weight, targets, upstream = _inputs(*TP_SHAPE)
    out = {}
    for impl in impls:
        h = hidden.clone().requires_grad_(True)
        shard = weight.chunk(world)[rank].clone().requires_grad_(True)
        lp, ent = token_logprobs(
            h,
            shard,
            targets,
            tp_group=dist.group.WORLD,
            return_entropy=True,
            impl=impl,
            **(dict(chunk_size=16) if impl == "torch" else {}),
        )
        (lp * upstream).sum().backward()
        out[impl] = {"lp": lp.detach(), "entropy": ent, "grad_hidden": h.grad, "grad_weight": shard.grad}
    torch.save(out, f"{out_file}.{rank}")
    dist.destroy_process_group()


def test_tp2_equals_unsharded(triton_available):
    """Both paths in one spawn (Triton only where it can run in this session, see conftest)."""
    hidden, weight, targets, upstream = _inputs(*TP_SHAPE)
    want = _run("reference", hidden, weight, targets, upstream, torch.float32)
    impls = ["torch", "triton"] if triton_available else ["torch"]
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_tp_worker, args=(2, os.path.join(d, "init"), os.path.join(d, "out"), impls), nprocs=2)
        outs = [torch.load(os.path.join(d, f"out.{r}")) for r in range(2)]
    for rank, out in enumerate(outs):
        for impl, got in out.items():
            for key in ("lp", "entropy", "grad_hidden"):
                _assert_close(f"rank {rank} {impl} {key}", got[key], want[key], 2e-6)
            _assert_close(
                f"rank {rank} {impl} grad_weight",
                got["grad_weight"],
                want["grad_weight"].chunk(2)[rank],
                2e-6,
            )


# -- compiled kernels on a GPU --------------------------------------------------------------------


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cuda_paths_match_reference(impl, dtype):
    """Shapes off every block edge, large enough for several vocabulary splits and grad_W slabs."""
    _check(impl, (1000, 520, 5003), dtype, device="cuda")
