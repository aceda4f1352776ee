"""Per-step metrics: `metrics.jsonl` (one JSON object per step) and TensorBoard curves, written by
rank 0 only. Tolerant of being reopened: a resumed run appends.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from engine.files import atomic_write_text


class MetricsLogger:
    def __init__(self, run_dir: str | Path, enabled: bool = True, tensorboard: bool = True,
                 purge_step: int | None = None):
        """`purge_step`: a resumed run's first step; TensorBoard drops events from it on."""
        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self._file = open(self.path, "a") if enabled else None  # noqa: SIM115
        self._tb = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=purge_step)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **{k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
            self._tb.flush()

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def truncate_metrics(run_dir: str | Path, last_step: int) -> None:
    """Drop the rows of `metrics.jsonl` after `last_step` (and a torn last line), atomically: what
    a run killed after its checkpoint at `last_step` logged, which the resumed run logs again."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # the line a kill cut short
            continue
        if row.get("step", 0) <= last_step:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))
