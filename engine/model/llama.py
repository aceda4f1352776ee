"""Llama / Qwen2 decoder (`CausalLM`) built from megatron-core tensor-parallel layers.

The code reads as single-device code; tensor parallelism lives only in the layer types:

    embed      VocabParallelEmbedding   vocab rows split over TP ranks, output all-reduced
    attn.qkv   ColumnParallelLinear     this rank's heads, packed [q_r; k_r; v_r] on dim 0
    attn.out   RowParallelLinear        input dim split, output all-reduced
    mlp.gate_up ColumnParallelLinear    packed [gate_r; up_r] on dim 0
    mlp.down   RowParallelLinear
    lm_head    ColumnParallelLinear     vocab rows split; the embedding's weight when tied

Rank r of a TP group holds query heads [r*nh/tp, (r+1)*nh/tp) and the matching kv heads (so
`num_key_value_heads` must divide by tp). The HF <-> local name and packing table lives in
`hf_io.py`. Groups come only from `mesh.tp_group`; megatron's global `parallel_state` is never
touched. Numeric convention: right-padded `input_ids (B, T)`, causal attention, no mask,
positions 0..T-1; RoPE and RMSNorm follow Hugging Face's Llama exactly (fp32 inside).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.parallel.mesh import Mesh

with warnings.catch_warnings():  # megatron.core warns at import that TE/Apex are absent: expected on CPU
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

InitMethod = Callable[[torch.Tensor], None]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, dtype: torch.dtype):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


def rope_inv_freq(cfg: ModelConfig) -> torch.Tensor:
    """(head_dim/2,) fp32 inverse frequencies, with Llama-3.1 scaling when configured."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = cfg.rope_scaling
    if s is None:
        return inv_freq
    low_freq_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_freq_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor)
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_cos_sin(cfg: ModelConfig, seq_len: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (T, head_dim), fp32, for positions 0..T-1 (HF's cat(freqs, freqs) layout)."""
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)
    freqs = torch.outer(positions, rope_inv_freq(cfg).to(device))
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, T, head_dim)."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def normal_init(std: float, generator: torch.Generator) -> InitMethod:
    def init(master: torch.Tensor) -> None:
        master.normal_(0.0, std, generator=generator)

    return init


def packed_init(std: float, sizes: list[int], tp_size: int, generator: torch.Generator) -> InitMethod:
    """Init for a megatron master weight whose per-rank shard packs several HF tensors.

    Draws each HF tensor in full (so a seed gives the same model at every TP size), then lays
    the master out as [a_0; b_0; …; a_1; b_1; …] so that megatron's contiguous split hands rank r
    its packed shard [a_r; b_r; …].
    """

    def init(master: torch.Tensor) -> None:
        parts = [torch.empty(n, master.shape[1]).normal_(0.0, std, generator=generator) for n in sizes]
        shards = [part.chunk(tp_size, dim=0) for part in parts]
        with torch.no_grad():
            master.copy_(torch.cat([s[r] for r in range(tp_size) for s in shards], dim=0))

    return init


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp: ModelParallelConfig, std: float, gen: torch.Generator):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.heads = cfg.num_attention_heads // mesh.tp_size  # per rank
        self.kv_heads = cfg.num_key_value_heads // mesh.tp_size
        q_size, kv_size = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.qkv = ColumnParallelLinear(
            cfg.hidden_size, q_size + 2 * kv_size, config=mp, bias=cfg.attention_bias, gather_output=False,
            init_method=packed_init(std, [q_size, kv_size, kv_size], mesh.tp_size, gen), tp_group=mesh.tp_group)
        self.out = RowParallelLinear(
            q_size, cfg.hidden_size, config=mp, bias=False, input_is_parallel=True, skip_bias_add=False,
            init_method=normal_init(std, gen), tp_group=mesh.tp_group)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv, _ = self.qkv(x)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(B, T, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        y, _ = self.out(y.transpose(1, 2).reshape(B, T, q_size))
        return y


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp: ModelParallelConfig, std: float, gen: torch.Generator):
        super().__init__()
        size = cfg.intermediate_size
        self.gate_up = ColumnParallelLinear(
            cfg.hidden_size, 2 * size, config=mp, bias=False, gather_output=False,
            init_method=packed_init(std, [size, size], mesh.tp_size, gen), tp_group=mesh.tp_group)
        self.down = RowParallelLinear(
            size, cfg.hidden_size, config=mp, bias=False, input_is_parallel=True, skip_bias_add=False,
            init_method=normal_init(std, gen), tp_group=mesh.tp_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)[0].chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)[0]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp: ModelParallelConfig, std: float, gen: torch.Generator):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, mp.params_dtype)
        self.attn = Attention(cfg, mesh, mp, std, gen)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, mp.params_dtype)
        self.mlp = MLP(cfg, mesh, mp, std, gen)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class CausalLM(nn.Module):
    """Tensor-parallel Llama/Qwen2 decoder; each rank holds its shard (see the module docstring).

    `init_weights=False` skips megatron's random init (weights are garbage until loaded, as
    `hf_io.load_model` does). With `init_weights=True` weights are N(0, 0.02) drawn from `seed`
    in Hugging Face layout, so a seed gives the same model at every TP size.
    """

    def __init__(self, cfg: ModelConfig, mesh: Mesh, params_dtype: torch.dtype = torch.float32, *,
                 init_weights: bool = True, seed: int = 0, init_std: float = 0.02):
        super().__init__()
        cfg.check_tensor_parallel(mesh.tp_size)
        self.cfg, self.mesh = cfg, mesh
        mp = ModelParallelConfig(tensor_model_parallel_size=mesh.tp_size, use_cpu_initialization=True,
                                 params_dtype=params_dtype, perform_initialization=init_weights)
        gen = torch.Generator().manual_seed(seed)
        self.embed = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, init_method=normal_init(init_std, gen),
                                            config=mp, tp_group=mesh.tp_group)
        self.layers = nn.ModuleList(DecoderLayer(cfg, mesh, mp, init_std, gen) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, params_dtype)
        self.lm_head = ColumnParallelLinear(
            cfg.hidden_size, cfg.vocab_size, config=mp, bias=False, gather_output=False,
            skip_weight_param_allocation=cfg.tie_word_embeddings, init_method=normal_init(init_std, gen),
            tp_group=mesh.tp_group)
        self.to(mesh.device)

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """This rank's vocab shard of the output projection, (V/tp, H): rows
        [tp_rank*V/tp, (tp_rank+1)*V/tp). The embedding weight when tied."""
        return self.embed.weight if self.cfg.tie_word_embeddings else self.lm_head.weight

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H) hidden states after the final norm (replicated over TP)."""
        x = self.embed(input_ids)
        cos, sin = rope_cos_sin(self.cfg, input_ids.shape[1], x.device)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> this rank's vocab shard of the logits, (B, T, V/tp). No gather."""
        logits, _ = self.lm_head(self.hidden_states(input_ids), weight=self.lm_head_weight)
        return logits

    def gather_logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        """(B, T, V/tp) -> (B, T, V) on every TP rank; for tests and eval (memory: full vocab)."""
        return _GatherLastDim.apply(local_logits, self.mesh.tp_group)


class _GatherLastDim(torch.autograd.Function):
    """All-gather along the last dim over `group`; backward keeps this rank's slice.

    Megatron's `gather_from_tensor_model_parallel_region` does the same but allocates its buffer
    with `torch.cuda.current_device()`, so it cannot run on CPU.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
        ctx.rank, ctx.size = dist.get_rank(group), dist.get_world_size(group)
        if ctx.size == 1:
            return x
        parts = [torch.empty_like(x) for _ in range(ctx.size)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=-1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        if ctx.size == 1:
            return grad, None
        return grad.chunk(ctx.size, dim=-1)[ctx.rank].contiguous(), None
