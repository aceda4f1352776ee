"""End-to-end profile: the same run with `overlap: false` and `overlap: true`, side by side.

    semionline bench e2e                                        # the CPU demo GRPO config, s = 4
    semionline bench e2e --config configs/demo/dpo.yaml --sync-every 2 --steps 8
    semionline bench e2e --sync-every 1 --only off        # the weight-sync fraction at s = 1
    semionline bench e2e -- rollout.max_tokens=64          # extra overrides after --

Each mode is a real `semionline train` run (its own process, vLLM sampler in a further process),
run one after the other in this invocation so that shared machine load affects both. Per step it
prints generate / reward / train / sync / idle seconds (idle: the learner waiting for a batch),
the step wall time, generation and training tokens/s, and the overlap efficiency
`max(generate + reward, train) / wall`. The summary (steps 2.. , eval excluded) gives the overlap
ratio `wall / max(generate + reward, train)`, the speedup of overlap over the synchronous path,
the weight sync's share of the step, and bytes per sync against the parameter bytes.

Then, unless `--no-standalone`: generation throughput of the engine's sampler (`VLLMSampler`,
what the run uses) against a plain vLLM `LLM.generate` on the same model, batch and engine
arguments (median of `--repeat` after a warm-up each, one engine after the other in this
process), and the resident-memory peak of one weight push (`VmHWM` reset through
/proc/self/clear_refs). A timeline PNG (a bar per phase per step, one row per mode) is written next
to `--out`. `--nproc N` launches each mode under torchrun (layout by overrides, e.g.
`learner.tp=2`); the step figures are the driver's (rank 0), and a per-rank table (train / sync /
idle / wall per rank, from the `rank<r>/time/*` metrics) shows who waits for whom.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
COLORS = {"generate": "tab:blue", "train": "tab:orange", "sync": "tab:red"}


def run_mode(args, overlap: bool, out: Path) -> list[dict]:
    run_dir = out / f"overlap_{str(overlap).lower()}"
    launcher = [sys.executable]
    if args.nproc > 1:  # torchrun: the overrides pick the layout (learner.tp / learner.pp; DP = the rest)
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc)]
    cmd = [*launcher, "-m", "engine.cli", "train", "--config", args.config, "--run-dir", str(run_dir),
           f"steps={args.steps}", f"sync_every={args.sync_every}", f"overlap={str(overlap).lower()}",
           "eval.every=0", "eval.max_prompts=16", *args.overrides]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"bench e2e: the overlap={overlap} run failed:\n{proc.stderr[-3000:]}")
    print(f"overlap={overlap}: run took {time.perf_counter() - t0:.1f} s ({run_dir})", flush=True)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["step"] > 0 and "time/step" in r]


def phases(r: dict) -> dict[str, float]:
    gen = r["time/generate"] + r["time/reward"]
    wall = r["time/step"] - r.get("time/eval", 0.0)
    return {"generate": r["time/generate"], "reward": r["time/reward"], "train": r["time/train"],
            "sync": r["time/sync"], "push": r.get("sync/seconds", 0.0), "idle": r["time/idle"], "wall": wall,
            "gen_tok_s": r["rollout/response_tokens"] / max(r["time/generate"], 1e-9),
            "train_tok_s": r["train/tokens"] / max(r["time/train"], 1e-9),
            "efficiency": max(gen, r["time/train"]) / wall}


def print_table(name: str, rows: list[dict]) -> None:
    print(f"\n{name}")
    print(f"{'step':>4} {'generate':>8} {'reward':>7} {'train':>7} {'sync':>6} {'idle':>6} {'wall':>6} "
          f"{'gen tok/s':>9} {'train tok/s':>11} {'eff':>5}")
    for r in rows:
        p = phases(r)
        print(f"{r['step']:>4} {p['generate']:>8.3f} {p['reward']:>7.3f} {p['train']:>7.3f} {p['sync']:>6.3f} "
              f"{p['idle']:>6.3f} {p['wall']:>6.3f} {p['gen_tok_s']:>9.0f} {p['train_tok_s']:>11.0f} "
              f"{p['efficiency']:>5.2f}")


def per_rank(rows: list[dict]) -> dict[int, dict[str, float]]:
    """Mean per-rank phase times over steps 2.. (torchrun runs log `rank<r>/time/*`)."""
    steady = rows[1:] or rows
    ranks = sorted({int(k[4:].split("/")[0]) for r in steady for k in r if k.startswith("rank")})
    out = {}
    for rank in ranks:
        out[rank] = {}
        for phase in ("train", "sync", "idle", "step", "eval"):
            vals = [r.get(f"rank{rank}/time/{phase}", 0.0) for r in steady]
            out[rank][phase] = statistics.mean(vals)
        out[rank]["wall"] = out[rank]["step"] - out[rank]["eval"]
    return out


def print_per_rank(name: str, rows: list[dict]) -> None:
    table = per_rank(rows)
    if not table:
        return
    print(f"\n{name}: per rank (mean over steps 2.., seconds; idle = waiting for the batch from rank 0)")
    print(f"{'rank':>4} {'train':>7} {'sync':>6} {'idle':>6} {'wall':>6}")
    for rank, p in table.items():
        print(f"{rank:>4} {p['train']:>7.3f} {p['sync']:>6.3f} {p['idle']:>6.3f} {p['wall']:>6.3f}")


def summarize(rows: list[dict]) -> dict[str, float]:
    steady = [phases(r) for r in rows[1:]] or [phases(r) for r in rows]
    mean = {k: statistics.mean(p[k] for p in steady) for k in steady[0]}
    mean["max_gen_train"] = statistics.mean(max(p["generate"] + p["reward"], p["train"]) for p in steady)
    mean["overlap_ratio"] = mean["wall"] / mean["max_gen_train"]
    syncs = [r for r in rows if "sync/bytes" in r]
    if syncs:
        mean["sync_bytes"] = syncs[-1]["sync/bytes"]
        mean["param_bytes"] = syncs[-1]["sync/param_bytes"]
        mean["push_seconds"] = statistics.mean(r["sync/seconds"] for r in syncs)
        mean["sync_seconds"] = statistics.mean(r["time/sync"] for r in syncs)
        mean["gap_max"] = max(r["sync/logprob_gap"] for r in rows if "sync/logprob_gap" in r)
        # The sync's share of the step, steps 2..N-1 (the run's last sync also runs the parity
        # probe: no batch follows it to check the weights on).
        middle = [phases(r) for r in rows[1:-1] if "sync/bytes" in r]
        if middle:
            mean["sync_share"] = statistics.mean(p["sync"] for p in middle) / statistics.mean(p["wall"] for p in middle)
    return mean


def plot_timeline(runs: dict[str, list[dict]], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(runs), 1, figsize=(12, 1.8 * len(runs) + 0.6), squeeze=False)
    for ax, (name, rows) in zip(axes[:, 0], runs.items(), strict=True):
        origin = rows[0]["time/at_step_start"]
        for r in rows:
            spans = {"generate": (r.get("time/at_produce_start"), r.get("time/at_produce_end")),
                     "train": (r["time/at_train_start"], r["time/at_train_end"]),
                     "sync": (r["time/at_train_end"], r["time/at_sync_end"]) if r["time/sync"] > 0 else (None, None)}
            for lane, (phase, (a, b)) in enumerate(spans.items()):
                if a is None or b <= a:
                    continue
                ax.barh(lane, b - a, left=a - origin, color=COLORS[phase], edgecolor="black", linewidth=0.4)
                if phase == "generate":
                    ax.text((a + b) / 2 - origin, lane, str(r["step"]), ha="center", va="center", fontsize=7)
        ax.set_yticks(range(3), list(COLORS))
        ax.set_title(name, fontsize=9, loc="left")
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("seconds since step 1 started (generate bars are labelled with their step)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def standalone_throughput(args, cfg) -> dict[str, float]:
    """Tokens/s of VLLMSampler.generate vs a plain vLLM LLM.generate, same model and batch."""
    import torch
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from engine.data.prompts import load_prompts
    from engine.data.tokenizer import encode_prompt, load_tokenizer
    from engine.sampler.vllm_engine import VLLMSampler, cpu_bind_lists

    torch.set_num_threads(1)
    r = cfg.rollout
    tok = load_tokenizer(cfg.model)
    prompts = [encode_prompt(tok, row.prompt) for row in load_prompts(cfg.data.train)[: r.prompts_per_step]]
    stop = [tok.eos_token_id]
    out: dict[str, list[float]] = {"engine": [], "standalone": []}
    sampler = VLLMSampler.from_config(cfg.sampler.model_copy(update={"placement": "resident"}), model=cfg.model,
                                      seed=cfg.seed)

    def engine_run(seed: int) -> tuple[int, float]:
        t0 = time.perf_counter()
        groups = sampler.generate(prompts, n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p,
                                  max_tokens=r.max_tokens, stop_token_ids=stop, seed=seed)
        return sum(len(s.token_ids) for g in groups for s in g), time.perf_counter() - t0

    for rep in range(args.repeat + 1):
        n, dt = engine_run(rep)
        if rep:
            out["engine"].append(n / dt)
    memory = push_memory(sampler, cfg)
    sampler.close()
    if cfg.sampler.tp > 1 and not torch.cuda.is_available():  # the binding VLLMSampler sets for itself
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cpu_bind_lists(cfg.sampler.tp))
    llm = LLM(model=cfg.model, dtype="float32", seed=cfg.seed, max_model_len=cfg.sampler.max_model_len,
              kv_cache_memory_bytes=int(cfg.sampler.kv_cache_gib * (1 << 30)), enforce_eager=True,
              enable_chunked_prefill=False, max_num_batched_tokens=max(4096, cfg.sampler.max_model_len),
              disable_log_stats=True, logprobs_mode="raw_logprobs", tensor_parallel_size=cfg.sampler.tp)
    for rep in range(args.repeat + 1):
        params = [SamplingParams(n=r.samples_per_prompt, temperature=r.temperature, top_p=r.top_p,
                                 max_tokens=r.max_tokens, stop_token_ids=stop, seed=rep + i * r.samples_per_prompt,
                                 logprobs=0) for i in range(len(prompts))]
        t0 = time.perf_counter()
        res = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        dt = time.perf_counter() - t0
        if rep:
            out["standalone"].append(sum(len(c.token_ids) for o in res for c in o.outputs) / dt)
    llm.llm_engine.engine_core.shutdown()
    return {"engine_tok_s": statistics.median(out["engine"]), "standalone_tok_s": statistics.median(out["standalone"]),
            **memory}


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def push_memory(sampler, cfg) -> dict[str, float]:
    """Peak resident-memory growth of this process during one push of the model's weights."""
    from safetensors.torch import load_file

    weights = {}
    for path in sorted(Path(cfg.model).glob("*.safetensors")):  # copied: resident before measuring
        weights.update({n: t.clone() for n, t in load_file(path).items()})
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS")
    stats = sampler.push_weights(weights.items())
    peak = _rss_kib("VmHWM")
    return {"push_rss_peak_bytes": (peak - before) * 1024.0, "push_buffer_peak_bytes": float(stats.peak_bytes),
            "push_bytes": float(stats.bytes), "push_buckets": float(stats.num_buckets)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="configs/demo/grpo.yaml")
    ap.add_argument("--steps", type=int, default=9)
    ap.add_argument("--sync-every", default="4")
    ap.add_argument("--only", choices=["on", "off"], help="run one mode only")
    ap.add_argument("--out", default="runs/bench_e2e")
    ap.add_argument("--repeat", type=int, default=3, help="standalone-throughput repeats (after a warm-up)")
    ap.add_argument("--no-standalone", action="store_true")
    ap.add_argument("--nproc", type=int, default=1, help="ranks (torchrun); the per-rank table is printed too")
    ap.add_argument("overrides", nargs="*", help="config overrides (key=value), after --")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    modes = {"on": [True], "off": [False]}.get(args.only, [False, True])
    runs = {f"overlap={m}": run_mode(args, m, out) for m in modes}
    summary = {}
    for name, rows in runs.items():
        print_table(name, rows)
        print_per_rank(name, rows)
        summary[name] = summarize(rows)
        if per_rank(rows):
            summary[name]["per_rank"] = per_rank(rows)
    print("\nsummary (mean over steps 2.., eval excluded)")
    for name, s in summary.items():
        line = (f"{name}: wall {s['wall']:.3f} s, generate+reward {s['generate'] + s['reward']:.3f} s, train "
                f"{s['train']:.3f} s, overlap ratio wall/max(gen,train) {s['overlap_ratio']:.3f}, "
                f"efficiency {s['efficiency']:.2f}")
        if "sync_bytes" in s:
            line += (f"; push {s['push_seconds']:.3f} s, sync (push + version publish, probe on the last) "
                     f"{s['sync_seconds']:.3f} s per sync, "
                     f"{s['sync_bytes']:.0f} bytes/sync vs {s['param_bytes']:.0f} parameter bytes, "
                     f"max gap {s['gap_max']:.1e}")
            if "sync_share" in s:
                line += f"; sync share of the step (steps 2..N-1) {100 * s['sync_share']:.1f}%"
        print(line)
    if len(summary) == 2:
        off, on = summary["overlap=False"], summary["overlap=True"]
        print(f"speedup overlap on vs off: {off['wall'] / on['wall']:.2f}x")
        summary["speedup"] = off["wall"] / on["wall"]
    png = out / "timeline.png"
    plot_timeline(runs, png)
    print(f"timeline: {png}")
    if not args.no_standalone:
        from engine.config_load import load_config

        cfg = load_config(args.config, args.overrides)
        tput = standalone_throughput(args, cfg)
        summary["throughput"] = tput
        print(f"generation: engine sampler {tput['engine_tok_s']:.0f} tok/s, standalone vLLM "
              f"{tput['standalone_tok_s']:.0f} tok/s, ratio {tput['engine_tok_s'] / tput['standalone_tok_s']:.3f}")
        print(f"one push: {tput['push_bytes']:.0f} bytes in {tput['push_buckets']:.0f} buckets, buffer peak "
              f"{tput['push_buffer_peak_bytes']:.0f} bytes, resident-memory peak +{tput['push_rss_peak_bytes']:.0f} bytes")
    from engine.bench.stamp import machine_stamp

    summary["command"] = " ".join(["semionline bench e2e", *(argv if argv is not None else sys.argv[1:])])
    summary["machine"] = machine_stamp()
    (out / "summary.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
