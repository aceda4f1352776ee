"""Reruns the Triton-path tests of this folder in a child pytest under `TRITON_INTERPRET=1`, when
this session had already imported triton in compiled mode on a machine without CUDA (see
`conftest.py`); otherwise they ran in this process and this test skips."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def test_triton_paths_under_the_interpreter(triton_available):
    if triton_available:
        pytest.skip("the Triton tests ran in this process")
    files = [str(HERE / name) for name in ("test_logprob.py", "test_dpo.py", "test_grpo.py")]
    args = ["-q", "-p", "no:cacheprovider", "-m", "not gpu", "-k", "triton or tp2", *files]
    cmd = [sys.executable, "-m", "pytest", *args]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=HERE.parents[1], timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], proc.stdout[-2000:]
