"""The CPU demo: seed model (cached), a short semi-online DPO run and a short online GRPO run,
then a table of held-out accuracy (seed vs each run) and a PNG of accuracy against step.

    make demo                      # set-up + this script
    .venv/bin/python engine/demo/run.py --seed-dir .cache/seed --out runs/demo

Each run is a plain `semionline train` in a subprocess (its own vLLM engine), so what the demo
shows is exactly what a user gets from the command line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = {
    "semi-online DPO": "configs/demo/dpo.yaml",
    "online GRPO": "configs/demo/grpo.yaml",
}


def ensure_seed(seed_dir: Path) -> dict:
    report = seed_dir / "seed_report.json"
    if not report.exists():
        print(f"== building the seed model in {seed_dir} (cached for next time)", flush=True)
        subprocess.run([sys.executable, "-m", "engine.cli", "seed", "--out", str(seed_dir)], check=True)
    else:
        print(f"== seed model cached in {seed_dir}", flush=True)
    return json.loads(report.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed-dir", default=".cache/seed")
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--report-only", action="store_true", help="re-print the table from existing runs")
    ap.add_argument("overrides", nargs="*", help="dotted overrides applied to both runs")
    args = ap.parse_args()
    t0 = time.perf_counter()
    seed_dir, out = Path(args.seed_dir), Path(args.out)
    if not args.report_only:
        ensure_seed(seed_dir)
    common = [f"model={seed_dir}", f"data.train={seed_dir}/data/train.jsonl", f"data.eval={seed_dir}/data/heldout.jsonl"]
    run_dirs = {}
    for label, config in RUNS.items():
        run_dir = out / Path(config).stem
        run_dirs[label] = run_dir
        if args.report_only:
            continue
        print(f"== {label}: semionline train --config {config} --run-dir {run_dir}", flush=True)
        subprocess.run([sys.executable, "-m", "engine.cli", "train", "--config", config, "--run-dir", str(run_dir),
                        *common, *args.overrides], check=True)

    from engine.demo.plots import plot_accuracy, plot_dynamics
    from engine.metrics import read_metrics

    rows = []
    seed_acc = None
    for label, run_dir in run_dirs.items():
        metrics = [m for m in read_metrics(run_dir / "metrics.jsonl") if m.get("eval/accuracy") is not None]
        seed_acc = metrics[0]["eval/accuracy"] if seed_acc is None else seed_acc
        rows.append((label, metrics[-1]["step"], metrics[-1]["eval/accuracy"]))
        plot_dynamics(run_dir)
    plot_accuracy({"seed → " + k: v for k, v in run_dirs.items()}, out / "accuracy.png")
    print("\n| model | steps | held-out accuracy | vs seed |\n|---|---|---|---|")
    print(f"| seed | 0 | {seed_acc:.3f} | |")
    for label, steps, acc in rows:
        print(f"| {label} | {steps} | {acc:.3f} | {acc - seed_acc:+.3f} |")
    print(f"\naccuracy plot: {out / 'accuracy.png'}   total {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
