"""The learner's kernel switch (`kernels: torch | reference`): one GRPO step and one DPO step on a
tiny random model give the same loss, gradient norm and updated weights on either path."""

import pytest
import torch

from engine.config import RunConfig
from engine.learner.learner import Learner
from engine.rollout.types import Group, PreferencePair


def _step(model_dir, mesh, kernels, objective, rollouts, **grpo):
    torch.manual_seed(0)
    cfg = RunConfig(
        model=str(model_dir),
        kernels=kernels,
        optim={"lr": 1e-3},
        learner={"micro_batch_size": 3},
        grpo={"clip_eps": 0.2, "kl_coef": 0.1, **grpo},
    )
    learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
    rollouts = rollouts(8)
    if objective == "grpo":
        groups = [Group(rollouts=rollouts[i : i + 4], advantages=[1.0, -0.5, 0.25, -0.75]) for i in (0, 4)]
        metrics = learner.train_grpo(groups, cfg.grpo)
    else:
        metrics = learner.train_dpo(
            [PreferencePair(chosen=rollouts[i], rejected=rollouts[i + 1]) for i in range(0, 8, 2)], cfg.dpo
        )
    return metrics, learner.policy.lm_head_weight.detach().clone()


@pytest.mark.parametrize(
    "objective, options", [("grpo", {}), ("grpo", {"reduction": "sequence", "tis_cap": 2.0}), ("dpo", {})]
)
def test_kernel_path_equals_reference_path(model_dir, mesh, rollouts, objective, options):
    plain, w_plain = _step(model_dir, mesh, "reference", objective, rollouts, **options)
    fused, w_fused = _step(model_dir, mesh, "torch", objective, rollouts, **options)
    for key in ("train/loss", "train/grad_norm", "kl/ref", "policy/entropy"):
        assert abs(fused[key] - plain[key]) <= 1e-5 * max(1.0, abs(plain[key])), (key, fused[key], plain[key])
    assert torch.allclose(w_fused, w_plain, rtol=0, atol=1e-6)
