"""Transformer Engine layers (engine/model/te.py) against the megatron-core layers of
engine/model/llama.py: same HF checkpoint, same parameter names, same log-probs and gradients.
Cases: the GQA Llama of `gpu_check_parts.hf_llama`, and a Qwen3 of the `qwen3` shape in
tests/engine/model/test_llama_vs_hf.py (per-head q/k RMSNorm before RoPE: TE's `te.RMSNorm` as
`attn.q_norm` / `attn.k_norm`; its norm weights are re-drawn, so a skipped norm shows).

    pytest -m gpu tests/gpu/test_te_parity.py -q      # needs CUDA and `make setup-gpu`'s TE build
"""

import json

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


def _hf_qwen3(work_dir):
    """A random Qwen3 (q/k norm) saved by transformers, weights re-drawn as `parts.hf_llama`'s."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, dtype="float32",
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    torch.manual_seed(0)
    model, gen = Qwen3ForCausalLM(config), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    model.save_pretrained(work_dir / "qwen3")
    return work_dir / "qwen3"


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_te_layers_give_the_megatron_log_probs(tmp_path, dtype, arch):
    parts.set_precise_matmuls(CUDA)
    path = parts.hf_llama(tmp_path, quick=False) if arch == "llama" else _hf_qwen3(tmp_path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    ids = torch.randint(0, vocab, (4, 128), generator=torch.Generator().manual_seed(0)).to(CUDA)
    with Mesh.init(device=CUDA) as mesh:
        plain = load_model(path, mesh)
        fused = convert_to_te(load_model(path, mesh))
        assert [n for n, _ in plain.named_parameters()] == [n for n, _ in fused.named_parameters()]
        if arch == "qwen3":
            assert all(layer.attn.q_norm is not None for layer in fused.layers.values())
        cast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dtype == "bfloat16")
        with cast:
            lp_plain, g_plain = _logprobs_and_grads(plain, ids)
            lp_fused, g_fused = _logprobs_and_grads(fused, ids)
    gap = (lp_fused - lp_plain).abs()
    tol = parts.TE_FP32_TOL if dtype == "float32" else 0.1  # bf16: two different kernel sets, bf16 rounding
    print(f"TE vs megatron {arch} {dtype}: mean {gap.mean():.3e} max {gap.max():.3e}")
    assert gap.max() <= tol, f"{arch} {dtype}: max |TE - megatron| log-prob {gap.max():.3e} > {tol}"
    worst = max(parts._rel_err(g_fused[n], g_plain[n]) for n in g_plain)
    assert worst <= (1e-2 if dtype == "float32" else 0.1), f"{arch} {dtype}: gradients differ by {worst:.3e}"
