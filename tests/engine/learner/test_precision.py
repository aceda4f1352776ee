"""`learner.dtype=bfloat16` = bf16 compute over fp32 master weights (engine/learner/optim.py):
the optimizer's parameters, gradients and moments stay fp32, the matmuls run in bf16, and the
training state costs what `precision_cost` says, counted tensor by tensor.

    .venv/bin/python -m pytest -q tests/engine/learner/test_precision.py
"""

import pytest
import torch

from engine.config import OptimConfig
from engine.learner.optim import build_optimizer, precision_cost
from engine.model.config import ModelConfig
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh

CFG = ModelConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_layers=2, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=64, max_position_embeddings=64, rms_norm_eps=1e-5)


def test_precision_cost_per_parameter():
    assert (precision_cost("float32").steady, precision_cost("float32").peak) == (16, 16)
    assert (precision_cost("bfloat16").steady, precision_cost("bfloat16").peak) == (16, 18)
    with pytest.raises(ValueError, match="learner.dtype='float16'"):
        precision_cost("float16")


def test_bf16_step_keeps_fp32_master_weights_and_costs_16_bytes_per_parameter():
    with Mesh.init() as mesh:
        model = CausalLM(CFG, mesh, seed=0)
        opt, _ = build_optimizer(model.parameters(), OptimConfig(lr=1e-3))
        ids = torch.randint(0, CFG.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        with torch.autocast("cpu", dtype=torch.bfloat16):  # backward inside too, as the learner's passes
            logits = model(ids)  # (megatron's custom_bwd restores autocast for CUDA only)
            assert logits.dtype == torch.bfloat16  # bf16 compute
            logits.float().logsumexp(-1).mean().backward()
        opt.step()
        params = [p for p in model.parameters() if p.requires_grad]
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params)
        numel = sum(p.numel() for p in params)
        state = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items() if k != "step")
        measured = sum(p.numel() * 4 + p.grad.numel() * 4 for p in params) + state
        assert measured == precision_cost("bfloat16").steady * numel


def test_low_precision_parameters_are_refused():
    weight = torch.nn.Parameter(torch.zeros(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="not fp32.*learner.dtype=bfloat16"):
        build_optimizer([weight], OptimConfig())
