"""Llama / Qwen2 / Qwen3 decoder (`CausalLM`) built from megatron-core tensor-parallel layers.

The code reads as single-device code; tensor parallelism lives only in the layer types:

    embed      VocabParallelEmbedding   vocab rows split over TP ranks, output all-reduced
    attn.qkv   ColumnParallelLinear     this rank's heads, packed [q_r; k_r; v_r] on dim 0
    attn.out   RowParallelLinear        input dim split, output all-reduced
    mlp.gate_up ColumnParallelLinear    packed [gate_r; up_r] on dim 0
    mlp.down   RowParallelLinear
    lm_head    ColumnParallelLinear     vocab rows split; the embedding's weight when tied

Rank r of a TP group holds query heads [r*nh/tp, (r+1)*nh/tp) and the matching kv heads (so
`num_key_value_heads` must divide by tp). Qwen3's per-head q/k RMSNorm weights are replicated;
their gradients are summed over TP (`kernels.tp.copy_to_tp`), since each rank norms only its
heads. Pipeline parallelism splits the layers by count (`stage_layers`): a rank builds only its
stages' layers, the embedding on the first stage, the final norm and LM head on the last;
`CausalLM.chunks` are its stages as modules for `engine.parallel.pipeline`. The HF <-> local
name and packing table lives in `specs.py`. Groups come only from the `Mesh`; megatron's global
`parallel_state` is never touched; the model's own TP collectives (beyond megatron's layers) are
`kernels/tp.py`'s. Numeric convention: right-padded `input_ids (B, T)`, causal attention, no
mask, positions 0..T-1; RoPE and RMSNorm follow Hugging Face's Llama / Qwen exactly (fp32 inside).
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from engine.model.config import ModelConfig
from engine.model.specs import LocalTarget, local_targets, read_shard, seeded_hf_tensor, weight_specs
from engine.parallel.mesh import Mesh
from kernels.tp import copy_to_tp, gather_from_tp

with warnings.catch_warnings():  # megatron.core warns at import that TE/Apex are absent: expected on CPU
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    from megatron.core.model_parallel_config import ModelParallelConfig
    from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding
    from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes


class RMSNorm(nn.Module):
    """RMSNorm over the last dim (fp32 inside, as Hugging Face). With `tp_group`, the weight is
    replicated but applied to this rank's heads only (Qwen3's q/k norm): its gradient is a partial
    sum, completed over the group by `copy_to_tp` (identity forward, all-reduce backward)."""

    def __init__(self, dim: int, eps: float, dtype: torch.dtype, tp_group: dist.ProcessGroup | None = None):
        super().__init__()
        self.eps, self.tp_group = eps, tp_group
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        weight = self.weight if self.tp_group is None else copy_to_tp(self.weight, self.tp_group)
        return weight * x32.to(x.dtype)


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


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp: ModelParallelConfig):
        super().__init__()
        self.head_dim = cfg.head_dim
        self.heads = cfg.num_attention_heads // mesh.tp_size  # per rank
        self.kv_heads = cfg.num_key_value_heads // mesh.tp_size
        q_size, kv_size = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        self.qkv = ColumnParallelLinear(
            cfg.hidden_size, q_size + 2 * kv_size, config=mp, bias=cfg.attention_bias, gather_output=False,
            init_method=_unused, tp_group=mesh.tp_group)
        self.out = RowParallelLinear(
            q_size, cfg.hidden_size, config=mp, bias=False, input_is_parallel=True, skip_bias_add=False,
            init_method=_unused, tp_group=mesh.tp_group)
        self.q_norm = self.k_norm = None
        if cfg.qk_norm:  # Qwen3: per-head RMSNorm of q and k, before RoPE
            group = mesh.tp_group if mesh.tp_size > 1 else None
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, mp.params_dtype, tp_group=group)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, mp.params_dtype, tp_group=group)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        qkv, _ = self.qkv(x)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
        q = q.view(B, T, self.heads, self.head_dim)
        k = k.view(B, T, self.kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(B, T, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.heads != self.kv_heads)
        y, _ = self.out(y.transpose(1, 2).reshape(B, T, q_size))
        return y


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp: ModelParallelConfig):
        super().__init__()
        size = cfg.intermediate_size
        self.gate_up = ColumnParallelLinear(
            cfg.hidden_size, 2 * size, config=mp, bias=False, gather_output=False,
            init_method=_unused, tp_group=mesh.tp_group)
        self.down = RowParallelLinear(
            size, cfg.hidden_size, config=mp, bias=False, input_is_parallel=True, skip_bias_add=False,
            init_method=_unused, tp_group=mesh.tp_group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x)[0].chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)[0]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, mesh: Mesh, mp: ModelParallelConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, mp.params_dtype)
        self.attn = Attention(cfg, mesh, mp)
        self.mlp_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, mp.params_dtype)
        self.mlp = MLP(cfg, mesh, mp)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


def stage_layers(num_layers: int, pp_size: int, virtual_stages: int = 1) -> list[range]:
    """Global layer indices of each of the `pp_size * virtual_stages` pipeline stages, in pipeline
    order; stage s runs on pipeline rank `s % pp_size` (torch.distributed.pipelining's placement
    for interleaved schedules). Split by layer count; the first stages take the remainder, since
    the last one also runs the final norm, the LM head and the loss."""
    stages = pp_size * virtual_stages
    if num_layers < stages:
        raise ValueError(f"num_layers={num_layers} cannot be split over pp_size={pp_size} x "
                         f"virtual_stages={virtual_stages} = {stages} pipeline stages (each needs a layer)")
    base, extra = divmod(num_layers, stages)
    out, start = [], 0
    for s in range(stages):
        size = base + (1 if s < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


class CausalLM(nn.Module):
    """Tensor- and pipeline-parallel Llama/Qwen2/Qwen3 decoder; each rank holds its shard of its stages.

    A rank holds the layers of its pipeline stages (`layers`, keyed by global layer index, so
    parameter names match `specs.weight_specs` at every layout), the embedding on the first stage,
    the final norm and LM head on the last. With tied embeddings and pp > 1 the last stage keeps
    its own copy of the embedding as `lm_head.weight`; the learner sums the two copies' gradients
    over `mesh.embed_group`, so they stay equal. `chunks` are this rank's pipeline stages as
    modules (`StageChunk`), in pipeline order.

    `init_weights=False` leaves the weights uninitialised (garbage until loaded, as
    `hf_io.load_model` does). With `init_weights=True` weights are N(0, init_std) drawn from
    `seed` in Hugging Face layout, so a seed gives the same model at every layout.
    """

    def __init__(self, cfg: ModelConfig, mesh: Mesh, params_dtype: torch.dtype = torch.float32, *,
                 init_weights: bool = True, seed: int = 0, init_std: float = 0.02, virtual_stages: int = 1,
                 layer_class: type[nn.Module] | None = None):
        super().__init__()
        cfg.check_tensor_parallel(mesh.tp_size)
        self.cfg, self.mesh = cfg, mesh
        self.virtual_stages = virtual_stages
        # On CUDA the megatron layers allocate straight on the current device (no CPU copy first).
        mp = ModelParallelConfig(tensor_model_parallel_size=mesh.tp_size,
                                 use_cpu_initialization=mesh.device.type != "cuda", params_dtype=params_dtype,
                                 perform_initialization=False)
        # DecoderLayer, or Transformer Engine's fused twin with the same parameter names
        # (engine/model/te.py: te_layer_class)
        layer_class = layer_class or DecoderLayer
        ranges = stage_layers(cfg.num_layers, mesh.pp_size, virtual_stages)
        self.stage_ranges = ranges
        self.stage_ids = [s for s in range(len(ranges)) if s % mesh.pp_size == mesh.pp_rank]
        self.num_stages = len(ranges)
        self.has_tied_copy = cfg.tie_word_embeddings and mesh.pp_size > 1 and mesh.is_last_stage
        self.embed = self.norm = self.lm_head = None
        if mesh.is_first_stage:
            self.embed = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, init_method=_unused, config=mp,
                                                tp_group=mesh.tp_group)
        self.layers = nn.ModuleDict({str(i): layer_class(cfg, mesh, mp) for s in self.stage_ids for i in ranges[s]})
        if mesh.is_last_stage:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, params_dtype)
            self.lm_head = ColumnParallelLinear(
                cfg.hidden_size, cfg.vocab_size, config=mp, bias=False, gather_output=False,
                skip_weight_param_allocation=cfg.tie_word_embeddings and mesh.pp_size == 1, init_method=_unused,
                tp_group=mesh.tp_group)
        _mark_tensor_parallel(self)
        if self.has_tied_copy:
            self.lm_head.weight.shared = True  # megatron's mark for a tied weight's second copy
        if init_weights:
            self._init_seeded(seed, init_std)
        self.to(mesh.device)
        # A plain list: the chunks share this module's parameters and must not register them twice.
        self.chunks = [StageChunk(self, s, ranges[s]) for s in self.stage_ids]

    def _init_seeded(self, seed: int, std: float) -> None:
        gen = torch.Generator().manual_seed(seed)
        params = dict(self.named_parameters())
        targets: dict[str, list[LocalTarget]] = {}
        for t in local_targets(weight_specs(self.cfg, self.mesh.tp_size), params, self.has_tied_copy):
            targets.setdefault(t.spec.hf_name, []).append(t)
        with torch.no_grad():
            for spec in weight_specs(self.cfg, self.mesh.tp_size):
                full = seeded_hf_tensor(spec, std, gen)  # drawn on every rank: keeps `gen` in step
                for t in targets.get(spec.hf_name, []):
                    rows = slice(*spec.local_rows) if spec.local_rows else slice(None)
                    params[t.param_name][rows].copy_(read_shard(full, spec, self.mesh.tp_rank, self.mesh.tp_size))

    def pp_rank_of(self, local_name: str) -> int:
        """The pipeline rank holding parameter `local_name` (a `specs.WeightSpec.local_name`)."""
        if local_name.startswith("embed."):
            return 0
        if local_name.startswith("layers."):
            layer = int(local_name.split(".")[1])
            return next(s for s, r in enumerate(self.stage_ranges) if layer in r) % self.mesh.pp_size
        return self.mesh.pp_size - 1

    @property
    def lm_head_weight(self) -> torch.Tensor:
        """This rank's vocab shard of the output projection, (V/tp, H): rows
        [tp_rank*V/tp, (tp_rank+1)*V/tp). The embedding weight when tied (its copy when pp > 1).
        Last stage only."""
        if self.lm_head is None:
            raise RuntimeError(f"lm_head_weight: pipeline rank {self.mesh.pp_rank} is not the last stage")
        return self.embed.weight if self.lm_head.weight is None else self.lm_head.weight

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, H) hidden states after the final norm (replicated over TP).
        Whole model on this rank only (pp_size == 1); pipelines run `chunks` (engine.parallel.pipeline)."""
        if len(self.chunks) != 1 or self.mesh.pp_size != 1:
            raise RuntimeError(f"hidden_states needs the whole model on one rank; this one holds stages "
                               f"{self.stage_ids} of {self.num_stages} (run it through engine.parallel.pipeline)")
        return self.chunks[0](input_ids)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) -> this rank's vocab shard of the logits, (B, T, V/tp). No gather. pp_size == 1."""
        return self.logits(self.hidden_states(input_ids))

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, H) final hidden states -> this rank's vocab shard of the logits (last stage)."""
        logits, _ = self.lm_head(hidden, weight=self.lm_head_weight)
        return logits

    def gather_logits(self, local_logits: torch.Tensor) -> torch.Tensor:
        """(B, T, V/tp) -> (B, T, V) on every TP rank; for tests and eval (memory: full vocab)."""
        return gather_from_tp(local_logits, self.mesh.tp_group, dim=-1)


class StageChunk(nn.Module):
    """One pipeline stage of a `CausalLM` as a module: (B, T) ids or (B, T, H) activations in,
    (B, T, H) out (after the final norm on the last stage). Shares the model's parameters."""

    def __init__(self, model: CausalLM, stage_id: int, layers: range):
        super().__init__()
        self.stage_id, self.cfg = stage_id, model.cfg
        self.is_first, self.is_last = stage_id == 0, stage_id == model.num_stages - 1
        self.embed = model.embed if self.is_first else None
        self.layers = nn.ModuleList(model.layers[str(i)] for i in layers)
        self.norm = model.norm if self.is_last else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_first:
            x = self.embed(x)
        cos, sin = rope_cos_sin(self.cfg, x.shape[1], x.device)
        for layer in self.layers:
            x = layer(x, cos, sin)
        return self.norm(x) if self.is_last else x


def _mark_tensor_parallel(model: nn.Module) -> None:
    """Set megatron's `tensor_model_parallel` / `partition_dim` marks on the sharded weights.
    Megatron sets them only inside its own init (`perform_initialization=True`), which this model
    skips; the gradient-norm reduction over TP reads them."""
    for module in model.modules():
        dim = {ColumnParallelLinear: 0, VocabParallelEmbedding: 0, RowParallelLinear: 1}.get(type(module))
        if dim is not None and module.weight is not None:
            set_tensor_model_parallel_attributes(module.weight, True, dim, 1)


def _unused(master: torch.Tensor) -> None:  # megatron wants an init method; `CausalLM` inits from specs
    raise AssertionError("megatron init called with perform_initialization=False")
