"""`semionline` command line: seed | rm-train | train | eval | generate | score | bench.

    semionline seed --out .cache/seed
    semionline rm-train --out .cache/rm                 # the chat task's reward model (CPU demo)
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


class UserError(Exception):
    """An error in the user's input, reported as one line without a traceback."""


def _user_errors() -> tuple[type[BaseException], ...]:
    from engine.config import ConfigError
    from engine.data.prompts import PromptFileError
    from engine.data.tokenizer import UnencodableTextError
    from engine.model.hf_io import CheckpointError

    return (UserError, ConfigError, PromptFileError, UnencodableTextError, CheckpointError, FileNotFoundError)


def cmd_seed(args) -> None:
    from engine.seed import build_seed

    kwargs = {"seed": args.seed}
    for key in ("steps", "mix_steps", "chat_fraction"):
        if getattr(args, key) is not None:
            kwargs[key] = getattr(args, key)
    report = build_seed(args.out, **kwargs)
    print(json.dumps(report.__dict__ if hasattr(report, "__dict__") else report, indent=2, default=str))


def _default_run_dir(cfg) -> str:
    return f"runs/{cfg.objective}-s{cfg.sync_every}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_rm_train(args) -> None:
    from dataclasses import asdict

    from engine.rm_train import train_reward_model

    print(json.dumps(asdict(train_reward_model(args.out, steps=args.steps, seed=args.seed)), indent=2))


def cmd_train(args) -> None:
    from engine.config import check_paths, load_config
    from engine.loop import Orchestrator
    from engine.parallel.mesh import Mesh

    if args.resume:  # the run's own resolved config; overrides may change e.g. the layout
        if args.config or args.run_dir:
            raise UserError("--resume RUN_DIR takes the run's config and directory; drop --config / --run-dir")
        if not (Path(args.resume) / "config.yaml").is_file():
            raise UserError(f"--resume {args.resume}: no config.yaml there (not a run directory)")
        cfg = load_config(Path(args.resume) / "config.yaml", args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    check_paths(cfg)
    mesh = Mesh.init(tp_size=cfg.learner.tp, pp_size=cfg.learner.pp)
    try:
        run_dir = args.resume or args.run_dir or _default_run_dir(cfg)
        orchestrator = Orchestrator(cfg, run_dir, mesh)
        if args.resume:
            _restore(orchestrator, mesh)
        summary = orchestrator.run()
        if mesh.rank == 0:
            print(json.dumps({"run_dir": summary.run_dir, "eval_accuracy": summary.eval_accuracy,
                              "final_checkpoint": summary.final_checkpoint, "seconds": round(summary.seconds, 1)}))
    finally:
        mesh.destroy()


def _restore(orchestrator, mesh) -> None:
    from engine import checkpoint

    if mesh.rank == 0:
        checkpoint.remove_partial(orchestrator.run_dir)
    mesh.barrier()
    ckpt = checkpoint.latest_checkpoint(orchestrator.run_dir)
    if ckpt is None:
        raise UserError(f"--resume {orchestrator.run_dir}: no checkpoint yet (set checkpoint.every=K to write them)")
    orchestrator.restore(ckpt)
    if mesh.rank == 0:
        print(f"resuming {orchestrator.run_dir} from {ckpt.name} at layout {mesh.layout}", flush=True)


def check_checkpoint_dir(path: str) -> None:
    from engine.model.hf_io import check_checkpoint_dir as check

    check(path)


def _sampler(model: str, seed: int):
    from engine.sampler.vllm_engine import VLLMSampler

    return VLLMSampler(model, seed=seed)


def cmd_eval(args) -> None:
    """Math: pass@1 over k samples and maj@k. Reward-model / judge / callable rewards: mean score
    and (length-controlled) win rate against a baseline model's responses (e.g. the seed's)."""
    from engine.config import EvalConfig
    from engine.data.prompts import load_prompts
    from engine.data.tokenizer import encode_formatted_prompt, load_tokenizer
    from engine.evaluate import evaluate_math, evaluate_scored, sample_eval

    cfg = EvalConfig(max_prompts=args.max_prompts, samples=args.samples, temperature=args.temperature,
                     top_p=args.top_p, max_tokens=args.max_tokens)
    check_checkpoint_dir(args.model)
    if args.reward != "math" and not args.baseline:
        raise UserError(f"--reward {args.reward}: give --baseline MODEL (win rates are against its responses)")
    reward = None
    if args.reward != "math":
        from engine.rewards.router import build_reward

        judge = None
        if args.judge_url:
            from engine.rewards.judge import JudgeConfig

            judge = JudgeConfig(base_url=args.judge_url, model=args.judge_model or "judge",
                                api_key_env=args.judge_api_key_env)
        reward = build_reward(args.reward, path=args.reward_model, judge=judge)
    tok = load_tokenizer(args.model)
    rows = load_prompts(args.data)[: cfg.max_prompts]
    ids = [encode_formatted_prompt(tok, r.prompt, template=args.prompt_template, chat=args.chat_template) for r in rows]
    stop = [tok.eos_token_id]
    if reward is None:
        with _sampler(args.model, args.seed) as sampler:
            res = evaluate_math(sampler, ids, rows, cfg, stop_token_ids=stop, seed=args.seed)
        out = {"model": args.model, "data": args.data, **res.__dict__}
        table = (f"| model | prompts | samples | pass@1 | maj@{res.samples} | mean length |\n|---|---|---|---|---|---|\n"
                 f"| {args.model} | {res.prompts} | {res.samples} | {res.accuracy:.3f} | {res.maj_accuracy:.3f} | "
                 f"{res.mean_length:.1f} |")
    else:
        check_checkpoint_dir(args.baseline)
        base_cfg = cfg.model_copy(update={"samples": 1})
        with _sampler(args.baseline, args.seed) as sampler:  # one baseline response per prompt
            outs, _ = sample_eval(sampler, ids, base_cfg, stop_token_ids=stop, seed=args.seed + 1)
        by_prompt = {r.prompt: r for r in rows}

        def scorer(prompts, responses):
            return reward([by_prompt[p] for p in prompts], responses).rewards

        with _sampler(args.model, args.seed) as sampler:
            res = evaluate_scored(sampler, ids, rows, cfg, scorer=scorer, baseline=[o[0].text for o in outs],
                                  baseline_lengths=[len(o[0].token_ids) for o in outs], stop_token_ids=stop,
                                  seed=args.seed)
        out = {"model": args.model, "baseline": args.baseline, "data": args.data, "reward": args.reward,
               **{k: v for k, v in res.__dict__.items() if k != "extra"}}
        table = ("| model | prompts | samples | mean score | baseline score | win rate | LC win rate | mean length |\n"
                 "|---|---|---|---|---|---|---|---|\n"
                 f"| {args.model} | {res.prompts} | {res.samples} | {res.mean_score:.3f} | {res.baseline_mean_score:.3f} "
                 f"| {res.win_rate:.3f} | {res.lc_win_rate:.3f} | {res.mean_length:.1f} |")
        if res.failures:
            table += f"\n\n{res.failures} judgements failed after retries and are left out of the means."
    print(json.dumps(out, indent=2))
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


def cmd_generate(args) -> None:
    from engine.data.prompts import load_prompts, write_jsonl
    from engine.data.tokenizer import encode_prompt, load_tokenizer

    check_checkpoint_dir(args.model)
    tok = load_tokenizer(args.model)
    rows = load_prompts(args.data)
    ids = [encode_prompt(tok, r.prompt) for r in rows]
    with _sampler(args.model, args.seed) as sampler:
        outs = sampler.generate(ids, n=args.n, temperature=args.temperature, top_p=args.top_p,
                                max_tokens=args.max_tokens, stop_token_ids=[tok.eos_token_id], seed=args.seed)
    write_jsonl(args.out, [
        {"prompt": r.prompt, "prompt_token_ids": p,
         "samples": [{"text": s.text, "token_ids": list(s.token_ids), "token_logprobs": list(s.logprobs)} for s in o]}
        for r, p, o in zip(rows, ids, outs, strict=True)
    ])  # fmt: skip
    print(f"wrote {len(rows)} prompts x {args.n} samples to {args.out}")


def cmd_score(args) -> None:
    import contextlib

    import torch.distributed as dist

    from engine.data.prompts import load_pairs, write_jsonl
    from engine.data.tokenizer import encode_prompt, encode_response, load_tokenizer
    from engine.learner.batch import pack
    from engine.learner.passes import PipelinedModel, dp_share
    from engine.model.hf_io import load_model
    from engine.parallel.mesh import Mesh

    check_checkpoint_dir(args.model)
    mesh = Mesh.init(tp_size=args.tp, pp_size=args.pp)
    try:
        tok = load_tokenizer(args.model)
        rows = load_pairs(args.data)
        model = PipelinedModel(load_model(args.model, mesh).eval(), impl=None, autocast=contextlib.nullcontext)
        eos = [tok.eos_token_id] if args.append_eos else []
        seqs = [(encode_prompt(tok, p), encode_response(tok, r) + eos) for p, r in rows]
        batches = [pack([p for p, _ in seqs[i : i + args.batch_size]], [r for _, r in seqs[i : i + args.batch_size]])
                   for i in range(0, len(seqs), args.batch_size)]
        mine = dp_share(batches, mesh)  # each DP replica scores a contiguous share of the batches
        out = [lp for b, lps in zip(mine, model.logprobs(mine, broadcast=True), strict=True) for lp in b.split(lps)]
        if mesh.dp_size > 1:
            shares: list = [None] * mesh.dp_size
            dist.all_gather_object(shares, out, group=mesh.dp_group)
            out = [lp for share in shares for lp in share]
        if mesh.rank == 0:
            write_jsonl(args.out, [
                {"prompt": p, "response": r, "token_logprobs": lp.tolist(), "logprob_sum": float(lp.sum())}
                for (p, r), lp in zip(rows, out, strict=True)
            ])  # fmt: skip
            print(f"scored {len(rows)} responses (layout {mesh.layout}) -> {args.out}")
    finally:
        mesh.destroy()


def cmd_sweep(args) -> None:
    from engine.report import write_report
    from engine.sweep import Sweep, run_sweep

    sweep = Sweep.load(args.config, quick=args.quick, out=args.out)
    t0 = time.perf_counter()
    result = {"ran": 0}
    if not args.report_only:
        result = run_sweep(sweep)
    report = write_report(sweep, wall_seconds=(time.perf_counter() - t0) if result["ran"] else None, quick=args.quick)
    print(json.dumps({**result, "report": str(report)}))
    print(report.read_text().split("## Plots")[0])


def cmd_bench(args) -> None:
    """Run `launch/bench_<what>.py`'s `main` (the launch scripts are not an installed package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "launch" / f"bench_{args.what}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{args.what}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args.bench_args)


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
    p.set_defaults(fn=cmd_seed)

    p = sub.add_parser("rm-train", help="train the CPU demo's reward model (chat task, Bradley-Terry)")
    p.add_argument("--out", required=True, help="directory to (re)create, in Hugging Face format")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_rm_train)

    p = sub.add_parser("train", help="DPO or GRPO at any sync interval s")
    p.add_argument("--config", default=None)
    p.add_argument("--run-dir", default=None, help="default: a new folder under runs/")
    p.add_argument("--resume", default=None, metavar="RUN_DIR",
                   help="continue RUN_DIR from its newest checkpoint (any layout: overrides may set learner.tp/pp)")
    p.add_argument("overrides", nargs="*", help="dotted overrides: key.sub=value")
    p.set_defaults(fn=cmd_train)

    for name, helptext in [("eval", "held-out math accuracy"), ("generate", "sample responses with log-probs")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--out", default=None if name == "eval" else argparse.SUPPRESS, required=name == "generate")
        p.add_argument("--temperature", type=float, default=0.6 if name == "eval" else 1.0)
        p.add_argument("--top-p", type=float, default=0.9 if name == "eval" else 1.0)
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--seed", type=int, default=0)
        if name == "eval":
            p.add_argument("--samples", type=int, default=1, help="pass@1 averaged over k samples")
            p.add_argument("--max-prompts", type=int, default=10**9)
            p.add_argument("--reward", default="math",
                           help="math (pass@1, maj@k) | reward_model | judge | package.module:function (score, win rate)")
            p.add_argument("--baseline", default=None, help="model whose responses the win rates are against (the seed)")
            p.add_argument("--reward-model", default=None, help="for --reward reward_model: its directory")
            p.add_argument("--judge-url", default=None, help="for --reward judge: an OpenAI-compatible base URL")
            p.add_argument("--judge-model", default=None)
            p.add_argument("--judge-api-key-env", default=None, help="NAME of the variable holding the judge's key")
            p.add_argument("--prompt-template", default="{prompt}")
            p.add_argument("--chat-template", action="store_true", help="render prompts with the chat template")
            p.set_defaults(fn=cmd_eval)
        else:
            p.add_argument("--n", type=int, default=1)
            p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("score", help="the learner's per-token log-probs of prompt/response pairs")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--append-eos", action="store_true", help="score an EOS token after each response")
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("sweep", help="the paper's comparison: every method x task x seed, then a report")
    p.add_argument("--config", default="configs/paper_cpu.yaml")
    p.add_argument("--quick", action="store_true", help="the config's quick: section (one seed, few steps; CI)")
    p.add_argument("--out", default=None, help="sweep folder (default: the config's out)")
    p.add_argument("--report-only", action="store_true", help="rewrite the report from the runs done so far")
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("bench", help="benchmarks: kernels (log-prob paths side by side, one GRPO step); "
                                     "learner (tokens/s, FLOP/s vs matmul, pp=2 bubble); "
                                     "e2e (overlap off vs on per step, weight sync, timeline PNG)")
    p.add_argument("what", choices=["kernels", "learner", "e2e"])
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed on to launch/bench_<what>.py")
    p.set_defaults(fn=cmd_bench)
    return ap


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # vLLM's INFO lines drown the progress bar
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except _user_errors() as e:
        rank = os.environ.get("RANK", "0")
        if rank == "0":
            print(f"semionline {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
