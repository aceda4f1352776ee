"""`semionline bench peer`: semionline and a peer framework (TRL) on the same work, side by side,
alternating runs in one invocation (TRL, semionline, TRL, semionline, ...), with per-phase
medians, ranges, and the ratio TRL s/step ÷ semionline s/step (> 1: semionline is faster).

    # the tiny seed model, GRPO 16 prompts x 8 samples x 32 tokens, s=1 and s=2 with overlap
    semionline bench peer --peer trl --objective grpo --model .cache/seed --steps 4 --repeats 2 \\
        --variant s1: --variant "s2-overlap:sync_every=2 overlap=true" \\
        --out docs/reports/bench_peer/grpo_seed.json
    # SmolLM2-135M-Instruct on GSM8K, chat template, 2 prompts x 4 samples x 96 tokens
    semionline bench peer --peer trl --objective grpo --model .cache/models/smollm2-135m \\
        --data /work/shared/data/gsm8k_train.jsonl --chat-template --prompts-per-step 2 --samples 4 \\
        --max-tokens 96 --steps 3 --repeats 2 --out docs/reports/bench_peer/grpo_smollm2.json
    # offline DPO, 16 preference pairs a step
    semionline bench peer --peer trl --objective dpo --prompts-per-step 16 --steps 4 \\
        --out docs/reports/bench_peer/dpo_seed.json
    (until the CLI verb is wired: python -m engine.bench.peer ...)

Each run is its own process (TRL: engine/bench/peer_trl.py; semionline: `semionline train`,
engine/bench/peer_semionline.py), so the two share no threads or allocator state. The first
`--warmup` steps of every run are left out (start-up effects); the JSON records this, the machine
stamp (engine/bench/stamp.py) at the start and the matmul GFLOP/s again at the end, every step of
every run, and the summary; a markdown table is written next to it (same name, .md).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from engine.bench.peer_semionline import REPO, child_env, run_semionline, semionline_dpo_status, write_config
from engine.bench.peer_stats import BASELINE, RunTimings, markdown_table, summarize
from engine.bench.peer_work import PeerWork, prepare_pairs, prepare_prompts
from engine.bench.stamp import machine_stamp, matmul_gflops


def parse_variant(text: str) -> tuple[str, list[str]]:
    """"NAME:key=value key=value" -> ("semionline[NAME]", [overrides]); "NAME:" has none."""
    name, sep, rest = text.partition(":")
    if not sep or not name.strip():
        raise ValueError(f"--variant {text!r}: expected NAME:key=value ... (e.g. 's2-overlap:sync_every=2 overlap=true')")
    overrides = shlex.split(rest)
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"--variant {text!r}: {bad} are not key=value overrides")
    return f"semionline[{name.strip()}]", overrides


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="semionline bench peer", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=["trl"], default="trl")
    ap.add_argument("--objective", choices=["grpo", "dpo"], default="grpo")
    ap.add_argument("--model", default=".cache/seed", help="HF checkpoint directory (both frameworks)")
    ap.add_argument("--data", default=".cache/seed/data/train.jsonl", help="prompt rows (jsonl; GSM8K rows work)")
    ap.add_argument("--pairs", default=None, help="DPO: preference rows {prompt, chosen, rejected}; "
                    "default: pairs built from --data (chosen = own answer, rejected = the next row's)")
    ap.add_argument("--prompts-per-step", type=int, default=16, help="GRPO prompts / DPO pairs per step")
    ap.add_argument("--samples", type=int, default=8, help="GRPO samples per prompt")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    ap.add_argument("--repeats", type=int, default=2, help="runs of each framework, alternating")
    ap.add_argument("--warmup", type=int, default=1, help="first steps of each run left out of the figures")
    ap.add_argument("--lr", type=float, default=1e-6)
    ap.add_argument("--adam-eps", type=float, default=1e-8)
    ap.add_argument("--grad-clip", type=float, default=0.1)
    ap.add_argument("--micro-batch", type=int, default=32, help="sequences per forward/backward (both)")
    ap.add_argument("--dpo-beta", type=float, default=0.1)
    ap.add_argument("--chat-template", action="store_true", help="render prompts with the chat template")
    ap.add_argument("--prompt-template", default="{prompt}")
    ap.add_argument("--max-model-len", type=int, default=512)
    ap.add_argument("--variant", action="append", default=None, metavar="NAME:OVERRIDES",
                    help="a semionline configuration to run, e.g. 's2-overlap:sync_every=2 overlap=true' "
                         "(repeatable; default: one from --sync-every / --overlap / --learner-threads)")
    ap.add_argument("--sync-every", type=int, default=1)
    ap.add_argument("--overlap", action="store_true")
    ap.add_argument("--learner-threads", type=int, default=0, help="semionline learner.threads (0: its default)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra semionline config override for every variant (repeatable)")
    ap.add_argument("--trl-threads", type=int, default=0, help="TRL process torch threads (0: all cores)")
    ap.add_argument("--trl-precompute-ref", action="store_true", help="DPO: TRL precompute_ref_log_probs")
    ap.add_argument("--shared", action="store_true", help="record that other work shared the machine")
    ap.add_argument("--note", default="", help="free text stored in the JSON and the table")
    ap.add_argument("--keep-runs", default=None, help="keep the run directories here (default: a temp dir); "
                    "runs already finished there for the same work are reused (resume)")
    ap.add_argument("--run-timeout", type=float, default=3600.0, help="seconds per run before it is killed")
    ap.add_argument("--out", required=True, help="JSON path; the markdown table goes next to it (.md)")
    return ap


def variants(args) -> list[tuple[str, list[str]]]:
    if args.variant:
        out = [parse_variant(v) for v in args.variant]
    elif args.objective == "dpo":  # offline DPO on preference rows: sync_every=offline is set by the config
        over = [f"learner.threads={args.learner_threads}"] if args.learner_threads else []
        out = [("semionline[offline]", over)]
    else:
        name = f"s{args.sync_every}" + ("-overlap" if args.overlap else "")
        name += f"-t{args.learner_threads}" if args.learner_threads else ""
        over = [f"sync_every={args.sync_every}", f"overlap={str(args.overlap).lower()}"]
        over += [f"learner.threads={args.learner_threads}"] if args.learner_threads else []
        out = [(f"semionline[{name}]", over)]
    return [(label, [*args.set, *over]) for label, over in out]


def make_work(args, work_dir: Path) -> PeerWork:
    rows = args.steps * args.prompts_per_step
    if args.objective == "grpo":
        data = work_dir / "prompts.jsonl"
        prepare_prompts(args.data, rows, data)
    elif args.pairs:
        data = work_dir / "pairs.jsonl"
        lines = [ln for ln in Path(args.pairs).read_text().splitlines() if ln.strip()]
        if len(lines) < rows:
            raise ValueError(f"{args.pairs}: {len(lines)} preference rows, the bench needs {rows}")
        data.write_text("\n".join(lines[:rows]) + "\n")
    else:
        data = work_dir / "pairs.jsonl"
        prepare_pairs(args.data, rows, data)
    return PeerWork(
        objective=args.objective, model=str(Path(args.model).resolve()), data=str(data),
        prompts_per_step=args.prompts_per_step, samples_per_prompt=args.samples, max_tokens=args.max_tokens,
        steps=args.steps, lr=args.lr, adam_eps=args.adam_eps, grad_clip=args.grad_clip,
        micro_batch_size=args.micro_batch, chat_template=args.chat_template, prompt_template=args.prompt_template,
        dpo_beta=args.dpo_beta, max_model_len=args.max_model_len, prompts=str(Path(args.data).resolve()),
    )  # fmt: skip


def run_trl(work_path: Path, out_dir: Path, repeat: int, args) -> RunTimings:
    out = out_dir / f"trl_{repeat}.json"
    cmd = [sys.executable, "-m", "engine.bench.peer_trl", "--work", str(work_path), "--out", str(out),
           "--threads", str(args.trl_threads)] + (["--precompute-ref"] if args.trl_precompute_ref else [])
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=args.run_timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"trl repeat {repeat} failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    res = json.loads(out.read_text())
    extra = {k: v for k, v in res.items() if k != "steps"}
    return RunTimings(BASELINE, repeat, res["steps"], wall, extra)


def model_info(model_dir: str) -> dict:
    """Parameter count (from the safetensors headers), layers, hidden size, vocabulary."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    params = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with open(f, "rb") as fh:
            header = json.loads(fh.read(int.from_bytes(fh.read(8), "little")))
        for name, meta in header.items():
            if name != "__metadata__":
                n = 1
                for d in meta["shape"]:
                    n *= d
                params += n
    return {"path": model_dir, "parameters": params, "layers": cfg.get("num_hidden_layers"),
            "hidden": cfg.get("hidden_size"), "vocab": cfg.get("vocab_size"),
            "architecture": (cfg.get("architectures") or ["?"])[0]}


def _median_step(run: RunTimings) -> float:
    return sorted(s["step"] for s in run.steps)[len(run.steps) // 2]


def _reuse_or_run(path: Path, make) -> RunTimings:
    """A run already finished in the --keep-runs folder (an interrupted bench resumed) or a new one."""
    if path.is_file():
        return RunTimings(**json.loads(path.read_text()))
    run = make()
    path.write_text(json.dumps(asdict(run)) + "\n")
    return run


def run_all(args, work: PeerWork, work_path: Path, runs_dir: Path, on_run) -> tuple[list[RunTimings], str | None]:
    """The alternation: per repeat, TRL then each semionline variant; `on_run(runs, skip)` after
    each run (the JSON is rewritten then, so an interrupted bench leaves its figures so far).
    Returns the runs and why the semionline side was skipped (None when it ran)."""
    skip = semionline_dpo_status() if work.objective == "dpo" else None
    config = None if skip else write_config(work, runs_dir / "semionline.yaml")
    runs: list[RunTimings] = []
    for r in range(args.repeats):
        runs.append(_reuse_or_run(runs_dir / f"trl_{r}.timings.json", lambda r=r: run_trl(work_path, runs_dir, r, args)))
        print(f"repeat {r} trl: median step {_median_step(runs[-1]):.2f} s", flush=True)
        on_run(runs, skip)
        if skip:
            continue
        for label, overrides in variants(args):
            name = f"{label.replace('[', '_').rstrip(']')}_{r}"
            runs.append(_reuse_or_run(runs_dir / f"{name}.timings.json", lambda r=r, label=label, o=overrides, n=name:
                                      run_semionline(work, config, runs_dir / n, label=label, repeat=r, overrides=o,
                                                     timeout_s=args.run_timeout)))
            print(f"repeat {r} {label}: median step {_median_step(runs[-1]):.2f} s", flush=True)
            on_run(runs, skip)
    return runs, skip


def report(args, argv: list[str], work: PeerWork, runs: list[RunTimings], skip: str | None, stamp: dict) -> dict:
    summary = summarize(runs, args.warmup) if runs else {}
    return {
        "bench": "peer", "peer": args.peer, "objective": work.objective,
        "command": "semionline bench peer " + " ".join(shlex.quote(a) for a in argv),
        "work": work.as_dict(), "data_source": args.pairs or args.data, "model": model_info(work.model),
        "repeats": args.repeats, "warmup_steps_skipped": args.warmup,
        "warmup_note": f"the first {args.warmup} step(s) of every run are left out of the figures",
        "ratio_definition": "TRL s/step ÷ semionline s/step (pooled medians; > 1 = semionline faster); "
                            "paired: per repeat, back-to-back runs",
        "order": [f"{r.label}#{r.repeat}" for r in runs],
        "variants": {label: over for label, over in variants(args)},
        "semionline_skipped": skip, "machine": stamp, "machine_shared": args.shared,
        "matmul_fp32_gflops_end": round(matmul_gflops(), 2), "note": args.note,
        "summary": summary, "runs": [asdict(r) for r in runs],
    }


def write_markdown(result: dict, path: Path) -> None:
    m, w = result["machine"], result["work"]
    title = (f"{w['objective'].upper()}, {Path(w['model']).name} ({result['model']['parameters'] / 1e6:.2f}M params), "
             f"{w['prompts_per_step']} × {w['samples_per_prompt'] if w['objective'] == 'grpo' else 2} × "
             f"{w['max_tokens']} tokens, {w['steps']} steps × {result['repeats']} repeats")
    lines = [markdown_table(result["summary"], title) if result["summary"] else f"### {title}\n",
             f"Seconds per optimizer step and phase: median (range) over steps {result['warmup_steps_skipped'] + 1}.."
             f"{w['steps']} of every run. Ratio: {result['ratio_definition']}.", "",
             f"Machine: {m['cpu_model']}, {m['cores']} cores, torch {m['torch']}, matmul fp32 "
             f"{m['matmul_fp32_gflops']} GFLOP/s at start / {result['matmul_fp32_gflops_end']} at end, "
             f"commit {str(m['git_commit'])[:10]}{' (dirty)' if m['git_dirty'] else ''}, {m['utc']}"
             f"{'; shared with other work (noisy: read the ratios)' if result['machine_shared'] else ''}.",
             f"Command: `{result['command']}`"]
    if result["semionline_skipped"]:
        lines.append(f"semionline not run: {result['semionline_skipped']}.")
    if result["note"]:
        lines.append(f"Note: {result['note']}")
    path.write_text("\n".join(lines) + "\n")


def _check_same_work(work: PeerWork, path: Path) -> None:
    """Resuming into a --keep-runs folder is only valid for the same work."""
    if path.is_file() and PeerWork.load(path) != work:
        raise SystemExit(f"{path}: the kept runs were made for other work; use another --keep-runs folder")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stamp = machine_stamp()
    tmp = Path(args.keep_runs or tempfile.mkdtemp(prefix="bench_peer_"))
    tmp.mkdir(parents=True, exist_ok=True)

    def write(runs: list[RunTimings], skip: str | None) -> None:
        if not runs or (skip is None and len({r.label for r in runs}) < 2):
            return  # no ratio yet
        out.write_text(json.dumps(report(args, argv, work, runs, skip, stamp), indent=2) + "\n")
        write_markdown(json.loads(out.read_text()), out.with_suffix(".md"))

    try:
        work = make_work(args, tmp)
        work_path = tmp / "work.json"
        _check_same_work(work, work_path)
        work.save(work_path)
        runs, skip = run_all(args, work, work_path, tmp, write)
        if skip is not None:
            write(runs, skip)
    finally:
        if not args.keep_runs:
            shutil.rmtree(tmp, ignore_errors=True)
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
