"""DPO and GRPO losses against values worked out by hand."""

import math

import torch

from kernels.dpo import dpo_loss
from kernels.grpo import grpo_loss

t = torch.tensor


def test_dpo_by_hand():
    # margin = 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2; loss = log(1 + e^-0.2)
    terms = dpo_loss(t([-10.0]), t([-12.0]), t([-11.0]), t([-11.0]), beta=0.1)
    assert math.isclose(terms.margin.item(), 0.2, rel_tol=1e-6)
    assert math.isclose(terms.loss.item(), math.log1p(math.exp(-0.2)), rel_tol=1e-6)


def test_dpo_length_normalised_and_nll():
    # per-token: chosen -10/5 = -2 vs ref -11/5 = -2.2; rejected -12/4 = -3 vs ref -11/4 = -2.75
    # margin = 1.0 * ((0.2) - (-0.25)) = 0.45; nll = 0.5 * 10/5 = 1.0
    terms = dpo_loss(t([-10.0]), t([-12.0]), t([-11.0]), t([-11.0]), beta=1.0, chosen_lengths=t([5]),
                     rejected_lengths=t([4]), length_normalize=True, nll_weight=0.5)
    assert math.isclose(terms.margin.item(), 0.45, rel_tol=1e-6)
    assert math.isclose(terms.loss.item(), math.log1p(math.exp(-0.45)) + 1.0, rel_tol=1e-6)


def test_dpo_gradient_pushes_chosen_up():
    pc, pr = t([-10.0], requires_grad=True), t([-12.0], requires_grad=True)
    dpo_loss(pc, pr, t([-11.0]), t([-11.0]), beta=0.1).loss.sum().backward()
    s = 1 / (1 + math.exp(0.2))  # 1 - sigmoid(0.2)
    assert math.isclose(pc.grad.item(), -0.1 * s, rel_tol=1e-5) and math.isclose(pr.grad.item(), 0.1 * s, rel_tol=1e-5)


def test_grpo_clip_and_kl_by_hand():
    old = t([0.0, 0.0, 0.0])
    lp = torch.log(t([1.5, 1.5, 1.0]))  # ratios 1.5, 1.5, 1.0
    adv = t([1.0, -1.0, 2.0])
    ref = lp + t([0.0, 0.0, 0.1])  # k3 of the third token: e^0.1 - 0.1 - 1
    weight = t([1 / 3, 1 / 3, 1 / 3])
    terms = grpo_loss(lp, old, ref, adv, weight, clip_eps=0.2, kl_coef=0.5)
    # token 1: min(1.5, 1.2) * 1 -> pg -1.2 (clipped); token 2: min(-1.5, -1.2) -> pg 1.5; token 3: pg -2
    k3 = math.exp(0.1) - 0.1 - 1
    expected = (-1.2 + 1.5 - 2.0 + 0.5 * k3) / 3
    assert math.isclose(terms.loss.item(), expected, rel_tol=1e-6)
    assert terms.clipped.tolist() == [True, False, False]
    assert math.isclose(terms.kl[2].item(), k3, rel_tol=1e-5)


def test_grpo_on_policy_gradient_is_advantage():
    # at ratio 1 the surrogate's gradient w.r.t. log-prob is -A * weight
    lp = t([-1.0, -2.0], requires_grad=True)
    grpo_loss(lp, lp.detach(), lp.detach(), t([0.5, -0.25]), t([0.5, 0.5]), clip_eps=0.2, kl_coef=0.0).loss.backward()
    assert torch.allclose(lp.grad, t([-0.25, 0.125]))


def test_grpo_truncated_importance_weight_scales_the_surrogate():
    lp = t([-1.0])
    w = grpo_loss(lp, lp, lp, t([1.0]), t([1.0]), clip_eps=0.2, kl_coef=0.0, tis_weight=t([0.5]))
    assert math.isclose(w.loss.item(), -0.5)
