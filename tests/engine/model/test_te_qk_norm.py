"""Qwen3's q/k norm on the Transformer Engine layer path (engine/model/te.py), the parts a CPU can
check: the HF <-> local name mapping, the wiring of TEAttention (norm per head, before RoPE), and
the clear errors without CUDA / TE. TE's kernels themselves: tests/gpu/test_te_parity.py.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/engine/model/test_te_qk_norm.py

`_FakeTE` stands in for `transformer_engine.pytorch`: the four classes te.py builds, in plain
torch on CPU, with TE's constructor arguments and parameter names (LayerNormLinear's
`layer_norm_weight` + `weight`, RMSNorm's `weight`). It runs at tp=1 only.
"""

import dataclasses
import types

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from transformers import Qwen3Config, Qwen3ForCausalLM

import engine.model.te as te_mod
from engine.model.config import ModelConfig
from engine.model.hf_io import iter_hf_weights, load_model
from engine.model.llama import CausalLM, DecoderLayer
from engine.model.specs import weight_specs
from engine.parallel.mesh import Mesh

# the `qwen3` case of tests/engine/model/test_llama_vs_hf.py
QWEN3 = Qwen3Config(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, dtype="float32",
                    num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                    rope_parameters={"rope_type": "default", "rope_theta": 1e6})


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x32 = x.float()
    return (weight.float() * x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)


class _LayerNormLinear(nn.Module):
    def __init__(self, in_features, out_features, *, eps, bias, normalization, parallel_mode, params_dtype,
                 tp_group, tp_size, device):
        super().__init__()
        assert normalization == "RMSNorm" and parallel_mode == "column" and tp_size == 1
        self.eps = eps
        self.layer_norm_weight = nn.Parameter(torch.ones(in_features, dtype=params_dtype))
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=params_dtype))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=params_dtype)) if bias else None

    def forward(self, x):
        return F.linear(_rms(x, self.layer_norm_weight, self.eps), self.weight, self.bias)


class _Linear(nn.Module):
    def __init__(self, in_features, out_features, *, bias, parallel_mode, params_dtype, tp_group, tp_size, device):
        super().__init__()
        assert not bias and parallel_mode == "row" and tp_size == 1
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=params_dtype))

    def forward(self, x):
        return F.linear(x, self.weight)


class _DotProductAttention(nn.Module):
    def __init__(self, heads, head_dim, *, num_gqa_groups, attention_dropout, qkv_format, attn_mask_type,
                 tp_size, tp_group):
        super().__init__()
        assert qkv_format == "bshd" and attn_mask_type == "causal" and attention_dropout == 0.0
        self.gqa = heads != num_gqa_groups

    def forward(self, q, k, v):  # (B, T, heads, D) each -> (B, T, heads * D)
        y = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                           enable_gqa=self.gqa)
        return y.transpose(1, 2).flatten(2)


class _RMSNorm(nn.Module):
    built: list[dict] = []

    def __init__(self, normalized_shape, eps=1e-5, params_dtype=None, **kwargs):
        super().__init__()
        _RMSNorm.built.append(dict(normalized_shape=normalized_shape, eps=eps, params_dtype=params_dtype, **kwargs))
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(normalized_shape, dtype=params_dtype))

    def forward(self, x):
        return _rms(x, self.weight, self.eps)


_FakeTE = types.SimpleNamespace(LayerNormLinear=_LayerNormLinear, Linear=_Linear,
                                DotProductAttention=_DotProductAttention, RMSNorm=_RMSNorm)


@pytest.fixture
def fake_te(monkeypatch):
    monkeypatch.setattr(te_mod, "_te", lambda: _FakeTE)
    monkeypatch.setattr(te_mod, "_require_cuda", lambda mesh: None)
    _RMSNorm.built.clear()


@pytest.fixture(scope="module")
def mesh():
    with Mesh.init(tp_size=1) as mesh:
        yield mesh


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
    """A tiny random Qwen3 checkpoint; q/k norm weights re-drawn too, so a skipped norm shows."""
    torch.manual_seed(0)
    model, gen = Qwen3ForCausalLM(QWEN3).eval(), torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    path = tmp_path_factory.mktemp("qwen3")
    model.save_pretrained(path)
    return path


def test_q_k_norm_spec_rows_are_per_head_and_replicated():
    cfg = ModelConfig.from_hf_dict(QWEN3.to_dict())
    rows = {s.hf_name: s for s in weight_specs(cfg, tp_size=2)}
    for which in ("q", "k"):
        spec = rows[f"model.layers.1.self_attn.{which}_norm.weight"]
        assert (spec.local_name, spec.hf_shape, spec.tp_dim, spec.local_rows) == (
            f"layers.1.attn.{which}_norm.weight", (64,), None, None)


def test_te_layer_has_the_megatron_layers_parameter_names(fake_te, mesh):
    cfg = ModelConfig.from_hf_dict(QWEN3.to_dict())
    plain, fused = CausalLM(cfg, mesh), CausalLM(cfg, mesh, layer_class=te_mod.TEDecoderLayer)  # seeded init
    names = [n for n, _ in plain.named_parameters()]
    assert "layers.0.attn.q_norm.weight" in names and "layers.1.attn.k_norm.weight" in names
    assert [n for n, _ in fused.named_parameters()] == names
    assert fused.layers["0"].attn.q_norm.weight.shape == fused.layers["0"].attn.k_norm.weight.shape == (64,)
    # TE 2.x MultiheadAttention's RMSNorm q/k norm: normalized over head_dim, the model's eps
    assert [b["normalized_shape"] for b in _RMSNorm.built] == [64] * 4  # q and k, 2 layers
    assert {b["eps"] for b in _RMSNorm.built} == {cfg.rms_norm_eps}
    llama = dataclasses.replace(cfg, model_type="llama")
    mp = te_mod._ParamsDtype(torch.float32)
    assert not llama.qk_norm and te_mod.TEDecoderLayer(llama, mesh, mp).attn.q_norm is None


def test_hf_checkpoint_gives_the_same_logits_through_the_te_layers(fake_te, mesh, qwen3_dir):
    ids = torch.randint(0, QWEN3.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    plain = load_model(qwen3_dir, mesh)
    want = plain(ids).detach()
    with torch.no_grad():  # a skipped or misplaced (after RoPE) q/k norm moves the logits
        for layer in plain.layers.values():
            layer.attn.q_norm.weight.fill_(1.0)
        assert (plain(ids) - want).abs().max() > 1e-2
    loaded = load_model(qwen3_dir, mesh, layer_class=te_mod.TEDecoderLayer)  # the learner's path
    converted = te_mod.convert_to_te(load_model(qwen3_dir, mesh))  # the GPU parity test's path
    hf = load_file(qwen3_dir / "model.safetensors")
    for model in (loaded, converted):
        assert all(isinstance(layer, te_mod.TEDecoderLayer) for layer in model.layers.values())
        assert (model(ids).detach() - want).abs().max() <= 1e-5
        exported = dict(iter_hf_weights(model))  # save / weight sync read the TE parameters
        assert exported.keys() == hf.keys()
        for name, tensor in hf.items():
            assert torch.equal(exported[name], tensor), name


def test_without_cuda_or_te_the_error_is_clear(mesh):
    cfg = ModelConfig.from_hf_dict(QWEN3.to_dict())
    with pytest.raises(ValueError, match=r"TEDecoderLayer needs the learner on CUDA .*learner\.te=off on CPU"):
        te_mod.TEDecoderLayer(cfg, mesh, te_mod._ParamsDtype(torch.float32))
    with pytest.raises(ValueError, match=r"learner\.te=on but the learner's device is cpu"):
        te_mod.resolve_te("on", mesh.device)
    assert te_mod.te_layer_class(te_mod.resolve_te("auto", mesh.device)) is DecoderLayer
    assert isinstance(CausalLM(cfg, mesh).layers["0"], DecoderLayer)


@pytest.mark.skipif(te_mod.te_importable(), reason="checks the machine without Transformer Engine")
def test_missing_te_names_the_package(monkeypatch, mesh):
    monkeypatch.setattr(te_mod, "_require_cuda", lambda mesh: None)
    cfg = ModelConfig.from_hf_dict(QWEN3.to_dict())
    with pytest.raises(ImportError, match=r"need transformer_engine\.pytorch \(make setup-gpu builds it\)"):
        te_mod.TEDecoderLayer(cfg, mesh, te_mod._ParamsDtype(torch.float32))
