"""Tile sweep of the Triton log-prob kernels on a CUDA device (bf16), against a bf16 GEMM.

    semionline bench logprob-tune --json out.json                       # the default sweep
    python -m engine.bench.logprob_tune --n 16384 --h 4096 --v 128256    # the same shape, explicit

For each (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages) it patches the 16-bit tile of
`kernels.logprob_triton` and times `token_logprobs(impl="triton")` forward and forward+backward
with CUDA events, after a compile-and-warm-up call. Throughput counts 2NHV FLOPs forward and
6NHV forward+backward, as `semionline bench kernels` does; the ratios divide the GEMM's time
(`torch.mm`, same shape, same run) by the kernel's. A tile that fails to compile (shared memory)
is recorded with its error and skipped. The best forward tile is the candidate for GPU_BLOCKS_16.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

CONFIGS = [  # (BLOCK_N, BLOCK_V, BLOCK_H, num_warps, num_stages); the first is the shipped one
    (128, 128, 64, 8, 3),
    (128, 128, 64, 4, 3),
    (128, 128, 64, 8, 4),
    (128, 256, 64, 8, 3),
    (128, 256, 64, 8, 4),
    (256, 128, 64, 8, 3),
    (128, 256, 32, 8, 4),
    (64, 256, 64, 4, 4),
    (128, 128, 128, 8, 2),
    (256, 128, 64, 8, 4),
    (128, 64, 64, 4, 4),
    (64, 128, 64, 4, 4),
]


def _time(fn, repeat: int) -> float:
    from engine.bench.kernels import _cuda_time

    return _cuda_time(fn, repeat)


def sweep(n: int, h: int, v: int, repeat: int, configs) -> dict:
    import kernels.logprob_triton as lt
    from kernels.logprob import token_logprobs

    x = torch.randn(n, h, device="cuda", dtype=torch.bfloat16).requires_grad_()
    w = (torch.randn(v, h, device="cuda", dtype=torch.bfloat16) / h**0.5).requires_grad_()
    t, g = torch.randint(0, v, (n,), device="cuda"), torch.randn(n, device="cuda")
    gemm_s = _time(lambda: torch.mm(x.detach(), w.detach().t()), repeat)
    flops = 2 * n * h * v
    rows, shipped = [], lt.GPU_BLOCKS_16

    def fwd_bwd():
        x.grad = w.grad = None
        (token_logprobs(x, w, t, impl="triton") * g).sum().backward()

    for cfg in configs:
        lt.GPU_BLOCKS_16 = tuple(cfg)
        row = {"tile": list(cfg)}
        start = time.perf_counter()
        try:
            fwd_s = _time(lambda: token_logprobs(x.detach(), w.detach(), t, impl="triton"), repeat)
            fwd_ent_s = _time(
                lambda: token_logprobs(x.detach(), w.detach(), t, impl="triton", return_entropy=True), repeat
            )
            fb_s = _time(fwd_bwd, repeat)
        except Exception as e:  # noqa: BLE001 - a tile too big for shared memory is a result, not a crash
            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
        else:
            row.update(
                fwd_tflops=flops / fwd_s / 1e12,
                fwd_vs_gemm=gemm_s / fwd_s,
                fwd_entropy_vs_gemm=gemm_s / fwd_ent_s,
                fwd_bwd_vs_gemm=3 * gemm_s / fb_s,
            )
        row["seconds"] = round(time.perf_counter() - start, 2)
        print(json.dumps(row), flush=True)
        rows.append(row)
    lt.GPU_BLOCKS_16 = shipped
    ok = [r for r in rows if "error" not in r]
    best_fwd = max(ok, key=lambda r: r["fwd_vs_gemm"]) if ok else None
    best_fb = max(ok, key=lambda r: r["fwd_bwd_vs_gemm"]) if ok else None
    return {"shape": [n, h, v], "gemm_tflops": flops / gemm_s / 1e12, "rows": rows,
            "best_forward": best_fwd, "best_forward_backward": best_fb}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--h", type=int, default=4096)
    ap.add_argument("--v", type=int, default=128256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("logprob_tune: needs a CUDA device", file=sys.stderr)
        return 2
    from engine.bench.stamp import machine_stamp

    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "machine": machine_stamp()}
    out.update(sweep(args.n, args.h, args.v, args.repeat, CONFIGS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
