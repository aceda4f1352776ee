"""`passes.dpo_pass` / `grpo_pass` (one skeleton, `objective_pass`) against the plain-PyTorch
reference losses over one packed batch, across several micro-batches; and GRPO with
`kl_coef: 0` never running the reference.

    .venv/bin/python -m pytest tests/engine/learner/test_objective_passes.py -q

The policy and the reference are different random models, so the KL terms are not zero.
Measured (fp32, torch kernels): gradients within 4.4e-7 (DPO) and 9.7e-7 (GRPO) of the largest
gradient, loss and metrics within 2e-6 relative: tolerances 3e-6 and 2e-6.
"""

import contextlib
import math
from types import SimpleNamespace

import pytest
import torch

from engine.learner.batch import pack, response_logprobs
from engine.learner.passes import (
    PipelinedModel,
    by_length,
    dpo_pass,
    grpo_pass,
    needs_reference,
    objective_pass,
)
from engine.model.config import ModelConfig
from engine.model.llama import CausalLM
from engine.rollout.types import Group, PreferencePair
from kernels.dpo import dpo_loss_reference
from kernels.grpo import grpo_loss_reference

TINY = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16)  # the vocabulary `random_rollouts` draws from


def _passes(mesh, seed: int) -> PipelinedModel:
    return PipelinedModel(CausalLM(TINY, mesh, seed=seed, init_std=0.2), impl="torch", autocast=contextlib.nullcontext)


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def _assert_grads_close(got: dict, want: dict, tol: float) -> None:
    """max |got - want| over every parameter <= tol * the largest |want|."""
    worst = max((got[n] - want[n]).abs().max().item() for n in want)
    scale = max(want[n].abs().max().item() for n in want)
    print(f"gradients: max abs diff {worst:.2e}, relative {worst / scale:.2e}")
    assert worst <= tol * scale, (worst, scale)


def test_dpo_pass_equals_the_reference_loss(mesh, rollouts):
    seqs = rollouts(10)
    pairs = [PreferencePair(chosen=seqs[i], rejected=seqs[i + 1]) for i in range(0, 10, 2)]
    policy, reference = _passes(mesh, 1), _passes(mesh, 2)
    c = SimpleNamespace(beta=0.5, length_normalize=True, nll_weight=0.1)
    got = dpo_pass(policy, reference, pairs, c, micro_batch_size=4, parity=lambda s, lp: (float(lp.detach().sum()), lp.numel()))
    assert policy.pipe.stats.microbatches == 3  # 5 pairs, 2 per micro-batch
    got_grads = _grads(policy.model)

    policy.model.zero_grad(set_to_none=True)
    rows = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    b = pack([r.prompt_ids for r in rows], [r.response_ids for r in rows])
    with torch.no_grad():
        ref_tok = response_logprobs(reference.model, b, impl="reference")
    pol_tok = response_logprobs(policy.model, b, impl="reference")
    pol, ref = b.seq_sum(pol_tok), b.seq_sum(ref_tok)
    terms = dpo_loss_reference(pol[:5], pol[5:], ref[:5], ref[5:], beta=0.5, chosen_lengths=b.lengths[:5],
                               rejected_lengths=b.lengths[5:], length_normalize=True, nll_weight=0.1)
    terms.loss.mean().backward()
    delta = ref_tok - pol_tok.detach()
    want = {"train/loss": terms.loss.mean(), "dpo/margin": terms.margin.mean(),
            "logprob/chosen": pol[:5].mean(), "kl/ref": (delta.exp() - delta - 1).mean()}
    for key, value in want.items():
        assert got.metrics[key] == pytest.approx(float(value.detach()), rel=2e-6), key
    assert got.metrics["kl/ref"] > 1e-3 and got.metrics["train/tokens"] == b.targets.numel()
    assert got.gap_tokens == b.targets.numel() and got.gap_sum == pytest.approx(float(pol_tok.detach().sum()), rel=2e-6)
    _assert_grads_close(got_grads, _grads(policy.model), 3e-6)


def _groups(rollouts) -> list[Group]:
    seqs = rollouts(8, seed=3)
    return [Group(rollouts=seqs[i : i + 4], advantages=[1.0, -0.5, 0.25, -0.75]) for i in (0, 4)]


def test_grpo_pass_equals_the_reference_loss(mesh, rollouts):
    groups = _groups(rollouts)
    policy, reference = _passes(mesh, 1), _passes(mesh, 2)
    c = SimpleNamespace(clip_eps=0.2, kl_coef=0.1, reduction="sequence", tis_cap=2.0)
    got = grpo_pass(policy, reference, groups, c, micro_batch_size=3)
    got_grads = _grads(policy.model)
    assert reference.pipe.stats.microbatches == 3  # 8 sequences, 3 per micro-batch

    policy.model.zero_grad(set_to_none=True)
    items = [(r, a) for g in groups for r, a in zip(g.rollouts, g.advantages, strict=True)]
    b = pack([r.prompt_ids for r, _ in items], [r.response_ids for r, _ in items])
    with torch.no_grad():
        ref_tok = response_logprobs(reference.model, b, impl="reference")
    pol_tok = response_logprobs(policy.model, b, impl="reference")
    behaviour = torch.tensor([lp for r, _ in items for lp in r.behaviour_logprobs])
    old = pol_tok.detach()  # tis_cap: the ratio is against the pre-update learner
    tis = (old - behaviour).exp().clamp(max=2.0)
    adv = torch.repeat_interleave(torch.tensor([a for _, a in items]), b.lengths)
    weight = torch.repeat_interleave(1.0 / (b.lengths.float() * len(items)), b.lengths)
    terms = grpo_loss_reference(pol_tok, old, ref_tok, adv, weight, clip_eps=0.2, kl_coef=0.1, tis_weight=tis)
    terms.loss.backward()
    assert got.metrics["train/loss"] == pytest.approx(float(terms.loss.detach()), rel=2e-6)
    assert got.metrics["kl/ref"] == pytest.approx(float(terms.kl.mean()), rel=2e-6) and got.metrics["kl/ref"] > 1e-3
    assert got.metrics["tis/weight_mean"] == pytest.approx(float(tis.mean()), rel=2e-6)
    _assert_grads_close(got_grads, _grads(policy.model), 3e-6)


def test_grpo_without_kl_never_runs_the_reference(mesh, rollouts):
    groups = _groups(rollouts)
    c = SimpleNamespace(clip_eps=0.2, kl_coef=0.0, reduction="token", tis_cap=None)
    assert not needs_reference("grpo", c) and needs_reference("dpo", SimpleNamespace(beta=0.1))
    policy, reference = _passes(mesh, 1), _passes(mesh, 2)
    got = grpo_pass(policy, reference, groups, c, micro_batch_size=3)
    assert reference.pipe.stats.microbatches == 0  # never ran
    assert math.isnan(got.metrics["kl/ref"])  # not measured, rather than a misleading 0
    skipped = _grads(policy.model)

    # The same pass with the reference forced in: the loss and the gradients are the same.
    policy.model.zero_grad(set_to_none=True)
    forced = grpo_pass(policy, reference, groups, SimpleNamespace(**{**vars(c), "kl_coef": 1e-30}), micro_batch_size=3)
    assert reference.pipe.stats.microbatches == 3
    assert forced.metrics["train/loss"] == pytest.approx(got.metrics["train/loss"], rel=1e-6)
    _assert_grads_close(skipped, _grads(policy.model), 1e-12)


def test_objective_pass_with_no_items_on_this_rank(mesh):
    """An empty step still runs the (empty) collectives and returns the sums it was given."""
    policy = _passes(mesh, 1)
    sums = objective_pass(policy, None, [], sequences=list, items_per_micro=2,
                          loss=lambda *a: torch.zeros(()), sums={"loss": 0.0})
    assert sums == {"loss": 0.0, "gap": 0.0, "gap_tokens": 0.0}


def test_micro_batches_are_cut_from_items_sorted_by_length(mesh, rollouts):
    """`by_length` orders items by their longest sequence (stable), so each micro-batch pads to
    about its own length; the pass packs its micro-batches in that order."""
    rs = rollouts(12)
    items = [(r, 0.5) for r in rs]
    ordered = by_length(items, lambda part: [r for r, _ in part])
    lengths = [len(r.prompt_ids) + len(r.response_ids) for r, _ in ordered]
    assert lengths == sorted(lengths) and sorted(ordered, key=lambda it: rs.index(it[0])) == items
    ties = [i for i in range(1, 12) if lengths[i] == lengths[i - 1]]
    assert all(rs.index(ordered[i - 1][0]) < rs.index(ordered[i][0]) for i in ties)  # stable
    pairs = [PreferencePair(rs[i], rs[i + 1]) for i in range(0, 12, 2)]
    longest = [max(len(p.chosen.prompt_ids) + len(p.chosen.response_ids),
                   len(p.rejected.prompt_ids) + len(p.rejected.response_ids))
               for p in by_length(pairs, lambda part: [p.chosen for p in part] + [p.rejected for p in part])]
    assert longest == sorted(longest)

    widths = []
    policy = _passes(mesh, 1)
    objective_pass(policy, None, items, sequences=lambda part: [r for r, _ in part], items_per_micro=4,
                   loss=lambda mb, lp, ent, sums: widths.append(mb.batch.input_ids.shape[1]) or lp.sum() * 0,
                   sums={})  # fmt: skip
    assert widths == [max(lengths[i : i + 4]) for i in range(0, 12, 4)]
    unsorted = [max(len(r.prompt_ids) + len(r.response_ids) for r in rs[i : i + 4]) for i in range(0, 12, 4)]
    assert sum(widths) < sum(unsorted)  # less padding than cutting in arrival order
