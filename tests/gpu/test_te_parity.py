"""Transformer Engine layers (engine/model/te.py) against the megatron-core layers of
engine/model/llama.py: same HF checkpoint, same parameter names, same log-probs and gradients.

    pytest -m gpu tests/gpu/test_te_parity.py -q      # needs CUDA and `make setup-gpu`'s TE build
"""

import pytest
import torch

from engine.bench import gpu_check_parts as parts
from engine.model.hf_io import load_model
from engine.model.te import convert_to_te, te_importable
from engine.parallel.mesh import Mesh

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not te_importable(), reason="transformer_engine.pytorch not importable")]
CUDA = torch.device("cuda", 0)


def _logprobs_and_grads(model, ids):
    model.zero_grad(set_to_none=True)
    lp = parts._next_token_logprobs(model.gather_logits(model(ids)), ids)
    lp.sum().backward()
    return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_te_layers_give_the_megatron_log_probs(tmp_path, dtype):
    parts.set_precise_matmuls(CUDA)
    path = parts.hf_llama(tmp_path, quick=False)
    ids = torch.randint(0, 32000, (4, 128), generator=torch.Generator().manual_seed(0)).to(CUDA)
    with Mesh.init(device=CUDA) as mesh:
        plain = load_model(path, mesh)
        fused = convert_to_te(load_model(path, mesh))
        assert [n for n, _ in plain.named_parameters()] == [n for n, _ in fused.named_parameters()]
        cast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        with cast:
            lp_plain, g_plain = _logprobs_and_grads(plain, ids)
            lp_fused, g_fused = _logprobs_and_grads(fused, ids)
    gap = (lp_fused - lp_plain).abs()
    tol = parts.TE_FP32_TOL if dtype == "float32" else 0.1  # bf16: two different kernel sets, bf16 rounding
    print(f"TE vs megatron {dtype}: mean {gap.mean():.3e} max {gap.max():.3e}")
    assert gap.max() <= tol, f"{dtype}: max |TE - megatron| log-prob {gap.max():.3e} > {tol}"
    worst = max(parts._rel_err(g_fused[n], g_plain[n]) for n in g_plain)
    assert worst <= (1e-2 if dtype == "float32" else 0.1), f"{dtype}: gradients differ by {worst:.3e}"
