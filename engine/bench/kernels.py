"""Benchmark the log-prob kernel's paths side by side in one run, then one GRPO step end to end.

    semionline bench kernels                                   # the CPU bar (or the GPU sweep on CUDA)
    python engine/bench/kernels.py --n 1024 --h 512 --v 8192   # a quick CPU look at a smaller shape
    python engine/bench/kernels.py --only e2e                  # just the GRPO step
    python engine/bench/kernels.py --threads 2                 # torch intra-op threads (default 1)

`token_logprobs` forward + backward (the loss is `sum(lp * g)` with a random per-token g):
- CPU (default fp32, N=4096, H=1024, V=32768): the naive path (`reference`, full logits) against
  the torch chunked path. Each variant runs in a fresh subprocess: time is the best of `--repeat`
  runs, memory the peak resident set above the inputs (ru_maxrss minus the RSS once the inputs
  exist), with glibc's mmap threshold pinned so that freed blocks really leave the process.
  Bar: torch path memory <= 1/8 of naive, time <= 1.2x naive.
- GPU (bf16, N in {4096, 16384}, H=4096, V in {32768, 128256}): naive, torch, Triton and, when
  it imports, Liger-Kernel's fused linear cross-entropy (not a dependency; skipped otherwise),
  against a bf16 matmul of the same shape measured in the same run. Throughput counts 2NHV FLOPs
  for the forward and 6NHV for forward + backward; the memory floor is inputs + their gradients.
  Bar: Triton forward >= 70% and fwd+bwd >= 60% of the matmul's FLOP/s, peak <= 1.2x the floor.

End to end (always on CPU: the learner is CPU-only today): one `Learner.train_grpo` step on the
demo model (`.cache/seed` when it exists, else a random model of the same shape) with
`kernels=reference` and with the kernel path, on the same synthetic groups: the loss's relative
difference (bar <= 1e-5), the step's time and its peak memory, each in its own subprocess.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from engine.bench.stamp import RecordedOutput

MIB = 1 << 20
GPU_SHAPES = [(n, 4096, v) for n in (4096, 16384) for v in (32768, 128256)]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _inputs(n: int, h: int, v: int, dtype: torch.dtype, device: str, seed: int = 0):
    """Hidden rows, LM head (logits ~ N(0, 1)), targets and the upstream per-token gradient,
    generated in place (no temporaries that would inflate the resident-set baseline)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    x = torch.empty(n, h, dtype=dtype, device=device).normal_(generator=gen)
    w = torch.empty(v, h, dtype=dtype, device=device).normal_(0.0, h**-0.5, generator=gen)
    targets = torch.randint(0, v, (n,), generator=gen, device=device)
    g = torch.empty(n, device=device).normal_(generator=gen)
    return x.requires_grad_(), w.requires_grad_(), targets, g


def _forward(impl: str, x, w, targets):
    if impl == "liger":
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction

        out = LigerFusedLinearCrossEntropyFunction.apply(x, w, targets)  # mean cross-entropy
        return out[0] if isinstance(out, tuple) else out
    from kernels.logprob import token_logprobs

    return token_logprobs(x, w, targets, impl=impl)


def _step(impl: str, x, w, targets, g, sync) -> tuple[float, float]:
    """One forward + backward; returns (forward seconds, forward + backward seconds)."""
    x.grad = w.grad = None
    sync()
    t0 = time.perf_counter()
    out = _forward(impl, x, w, targets)
    sync()
    t1 = time.perf_counter()
    loss = (out * g).sum() if out.dim() else out  # Liger returns the mean cross-entropy itself
    loss.backward()
    sync()
    return t1 - t0, time.perf_counter() - t0


# -- CPU: one variant per subprocess ------------------------------------------------------------


def logprob_worker(impl: str, n: int, h: int, v: int, dtype: str, repeat: int) -> dict:
    x, w, targets, g = _inputs(n, h, v, getattr(torch, dtype), "cpu")
    base = _rss_bytes()
    times = [_step(impl, x, w, targets, g, lambda: None)]  # the cold run sets the peak
    peak = _peak_rss_bytes() - base
    lp_sum = float(_forward(impl, x, w, targets).detach().sum())
    times += [_step(impl, x, w, targets, g, lambda: None) for _ in range(repeat - 1)]
    return {
        "impl": impl,
        "fwd_s": min(t[0] for t in times),
        "fwd_bwd_s": min(t[1] for t in times),
        "peak_mib": peak / MIB,
        "lp_sum": lp_sum,
        "gw_norm": float(w.grad.float().norm()),
    }


def _subprocess(args: list[str], threads: int) -> dict:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MALLOC_MMAP_THRESHOLD_": "65536",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    # as a module: run as a script, this file (kernels.py) would shadow the kernels package
    cmd = [sys.executable, "-m", "engine.bench.kernels", "--threads", str(threads), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"bench worker {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def bench_logprob_cpu(args) -> None:
    shape = f"--n {args.n} --h {args.h} --v {args.v} --dtype {args.dtype} --repeat {args.repeat}".split()
    print(
        f"== token_logprobs fwd+bwd, CPU {args.dtype}, N={args.n} H={args.h} V={args.v}, "
        f"threads={args.threads}, best of {args.repeat}, peak RSS above the inputs"
    )
    rows = {
        impl: _subprocess(["--worker", "logprob", "--impl", impl, *shape], args.threads)
        for impl in ("reference", "torch")
    }
    base = rows["reference"]
    print(
        f"{'path':<10} {'fwd s':>8} {'fwd+bwd s':>10} {'time/naive':>11} {'peak MiB':>9} {'mem/naive':>10} "
        f"{'sum lp':>14} {'|grad W|':>10}"
    )
    for impl, r in rows.items():
        print(
            f"{impl:<10} {r['fwd_s']:>8.3f} {r['fwd_bwd_s']:>10.3f} {r['fwd_bwd_s'] / base['fwd_bwd_s']:>11.3f} "
            f"{r['peak_mib']:>9.1f} {r['peak_mib'] / base['peak_mib']:>10.4f} {r['lp_sum']:>14.4f} {r['gw_norm']:>10.4f}"
        )
    t, m = rows["torch"]["fwd_bwd_s"] / base["fwd_bwd_s"], rows["torch"]["peak_mib"] / base["peak_mib"]
    print(
        f"bar: torch memory/naive = 1/{1 / m:.1f} (want <= 1/8: {'met' if m <= 1 / 8 else 'NOT met'}), "
        f"time/naive = {t:.3f} (want <= 1.2: {'met' if t <= 1.2 else 'NOT met'})"
    )


# -- GPU: in process, CUDA memory statistics -----------------------------------------------------


def _cuda_time(fn, repeat: int) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / repeat


def bench_logprob_gpu(args) -> None:
    impls = ["reference", "torch", "triton"]
    try:
        import liger_kernel  # noqa: F401

        impls.append("liger")
    except ImportError:
        print("(Liger-Kernel is not installed: its column is skipped)")
    shapes = [(args.n, args.h, args.v)] if args.shape_given else GPU_SHAPES
    print(
        f"{'N':>6} {'V':>7} {'path':<10} {'fwd ms':>8} {'fwd %mm':>8} {'f+b ms':>8} {'f+b %mm':>8} "
        f"{'peak GiB':>9} {'/floor':>7}"
    )
    for n, h, v in shapes:
        x, w, targets, g = _inputs(n, h, v, torch.bfloat16, "cuda")
        mm_s = _cuda_time(lambda x=x, w=w: torch.mm(x.detach(), w.detach().t()), args.repeat)
        mm_flops = 2 * n * h * v / mm_s
        floor = 2 * (x.numel() * x.element_size() + w.numel() * w.element_size())  # inputs + grads
        print(f"{n:>6} {v:>7} {'matmul':<10} {mm_s * 1e3:>8.2f} {100.0:>8.1f}")
        for impl in impls:
            try:
                _step(impl, x, w, targets, g, torch.cuda.synchronize)  # warm-up / compile / autotune
                x.grad = w.grad = None
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                times = [_step(impl, x, w, targets, g, torch.cuda.synchronize) for _ in range(args.repeat)]
                peak = torch.cuda.max_memory_allocated()
            except Exception as e:  # report and go on: one broken column must not hide the others
                print(f"{n:>6} {v:>7} {impl:<10} failed: {type(e).__name__}: {str(e)[:120]}")
                x.grad = w.grad = None
                continue
            fwd, fb = min(t[0] for t in times), min(t[1] for t in times)
            print(
                f"{n:>6} {v:>7} {impl:<10} {fwd * 1e3:>8.2f} {100 * 2 * n * h * v / fwd / mm_flops:>8.1f} "
                f"{fb * 1e3:>8.2f} {100 * 6 * n * h * v / fb / mm_flops:>8.1f} {peak / 2**30:>9.2f} "
                f"{peak / floor:>7.2f}"
            )
            x.grad = w.grad = None
        del x, w
        torch.cuda.empty_cache()
    print("bars: triton fwd %mm >= 70, f+b %mm >= 60, peak/floor <= 1.2")


# -- End to end: one GRPO step -------------------------------------------------------------------


def _demo_model(model_dir: str, tmp: str) -> str:
    """The demo's seed model if it is there, else a random model of the seed's shape."""
    if (Path(model_dir) / "config.json").exists():
        return model_dir
    from engine.model.config import ModelConfig
    from engine.model.hf_io import save_hf
    from engine.model.llama import CausalLM
    from engine.parallel.mesh import Mesh

    cfg = ModelConfig(
        vocab_size=128,
        hidden_size=256,
        intermediate_size=688,
        num_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
    )
    with Mesh.init(tp_size=1) as mesh:
        save_hf(CausalLM(cfg, mesh, seed=0), Path(tmp) / "model")
    return str(Path(tmp) / "model")


def e2e_worker(impl: str, model_dir: str) -> dict:
    from engine.config import RunConfig
    from engine.learner.batch import pack, response_logprobs
    from engine.learner.learner import Learner
    from engine.parallel.mesh import Mesh
    from engine.rollout.types import Group, Rollout

    gen = torch.Generator().manual_seed(0)
    with Mesh.init(tp_size=1) as mesh:
        cfg = RunConfig(model=model_dir, kernels=impl, optim={"lr": 1e-5}, learner={"micro_batch_size": 32})
        learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
        vocab = learner.policy.cfg.vocab_size
        seqs = [
            (
                torch.randint(
                    3, vocab, (int(torch.randint(16, 48, (1,), generator=gen)),), generator=gen
                ).tolist(),
                torch.randint(
                    3, vocab, (int(torch.randint(8, 96, (1,), generator=gen)),), generator=gen
                ).tolist(),
            )
            for _ in range(64)
        ]
        with torch.no_grad():  # behaviour log-probs: the policy's own (reference path), jittered
            batch = pack([p for p, _ in seqs], [r for _, r in seqs])
            lp = response_logprobs(learner.policy, batch, impl="reference")
            lp = lp + 0.2 * torch.randn(lp.shape, generator=gen)
        rollouts = [
            Rollout(
                prompt_index=i,
                prompt_ids=p,
                response_ids=r,
                behaviour_logprobs=b.tolist(),
                text="",
                reward=0.0,
                version=0,
            )
            for i, ((p, r), b) in enumerate(zip(seqs, batch.split(lp), strict=True))
        ]
        groups = [
            Group(rollouts=rollouts[i : i + 8], advantages=torch.randn(8, generator=gen).tolist())
            for i in range(0, len(rollouts), 8)
        ]
        base = _rss_bytes()
        t0 = time.perf_counter()
        metrics = learner.train_grpo(groups, cfg.grpo)
        seconds = time.perf_counter() - t0
        peak = _peak_rss_bytes() - base
    return {
        "impl": impl,
        "loss": metrics["train/loss"],
        "grad_norm": metrics["train/grad_norm"],
        "entropy": metrics["policy/entropy"],
        "seconds": seconds,
        "peak_mib": peak / MIB,
        "tokens": metrics["train/tokens"],
    }


def bench_e2e(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _demo_model(args.model, tmp)
        kernel = "torch"  # the learner runs on CPU today, where the kernel path is the torch one
        rows = [
            _subprocess(["--worker", "e2e", "--impl", impl, "--model", model_dir], args.threads)
            for impl in ("reference", kernel)
        ]
    ref, ker = rows
    rel = abs(ker["loss"] - ref["loss"]) / max(abs(ref["loss"]), 1e-30)
    print(f"== one GRPO step on {model_dir} ({int(ref['tokens'])} response tokens, threads={args.threads})")
    print(f"{'kernels':<10} {'loss':>14} {'grad norm':>12} {'entropy':>10} {'step s':>8} {'peak MiB':>9}")
    for r in rows:
        print(
            f"{r['impl']:<10} {r['loss']:>14.8f} {r['grad_norm']:>12.6f} {r['entropy']:>10.5f} "
            f"{r['seconds']:>8.3f} {r['peak_mib']:>9.1f}"
        )
    rel_grad = abs(ker["grad_norm"] - ref["grad_norm"]) / max(abs(ref["grad_norm"]), 1e-30)
    print(
        f"loss relative difference {rel:.2e} (want <= 1e-5: {'met' if rel <= 1e-5 else 'NOT met'}), "
        f"grad norm relative difference {rel_grad:.2e}, time {ker['seconds'] / ref['seconds']:.2f}x, "
        f"peak memory {ker['peak_mib'] / ref['peak_mib']:.2f}x"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="semionline bench kernels", description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["logprob", "e2e"], default=None)
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--h", type=int, default=None)
    ap.add_argument("--v", type=int, default=None)
    ap.add_argument(
        "--dtype", default="float32", choices=["float32", "bfloat16"], help="CPU only; GPU runs bf16"
    )
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU")
    ap.add_argument(
        "--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    ap.add_argument("--model", default=".cache/seed", help="the demo model for the end-to-end step")
    ap.add_argument("--worker", choices=["logprob", "e2e"], help=argparse.SUPPRESS)
    ap.add_argument("--impl", help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="also write the printed figures here, with the machine stamp")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.shape_given = args.n is not None
    args.n, args.h, args.v = (
        args.n or 4096,
        args.h or (4096 if args.device == "cuda" else 1024),
        args.v or 32768,
    )
    if args.worker == "logprob":
        print(json.dumps(logprob_worker(args.impl, args.n, args.h, args.v, args.dtype, args.repeat)))
        return 0
    if args.worker == "e2e":
        print(json.dumps(e2e_worker(args.impl, args.model)))
        return 0
    command = " ".join(["semionline bench kernels", *(argv if argv is not None else sys.argv[1:])])
    with RecordedOutput(args.json, command):
        if args.only in (None, "logprob"):
            (bench_logprob_gpu if args.device == "cuda" else bench_logprob_cpu)(args)
        if args.only in (None, "e2e"):
            bench_e2e(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
