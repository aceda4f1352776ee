"""The learner's kernel switch (`kernels: torch | reference`): one GRPO step and one DPO step on a
tiny random model give the same loss, gradient norm and updated weights on either path."""

import pytest
import torch

from engine.config import RunConfig
from engine.learner.learner import Learner
from engine.model.config import ModelConfig
from engine.model.hf_io import save_hf
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh
from engine.rollout.types import Group, PreferencePair, Rollout

TINY = ModelConfig(
    vocab_size=96,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


@pytest.fixture(scope="module")
def mesh():
    with Mesh.init(tp_size=1) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, mesh):
    path = tmp_path_factory.mktemp("tiny") / "model"
    save_hf(CausalLM(TINY, mesh, seed=0), path)
    return path


def _rollouts(count, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        prompt = torch.randint(3, 96, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(3, 96, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
        behaviour = (-3.0 + 0.5 * torch.randn(len(response), generator=g)).tolist()
        out.append(
            Rollout(
                prompt_index=i,
                prompt_ids=prompt,
                response_ids=response,
                behaviour_logprobs=behaviour,
                text="",
                reward=float(i % 2),
                version=0,
            )
        )
    return out


def _step(model_dir, mesh, kernels, objective, **grpo):
    torch.manual_seed(0)
    cfg = RunConfig(
        model=str(model_dir),
        kernels=kernels,
        optim={"lr": 1e-3},
        learner={"micro_batch_size": 3},
        grpo={"clip_eps": 0.2, "kl_coef": 0.1, **grpo},
    )
    learner = Learner(cfg, mesh)
    rollouts = _rollouts(8)
    if objective == "grpo":
        groups = [Group(rollouts=rollouts[i : i + 4], advantages=[1.0, -0.5, 0.25, -0.75]) for i in (0, 4)]
        metrics = learner.train_grpo(groups)
    else:
        metrics = learner.train_dpo(
            [PreferencePair(chosen=rollouts[i], rejected=rollouts[i + 1]) for i in range(0, 8, 2)]
        )
    return metrics, learner.policy.lm_head_weight.detach().clone()


@pytest.mark.parametrize(
    "objective, options", [("grpo", {}), ("grpo", {"reduction": "sequence", "tis_cap": 2.0}), ("dpo", {})]
)
def test_kernel_path_equals_reference_path(model_dir, mesh, objective, options):
    plain, w_plain = _step(model_dir, mesh, "reference", objective, **options)
    fused, w_fused = _step(model_dir, mesh, "torch", objective, **options)
    for key in ("train/loss", "train/grad_norm", "kl/ref", "policy/entropy"):
        assert abs(fused[key] - plain[key]) <= 1e-5 * max(1.0, abs(plain[key])), (key, fused[key], plain[key])
    assert torch.allclose(w_fused, w_plain, rtol=0, atol=1e-6)
