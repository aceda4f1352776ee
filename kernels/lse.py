"""Log-sum-exp bookkeeping shared by the torch and Triton paths of `token_logprobs`
(`kernels/logprob.py`, `kernels/logprob_triton.py`): the matmul dtype, shard-local targets, and
merging per-range / per-rank (max, sum-exp, entropy) statistics into log-probs.

Both paths keep per row only the statistics of an online softmax over vocabulary ranges:
`m` (max logit), `s = sum exp(z - m)`, `a = sum exp(z - m) * (z - m)` (for the entropy) and the
target logit. `merge_partials` combines ranges within a rank; `finish_stats` combines ranks over
the TP group (vocab-parallel, megatron's `VocabParallelEmbedding` layout: rank r owns rows
`[r * V_local, (r + 1) * V_local)`).

It exists as its own module so that the op (`logprob.py`) and its Triton kernels import it
without importing each other. Must not import anything from `engine`.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from kernels.tp import tp_size_rank


def compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on (what the reference's `@` gets), else the inputs'."""
    device = hidden.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return torch.promote_types(hidden.dtype, weight.dtype)


def local_targets(targets: torch.Tensor, v_local: int, group) -> torch.Tensor:
    """(N,) target ids relative to this rank's shard; -1 where the target lives on another rank."""
    _, tp_rank = tp_size_rank(group)
    local_t = targets - tp_rank * v_local
    return torch.where((local_t >= 0) & (local_t < v_local), local_t, torch.full_like(local_t, -1))


def finish_stats(
    m: torch.Tensor,  # (N,) this rank's max logit
    s: torch.Tensor,  # (N,) sum exp(z - m) over this rank's vocabulary
    a: torch.Tensor | None,  # (N,) sum exp(z - m) * (z - m), for the entropy
    tgt: torch.Tensor,  # (N,) target logit, 0 where the target is on another rank
    group,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Combine per-rank statistics over TP -> (logprobs, log_z, entropy or None), all (N,) fp32.

    Two collectives: MAX of m, then one SUM of [s, tgt, a] rescaled to the global max.
    """
    tp_size, _ = tp_size_rank(group)
    if tp_size > 1:
        m_all = m.clone()
        dist.all_reduce(m_all, op=dist.ReduceOp.MAX, group=group)
        scale = (m - m_all).exp()
        parts = [s * scale, tgt] + ([scale * (a + (m - m_all) * s)] if a is not None else [])
        buf = torch.stack(parts)
        dist.all_reduce(buf, group=group)
        s, tgt = buf[0], buf[1]
        a = buf[2] if a is not None else None
        m = m_all
    log_s = s.log()
    log_z = m + log_s
    entropy = log_s - a / s if a is not None else None
    return tgt - log_z, log_z, entropy


def merge_partials(m: torch.Tensor, s: torch.Tensor, a: torch.Tensor | None):
    """Merge statistics of disjoint vocabulary ranges along the last dim: (N, K) -> (N,)."""
    m_all = m.max(dim=-1).values
    scale = (m - m_all[:, None]).exp()
    a_all = (scale * (a + (m - m_all[:, None]) * s)).sum(-1) if a is not None else None
    return m_all, (s * scale).sum(-1), a_all
