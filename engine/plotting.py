"""One grid of metric panels in a PNG: the run's training dynamics (`engine/demo/plots.py`) and a
sweep's per-method curves (`engine/experiments/report.py`) both draw through here.

    metric_grid([("reward/mean", lambda ax: ax.plot(xs, ys))], "dynamics.png")
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

Panel = tuple[str, Callable]  # (title, draw(ax))


def metric_grid(panels: Sequence[Panel], out_png: str | Path, *, cols: int = 3, size: tuple[float, float] = (4, 2.6),
                dpi: int = 110, suptitle: str | None = None, legend: bool = False) -> Path:
    """Draw each panel in a `cols`-wide grid (unused cells hidden) and save it."""
    nrows = max(1, (len(panels) + cols - 1) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(size[0] * cols, size[1] * nrows), squeeze=False)
    for ax, (title, draw) in zip(axes.flat, panels, strict=False):
        draw(ax)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    if legend and panels:
        axes.flat[0].legend(fontsize=6)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    out = Path(out_png)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    return out
