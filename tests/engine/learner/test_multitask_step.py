"""A multi-task optimizer step (DPO pairs of one task + GRPO groups of another) equals one step on
the explicitly weighted sum of the two plain-PyTorch reference losses."""

import pytest
import torch

from engine.config import DPOConfig, GRPOConfig, RunConfig
from engine.learner.batch import pack, response_logprobs
from engine.learner.learner import Learner
from engine.rollout.types import Group, PreferencePair, TaskBatch
from kernels.dpo import dpo_loss_reference
from kernels.grpo import grpo_loss_reference


def _cfg(model_dir):  # adam_eps 1e-4: with 1e-8 Adam turns rounding noise in ~0 gradients into full steps
    return RunConfig(
        model=str(model_dir), kernels="torch", optim={"lr": 1e-3, "grad_clip": 1e9, "adam_eps": 1e-4}, learner={"micro_batch_size": 3},
        grpo={"clip_eps": 0.2, "kl_coef": 0.1},
        tasks={"chat": {"data": "unused", "objective": "dpo", "weight": 1.0, "dpo": {"beta": 0.5}},
               "math": {"data": "unused", "objective": "grpo", "weight": 3.0}},
    )  # fmt: skip


def _learner(model_dir, mesh):
    cfg = _cfg(model_dir)
    return Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)


def test_weighted_sum_of_task_losses(model_dir, mesh, rollouts):
    rollouts = rollouts(12)
    pairs = [PreferencePair(chosen=rollouts[i], rejected=rollouts[i + 1]) for i in (0, 2)]
    groups = [Group(rollouts=rollouts[4 + i : 8 + i], advantages=[1.0, -0.5, 0.25, -0.75]) for i in (0, 4)]
    parts = [TaskBatch("chat", "dpo", 1.0, pairs=pairs, dpo=DPOConfig(beta=0.5)),
             TaskBatch("math", "grpo", 3.0, groups=groups, grpo=GRPOConfig(clip_eps=0.2, kl_coef=0.1))]

    torch.manual_seed(0)
    learner = _learner(model_dir, mesh)
    metrics = learner.train_tasks(parts)
    assert {"train/loss/chat", "train/loss/math", "dpo/margin/chat", "clip/fraction/math"} <= set(metrics)

    # The same step by hand: policy/reference log-probs, reference losses, 1/4 and 3/4 weights.
    torch.manual_seed(0)
    ref = _learner(model_dir, mesh)
    seqs = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    b = pack([r.prompt_ids for r in seqs], [r.response_ids for r in seqs])
    with torch.no_grad():
        ref_seq = b.seq_sum(response_logprobs(ref.reference, b, impl="reference"))
    pol_seq = b.seq_sum(response_logprobs(ref.policy, b, impl="reference"))
    dpo = dpo_loss_reference(pol_seq[:2], pol_seq[2:], ref_seq[:2], ref_seq[2:], beta=0.5).loss.mean()
    items = [(r, a) for g in groups for r, a in zip(g.rollouts, g.advantages, strict=True)]
    g = pack([r.prompt_ids for r, _ in items], [r.response_ids for r, _ in items])
    with torch.no_grad():
        ref_tok = response_logprobs(ref.reference, g, impl="reference")
    pol_tok = response_logprobs(ref.policy, g, impl="reference")
    old = torch.tensor([lp for r, _ in items for lp in r.behaviour_logprobs])
    adv = torch.repeat_interleave(torch.tensor([a for _, a in items]), g.lengths)
    weight = torch.full_like(adv, 1.0 / len(adv))
    grpo = grpo_loss_reference(pol_tok, old, ref_tok, adv, weight, clip_eps=0.2, kl_coef=0.1).loss
    total = 0.25 * dpo + 0.75 * grpo
    total.backward()
    ref.optimizer.step()

    assert metrics["train/loss"] == pytest.approx(float(total.detach()), rel=1e-5)
    assert metrics["train/loss/chat"] == pytest.approx(float(dpo.detach()), rel=1e-5)
    for (name, p), q in zip(learner.policy.named_parameters(), ref.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-7, msg=name)


def test_a_task_without_signal_keeps_its_weight_out(model_dir, mesh, rollouts):
    rollouts = rollouts(8)
    groups = [Group(rollouts=rollouts[:4], advantages=[1.0, -1.0, 0.5, -0.5])]
    learner = _learner(model_dir, mesh)
    m = learner.train_tasks([TaskBatch("chat", "dpo", 1.0), TaskBatch("math", "grpo", 3.0, groups=groups)])
    assert m["train/skipped/chat"] == 1.0 and m["train/loss"] == pytest.approx(0.75 * m["train/loss/math"])
    skipped = learner.train_tasks([TaskBatch("chat", "dpo", 1.0), TaskBatch("math", "grpo", 3.0)])
    assert skipped["train/grad_norm"] == 0.0 and learner.step == 2
