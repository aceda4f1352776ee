"""Statistics of `semionline bench peer` (engine/bench/peer.py): per-phase medians and ranges over
the measured steps of alternating runs, the TRL ÷ semionline step-time ratio, the markdown table.

    from engine.bench.peer_stats import RunTimings, summarize, markdown_table

Pure functions on plain numbers (no torch, no subprocesses) so that the unit test can check them
on synthetic timings. A ratio > 1 means semionline takes less time per step than the baseline.
The paired ratio pairs repeat r of the baseline with repeat r of semionline (run back to back),
which cancels most of the drift of a shared machine; its range is the spread over repeats.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

BASELINE = "trl"
# Column order of the markdown table; a framework shows only the phases it measures.
PHASES = ("step", "generate", "reward", "score", "reference", "train", "sync", "idle")


@dataclass
class RunTimings:
    """One run (one process) of one framework: seconds per optimizer step and phase."""

    label: str  # "trl" or "semionline" / "semionline[<variant>]"
    repeat: int  # 0-based position in the alternation
    steps: list[dict[str, float]]  # per optimizer step: phase -> seconds; "step" is the step's wall time
    wall_s: float = 0.0  # the whole process, start-up (model load, engine start) included
    extra: dict = field(default_factory=dict)  # framework specifics (versions, token counts)


@dataclass(frozen=True)
class Spread:
    median: float
    mean: float
    low: float
    high: float
    n: int


def spread(values: Sequence[float]) -> Spread:
    """Median, mean and range of `values`; a ValueError when there are none."""
    vals = [float(v) for v in values]
    if not vals:
        raise ValueError("no measured values (every step was a warm-up step?)")
    return Spread(statistics.median(vals), statistics.fmean(vals), min(vals), max(vals), len(vals))


def measured(run: RunTimings, warmup: int) -> list[dict[str, float]]:
    """The steps of `run` after its first `warmup` (warm-up) steps."""
    if len(run.steps) <= warmup:
        raise ValueError(f"{run.label} repeat {run.repeat}: {len(run.steps)} steps, none left after "
                         f"{warmup} warm-up step(s); use more --steps")
    return run.steps[warmup:]


def phase_spreads(runs: Sequence[RunTimings], warmup: int) -> dict[str, Spread]:
    """Per phase: the spread over all measured steps of `runs` (pooled over repeats)."""
    pooled: dict[str, list[float]] = {}
    for run in runs:
        for step in measured(run, warmup):
            for phase, seconds in step.items():
                pooled.setdefault(phase, []).append(seconds)
    ordered = [p for p in PHASES if p in pooled] + sorted(p for p in pooled if p not in PHASES)
    return {p: spread(pooled[p]) for p in ordered}


def paired_ratios(baseline: Sequence[RunTimings], other: Sequence[RunTimings], warmup: int) -> list[float]:
    """Per repeat r: median step time of baseline repeat r ÷ that of `other` repeat r."""
    by_repeat = {r.repeat: r for r in other}
    out = []
    for b in sorted(baseline, key=lambda r: r.repeat):
        o = by_repeat.get(b.repeat)
        if o is None:
            continue
        b_med = statistics.median(s["step"] for s in measured(b, warmup))
        o_med = statistics.median(s["step"] for s in measured(o, warmup))
        out.append(b_med / o_med)
    return out


def summarize(runs: Sequence[RunTimings], warmup: int, baseline: str = BASELINE) -> dict[str, dict]:
    """Per label: phase spreads (as dicts), start-up seconds, and for every label other than
    `baseline`: `ratio` (pooled median baseline s/step ÷ its own), `ratio_mean` (same on means,
    the fairer one when steps alternate between sync and no-sync), and the paired ratios."""
    labels = list(dict.fromkeys(r.label for r in runs))
    if baseline not in labels:
        raise ValueError(f"no '{baseline}' runs among {labels}")
    groups = {lab: [r for r in runs if r.label == lab] for lab in labels}
    phases = {lab: phase_spreads(groups[lab], warmup) for lab in labels}
    base = phases[baseline]["step"]
    out: dict[str, dict] = {}
    for lab in labels:
        startup = [r.wall_s - sum(s["step"] for s in r.steps) for r in groups[lab] if r.wall_s > 0]
        entry: dict = {"runs": len(groups[lab]), "phases": {p: asdict(s) for p, s in phases[lab].items()},
                       "startup_s": asdict(spread(startup)) if startup else None}
        if lab != baseline:
            own = phases[lab]["step"]
            pairs = paired_ratios(groups[baseline], groups[lab], warmup)
            entry["ratio"] = base.median / own.median
            entry["ratio_mean"] = base.mean / own.mean
            entry["paired_ratios"] = pairs
            entry["paired_ratio"] = asdict(spread(pairs)) if pairs else None
        out[lab] = entry
    return out


def _cell(s: dict | None) -> str:
    if s is None:
        return "–"
    if s["n"] == 1 or s["high"] - s["low"] < 0.005:
        return f"{s['median']:.2f}"
    return f"{s['median']:.2f} ({s['low']:.2f}–{s['high']:.2f})"


def markdown_table(summary: dict[str, dict], title: str = "") -> str:
    """Medians (range) in seconds per step and phase, one row per framework, and the ratio
    column (TRL s/step ÷ this row's s/step; > 1 = faster than TRL), paired range in brackets."""
    phases = [p for p in PHASES if any(p in e["phases"] for e in summary.values())]
    head = ["framework", *[f"{p} s" for p in phases], "ratio (TRL ÷ this)"]
    lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(head) + " |",
                                                       "|" + "---|" * len(head)]
    for label, e in summary.items():
        cells = [label, *[_cell(e["phases"].get(p)) for p in phases]]
        if "ratio" in e:
            pr = e.get("paired_ratio")
            rng = f" [{pr['low']:.2f}–{pr['high']:.2f}]" if pr and pr["n"] > 1 else ""
            cells.append(f"{e['ratio']:.2f}×{rng}")
        else:
            cells.append("1 (baseline)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
