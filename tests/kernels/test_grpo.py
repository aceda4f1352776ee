"""`grpo_loss` and `token_weights`: the fused torch and Triton paths against the plain reference
(loss, metrics and d loss / d logprob), with truncated importance weights, ties of the clip
branches (ratio exactly 1, at the clip edges, zero advantage), fp32 and bf16 log-probs; token-
and sequence-level weights that make micro-batch accumulation exact, and masking."""

import pytest
import torch

from kernels.grpo import grpo_loss, grpo_loss_reference, token_weights

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
LENGTHS = [1, 20, 32]  # 53 tokens: off the interpreter's 32-wide block


def _inputs(lengths, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    n = sum(lengths)
    lp = torch.randn(n, generator=g) - 2.0
    old = lp + 0.3 * torch.randn(n, generator=g)
    old[:3] = lp[:3]  # ratio exactly 1: both clip branches tie
    old[3] = lp[3] - torch.log(torch.tensor(1.2))  # close to the upper clip edge
    ref = lp + 0.2 * torch.randn(n, generator=g)
    adv = torch.repeat_interleave(torch.randn(len(lengths), generator=g), torch.tensor(lengths))
    adv[4] = 0.0
    tis = 2.0 * torch.rand(n, generator=g)
    weight = token_weights(
        torch.tensor(lengths), reduction="sequence", total_tokens=n, total_sequences=len(lengths)
    )
    return [t.to(device) for t in (lp, old, ref, adv, weight, tis)]


def _run(impl, lp, old, ref, adv, weight, tis, dtype, **opts):
    x = lp.detach().to(dtype, copy=True).requires_grad_(True)
    fn = grpo_loss_reference if impl == "reference" else lambda *a, **k: grpo_loss(*a, impl=impl, **k)
    terms = fn(x, old.to(dtype), ref.to(dtype), adv, weight, tis_weight=tis, **opts)
    assert terms.loss.dim() == 0 and not terms.kl.requires_grad and terms.clipped.dtype == torch.bool
    terms.loss.backward()
    return terms, x.grad.float()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("with_tis", [False, True], ids=["plain", "tis"])
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_matches_reference(impl, with_tis, dtype, request):
    if impl == "triton":
        request.getfixturevalue("triton_interpret")
    lp, old, ref, adv, weight, tis = _inputs(LENGTHS)
    if dtype != torch.float32:
        lp, old, ref = (t.to(dtype).float() for t in (lp, old, ref))
    tis = tis if with_tis else None
    opts = dict(clip_eps=0.2, kl_coef=0.05)
    want, want_grad = _run("reference", lp, old, ref, adv, weight, tis, torch.float32, **opts)
    got, got_grad = _run(impl, lp, old, ref, adv, weight, tis, dtype, **opts)
    assert abs(got.loss.item() - want.loss.item()) <= 1e-6 * max(1.0, abs(want.loss.item()))
    assert torch.equal(got.clipped, want.clipped)
    assert torch.allclose(got.kl, want.kl, rtol=1e-5, atol=1e-6) and torch.allclose(
        got.ratio, want.ratio, rtol=1e-6
    )
    # bf16: the gradient is computed in fp32 and rounded once to bf16 (relative error <= 2^-8).
    rtol = 1e-5 if dtype == torch.float32 else 4e-3
    assert torch.allclose(got_grad, want_grad, rtol=rtol, atol=1e-7), (got_grad - want_grad).abs().max()


def test_on_policy_gradient_is_minus_weighted_advantage():
    lp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv, weight = torch.tensor([0.5, -0.25, 1.0]), torch.tensor([0.5, 0.25, 0.25])
    grpo_loss(
        lp, lp.detach(), lp.detach(), adv, weight, clip_eps=0.2, kl_coef=0.1, impl="torch"
    ).loss.backward()
    assert torch.allclose(lp.grad, -adv * weight)


def test_token_weights_make_accumulation_exact():
    """Two micro-batches with global totals give the full batch's loss and gradient."""
    lengths = torch.tensor([3, 5, 2, 7])
    lp, old, ref, adv, _, _ = _inputs(lengths.tolist(), seed=1)
    for reduction in ("token", "sequence"):
        full = token_weights(lengths, reduction=reduction, total_tokens=17, total_sequences=4)
        assert torch.isclose(full.sum(), torch.tensor(1.0))
        x = lp.clone().requires_grad_(True)
        want = grpo_loss(x, old, ref, adv, full, clip_eps=0.2, kl_coef=0.1, impl="torch").loss
        want.backward()
        y = lp.clone().requires_grad_(True)
        got = 0.0
        for part in (slice(0, 2), slice(2, 4)):
            tok = slice(int(lengths[: part.start].sum()), int(lengths[: part.stop].sum()))
            w = token_weights(lengths[part], reduction=reduction, total_tokens=17, total_sequences=4)
            loss = grpo_loss(
                y[tok], old[tok], ref[tok], adv[tok], w, clip_eps=0.2, kl_coef=0.1, impl="torch"
            ).loss
            loss.backward()
            got += loss.item()
        assert abs(got - want.item()) < 1e-6 and torch.allclose(y.grad, x.grad, atol=1e-7)


def test_token_weights_mask():
    lengths = torch.tensor([2, 3])
    mask = torch.tensor([True, False, True, True, False])
    tok = token_weights(lengths, reduction="token", total_tokens=3, total_sequences=2, mask=mask)
    assert torch.allclose(tok, torch.tensor([1 / 3, 0.0, 1 / 3, 1 / 3, 0.0]))
    seq = token_weights(lengths, reduction="sequence", total_tokens=3, total_sequences=2, mask=mask)
    assert torch.allclose(seq, torch.tensor([1 / 2, 0.0, 1 / 4, 1 / 4, 0.0]))
    with pytest.raises(ValueError, match="reduction"):
        token_weights(lengths, reduction="mean", total_tokens=3, total_sequences=2)


@requires_cuda
@pytest.mark.gpu
def test_cuda_triton_matches_reference():
    data = _inputs([700, 1300, 3001], device="cuda")
    want, want_grad = _run("reference", *data, torch.float32, clip_eps=0.2, kl_coef=0.05)
    got, got_grad = _run("triton", *data, torch.float32, clip_eps=0.2, kl_coef=0.05)
    assert torch.allclose(got.loss, want.loss, rtol=1e-5) and torch.equal(got.clipped, want.clipped)
    assert torch.allclose(got_grad, want_grad, rtol=1e-5, atol=1e-9)
