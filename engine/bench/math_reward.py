"""Benchmark the math reward on the real gold solutions (GSM8K test, MATH-500).

For each file, every gold solution is scored twice with `math_reward_batch`:
- against its own reference answer (GSM8K: the number after ``####``; MATH-500: the text after the
  final "The answer is:", while the solution's ``\\boxed{}`` is what gets extracted) -> want 1.0;
- against the next row's reference answer (wrapping), skipping rows whose two answers are
  mathematically equal (math-verify on the pair) -> want 0.0.
It prints both rates, rows/s, timeouts/errors/no-answer counts and the misses, then the per-answer
cost of the worker processes against in-process math-verify on the same pairs.

    python engine/bench/math_reward.py                        # ../shared/data, 2 workers
    python engine/bench/math_reward.py --workers 1 --limit 200 --data-dir /path/to/data
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.bench.stamp import RecordedOutput
from engine.rewards.math import MathVerifier, extract_answer

REPO = Path(__file__).resolve().parents[2]


def reference_of(solution: str) -> str:
    """The bare reference answer a dataset row states: after the last '####' or 'The answer is:'."""
    for marker in ("####", "The answer is:"):
        if marker in solution:
            return solution.rsplit(marker, 1)[1].strip()
    raise ValueError(f"no '####' or 'The answer is:' in solution: {solution[-120:]!r}")


def bench_file(path: Path, verifier: MathVerifier, timeout_s: float, limit: int | None) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()][:limit]
    golds = [row["answer"] for row in rows]
    refs = [reference_of(g) for g in golds]
    nexts = refs[1:] + refs[:1]

    # The own pass sees each answer first; later passes hit the workers' parse cache (as GRPO groups do).
    own, own_stats = verifier.score(golds, refs, timeout_s=timeout_s)
    same, _ = verifier.score(["\\boxed{" + r + "}" for r in nexts], refs, timeout_s=timeout_s)
    keep = [i for i in range(len(rows)) if same[i] == 0.0]
    other, other_stats = verifier.score(
        [golds[i] for i in keep], [nexts[i] for i in keep], timeout_s=timeout_s
    )

    print(f"== {path.name}: {len(rows)} rows, timeout_s={timeout_s}, workers={verifier.num_workers}")
    print(
        f"own-answer   : {sum(own) / len(own):.4f} ({int(sum(own))}/{len(own)})  "
        f"{len(own) / own_stats.seconds:.0f} rows/s  timeouts={own_stats.timeouts} "
        f"errors={own_stats.errors} no_answer={own_stats.no_answer} oversized={own_stats.oversized}"
    )
    zeros = sum(r == 0.0 for r in other)
    print(
        f"other-answer : {zeros / len(other):.4f} scored 0.0 ({zeros}/{len(other)}; "
        f"{len(rows) - len(keep)} pairs skipped as equal)  {len(other) / other_stats.seconds:.0f} rows/s  "
        f"timeouts={other_stats.timeouts} errors={other_stats.errors} no_answer={other_stats.no_answer}"
    )
    for i, r in enumerate(own):
        if r == 0.0:
            print(f"  own miss row {i}: extracted {extract_answer(golds[i])!r} vs reference {refs[i]!r}")
    for j, r in zip(keep, other, strict=True):
        if r == 1.0:
            print(f"  other hit row {j}: extracted {extract_answer(golds[j])!r} vs next {nexts[j]!r}")


def bench_overhead(pairs: list[tuple[str, str]], verifier: MathVerifier) -> None:
    """Per-answer cost, one call at a time: math-verify in this process vs through one worker."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    config = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    verify(parse("\\boxed{1}", extraction_config=config), parse("\\boxed{1}", extraction_config=config))
    start = time.perf_counter()
    for pred, gold in pairs:
        g = parse("\\boxed{" + gold + "}", extraction_config=config)
        verify(g, parse("\\boxed{" + pred + "}", extraction_config=config))
    inproc = (time.perf_counter() - start) / len(pairs)
    start = time.perf_counter()
    for pred, gold in pairs:
        verifier.score(["\\boxed{" + pred + "}"], [gold], timeout_s=5.0)
    worker = (time.perf_counter() - start) / len(pairs)
    start = time.perf_counter()
    for _ in range(500):
        verifier.score(["\\boxed{1}"], ["1"], timeout_s=5.0)
    trip = (time.perf_counter() - start) / 500
    print(
        f"== per-answer cost, {len(pairs)} MATH-500 pairs one call each: in-process math-verify (signal "
        f"timeouts) {inproc * 1e3:.2f} ms, worker process {worker * 1e3:.2f} ms; "
        f"worker round trip for a cached trivial answer {trip * 1e3:.3f} ms"
    )


def bench_timeout(verifier: MathVerifier) -> None:
    start = time.perf_counter()
    rewards, stats = verifier.score(["\\boxed{9^{9^{9^{9}}}}"], ["5"], timeout_s=1.0)
    killed = time.perf_counter() - start
    start = time.perf_counter()
    verifier.score(["\\boxed{5}"], ["5"], timeout_s=5.0)
    print(
        f"== hostile 9^9^9^9 with timeout_s=1.0: reward {rewards[0]}, timeouts={stats.timeouts}, "
        f"{killed:.2f} s; next call (replacement worker start-up) {time.perf_counter() - start:.2f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data-dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each file")
    parser.add_argument("--json", default=None, help="also write the printed figures here, with the machine stamp")
    args = parser.parse_args(argv)
    command = " ".join(["semionline bench math-reward", *(argv if argv is not None else sys.argv[1:])])
    with RecordedOutput(args.json, command):
        run(args)


def run(args) -> None:
    with MathVerifier(num_workers=args.workers) as verifier:
        verifier.score(["\\boxed{1}"], ["1"])  # start the workers outside the timed region
        for name in ("gsm8k_test.jsonl", "math500_test.jsonl"):
            bench_file(args.data_dir / name, verifier, args.timeout_s, args.limit)
    with MathVerifier(num_workers=1) as verifier:
        verifier.score(["\\boxed{1}"], ["1"])
        rows = [json.loads(line) for line in (args.data_dir / "math500_test.jsonl").read_text().splitlines()]
        pairs = [(extract_answer(r["answer"]) or "", reference_of(r["answer"])) for r in rows[:200]]
        bench_overhead(pairs, verifier)
        bench_timeout(verifier)


if __name__ == "__main__":
    main()
