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

REPORTS = Path(__file__).resolve().parents[2] / "docs" / "reports" / "demo"
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
    seconds = time.perf_counter() - t0
    print_table(seed_acc, rows, load_ranges())
    write_result(out / "demo.json", seed_dir, seed_acc, rows, run_dirs, seconds)
    print(f"\naccuracy plot: {out / 'accuracy.png'}   result: {out / 'demo.json'}   total {seconds:.0f} s")


def load_ranges() -> dict[str, tuple[float, float]]:
    """The held-out accuracy ranges recorded in docs/reports/demo/*.json (seeds and machines)."""
    found: dict[str, list[float]] = {}
    for path in sorted(REPORTS.glob("*.json")):
        result = json.loads(path.read_text())
        found.setdefault("seed", []).append(result["seed_accuracy"])
        for run in result["runs"]:
            found.setdefault(run["label"], []).append(run["accuracy"])
    return {k: (min(v), max(v)) for k, v in found.items()}


def print_table(seed_acc: float, rows, ranges: dict[str, tuple[float, float]]) -> None:
    """This run's table, beside the range recorded over seed models and machines."""
    def recorded(label: str) -> str:
        return f"{ranges[label][0]:.3f}-{ranges[label][1]:.3f}" if label in ranges else "n/a"

    print("\n| model | steps | held-out accuracy | vs seed | recorded range (docs/reports/demo) |")
    print("|---|---|---|---|---|")
    print(f"| seed | 0 | {seed_acc:.3f} | | {recorded('seed')} |")
    for label, steps, acc in rows:
        print(f"| {label} | {steps} | {acc:.3f} | {acc - seed_acc:+.3f} | {recorded(label)} |")


def write_result(path: Path, seed_dir: Path, seed_acc: float, rows, run_dirs: dict, seconds: float) -> None:
    """This demo's figures with the machine stamp: copy it into docs/reports/demo/ to record it."""
    from engine.bench.stamp import machine_stamp
    from engine.files import atomic_write_text

    seed_report = json.loads((seed_dir / "seed_report.json").read_text())
    result = {"command": "make demo", "seed_model": {k: seed_report.get(k) for k in ("seed", "heldout_accuracy",
                                                                                     "params", "seconds")},
              "seed_accuracy": seed_acc, "seconds": round(seconds, 1), "machine": machine_stamp(),
              "runs": [{"label": label, "steps": steps, "accuracy": acc, "run_dir": str(run_dirs[label])}
                       for label, steps, acc in rows]}
    atomic_write_text(path, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
