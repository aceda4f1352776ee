"""Packing (prompt, response) token sequences into a right-padded batch and scoring the response
tokens with the policy: the one place where positions, targets and masks are worked out.

Position `len(prompt) + j - 1` predicts response token `j`; only those rows of the hidden states
reach the LM head (`kernels.logprob`), so no `[B, T, V]` logits are built for prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from kernels.logprob import token_logprobs


@dataclass
class PackedBatch:
    input_ids: torch.Tensor  # (B, T) right-padded prompt + response
    rows: torch.Tensor  # (N,) batch row of each response token
    cols: torch.Tensor  # (N,) position whose hidden state predicts it
    targets: torch.Tensor  # (N,) the response token ids
    seq_index: torch.Tensor  # (N,) which sequence each token belongs to
    lengths: torch.Tensor  # (B,) response lengths

    def split(self, values: torch.Tensor) -> list[torch.Tensor]:
        """(N,) per-token values -> one tensor per sequence."""
        return list(values.split(self.lengths.tolist()))

    def seq_sum(self, values: torch.Tensor) -> torch.Tensor:
        """(N,) -> (B,) sum over each sequence's tokens (differentiable)."""
        out = values.new_zeros(len(self.lengths))
        return out.index_add(0, self.seq_index, values)


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int = 0,
         device: torch.device | str | None = None) -> PackedBatch:
    """Right-padded batch on `device` (the learner's: on CUDA every index tensor lives there too)."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt: every sequence needs at least one prompt token (BOS)")
    seq_lens = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    ids = torch.full((len(prompts), max(seq_lens)), pad_id, dtype=torch.long)
    rows, cols, targets, seq_index = [], [], [], []
    for b, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        ids[b, : len(p)] = torch.tensor(list(p), dtype=torch.long)
        if r:
            ids[b, len(p) : len(p) + len(r)] = torch.tensor(list(r), dtype=torch.long)
        n = len(r)
        rows.append(torch.full((n,), b, dtype=torch.long))
        cols.append(torch.arange(len(p) - 1, len(p) - 1 + n))
        targets.append(torch.tensor(list(r), dtype=torch.long))
        seq_index.append(torch.full((n,), b, dtype=torch.long))
    cat = lambda xs: torch.cat(xs) if xs else torch.zeros(0, dtype=torch.long)  # noqa: E731
    tensors = {"input_ids": ids, "rows": cat(rows), "cols": cat(cols), "targets": cat(targets),
               "seq_index": cat(seq_index), "lengths": torch.tensor([len(r) for r in responses], dtype=torch.long)}
    return PackedBatch(**{k: v.to(device) if device is not None else v for k, v in tensors.items()})


def response_logprobs(
    model, batch: PackedBatch, *, tp_group=None, with_entropy: bool = False, impl: str | None = None
):
    """Per-token log-probs (N,) of the response tokens under `model` (+ entropy (N,), detached).

    `impl`: the kernel path (`kernels.paths`; None = auto: Triton on CUDA, chunked torch on CPU).
    """
    return response_logprobs_from_hidden(model.hidden_states(batch.input_ids), model.lm_head_weight, batch,
                                         tp_group=tp_group, with_entropy=with_entropy, impl=impl)


def response_logprobs_from_hidden(
    hidden: torch.Tensor,  # (B, T, H) final hidden states (after the last norm)
    lm_head_weight: torch.Tensor,  # (V_local, H)
    batch: PackedBatch,
    *,
    tp_group=None,
    with_entropy: bool = False,
    impl: str | None = None,
):
    """`response_logprobs` from hidden states already computed (the pipeline's last stage)."""
    rows = hidden[batch.rows, batch.cols]  # (N, H)
    return token_logprobs(
        rows, lm_head_weight, batch.targets, tp_group=tp_group, return_entropy=with_entropy, impl=impl
    )
