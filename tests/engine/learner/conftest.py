"""Shared learner-test pieces: a tiny random model saved in HF format, and random rollouts."""

import pytest
import torch

from engine.model.config import ModelConfig
from engine.model.hf_io import save_hf
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh
from engine.rollout.types import Rollout

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


def random_rollouts(count: int, seed: int = 0) -> list[Rollout]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        prompt = torch.randint(3, 96, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(3, 96, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g).tolist()
        behaviour = (-3.0 + 0.5 * torch.randn(len(response), generator=g)).tolist()
        out.append(Rollout(prompt_index=i, prompt_ids=prompt, response_ids=response, behaviour_logprobs=behaviour,
                           text="", reward=float(i % 2), version=-1))  # not sampled from the learner:
    return out  # its behaviour log-probs are made up, so no parity check applies (version -1)


@pytest.fixture
def rollouts():
    return random_rollouts
