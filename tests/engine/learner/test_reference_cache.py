"""DPO on pairs whose reference log-probs were computed ahead (offline preference rows,
engine/rollout/preferences.py) takes the same step as DPO that runs the reference itself, and
never runs the reference forward."""

import pytest
import torch

from engine.config import DPOConfig
from engine.learner.learner import Learner
from engine.rollout.types import PreferencePair


def _learner(model_dir, mesh):
    from engine.config import LearnerConfig, OptimConfig

    torch.manual_seed(0)
    return Learner(str(model_dir), LearnerConfig(micro_batch_size=3), OptimConfig(lr=1e-3), mesh, kernels="torch")


def test_cached_reference_logprobs_give_the_same_step(model_dir, mesh, rollouts):
    items = rollouts(8)
    pairs = [PreferencePair(chosen=items[i], rejected=items[i + 1]) for i in range(0, 8, 2)]
    plain = _learner(model_dir, mesh)
    expected = plain.train_dpo(pairs, DPOConfig(beta=0.5))

    cached = _learner(model_dir, mesh)
    for r, lp in zip(items, cached.score([(r.prompt_ids, r.response_ids) for r in items], reference=True), strict=True):
        r.ref_logprobs = lp.tolist()
    cached.reference_passes.logprobs = lambda *a, **k: pytest.fail("the reference ran although its log-probs were given")
    got = cached.train_dpo(pairs, DPOConfig(beta=0.5))
    for key in ("train/loss", "dpo/margin", "kl/ref", "train/grad_norm", "logprob/chosen"):
        assert got[key] == pytest.approx(expected[key], rel=1e-6, abs=1e-7), key
    for p, q in zip(cached.policy.parameters(), plain.policy.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
