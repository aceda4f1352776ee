"""CPU smoke test of the GPU check's benchmark (engine/bench/gpu_check.py): every part that can run
without CUDA runs here, at tiny shapes, in a subprocess as `launch/gpu_check.sh` runs it.

    .venv/bin/python -m pytest -q tests/gpu/test_gpu_check_smoke.py     # ~50 s on 2 busy cores
"""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_quick_on_cpu(tmp_path):
    out = tmp_path / "summary.json"
    proc = subprocess.run([sys.executable, "-m", "engine.bench.gpu_check", "--device", "cpu", "--quick",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    p = summary["parts"]
    assert summary["ok"] and summary["device"] == "cpu" and set(p) == {"env", "learner_hf", "kernels", "train", "ipc"}
    assert p["learner_hf"]["fp32_logits_err"] <= 1e-5 and p["learner_hf"]["fp32_grads_err"] <= 1e-5
    assert 1e-4 < p["learner_hf"]["bf16_logprob_gap_mean"] < 0.05  # bf16 really ran, and is close
    assert p["kernels"]["impl"] == "torch" and p["kernels"]["logprob_err"] <= 1e-6
    assert max(p["kernels"]["dpo_err"], p["kernels"]["grpo_err"]) <= 1e-6
    for key in ("dpo_float32", "dpo_bfloat16", "grpo_float32", "grpo_bfloat16"):
        assert len(p["train"][key]["loss"]) == 2
    assert abs(p["train"]["dpo_float32"]["loss"][0] - 0.6931472) < 1e-4  # policy == reference: log 2
    assert abs(p["train"]["dpo_bfloat16"]["loss"][0] - 0.6931472) < 1e-4
    assert p["train"]["dpo_float32"]["loss"][1] < p["train"]["dpo_float32"]["loss"][0]
    assert p["ipc"]["equal"]
