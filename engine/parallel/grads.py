"""Gradient synchronisation after the last micro-batch of a step: data parallelism and the tied
embedding across pipeline stages.

    sync_gradients(model)    # DP sum, then first/last-stage embedding sum
    norm = clip_grad_norm(model.parameters(), max_norm, mesh.tp_group, mesh.pp_group)  # engine.learner.optim

Data parallelism is DDP's scheme — every DP rank holds a full replica of its (tp, pp) shard and the
gradients are all-reduced — done explicitly, once per step, in flat buckets, instead of through
`torch.nn.parallel.DistributedDataParallel`'s backward hooks:

- the learner's losses are normalised by *global* counts (pairs, tokens, sequences) before the
  backward, so the cross-replica reduction is a SUM, not DDP's mean;
- DP ranks may run different numbers of micro-batches in one step (a rollout batch's groups or
  pairs rarely split evenly; a rank may get none), which DDP's per-backward reduction cannot
  express without dummy backwards;
- under pipeline parallelism the backward runs inside `torch.distributed.pipelining`, outside any
  `DDP.forward`, so DDP's reducer would need to be driven by hand anyway.

What is lost is DDP's overlap of the reduction with the backward; a rank's parameters stay plain
tensors, so the TP layers, the HF export and the checkpoints are unchanged by DP.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from engine.model.llama import CausalLM

BUCKET_BYTES = 32 << 20


def sync_gradients(model: CausalLM) -> None:
    """Make every rank's `.grad` the gradient of the whole step's loss (collective over DP and the
    embedding group). Parameters that received no gradient get zeros."""
    mesh = model.mesh
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    if mesh.dp_size > 1:
        all_reduce_buckets([p.grad for p in params], mesh.dp_group)
    if model.cfg.tie_word_embeddings and mesh.embed_group is not None:
        copy = model.embed.weight if mesh.is_first_stage else model.lm_head.weight
        dist.all_reduce(copy.grad, group=mesh.embed_group)


def all_reduce_buckets(
    tensors: list[torch.Tensor], group: dist.ProcessGroup, bucket_bytes: int = BUCKET_BYTES
) -> None:
    """SUM-all-reduce `tensors` in place, packed into flat buckets of about `bucket_bytes` per dtype."""
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group_tensors in by_dtype.values():
        bucket: list[torch.Tensor] = []
        size = 0
        for t in group_tensors:
            bucket.append(t)
            size += t.numel() * t.element_size()
            if size >= bucket_bytes:
                _reduce_bucket(bucket, group)
                bucket, size = [], 0
        if bucket:
            _reduce_bucket(bucket, group)


def _reduce_bucket(bucket: list[torch.Tensor], group: dist.ProcessGroup) -> None:
    flat = torch.cat([t.reshape(-1) for t in bucket])
    dist.all_reduce(flat, group=group)
    offset = 0
    for t in bucket:
        t.copy_(flat[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
