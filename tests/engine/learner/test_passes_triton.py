"""The learner's passes with `kernels: triton` equal them with `kernels: torch` (issue 12: the
Triton wiring is checked in CI). On CPU the Triton kernels run in Triton's interpreter, which
must be chosen before triton is first imported (megatron imports it), so the comparison runs in
a child process started with TRITON_INTERPRET=1 (`triton_passes_worker.py`); on CUDA the same
worker would compile them.

    .venv/bin/python -m pytest tests/engine/learner/test_passes_triton.py -q     # ~15 s on 2 cores

Measured (fp32, one DPO and one GRPO-with-TIS pass): metrics within 2.0e-7 relative, gradients
within 6.2e-7 of the largest gradient; tolerances 1e-6 and 2e-6.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def test_triton_passes_equal_torch_passes(tmp_path):
    out = tmp_path / "diffs.json"
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("triton_passes_worker.py")), str(out)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    diffs = json.loads(out.read_text())
    for objective in ("dpo", "grpo"):
        assert diffs[objective]["metrics_rel"] <= 1e-6, (objective, diffs[objective])
        assert diffs[objective]["grads_rel"] <= 2e-6, (objective, diffs[objective])
