"""The paper's objectives: DPO on summed response log-probs and GRPO with a clipped ratio against
the behaviour policy and a k3 KL to the reference.

The learner's seam to the fused loss kernels: `dpo_loss` / `grpo_loss` are `kernels/dpo.py` and
`kernels/grpo.py` (three paths, picked by `impl=`, i.e. the config's `kernels` key), and the plain
PyTorch versions are their `*_reference`. Both are written so that gradient accumulation over
micro-batches is exact: DPO returns per-pair losses (the caller divides by the global pair count),
GRPO takes a per-token weight that already carries the global normalisation (`token_weights`:
token- or sequence-level).
"""

from kernels.dpo import DPOTerms, dpo_loss, dpo_loss_reference
from kernels.grpo import GRPOTerms, grpo_loss, grpo_loss_reference, token_weights

__all__ = [
    "DPOTerms",
    "GRPOTerms",
    "dpo_loss",
    "dpo_loss_reference",
    "grpo_loss",
    "grpo_loss_reference",
    "token_weights",
]
