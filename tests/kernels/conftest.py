"""Kernel-test fixtures.

`triton_interpret`: without CUDA, tests run the Triton code in Triton's CPU interpreter
(`TRITON_INTERPRET=1`). The interpreter is chosen when a function is decorated, and that includes
triton.language's own helpers (`tl.zeros`, `tl.sum`, ...), decorated when `triton` is first
imported. So the fixture sets the variable and imports triton itself when nothing has yet; in a
session where something else imported triton first (megatron does, e.g. the full suite), those
tests skip here and `test_triton_interpreter.py` reruns them in a child pytest started with the
variable set. Spawned TP workers inherit the variable.
"""

import sys

import pytest
import torch


def _triton_compiled_here() -> bool:
    """Whether this process imported triton in compiled mode (so the interpreter cannot run)."""
    if "triton" not in sys.modules:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return not isinstance(sys.modules["triton"].language.zeros, InterpretedFunction)


@pytest.fixture
def triton_available(monkeypatch) -> bool:
    """True when the Triton paths can run in this test: on CUDA, or in the interpreter (set up here)."""
    if torch.cuda.is_available():
        return True
    if _triton_compiled_here():
        return False
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import triton  # noqa: F401  (first import, under the interpreter)

    return True


@pytest.fixture
def triton_interpret(triton_available):
    if not triton_available:
        pytest.skip("triton was imported compiled in this session; test_triton_interpreter.py reruns this")
