"""Tests for the math reward (`engine.rewards.math`): extraction, math-verify equality, the real-data
bars on fixed GSM8K / MATH-500 samples, hostile inputs, timeouts and worker threads.

    python -m pytest -q tests/engine/rewards/test_math.py
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from engine.rewards.math import (
    MathRewardStats,
    MathVerifier,
    extract_answer,
    math_reward,
    math_reward_batch,
)

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.fixture(scope="module")
def verifier():
    with MathVerifier(num_workers=2) as pool:
        yield pool


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / name).read_text(encoding="utf-8").splitlines()]


def _reference_of(solution: str) -> str:
    """The bare answer a row states: after the last '####' (GSM8K) or 'The answer is:' (MATH-500)."""
    marker = "####" if "####" in solution else "The answer is:"
    return solution.rsplit(marker, 1)[1].strip()


@pytest.mark.parametrize(
    "text, answer",
    [
        ("so $x = \\boxed{\\frac{1}{2}}$.", "\\frac{1}{2}"),
        ("\\boxed{1} then \\fbox{\\{2, 3\\}}", "\\{2, 3\\}"),
        ("first \\boxed{3}, finally \\boxed{\\sqrt{\\frac{a}{b}}}", "\\sqrt{\\frac{a}{b}}"),
        ("\\boxed{7} and an unclosed \\boxed{8", "7"),
        ("She makes 9 * 2 = $<<9*2=18>>18.\n#### 1,234", "1234"),
        ("#### $70,000.", "70000"),
        ("... 7+5=12. 12-3=9. The answer is 9.", "9"),
        ("The answer is: \\left( 3, \\frac{\\pi}{2} \\right)", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("The final answer is $3.5$. I hope it is correct.", "3.5"),
        ("so the answer is **1,000,000**.\nThanks", "1000000"),
        ("the answer is (1,234, 5)", "(1,234, 5)"),
        ("12 - 3 = 9", None),
        ("", None),
        ("\\boxed{} the answer is", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer


def test_extract_answer_is_linear_on_hostile_text():
    start = time.perf_counter()
    assert extract_answer("\\boxed{" * 20_000) is None
    assert extract_answer("{" * 100_000 + "}" * 100_000) is None
    assert len(extract_answer("\\boxed{" + "{" * 50_000 + "}" * 50_001)) == 100_000
    assert time.perf_counter() - start < 2.0


def test_synthetic_format_takes_the_final_answer(verifier):
    response = "7 apples and 5 more. 7+5=12. 12-3=9. The answer is 9."
    rewards, stats = verifier.score([response, response], ["9", "12"])
    assert rewards == [1.0, 0.0]
    assert (stats.total, stats.correct, stats.timeouts, stats.errors, stats.no_answer) == (2, 1, 0, 0, 0)


def test_equalities_math_verify_decides(verifier):
    # Decided: numerically equal forms are equal (math-verify's call), so \frac{1}{2} == 0.5 and
    # 1,234 == 1234; a different value, or a tuple vs a number, is not.
    responses = [
        "#### 1,234",
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{\\frac{1}{2}}",
        "\\boxed{0.5}",
        "\\boxed{(1, 2)}",
    ]
    references = ["1234", "0.5", "\\frac{1}{3}", "\\frac12", "12"]
    rewards, _ = verifier.score(responses, references)
    assert rewards == [1.0, 1.0, 0.0, 1.0, 0.0]


def test_reference_may_be_bare_or_a_gold_solution(verifier):
    gold = "It takes 2/2=<<2/2=1>>1 bolt\nSo 2+1=<<2+1=3>>3 bolts\n#### 3"
    math_gold = "so $\\boxed{\\frac{14}{3}}$The answer is: \\frac{14}{3}"
    rewards, _ = verifier.score(
        ["The answer is 3.", "The answer is 4.", "\\boxed{14/3}"], [gold, gold, math_gold]
    )
    assert rewards == [1.0, 0.0, 1.0]


def test_unusable_reference_raises(verifier):
    with pytest.raises(ValueError, match="reference #1"):
        verifier.score(["\\boxed{1}", "\\boxed{1}"], ["1", "   "])
    with pytest.raises(ValueError, match="2 responses but 1 references"):
        verifier.score(["a", "b"], ["1"])


def test_no_answer_scores_zero_and_is_counted(verifier):
    rewards, stats = verifier.score(["I am not sure.", "", None, "\\boxed{" + "1" * 5000 + "}"], ["1"] * 4)
    assert rewards == [0.0] * 4
    assert (stats.no_answer, stats.oversized, stats.timeouts, stats.errors) == (3, 1, 0, 0)


def test_hostile_inputs_score_zero_within_the_timeout(verifier):
    hostile = [
        "\\boxed{9^{9^{9^{9}}}}",  # parses instantly, then verify would run for ages
        "9^9^9^9 so the answer is 9^9^9^9.",
        "\\boxed{" + "{" * 50_000 + "}" * 50_000 + "}",  # 100 kB of nested braces
        "\\boxed{" + "\\frac{" * 1000 + "}",
        "\\boxed{" + "\\frac{1}{" * 300 + "2" + "}" * 300 + "}",
        "\\boxed{\x00\ud800\udfff\uffff\\\\\\}",
        "the answer is \x00\x01\x02 \ufffd\ufffd.",
    ]
    start = time.perf_counter()
    rewards, stats = verifier.score(hostile, ["5"] * len(hostile), timeout_s=1.0)
    elapsed = time.perf_counter() - start
    assert rewards == [0.0] * len(hostile)
    assert stats.timeouts >= 1 and stats.errors == 0
    assert stats.no_answer + stats.oversized + stats.timeouts < len(hostile)  # some were really verified
    # two workers, at most ~1 s per answer plus replacement start-ups (~0.3 s each)
    assert elapsed < 1.0 * len(hostile) + 4.0
    assert verifier.score(["\\boxed{5}"], ["5"])[0] == [1.0]  # the pool recovered


def test_timeouts_are_counted_and_the_call_returns_near_the_deadline(caplog):
    with MathVerifier(num_workers=1) as pool:
        pool.score(["\\boxed{1}"], ["1"])  # start-up outside the timed region
        start = time.perf_counter()
        rewards, stats = pool.score(["\\boxed{10^{10^{10}}}", "\\boxed{2}"], ["3", "2"], timeout_s=0.5)
        elapsed = time.perf_counter() - start
    assert rewards == [0.0, 1.0]
    assert stats.timeouts == 1 and stats.correct == 1
    assert 0.5 <= elapsed < 2.5
    assert stats.as_metrics()["reward/timeouts"] == 1.0
    assert [r.getMessage() for r in caplog.records if r.name == "engine.rewards.math"] == [
        "math-verify timeout (1/5 logged): answer '10^{10^{10}}' vs reference '3': the worker overran its deadline "
        "or died; killed and replaced"]  # not only counted: the answer that caused it is in the log


def test_crashed_worker_counts_an_error_and_is_replaced(caplog):
    with MathVerifier(num_workers=1) as pool:
        pool.score(["\\boxed{1}"], ["1"])
        pool._workers[0].proc.kill()  # a real crash: the process is gone when the job is sent/read
        rewards, stats = pool.score(["\\boxed{1}", "\\boxed{2}"], ["1", "2"])
    assert stats.errors == 1 and rewards.count(1.0) == 1
    logged = [r.getMessage() for r in caplog.records if r.name == "engine.rewards.math"]
    assert len(logged) == 1 and logged[0].startswith("math-verify error (1/5 logged): answer '1' vs reference '1'")


def test_math_reward_from_worker_threads():
    cases = [
        ("The answer is 9.", "9", 1.0),
        ("\\boxed{9^{9^{9^{9}}}}", "9", 0.0),
        ("#### 1,234", "1234", 1.0),
    ]
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(math_reward, r, ref, timeout_s=1.0) for r, ref, _ in cases * 2]
        assert [f.result(timeout=30) for f in futures] == [want for _, _, want in cases * 2]
    with ThreadPoolExecutor(max_workers=1) as pool:
        rewards, stats = pool.submit(math_reward_batch, ["\\boxed{2}"], ["2"]).result(timeout=30)
    assert rewards == [1.0] and isinstance(stats, MathRewardStats)


@pytest.mark.parametrize("name", ["gsm8k_test_sample100.jsonl", "math500_test_sample100.jsonl"])
def test_gold_solutions_meet_the_real_data_bars(verifier, name):
    golds = [row["answer"] for row in _rows(name)]
    refs = [_reference_of(g) for g in golds]
    own, own_stats = verifier.score(golds, refs)
    assert sum(own) / len(own) >= 0.99, [refs[i] for i, r in enumerate(own) if r == 0.0]
    assert own_stats.timeouts == own_stats.errors == own_stats.no_answer == 0

    nexts = refs[1:] + refs[:1]
    same, _ = verifier.score(["\\boxed{" + r + "}" for r in nexts], refs)
    keep = [i for i, s in enumerate(same) if s == 0.0]
    assert len(keep) >= 95  # only a few neighbouring rows share an answer
    other, _ = verifier.score([golds[i] for i in keep], [nexts[i] for i in keep])
    assert sum(r == 0.0 for r in other) / len(other) >= 0.99
