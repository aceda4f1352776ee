"""The sweep's report: a table per task (mean +- std over seeds, the seed model's row), the
paper's claims checked in words with their numbers, and PNG plots (held-out metric against step
per method with the seeds' spread, and the training-dynamics views: reward, entropy, response
length, chosen/rejected log-probs, KL to the reference).

    semionline sweep --config configs/paper_cpu.yaml --report-only   # writes OUT/report.md

The numbers come only from the runs' metrics.jsonl files. A claim "holds" here when the gap
between two means is more than twice its standard error over seeds (Welch), "alike" when it is
less; with one seed there is no spread and the report says it cannot tell.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from engine.metrics import read_metrics  # noqa: E402
from engine.plotting import metric_grid  # noqa: E402


@dataclass
class Stat:
    values: list[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / self.n if self.values else float("nan")

    @property
    def std(self) -> float:  # sample standard deviation over seeds
        if self.n < 2:
            return float("nan")
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    def fmt(self, digits: int = 3) -> str:
        if not self.values:
            return "—"
        if self.n < 2:
            return f"{self.mean:.{digits}f}"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def compare(a: Stat, b: Stat) -> tuple[float, float | None]:
    """(mean(a) - mean(b), its Welch standard error; None with fewer than 2 seeds on a side)."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return diff, None
    return diff, math.sqrt(a.std**2 / a.n + b.std**2 / b.n)


def _columns(final: dict, subtasks: list[str]) -> list[tuple[str, str]]:
    """(label, metric key) of a task's table, from what its runs logged."""
    cols = []
    for t in subtasks:
        if f"eval/{t}/accuracy" in final:
            cols.append((f"{t}: held-out accuracy", f"eval/{t}/accuracy"))
        if f"eval/{t}/gold/score" in final:
            cols += [(f"{t}: gold quality", f"eval/{t}/gold/score"),
                     (f"{t}: gold win rate vs seed", f"eval/{t}/gold/win_rate")]
        if f"eval/{t}/reward" in final:
            cols.append((f"{t}: RM reward", f"eval/{t}/reward"))
    return cols


def claim_keys(subtask: str, final: dict) -> list[str]:
    """The metrics a claim is judged on: accuracy (math); for scored tasks the gold judge's score
    (what a person would call quality) and the training reward model's score (what the methods
    optimise; the paper's own comparisons of on- and off-policy training are on such rewards)."""
    if f"eval/{subtask}/accuracy" in final:
        return [f"eval/{subtask}/accuracy"]
    return [k for k in (f"eval/{subtask}/gold/score", f"eval/{subtask}/reward") if k in final]


@dataclass
class TaskRuns:
    name: str
    subtasks: list[str]
    methods: dict[str, list[list[dict]]]  # method -> per seed: metrics rows

    def final(self, method: str, key: str) -> Stat:
        out = Stat()
        for rows in self.methods.get(method, []):
            vals = [r[key] for r in rows if r.get(key) is not None]
            if vals:
                out.values.append(vals[-1])
        return out

    def initial(self, key: str) -> Stat:
        out = Stat()
        for runs in self.methods.values():
            for rows in runs:
                vals = [r[key] for r in rows if r.get(key) is not None and r["step"] == 0]
                if vals:
                    out.values.append(vals[0])
        return out

    def any_final_row(self) -> dict:
        keys: dict = {}
        for runs in self.methods.values():
            for rows in runs:
                for r in rows:
                    keys.update({k: v for k, v in r.items() if k.startswith("eval/")})
        return keys


def collect(sweep_out: Path, tasks: dict[str, dict], methods: list[str], seeds: list[int], slug,
            done: set[Path]) -> list[TaskRuns]:
    """Every finished run of the sweep (`done`: run directories finished with the current config)."""
    out = []
    for task, tree in tasks.items():
        subtasks = list((tree.get("tasks") or {}).keys()) or ["default"]
        by_method: dict[str, list[list[dict]]] = defaultdict(list)
        for method in methods:
            for seed in seeds:
                run_dir = sweep_out / slug(task) / slug(method) / f"seed{seed}"
                if run_dir in done:
                    by_method[method].append(read_metrics(run_dir / "metrics.jsonl"))
        out.append(TaskRuns(task, subtasks, dict(by_method)))
    return out


def _verdict(diff: float, se: float | None, kind: str) -> str:
    if se is None:
        return "cannot tell (one seed)"
    if kind == "better":
        return "holds" if diff > 2 * se else ("reversed" if diff < -2 * se else "does not hold (within noise)")
    return "holds" if abs(diff) <= 2 * se else "does not hold"


def claims(runs: list[TaskRuns], methods: list[str]) -> list[str]:
    """The paper's claims, checked on each task's primary metric, in words with the numbers."""
    lines = []
    offline = next((m for m in methods if "offline" in m.lower() and "dpo" in m.lower()), None)
    online_dpo = next((m for m in methods if m.lower().startswith("online") and "dpo" in m.lower()), None)
    semi_dpo = [m for m in methods if "semi" in m.lower() and "dpo" in m.lower()]
    grpo = [m for m in methods if "grpo" in m.lower()]

    def line(t: TaskRuns, key: str, a: str, b: str, kind: str, claim: str) -> str:
        sa, sb = t.final(a, key), t.final(b, key)
        if not sa.values or not sb.values:
            return f"- {claim} — not measured (missing runs)."
        diff, se = compare(sa, sb)
        se_txt = "" if se is None else f", 2·SE = {2 * se:.3f}"
        return (f"- {claim}: {a} {sa.fmt()} vs {b} {sb.fmt()} (difference {diff:+.3f}{se_txt}) — "
                f"**{_verdict(diff, se, kind)}**.")

    for t in runs:
        final = t.any_final_row()
        for sub, key in [(x, k) for x in t.subtasks for k in claim_keys(x, final)]:
            lines.append(f"\n**{t.name}, {sub} ({key})**")
            for m in semi_dpo:
                if online_dpo:
                    lines.append(line(t, key, m, online_dpo, "alike", "Semi-online and online DPO perform alike"))
            for m in [*semi_dpo, *([online_dpo] if online_dpo else [])]:
                if offline:
                    lines.append(line(t, key, m, offline, "better", f"{m} beats offline DPO"))
            for m in grpo:
                if online_dpo:
                    lines.append(line(t, key, m, online_dpo, "alike", "GRPO is close to online DPO"))
    for multi in [t for t in runs if len(t.subtasks) > 1 and t.methods]:
        final = multi.any_final_row()
        lines.append(f"\n**Multi-task ({multi.name}) against single-task training, method by method**")
        for sub, key in [(x, k) for x in multi.subtasks for k in claim_keys(x, final)]:
            single = next((t for t in runs if t.subtasks == [sub]), None)
            if single is None:
                continue
            for m in methods:
                sa, sb = multi.final(m, key), single.final(m, key)
                if not sa.values or not sb.values:
                    continue
                diff, se = compare(sa, sb)
                se_txt = "" if se is None else f", 2·SE = {2 * se:.3f}"
                lines.append(f"- Multi-tasking helps {sub} ({key}), {m}: multi-task {sa.fmt()} vs {single.name}-only "
                             f"{sb.fmt()} (difference {diff:+.3f}{se_txt}) — **{_verdict(diff, se, 'better')}**.")
    return lines


def tables(runs: list[TaskRuns], methods: list[str]) -> tuple[list[str], dict]:
    lines, data = [], {}
    for t in runs:
        final = t.any_final_row()
        cols = _columns(final, t.subtasks)
        if not cols:
            continue
        n = max((len(v) for v in t.methods.values()), default=0)
        lines += [f"\n### {t.name}  (mean ± std over {n} seed{'s' if n != 1 else ''}, final step)\n",
                  "| model | " + " | ".join(c[0] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        seed_cells = []
        for _, key in cols:
            s = t.initial(key)
            seed_cells.append(f"{s.mean:.3f}" if s.values else "—")
        lines.append("| seed model | " + " | ".join(seed_cells) + " |")
        data[t.name] = {"seed": {k: t.initial(k).mean for _, k in cols}}
        for m in methods:
            if m not in t.methods:
                continue
            stats = [t.final(m, k) for _, k in cols]
            lines.append(f"| {m} | " + " | ".join(s.fmt() for s in stats) + " |")
            data[t.name][m] = {k: {"mean": s.mean, "std": s.std, "values": s.values} for (_, k), s in zip(cols, stats, strict=True)}
    return lines, data


# -- plots -------------------------------------------------------------------------------------

def _curves(runs: list[list[dict]], key: str, smooth: int = 1):
    """Mean and std over seeds of `key` at each step logged by every seed."""
    per_seed = []
    for rows in runs:
        pts = {r["step"]: r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])}
        per_seed.append(pts)
    steps = sorted(set.intersection(*[set(p) for p in per_seed])) if per_seed else []
    if not steps:
        return [], [], []
    vals = [[p[s] for s in steps] for p in per_seed]
    if smooth > 1:
        vals = [[sum(v[max(0, i - smooth + 1): i + 1]) / len(v[max(0, i - smooth + 1): i + 1]) for i in range(len(v))]
                for v in vals]
    means = [sum(col) / len(col) for col in zip(*vals, strict=True)]
    stds = [math.sqrt(sum((x - m) ** 2 for x in col) / max(1, len(col) - 1)) if len(col) > 1 else 0.0
            for col, m in zip(zip(*vals, strict=True), means, strict=True)]
    return steps, means, stds


def _band(ax, steps, means, stds, label, marker=None):
    line = ax.plot(steps, means, label=label, marker=marker)[0]
    ax.fill_between(steps, [m - s for m, s in zip(means, stds, strict=True)],
                    [m + s for m, s in zip(means, stds, strict=True)], color=line.get_color(), alpha=0.18)


def plot_eval(t: TaskRuns, methods: list[str], out_png: Path) -> Path | None:
    cols = _columns(t.any_final_row(), t.subtasks)
    if not cols:
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(4.6 * len(cols), 3.6), squeeze=False)
    for ax, (label, key) in zip(axes[0], cols, strict=True):
        for m in methods:
            if m in t.methods:
                steps, means, stds = _curves(t.methods[m], key)
                if steps:
                    _band(ax, steps, means, stds, m, marker="o")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{t.name}: held-out metrics (mean over seeds, shaded ± std)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


DYNAMICS = [("reward/mean", "training reward"), ("policy/entropy", "entropy"), ("response/length", "response length"),
            ("logprob/chosen", "log p(chosen)"), ("logprob/rejected", "log p(rejected)"), ("kl/ref", "KL to reference")]


def plot_sweep_dynamics(t: TaskRuns, methods: list[str], out_png: Path) -> Path:
    """Training curves per method (mean over seeds, 3-step moving average, shaded ± std)."""
    views = []
    for key, title in DYNAMICS:
        if key == "response/length":
            views.append((key, title))
            continue
        for sub in t.subtasks:
            views.append((f"{key}/{sub}" if len(t.subtasks) > 1 or sub != "default" else key,
                          f"{title}" + (f" ({sub})" if len(t.subtasks) > 1 else "")))
    present = [(k, title) for k, title in views if any(r.get(k) is not None for runs in t.methods.values()
                                                       for rows in runs for r in rows)]

    def draw(key):
        def panel(ax):
            for m in methods:
                if m in t.methods:
                    steps, means, stds = _curves(t.methods[m], key, smooth=3)
                    if steps:
                        _band(ax, steps, means, stds, m)
        return panel

    return metric_grid([(title, draw(key)) for key, title in present], out_png, size=(4.4, 2.9), dpi=100,
                       legend=True, suptitle=f"{t.name}: training dynamics (mean over seeds, 3-step moving "
                                                 "average, shaded ± std)")


def write_report(sweep, *, wall_seconds: float | None = None, quick: bool = False) -> Path:
    from engine.experiments.sweep import is_done, slug

    methods = list(sweep.methods)
    done_dirs = {spec.run_dir for spec in sweep.runs() if is_done(spec)}
    runs = collect(sweep.out, sweep.tasks, methods, sweep.seeds, slug, done_dirs)
    table_lines, data = tables(runs, methods)
    plots = []
    for t in runs:
        if not t.methods:
            continue
        p = plot_eval(t, methods, sweep.out / f"{slug(t.name)}_eval.png")
        if p is not None:
            plots.append(p)
        plots.append(plot_sweep_dynamics(t, methods, sweep.out / f"{slug(t.name)}_dynamics.png"))
    done = sum(len(v) for t in runs for v in t.methods.values())
    total = len(sweep.runs())
    steps = sweep.base.get("steps")
    head = [
        f"# Sweep report: {sweep.out}", "",
        ("**Quick mode** (CI smoke run: one seed, a few steps). The numbers say nothing about the methods." if quick
         else "The paper's comparison (Lanchantin et al., 2025) at CPU scale."),
        "", f"- Runs: {done} of {total} done ({len(sweep.tasks)} tasks × up to {len(methods)} methods × "
        f"{len(sweep.seeds)} seeds {sweep.seeds}); {steps} optimizer steps each, from the seed model "
        f"`{sweep.seed_model}`.",
        "- Held-out metrics at the final step; every run is evaluated with the same eval seed, so the seed "
        "model's row is one evaluation. *gold quality* is the chat task's hidden rule (the stand-in for the "
        "paper's GPT-4 judge; never a training reward), *RM reward* the reward model the policy was trained on.",
    ]
    run_seconds = sum(json.loads((d / "summary.json").read_text()).get("seconds", 0.0) for d in done_dirs)
    head.append(f"- Run time: {len(done_dirs)} runs, {run_seconds / 60:.1f} min in all (sum of the runs' wall times "
                "on this machine; seed-model and reward-model builds not included).")
    if wall_seconds is not None:
        head.append(f"- Wall time of this sweep invocation: {wall_seconds / 60:.1f} min.")
    body = ["", "## Results", *table_lines, "", "## The paper's claims, checked here",
            "A gap counts when it exceeds twice its standard error over seeds (Welch).", *claims(runs, methods),
            "", "## Plots", *[f"![{p.stem}]({p.name})" for p in plots], ""]
    if sweep.discussion is not None and sweep.discussion.is_file() and not quick:
        body += ["## Discussion", f"*(from `{sweep.discussion}`, written by a person after reading the numbers above)*",
                 "", sweep.discussion.read_text().strip(), ""]
    out = sweep.out / "report.md"
    out.write_text("\n".join(head + body))
    (sweep.out / "report.json").write_text(json.dumps(data, indent=2))
    return out
