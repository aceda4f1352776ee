"""`ModelConfig`: the decoder's architecture, and its round trip to a Hugging Face `config.json`.

Covers the Llama, Qwen2 and Qwen3 dense families (`LlamaForCausalLM`, `Qwen2ForCausalLM`,
`Qwen3ForCausalLM`): RMSNorm, RoPE (plain, or Llama-3.1 "llama3" scaling), grouped-query
attention, SwiGLU MLP; q/k/v bias for Qwen2; per-head RMSNorm of queries and keys before RoPE
for Qwen3 (`qk_norm`). Anything else in a
config (another activation, sliding windows, MLP bias, another RoPE type) is rejected with the
key named, rather than silently computed differently from transformers and vLLM.

`to_hf_dict()` writes what transformers 5 writes (`rope_parameters`, `dtype`) plus the legacy
keys older readers look for (`rope_theta`, `rope_scaling`, `torch_dtype`); it loads unchanged in
transformers and vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

_ARCHITECTURES = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class RopeScaling:
    """Llama-3.1 RoPE frequency scaling (`rope_type: "llama3"` in Hugging Face configs)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: Literal["llama3"] = "llama3"


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool = False  # bias on q/k/v (Qwen2); never on o_proj
    model_type: Literal["llama", "qwen2", "qwen3"] = "llama"
    rope_scaling: RopeScaling | None = None
    dtype: str | None = None  # dtype of the checkpoint's tensors, e.g. "bfloat16"
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None

    def __post_init__(self) -> None:
        positive = ("vocab_size", "hidden_size", "intermediate_size", "num_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(f"ModelConfig.num_attention_heads={self.num_attention_heads} must be divisible "
                             f"by num_key_value_heads={self.num_key_value_heads}")
        if self.head_dim % 2 != 0:
            raise ValueError(f"ModelConfig.head_dim={self.head_dim} must be even (RoPE rotates pairs)")
        if self.rope_theta <= 0 or self.rms_norm_eps <= 0:
            raise ValueError(f"ModelConfig.rope_theta={self.rope_theta} and rms_norm_eps={self.rms_norm_eps} "
                             "must be > 0")
        if self.model_type not in _ARCHITECTURES:
            raise ValueError(f"ModelConfig.model_type={self.model_type!r}: allowed {sorted(_ARCHITECTURES)}")
        if self.model_type == "qwen2" and not self.attention_bias:
            raise ValueError("ModelConfig.attention_bias must be True for model_type 'qwen2' "
                             "(Qwen2 always has q/k/v bias)")
        if self.model_type in ("llama", "qwen3") and self.attention_bias:
            raise ValueError(f"ModelConfig.attention_bias=True with model_type {self.model_type!r} means an o_proj "
                             "bias too in Hugging Face, which this model does not implement")
        if self.dtype is not None and self.dtype not in _DTYPES:
            raise ValueError(f"ModelConfig.dtype={self.dtype!r}: allowed {_DTYPES} or None")

    @property
    def qk_norm(self) -> bool:
        """Qwen3: RMSNorm over each query and key head (one (head_dim,) weight each) before RoPE."""
        return self.model_type == "qwen3"

    def check_tensor_parallel(self, tp_size: int) -> None:
        """Raise ValueError naming the field when this model cannot be split over `tp_size` ranks."""
        for name in ("vocab_size", "num_attention_heads", "num_key_value_heads", "intermediate_size"):
            value = getattr(self, name)
            if value % tp_size != 0:
                raise ValueError(f"ModelConfig.{name}={value} is not divisible by the tensor-parallel size "
                                 f"{tp_size}; each TP rank holds an equal shard of it")

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Parse a Hugging Face `config.json` dict (legacy or transformers-5 RoPE keys)."""
        model_type = d.get("model_type")
        if model_type not in _ARCHITECTURES:
            raise ValueError(f"config model_type={model_type!r}: supported {sorted(_ARCHITECTURES)}")
        archs = d.get("architectures") or [_ARCHITECTURES[model_type]]
        if archs != [_ARCHITECTURES[model_type]]:
            raise ValueError(f"config architectures={archs}: expected [{_ARCHITECTURES[model_type]!r}]")
        for key, allowed in (("hidden_act", "silu"), ("mlp_bias", False), ("use_sliding_window", False),
                             ("pretraining_tp", 1)):
            if key in d and d[key] != allowed:
                raise ValueError(f"config {key}={d[key]!r} is not supported (only {allowed!r})")
        if any(t != "full_attention" for t in d.get("layer_types") or []):
            raise ValueError(f"config layer_types={d['layer_types']} is not supported (only 'full_attention')")
        for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
            if key not in d:
                raise ValueError(f"config is missing required key {key!r}")

        rope = dict(d.get("rope_parameters") or d.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        rope_theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        max_pos = int(d.get("max_position_embeddings", 2048))
        rope_scaling = None
        if rope_type == "llama3":
            rope_scaling = RopeScaling(
                factor=float(rope["factor"]),
                low_freq_factor=float(rope["low_freq_factor"]),
                high_freq_factor=float(rope["high_freq_factor"]),
                original_max_position_embeddings=int(rope.get("original_max_position_embeddings", max_pos)),
            )
        elif rope_type != "default":
            raise ValueError(f"config rope_type={rope_type!r} is not supported (only 'default' and 'llama3')")

        dtype = d.get("dtype") or d.get("torch_dtype")
        eos = d.get("eos_token_id")
        heads = d["num_attention_heads"]
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"],
            num_attention_heads=heads,
            num_key_value_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            rope_theta=rope_theta,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=True if model_type == "qwen2" else bool(d.get("attention_bias", False)),
            model_type=model_type,
            rope_scaling=rope_scaling,
            dtype=dtype if dtype != "auto" else None,
            bos_token_id=d.get("bos_token_id"),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            pad_token_id=d.get("pad_token_id"),
        )

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` dict Hugging Face writes for this architecture."""
        rope: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope.update({f.name: getattr(self.rope_scaling, f.name) for f in fields(self.rope_scaling)})
        d: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_parameters": rope,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "use_cache": True,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id,
            "pad_token_id": self.pad_token_id,
        }
        if self.rope_scaling is not None:
            d["rope_scaling"] = dict(rope)
        if self.model_type == "llama":
            d.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
        else:
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=self.num_layers)
        if self.model_type == "qwen3":
            d.update(attention_bias=False, layer_types=["full_attention"] * self.num_layers)
        if self.dtype is not None:
            d.update(dtype=self.dtype, torch_dtype=self.dtype)
        return d
