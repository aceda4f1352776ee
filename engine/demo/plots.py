"""PNG plots of run metrics, for a person to look at: held-out accuracy against step, and a
grid of training-dynamics curves from `metrics.jsonl`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.metrics import read_metrics  # noqa: E402
from engine.plotting import metric_grid  # noqa: E402


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_accuracy(runs: dict[str, str | Path], out_png: str | Path, key: str = "eval/accuracy") -> None:
    """One line per run: `runs` maps a label to a run directory."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, run_dir in runs.items():
        xs, ys = _series(read_metrics(Path(run_dir) / "metrics.jsonl"), key)
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("held-out accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=120)
    plt.close(fig)


DYNAMICS = ["reward/mean", "eval/accuracy", "response/length", "policy/entropy", "kl/ref", "train/grad_norm",
            "logprob/chosen", "logprob/rejected", "clip/fraction", "sync/logprob_gap", "time/step", "train/loss"]


def plot_dynamics(run_dir: str | Path, out_png: str | Path | None = None) -> Path:
    """A grid of one run's training curves (`metrics.jsonl`) -> RUN_DIR/dynamics.png."""
    rows = read_metrics(Path(run_dir) / "metrics.jsonl")

    def draw(key):
        xs, ys = _series(rows, key)
        return lambda ax: ax.plot(xs, ys, marker="." if len(xs) < 40 else None)

    panels = [(k, draw(k)) for k in DYNAMICS if any(r.get(k) is not None for r in rows)]
    return metric_grid(panels, out_png or Path(run_dir) / "dynamics.png")
