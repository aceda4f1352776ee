"""Learner throughput against this machine's matmul speed, and the pipeline bubble at pp = 2.

    semionline bench learner                                  # everything below (~3 min on 2 cores)
    python engine/bench/learner.py --models demo              # throughput of the demo model only
    python engine/bench/learner.py --only bubble --microbatches 2,4,8
    python engine/bench/learner.py --threads 2 --json out.json

One run measures, in order:

1. matmul: the fp32 GEMM FLOP/s of this machine at the benchmark's thread count (best of
   `--repeat` products of two 2048 x 2048 matrices). Every fraction below divides by it.
2. For each model at tp = pp = dp = 1: `Learner.train_grpo` steps on synthetic groups (every
   sequence `--prompt-len` + `--response-len` tokens, so no padding): learner tokens/s (prompt +
   response tokens per second of a whole step: reference forward, policy forward + backward,
   AdamW) and achieved FLOP/s as a fraction of the matmul's. Useful FLOPs only: per forward,
   2 x (matmul parameters of the layers) per token, causal attention 2 x L x d_q x T x (T + 1)
   per sequence, and the LM head on response tokens only (2 x H x V each); a step is the
   reference forward + the policy forward + its backward (2 x forward) = 4 forwards.
   Models: `demo` (the CPU demo's shape: 4 layers, hidden 256, vocab 128, ~3M parameters),
   `50m` (12 layers, hidden 512, MLP 1536, vocab 8192: ~49M parameters) and `smollm2`
   (SmolLM2-135M's shape: 30 layers, hidden 576, MLP 1536, vocab 49152, tied). Random weights.
3. The pipeline bubble at pp = 2 (a torchrun job of 2 ranks, 1 thread each): the learner's
   1F1B training pass over m micro-batches (both stages released by a barrier; the pass lasts
   until the slower stage is done). Each stage's busy time is its pass time minus the time it was
   blocked in the schedule's P2P waits (timed by wrapping `torch.distributed.pipelining`'s wait
   helper); its idle fraction, 1 - busy / pass, is compared with 1F1B's (p - 1) / (m + p - 1).
   An 8-layer model split 4 / 4; median of `--repeat` passes after a warm-up pass.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

MODELS = {  # name -> ModelConfig fields
    "demo": dict(
        vocab_size=128,
        hidden_size=256,
        intermediate_size=688,
        num_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
    ),
    "50m": dict(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1536,
        num_layers=12,
        num_attention_heads=8,
        num_key_value_heads=8,
        head_dim=64,
    ),
    "smollm2": dict(  # SmolLM2-135M-Instruct's shape (tied embeddings), random weights
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
        rope_theta=100000.0,
        tie_word_embeddings=True,
    ),
    "bubble": dict(
        vocab_size=512,
        hidden_size=384,
        intermediate_size=1024,
        num_layers=8,
        num_attention_heads=6,
        num_key_value_heads=6,
        head_dim=64,
    ),
}


def matmul_flops(threads: int, n: int = 2048, repeat: int = 5) -> float:
    """Best fp32 GEMM FLOP/s over `repeat` n x n x n products."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def forward_flops(cfg, prompt_len: int, response_len: int, sequences: int) -> float:
    """Useful FLOPs of one forward over `sequences` sequences (see the module docstring)."""
    h, q, kv = cfg.hidden_size, cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    layer_params = h * (q + 2 * kv) + q * h + 3 * h * cfg.intermediate_size
    t = prompt_len + response_len
    per_sequence = 2 * cfg.num_layers * layer_params * t + 2 * cfg.num_layers * q * t * (t + 1)
    per_sequence += 2 * h * cfg.vocab_size * response_len
    return sequences * per_sequence


def synthetic_groups(
    vocab: int, groups: int, group_size: int, prompt_len: int, response_len: int, seed: int = 0
):
    from engine.rollout.types import Group, Rollout

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(groups):
        prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
        rollouts = [
            Rollout(
                prompt_index=i,
                prompt_ids=prompt,
                response_ids=torch.randint(3, vocab, (response_len,), generator=g).tolist(),
                behaviour_logprobs=[-float(torch.rand(1, generator=g)) - 4.0] * response_len,
                text="",
                reward=float(j % 2),
                version=0,
            )
            for j in range(group_size)
        ]
        advantages = [0.5 if j % 2 else -0.5 for j in range(group_size)]
        out.append(Group(rollouts=rollouts, advantages=advantages))
    return out


def _model_dir(name: str, root: Path) -> Path:
    """A random model of shape `name`, saved once as a HF checkpoint (collective under torchrun)."""
    from engine.model.config import ModelConfig
    from engine.model.hf_io import save_hf
    from engine.model.llama import CausalLM
    from engine.parallel.mesh import Mesh

    path = root / name
    if not (path / "config.json").exists():
        with Mesh.init() as mesh:
            save_hf(CausalLM(ModelConfig(**MODELS[name]), mesh, seed=0, init_std=0.02), path)
    return path


def throughput(name: str, args, root: Path, peak: float) -> dict:
    from engine.config import RunConfig
    from engine.learner.learner import Learner
    from engine.model.config import ModelConfig
    from engine.parallel.mesh import Mesh

    model_dir = _model_dir(name, root)
    cfg = RunConfig(model=str(model_dir), optim={"lr": 1e-5}, learner={"micro_batch_size": args.micro_batch})
    groups = synthetic_groups(
        MODELS[name]["vocab_size"], args.sequences // 8, 8, args.prompt_len, args.response_len
    )
    sequences = 8 * (args.sequences // 8)
    with Mesh.init() as mesh:
        torch.set_num_threads(args.threads)
        learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
        learner.train_grpo(groups, cfg.grpo)  # warm-up: allocator, AdamW state
        times = []
        for _ in range(args.steps):
            t = time.perf_counter()
            learner.train_grpo(groups, cfg.grpo)
            times.append(time.perf_counter() - t)
    seconds = sorted(times)[len(times) // 2]
    mcfg = ModelConfig(**MODELS[name])
    flops = 4 * forward_flops(mcfg, args.prompt_len, args.response_len, sequences)
    params = sum(v.numel() for v in _param_shapes(mcfg))
    return {
        "model": name,
        "parameters": params,
        "tokens_per_step": sequences * (args.prompt_len + args.response_len),
        "step_seconds": seconds,
        "tokens_per_second": sequences * (args.prompt_len + args.response_len) / seconds,
        "flops_per_step": flops,
        "achieved_flops": flops / seconds,
        "fraction_of_matmul": flops / seconds / peak,
    }


def _param_shapes(cfg):
    from engine.model.specs import weight_specs

    return [torch.empty(s.hf_shape, device="meta") for s in weight_specs(cfg, 1)]


# -- the bubble: a torchrun worker -----------------------------------------------------------------


def bubble_worker(args) -> None:
    import torch.distributed.pipelining.schedules as schedules

    from engine.config import RunConfig
    from engine.learner.batch import pack
    from engine.learner.learner import Learner
    from engine.parallel.mesh import Mesh

    torch.set_num_threads(1)
    waited = [0.0]
    wait = schedules._wait_batch_p2p

    def timed_wait(work):
        t = time.perf_counter()
        wait(work)
        waited[0] += time.perf_counter() - t

    schedules._wait_batch_p2p = timed_wait  # measurement only: the schedule calls it for every P2P wait
    mesh = Mesh.init(pp_size=2)
    cfg = RunConfig(model=args.bubble_model, learner={"pp": 2, "micro_batch_size": args.micro_batch})
    learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
    vocab = MODELS["bubble"]["vocab_size"]
    rows = []
    for m in args.microbatches:
        groups = synthetic_groups(
            vocab, m * args.micro_batch // 4, 4, args.prompt_len, args.response_len, seed=m
        )
        items = [r for g in groups for r in g.rollouts]
        batches = [
            pack(
                [r.prompt_ids for r in items[i : i + args.micro_batch]],
                [r.response_ids for r in items[i : i + args.micro_batch]],
            )
            for i in range(0, len(items), args.micro_batch)
        ]

        def micro_loss(i, logprobs, entropy):
            return -logprobs.sum() / 1000.0

        passes = []
        for rep in range(args.repeat + 1):
            learner.policy.zero_grad(set_to_none=True)
            waited[0] = 0.0
            torch.distributed.barrier()  # both stages start together
            learner.policy_passes.train(batches, micro_loss)
            seconds = learner.policy_passes.pipe.stats.seconds
            both = [None, None]
            torch.distributed.all_gather_object(both, (seconds, seconds - waited[0]))
            total = max(b[0] for b in both)  # the pass ends when the last stage is done
            if rep:  # the first pass warms up
                passes.append((total, [1 - busy / total for _, busy in both]))
        total, idle = sorted(passes)[len(passes) // 2]
        rows.append(
            {
                "microbatches": m,
                "theory": (2 - 1) / (m + 2 - 1),
                "idle_fraction_per_stage": idle,
                "pass_seconds": total,
            }
        )
    if mesh.rank == 0:
        print("BUBBLE " + json.dumps(rows), flush=True)
    mesh.destroy()


def bubble(args, root: Path) -> list[dict]:
    model_dir = _model_dir("bubble", root)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",  # as a module: run as a script, engine/bench/kernels.py would shadow the kernels package
        "engine.bench.learner",
        "--worker",
        "bubble",
        "--bubble-model",
        str(model_dir),
        "--microbatches",
        ",".join(map(str, args.microbatches)),
        "--micro-batch",
        str(args.micro_batch),
        "--prompt-len",
        str(args.prompt_len),
        "--response-len",
        str(args.response_len),
        "--repeat",
        str(args.repeat),
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONWARNINGS": "ignore",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"bubble worker failed:\n{proc.stderr[-4000:]}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("BUBBLE "))
    rows = json.loads(line.removeprefix("BUBBLE "))
    for r in rows:
        r["idle_fraction_mean"] = sum(r["idle_fraction_per_stage"]) / 2
        r["relative_to_theory"] = r["idle_fraction_mean"] / r["theory"] - 1
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="semionline bench learner", description=__doc__.split("\n")[0])
    ap.add_argument("--only", choices=["throughput", "bubble"], default=None)
    ap.add_argument("--models", default="demo,50m", help="comma-separated: demo, 50m, smollm2 (SmolLM2-135M's shape)")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for throughput and matmul (default 1: on a shared/busy machine OpenMP threads wait on each other)",
    )
    ap.add_argument("--steps", type=int, default=3, help="timed GRPO steps per model (median reported)")
    ap.add_argument("--sequences", type=int, default=16, help="sequences per step (groups of 8)")
    ap.add_argument("--micro-batch", type=int, default=8, help="sequences per micro-batch")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--microbatches", default="2,4,8", help="pp=2 bubble: micro-batches per pass")
    ap.add_argument("--repeat", type=int, default=3, help="timed pipelined passes per m (median reported)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--worker", choices=["bubble"], help=argparse.SUPPRESS)
    ap.add_argument("--bubble-model", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.microbatches = [int(m) for m in str(args.microbatches).split(",")]
    if args.worker == "bubble":
        bubble_worker(args)
        return 0

    from engine.bench.stamp import machine_stamp

    report: dict = {"command": " ".join(["semionline bench learner", *(argv if argv is not None else sys.argv[1:])]),
                    "threads": args.threads, "cpu_count": os.cpu_count(), "machine": machine_stamp()}
    with tempfile.TemporaryDirectory(prefix="bench_learner_") as tmp:
        root = Path(tmp)
        if args.only in (None, "throughput"):
            peak = matmul_flops(args.threads)
            report["matmul_flops"] = peak
            print(f"matmul (fp32 2048^3, {args.threads} threads): {peak / 1e9:.1f} GFLOP/s", flush=True)
            report["throughput"] = []
            for name in args.models.split(","):
                row = throughput(name, args, root, peak)
                report["throughput"].append(row)
                print(
                    f"{name}: {row['parameters'] / 1e6:.1f}M params, {row['tokens_per_second']:.0f} tokens/s, "
                    f"{row['achieved_flops'] / 1e9:.1f} GFLOP/s = {100 * row['fraction_of_matmul']:.0f}% of matmul "
                    f"(step {row['step_seconds']:.2f} s, {row['tokens_per_step']} tokens)",
                    flush=True,
                )
            report["matmul_flops_after"] = matmul_flops(args.threads)  # the machine is shared: drift check
        if args.only in (None, "bubble"):
            report["bubble"] = bubble(args, root)
            print("pp=2 1F1B bubble (idle fraction of the training pass, per stage):")
            for r in report["bubble"]:
                stages = ", ".join(f"{f:.3f}" for f in r["idle_fraction_per_stage"])
                print(
                    f"  m={r['microbatches']}: theory {r['theory']:.3f}, measured {r['idle_fraction_mean']:.3f} "
                    f"({stages}), {100 * r['relative_to_theory']:+.0f}% vs theory, pass {r['pass_seconds']:.2f} s"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
