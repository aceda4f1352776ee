"""Transformer Engine decoder layers: the same layer as `llama.DecoderLayer`, built from TE's fused
CUDA modules, for `learner.te: on` (or `auto` on CUDA with transformer_engine importable).

    attn.qkv     te.LayerNormLinear  RMSNorm (input_layernorm) fused into the column-parallel QKV
    attn.q_norm  te.RMSNorm          Qwen3 only: per-head RMSNorm of q and k over head_dim, before
    attn.k_norm                      RoPE (TE 2.x MultiheadAttention's qk_norm_type="RMSNorm",
                                     qk_norm_before_rope=True; its modules are named q_norm / k_norm too)
    attn.core    te.DotProductAttention  causal, GQA, fused (cuDNN / flash) kernels in bf16
    attn.out     te.Linear           row-parallel, output all-reduced over the TP group
    mlp.gate_up  te.LayerNormLinear  RMSNorm (post_attention_layernorm) fused into gate|up
    mlp.down     te.Linear           row-parallel

`TEDecoderLayer(cfg, mesh, mp)` takes `llama.DecoderLayer`'s arguments and has its forward
(``x, cos, sin -> x``) and its parameter names (`specs.weight_specs` is unchanged: loading, export,
weight sync and checkpoints work as they are). The fused norm's weight lives in TE's
``layer_norm_weight`` and is registered a second time, first, as ``attn_norm.weight`` /
``mlp_norm.weight``, so `named_parameters()` (which yields a shared parameter once, under its first
name) shows the spec's name. Qwen3's q/k norm weights are ``attn.q_norm.weight`` /
``attn.k_norm.weight`` on both paths, (head_dim,) and replicated over TP, so HF's
``self_attn.{q,k}_norm.weight`` load and export through the same spec rows; each TP rank norms only
its heads, so a hook sums their gradients over the TP group (as `llama.RMSNorm`'s `copy_to_tp`).
RoPE is the model's own (HF layout, `llama.apply_rope`), applied
between the QKV projection and TE's attention. Only on CUDA: TE allocates and computes on GPU.
The CPU path keeps the megatron-core layers of `llama.py`.

Wiring (one switch in `llama.CausalLM.__init__`, with a lazy import: this module imports llama):

    layer_cls = te_layer_class(use_te)           # DecoderLayer or TEDecoderLayer
    use_te = resolve_te(cfg.learner.te, mesh.device)   # at the entry point, like resolve_device

`convert_to_te(model)` swaps the layers of an already built `CausalLM` (weights copied): the
GPU parity test (`tests/gpu/test_te_parity.py`) uses it so both paths score the same checkpoint.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.llama import CausalLM, DecoderLayer, StageChunk, apply_rope
from engine.parallel.mesh import Mesh
from kernels.tp import reduce_from_tp

TERequest = Literal["auto", "on", "off"]


def te_importable() -> bool:
    """transformer_engine's PyTorch extension is installed (`make setup-gpu` builds it)."""
    if importlib.util.find_spec("transformer_engine") is None:
        return False
    if importlib.util.find_spec("transformer_engine_torch") is None:
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, OSError, RuntimeError):
        return False
    return True


def resolve_te(requested: str, device: torch.device, *, key: str = "learner.te") -> bool:
    """`learner.te` -> whether the decoder uses TE layers. auto: on CUDA with TE importable;
    on: the same, or a clear error saying which is missing; off: never."""
    if requested not in ("auto", "on", "off"):
        raise ValueError(f"{key}={requested!r}: expected one of auto, on, off")
    if requested == "off":
        return False
    usable = torch.device(device).type == "cuda" and te_importable()
    if requested == "on" and not usable:
        why = ("the learner's device is " + torch.device(device).type if torch.device(device).type != "cuda"
               else "transformer_engine.pytorch cannot be imported (make setup-gpu builds it)")
        raise ValueError(f"{key}=on but {why}; use {key}=auto to fall back to the megatron-core layers")
    return usable


def te_layer_class(use_te: bool) -> type[nn.Module]:
    return TEDecoderLayer if use_te else DecoderLayer


def _te():
    try:
        import transformer_engine.pytorch as te
    except (ImportError, OSError, RuntimeError) as e:
        raise ImportError(f"the TE decoder layers need transformer_engine.pytorch (make setup-gpu builds it): {e}; "
                          "learner.te=auto or off keeps the megatron-core layers") from e
    return te


def _require_cuda(mesh: Mesh) -> None:
    if mesh.device.type != "cuda":
        raise ValueError(f"TEDecoderLayer needs the learner on CUDA (mesh device {mesh.device}); learner.te=off on CPU")


def _head_norm(te, cfg: ModelConfig, mesh: Mesh, mp) -> nn.Module:
    """One of Qwen3's per-head q/k RMSNorms, built as TE 2.x's MultiheadAttention builds its
    q_norm / k_norm for qk_norm_type="RMSNorm" (normalized_shape=head_dim, weight (head_dim,)).
    TE leaves the replicated weight's TP gradient to the framework: a hook sums it over TP."""
    norm = te.RMSNorm(normalized_shape=cfg.head_dim, eps=cfg.rms_norm_eps, device=mesh.device,
                      params_dtype=mp.params_dtype)
    if mesh.tp_size > 1:
        norm.weight.register_hook(functools.partial(reduce_from_tp, group=mesh.tp_group))
    return norm


class _FusedNormWeight(nn.Module):
    """The RMSNorm weight TE keeps inside a LayerNormLinear, under the name the specs use."""

    def __init__(self, weight: nn.Parameter):
        super().__init__()
        self.weight = weight


def _linear_args(mesh: Mesh, mp) -> dict:
    return dict(params_dtype=mp.params_dtype, tp_group=mesh.tp_group, tp_size=mesh.tp_size, device=mesh.device)


class TEAttention(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp):
        super().__init__()
        te = _te()
        self.head_dim = cfg.head_dim
        self.heads = cfg.num_attention_heads // mesh.tp_size  # per rank
        self.kv_heads = cfg.num_key_value_heads // mesh.tp_size
        q_size, kv_size = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.qkv = te.LayerNormLinear(
            cfg.hidden_size, q_size + 2 * kv_size, eps=cfg.rms_norm_eps, bias=cfg.attention_bias,
            normalization="RMSNorm", parallel_mode="column", **_linear_args(mesh, mp))
        self.core = te.DotProductAttention(
            cfg.num_attention_heads, cfg.head_dim, num_gqa_groups=cfg.num_key_value_heads, attention_dropout=0.0,
            qkv_format="bshd", attn_mask_type="causal", tp_size=mesh.tp_size, tp_group=mesh.tp_group)
        self.out = te.Linear(q_size, cfg.hidden_size, bias=False, parallel_mode="row", **_linear_args(mesh, mp))
        self.q_norm = self.k_norm = None  # registered after `out`, in `llama.Attention`'s parameter order
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm of q and k, before RoPE
            self.q_norm, self.k_norm = _head_norm(te, cfg, mesh, mp), _head_norm(te, cfg, mesh, mp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, T, H) *before* the input norm (fused here) -> attention output (B, T, H)."""
        B, T, _ = x.shape
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = self.qkv(x).split([q_size, kv_size, kv_size], dim=-1)
        q, k = q.view(B, T, self.heads, self.head_dim), k.view(B, T, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        cos, sin = cos[:, None, :], sin[:, None, :]  # (T, 1, D): broadcast over (B, T, heads, D)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        v = v.view(B, T, self.kv_heads, self.head_dim)
        y = self.core(q.contiguous(), k.contiguous(), v.contiguous())  # (B, T, heads * D)
        return self.out(y)


class TEMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp):
        super().__init__()
        te = _te()
        self.gate_up = te.LayerNormLinear(
            cfg.hidden_size, 2 * cfg.intermediate_size, eps=cfg.rms_norm_eps, bias=False, normalization="RMSNorm",
            parallel_mode="column", **_linear_args(mesh, mp))
        self.down = te.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False, parallel_mode="row",
                              **_linear_args(mesh, mp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)  # packed [gate_r; up_r], as megatron's
        return self.down(F.silu(gate) * up)


class TEDecoderLayer(nn.Module):
    """`llama.DecoderLayer` on TE modules: same arguments, forward and parameter names."""

    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp):
        super().__init__()
        _require_cuda(mesh)
        attn, mlp = TEAttention(cfg, mesh, mp), TEMLP(cfg, mesh, mp)
        # Registration order is the naming order: the norm aliases come before the modules owning them.
        self.attn_norm = _FusedNormWeight(attn.qkv.layer_norm_weight)
        self.attn = attn
        self.mlp_norm = _FusedNormWeight(mlp.gate_up.layer_norm_weight)
        self.mlp = mlp

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(x, cos, sin)
        return x + self.mlp(x)


def convert_to_te(model: CausalLM) -> CausalLM:
    """Replace every `DecoderLayer` of `model` by a `TEDecoderLayer` holding the same weights
    (in place; returns `model`). For tests and for checkpoints built before the switch."""
    cfg_mp = _ParamsDtype(next(iter(model.layers.values())).attn_norm.weight.dtype)
    for key, old in list(model.layers.items()):
        new = TEDecoderLayer(model.cfg, model.mesh, cfg_mp)
        new_params = dict(new.named_parameters())
        with torch.no_grad():
            for name, p in old.named_parameters():
                if name not in new_params or new_params[name].shape != p.shape:
                    raise RuntimeError(f"convert_to_te: layer {key}: {name} {tuple(p.shape)} has no TE twin")
                new_params[name].copy_(p)
        new.train(old.training)
        new.requires_grad_(next(old.parameters()).requires_grad)
        model.layers[key] = new
    model.chunks = [StageChunk(model, s, model.stage_ranges[s]) for s in model.stage_ids]
    return model


class _ParamsDtype:
    """The one field of megatron's ModelParallelConfig the TE layers read."""

    def __init__(self, params_dtype: torch.dtype):
        self.params_dtype = params_dtype
