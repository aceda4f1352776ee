"""The test suite's own figures, stamped: each tier's wall time and slowest tests (from pytest's
output) and line coverage (from `coverage json`), against a baseline coverage file.

    make coverage > cov.log                              # make test under coverage -> .cache/coverage
    semionline bench suite --log test=ci_test.log --log test-slow=ci_slow.log \\
        --coverage test=.cache/coverage/coverage.json --baseline-coverage before.json \\
        --out docs/reports/tests/suite.json

A log is pytest's output with `--durations=N` (what `make test` prints); the summary line
("326 passed, 34 skipped in 2395.34s") gives the tier's time, the durations block its slowest
tests. Nothing here runs a test: the figures are the logs'. Coverage totals are statements of
`engine/` and `kernels/` (subprocesses included when the run was `make coverage`).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from engine.bench.stamp import machine_stamp
from engine.files import atomic_write_text

_SUMMARY = re.compile(r"^=*\s*(?P<counts>(?:\d+ \w+(?:, )?)+) in (?P<seconds>[\d.]+)s")
_DURATION = re.compile(r"^(?P<seconds>[\d.]+)s (?P<phase>call|setup|teardown)\s+(?P<test>\S+)")


def parse_pytest_log(text: str) -> dict:
    """{"seconds", "counts": {"passed": n, ...}, "slowest": [{"test", "phase", "seconds"}]} of
    the last pytest summary in `text`; ValueError when there is none (the run did not finish)."""
    summary, slowest = None, []
    for line in text.splitlines():
        line = line.strip()
        if m := _DURATION.match(line):
            slowest.append({"test": m["test"], "phase": m["phase"], "seconds": float(m["seconds"])})
        elif m := _SUMMARY.match(line):
            counts = {k: int(n) for n, k in (c.split(" ", 1) for c in m["counts"].split(", "))}
            summary = {"seconds": float(m["seconds"]), "counts": counts}
    if summary is None:
        raise ValueError("no pytest summary line ('N passed ... in S s'): did the run finish?")
    return {**summary, "slowest": slowest}


def coverage_totals(data: dict, exclude: tuple[str, ...] = ()) -> dict:
    """Totals and per-top-level-package figures of a `coverage json` report; with `exclude`, also
    the totals without those packages (keys as in `by_package`, e.g. "engine/bench")."""
    per: dict[str, list[int]] = {}
    for path, info in data["files"].items():
        parts = Path(path).parts
        key = "/".join(parts[:2]) if parts[0] == "engine" and len(parts) > 2 else parts[0]
        row = per.setdefault(key, [0, 0])
        row[0] += info["summary"]["covered_lines"]
        row[1] += info["summary"]["num_statements"]
    t = data["totals"]
    out = {"covered_lines": t["covered_lines"], "statements": t["num_statements"],
           "percent": round(t["percent_covered"], 2)}
    if exclude:  # the same totals without these packages (a scope another report did not measure)
        kept = [(c, n) for k, (c, n) in per.items() if k not in exclude]
        c, n = sum(c for c, _ in kept), sum(n for _, n in kept)
        out["without"] = {"packages": sorted(exclude), "covered_lines": c, "statements": n,
                          "percent": round(100 * c / max(n, 1), 2)}
    return {**out,
            "by_package": {k: {"covered": c, "statements": n, "percent": round(100 * c / max(n, 1), 1)}
                           for k, (c, n) in sorted(per.items())}}


def _named(pairs: list[str], what: str) -> dict[str, Path]:
    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep:
            raise SystemExit(f"bench suite: --{what} wants NAME=PATH, got {pair!r}")
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", action="append", default=[], help="TIER=pytest output file (repeatable)")
    ap.add_argument("--coverage", action="append", default=[], help="TIER=coverage json file (repeatable)")
    ap.add_argument("--baseline-coverage", default=None, help="coverage json of the suite before the change")
    ap.add_argument("--baseline-label", default="before")
    ap.add_argument("--slowest", type=int, default=15, help="slowest tests kept per tier")
    ap.add_argument("--exclude-package", action="append", default=[],
                    help="also report coverage without this package (e.g. engine/bench; repeatable)")
    ap.add_argument("--measured", default=None, help="what the logs ran on (e.g. 'fresh clone of <commit>')")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    report: dict = {"machine": machine_stamp(), "measured": args.measured, "tiers": {}, "coverage": {}}
    for tier, path in _named(args.log, "log").items():
        parsed = parse_pytest_log(path.read_text(errors="replace"))
        parsed["slowest"] = parsed["slowest"][: args.slowest]
        report["tiers"][tier] = parsed
    for tier, path in _named(args.coverage, "coverage").items():
        report["coverage"][tier] = coverage_totals(json.loads(path.read_text()), tuple(args.exclude_package))
    if args.baseline_coverage:
        baseline = json.loads(Path(args.baseline_coverage).read_text())
        report["coverage"][args.baseline_label] = coverage_totals(baseline, tuple(args.exclude_package))
    atomic_write_text(Path(args.out), json.dumps(report, indent=2) + "\n")
    for tier, t in report["tiers"].items():
        print(f"{tier}: {t['seconds']:.0f} s ({t['seconds'] / 60:.1f} min), {t['counts']}")
    for tier, c in report["coverage"].items():
        print(f"coverage {tier}: {c['percent']:.1f}% ({c['covered_lines']}/{c['statements']})")
        if "without" in c:
            w = c["without"]
            print(f"  without {', '.join(w['packages'])}: {w['percent']:.1f}% ({w['covered_lines']}/{w['statements']})")
    return report


if __name__ == "__main__":
    main()
