"""The parity check on the batch itself (`sampler.parity_check=batch`): the training pass compares
the learner's log-probs of freshly sampled tokens with the sampler's, and stops before the
optimizer step when they disagree."""

import pytest
import torch

from engine.config import DPOConfig, GRPOConfig, RunConfig
from engine.learner.learner import Learner
from engine.rollout.types import Group, PreferencePair, RolloutBatch
from engine.sync.weights import LogprobGapError, WeightSync


def _learner(model_dir, mesh, **sampler):
    torch.manual_seed(0)
    cfg = RunConfig(model=str(model_dir), optim={"lr": 1e-3}, learner={"micro_batch_size": 3}, sampler=sampler)
    learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh)
    learner.sync = WeightSync(cfg, learner, mesh, sampler=None, engine=None, probe_prompts=[], stop_ids=[])
    return learner


def _honest(learner, rollouts):
    """Rollouts whose behaviour log-probs are the learner's own (a sampler holding its weights)."""
    scored = learner.score([(r.prompt_ids, r.response_ids) for r in rollouts])
    for r, lp in zip(rollouts, scored, strict=True):
        r.behaviour_logprobs = lp.tolist()
        r.version = learner.step  # sampled with the learner's current weights
    return rollouts


@pytest.mark.parametrize("objective", ["grpo", "dpo"])
def test_batch_gap_is_measured_and_a_broken_sampler_stops_before_the_update(model_dir, mesh, rollouts, objective):
    learner = _learner(model_dir, mesh)
    batch = _honest(learner, rollouts(8))

    def step(items):  # as the run loop does it: backward, the sync's judgement, update
        if objective == "grpo":
            batch = RolloutBatch(step=0, version=items[0].version, rollouts=items, groups=[
                Group(rollouts=items[i : i + 4], advantages=[1.0, -0.5, 0.25, -0.75]) for i in (0, 4)])
            metrics = learner.backward(batch, grpo=GRPOConfig())
        else:
            batch = RolloutBatch(step=0, version=items[0].version, rollouts=items, pairs=[
                PreferencePair(chosen=items[i], rejected=items[i + 1]) for i in range(0, 8, 2)])
            metrics = learner.backward(batch, dpo=DPOConfig())
        learner.sync.check_batch(metrics, batch, learner.step + 1)
        return {**metrics, **learner.update()}

    metrics = step(batch)
    n_tokens = sum(len(r.response_ids) for r in batch)
    assert metrics["parity/batch_gap"] <= 1e-5 and metrics["parity/batch_tokens"] == n_tokens
    assert learner.step == 1

    # Stale rollouts (made before the last update) are not a parity check: nothing is measured.
    assert "parity/batch_gap" not in step(batch)

    # A sampler that does not hold the learner's weights: the step raises, and no update happens.
    broken = _honest(learner, rollouts(8, seed=1))
    for r in broken:
        r.behaviour_logprobs = [lp - 0.05 for lp in r.behaviour_logprobs]
    before = learner.policy.lm_head_weight.detach().clone()
    with pytest.raises(LogprobGapError, match=r"differ from the learner's by 5\.0\de-02.*max_logprob_gap"):
        step(broken)
    assert learner.step == 2 and torch.equal(learner.policy.lm_head_weight, before)

    # parity_check=probe: the batch gap is still reported, but does not stop the step.
    probe = _learner(model_dir, mesh, parity_check="probe")
    broken = _honest(probe, rollouts(8, seed=1))
    for r in broken:
        r.behaviour_logprobs = [lp - 0.05 for lp in r.behaviour_logprobs]
    learner = probe
    assert step(broken)["parity/batch_gap"] == pytest.approx(0.05, abs=1e-4)
