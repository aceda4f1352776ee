"""`dpo_loss`: the fused torch and Triton paths against the plain reference (values and
gradients of all four log-prob inputs), with and without length normalisation and the NLL term,
fp32 and bf16 inputs, one pair and a count off the interpreter's 32-wide block."""

import pytest
import torch

from kernels.dpo import dpo_loss, dpo_loss_reference

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
OPTIONS = [
    dict(beta=0.1),
    dict(beta=0.5, length_normalize=True),
    dict(beta=2.0, nll_weight=0.3),
    dict(beta=1.0, length_normalize=True, nll_weight=1.0),
]


def _inputs(pairs, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    logps = [torch.randn(pairs, generator=g) * 8 - 30 for _ in range(4)]  # margins from tiny to saturated
    lengths = [torch.randint(0, 40, (pairs,), generator=g) for _ in range(2)]  # 0 is clamped to 1
    upstream = torch.randn(pairs, generator=g)
    return [t.to(device) for t in logps], [t.to(device) for t in lengths], upstream.to(device)


def _run(impl, logps, lengths, upstream, dtype, opts):
    xs = [t.detach().to(dtype, copy=True).requires_grad_(True) for t in logps]
    fn = dpo_loss_reference if impl == "reference" else lambda *a, **k: dpo_loss(*a, impl=impl, **k)
    terms = fn(*xs, chosen_lengths=lengths[0], rejected_lengths=lengths[1], **opts)
    assert not terms.margin.requires_grad
    (terms.loss * upstream).sum().backward()
    return [terms.loss.float(), terms.margin.float()] + [x.grad.float() for x in xs]


@pytest.mark.parametrize("pairs", [1, 37])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_matches_reference(impl, dtype, pairs, request):
    if impl == "triton":
        request.getfixturevalue("triton_interpret")
    logps, lengths, upstream = _inputs(pairs)
    if dtype != torch.float32:
        logps = [t.to(dtype).float() for t in logps]
    for opts in OPTIONS:
        want = _run("reference", logps, lengths, upstream, torch.float32, opts)
        got = _run(impl, logps, lengths, upstream, dtype, opts)
        # fp32 inputs: same math in a different order. bf16 inputs: the fused paths compute in
        # fp32 and round only the gradients to bf16 (relative error <= 2^-8).
        tol = 1e-5 if dtype == torch.float32 else 8e-3
        for name, a, b in zip(["loss", "margin", "d pi_c", "d pi_r", "d ref_c", "d ref_r"], got, want):
            err = (a - b).abs().max().item()
            assert err <= tol * max(1.0, b.abs().max().item()), f"{impl} {opts} {name}: {err:.3g}"


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_lengths_required(impl, request):
    if impl == "triton":
        request.getfixturevalue("triton_interpret")
    logps, _, _ = _inputs(3)
    with pytest.raises(ValueError, match="need chosen_lengths"):
        dpo_loss(*logps, beta=0.1, length_normalize=True, impl=impl)


@requires_cuda
@pytest.mark.gpu
def test_cuda_triton_matches_reference():
    logps, lengths, upstream = _inputs(5000, device="cuda")
    for opts in OPTIONS:
        want = _run("reference", logps, lengths, upstream, torch.float32, opts)
        got = _run("triton", logps, lengths, upstream, torch.float32, opts)
        for a, b in zip(got, want):
            assert (a - b).abs().max().item() <= 1e-5 * max(1.0, b.abs().max().item())
