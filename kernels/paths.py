"""Which implementation of a kernel runs: `triton` (GPU), `torch` (chunked, CPU and fallback) or
`reference` (plain PyTorch, full logits; the tests' ground truth and the benchmark's baseline).

Callers pass the choice explicitly (`impl=`); nothing here is global state. `None` means auto:
Triton on CUDA tensors, the torch path everywhere else. Triton on CPU tensors runs only under
its interpreter (`TRITON_INTERPRET=1`, slow: tests at tiny shapes), so it is refused otherwise.
"""

from __future__ import annotations

import os
from typing import Literal

import torch

Impl = Literal["triton", "torch", "reference"]
IMPLS: tuple[str, ...] = ("triton", "torch", "reference")


def triton_interpret() -> bool:
    """Whether Triton kernels run in the CPU interpreter (read when a Triton module is imported)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def resolve_impl(impl: str | None, device: torch.device) -> Impl:
    """`impl` checked against `device`; `None` -> triton on CUDA, torch otherwise."""
    if impl is None:
        return "triton" if device.type == "cuda" else "torch"
    if impl not in IMPLS:
        raise ValueError(f"kernels={impl!r}: expected one of {', '.join(IMPLS)} (or None for auto)")
    if impl == "triton" and device.type != "cuda" and not triton_interpret():
        raise ValueError(
            f"kernels=triton needs CUDA tensors (got {device.type}); use kernels=torch on CPU, "
            "or set TRITON_INTERPRET=1 to run the Triton code in its (slow) interpreter"
        )
    return impl  # type: ignore[return-value]
