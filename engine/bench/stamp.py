"""The machine stamp every benchmark JSON carries: which CPU, how many cores, which torch, how fast
a plain fp32 matmul ran *in the same sitting*, which commit (and whether the tree was dirty), when.

    python -c "from engine.bench.stamp import machine_stamp; print(machine_stamp())"

Why: a figure from a shared or different machine is only comparable through such a stamp: the
matmul GFLOP/s says how much compute the machine gave right then (a 2-core box shared by five
engineers gives half of what an idle one does), so ratios measured side by side stay meaningful
while absolute seconds are read against it. This module must stay cheap (< 1 s) and import nothing
from the engine.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def cpu_model() -> str:
    """The `model name` line of /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def matmul_gflops(n: int = 1024, repeats: int = 5) -> float:
    """fp32 GFLOP/s of an n x n x n torch matmul with the current thread count, best of `repeats`
    (after one warm-up): 2 n^3 FLOPs per product."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best / 1e9


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def machine_stamp(matmul_n: int = 1024) -> dict:
    """CPU model, cores, torch version and threads, a fp32 matmul GFLOP/s measured now, the load
    average, the git commit and whether the tree is dirty, and the UTC time (ISO 8601)."""
    import torch

    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count() or 0
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count() or 0,
        "cores_usable": affinity,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "matmul_fp32_gflops": round(matmul_gflops(matmul_n), 2),
        "matmul_n": matmul_n,
        "load_avg_1m": round(load[0], 2),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "utc": _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


class RecordedOutput:
    """`with RecordedOutput(path, command):` a bench that prints its figures also writes them, as
    printed, to a JSON file with the machine stamp (taken at the start) and the command. No-op
    when `path` is None. The printed lines stay the figures' one source: nothing is re-parsed."""

    def __init__(self, path: str | Path | None, command: str):
        self.path, self.command, self.lines, self._stdout = path, command, [], None

    def __enter__(self) -> RecordedOutput:
        if self.path is not None:
            import sys

            self.machine, self.t0, self._stdout = machine_stamp(), time.perf_counter(), sys.stdout
            sys.stdout = self
        return self

    def write(self, text: str) -> int:
        self.lines.append(text)
        return self._stdout.write(text)

    def flush(self) -> None:
        self._stdout.flush()

    def __exit__(self, *exc) -> None:
        if self._stdout is None:
            return
        import json
        import sys

        sys.stdout = self._stdout
        out = "".join(self.lines).splitlines()
        record = {"command": self.command, "machine": self.machine, "seconds": round(time.perf_counter() - self.t0, 1),
                  "completed": exc[0] is None, "output": out}
        tmp = Path(f"{self.path}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        tmp.replace(self.path)
