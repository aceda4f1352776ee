"""The GPU check's benchmark half: every part of the learner's GPU path that needs no vLLM, measured
in one run and written as one JSON summary. `launch/gpu_check.sh` runs it after the GPU tests.

    python -m engine.bench.gpu_check --device cuda --out runs/gpu_check/summary.json  # ~3 min, one H200
    python -m engine.bench.gpu_check --device cpu --quick                              # CPU smoke, < 60 s

Parts (`--parts`, default all), each a dict in the summary with its figures and `ok`:

    env          torch / CUDA / triton / megatron-core / transformer_engine / vllm versions, device
    learner_hf   CausalLM vs transformers on the same random Llama (GQA): fp32 logits and gradients
                 (bar 1e-4, TF32 off), bf16 (autocast) log-prob gap documented; with TE, the TE layers too
    kernels      Triton token_logprobs / DPO / GRPO vs their references (values and gradients), and
                 token_logprobs throughput against a bf16 GEMM of the same shape measured in the same
                 run (goal: forward >= 70% of the GEMM's FLOP/s)
    train        5 DPO and 5 GRPO learner steps on a recorded batch (no sampler), fp32 and bf16:
                 losses, grad norms, seconds per step, peak memory
    ipc          CUDA IPC pack -> handle -> another process -> unpack round trip of a weight bucket
                 (engine/sampler/gpu_transport.py); on CPU the in-process pack/unpack only

On CPU the Triton kernels run only under TRITON_INTERPRET=1 (else the torch path is checked);
throughput and memory figures are CUDA-only. Parts live in `engine/bench/gpu_check_parts.py`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

from engine.bench import gpu_check_parts as parts
from engine.parallel.device import resolve_device

PARTS = ("env", "learner_hf", "kernels", "train", "ipc")


def run(device_request: str, quick: bool, names: tuple[str, ...], work_dir: Path) -> dict:
    """Run the named parts; a part that raises is recorded (`ok: false`, the error) and the rest go on."""
    device = resolve_device(device_request, 0, key="--device")
    parts.set_precise_matmuls(device)
    summary: dict = {"device": str(device), "quick": quick, "parts": {}}
    for name in names:
        start = time.perf_counter()
        try:
            result = getattr(parts, f"part_{name}")(device, quick=quick, work_dir=work_dir)
        except Exception as e:  # report and go on: one broken part must not hide the others
            result = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        result["seconds"] = round(time.perf_counter() - start, 2)
        summary["parts"][name] = result
        status = "ok" if result.get("ok", True) else "FAILED"
        print(f"[gpu_check] {name:<11} {status:<6} {result['seconds']:>7.1f} s  {parts.headline(name, result)}",
              flush=True)
    summary["ok"] = all(r.get("ok", True) for r in summary["parts"].values())
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--quick", action="store_true", help="tiny shapes (the CPU smoke test)")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--out", default="runs/gpu_check/summary.json")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = run(args.device, args.quick, tuple(args.parts), out.parent)
    out.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    print(f"[gpu_check] {'all parts ok' if summary['ok'] else 'SOME PARTS FAILED'}; summary: {out}")
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
