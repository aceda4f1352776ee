"""`semionline bench suite`: tier times and slowest tests from pytest's output, coverage totals."""

import json

import pytest

from engine.bench.suite import coverage_totals, main, parse_pytest_log

LOG = """\
....s.. [100%]
============================= slowest 3 durations =============================
367.38s call     tests/engine/test_resume.py::test_kill[multitask]
99.87s setup    tests/engine/rewards/test_judge.py::test_real_server
0.01s teardown tests/test_imports.py::test_graph
326 passed, 34 skipped in 2395.34s (0:39:55)
"""


def test_parse_pytest_log_reads_the_summary_and_durations():
    out = parse_pytest_log(LOG)
    assert out["seconds"] == 2395.34 and out["counts"] == {"passed": 326, "skipped": 34}
    assert out["slowest"][0] == {"test": "tests/engine/test_resume.py::test_kill[multitask]", "phase": "call",
                                 "seconds": 367.38}
    assert [s["phase"] for s in out["slowest"]] == ["call", "setup", "teardown"]
    failed = parse_pytest_log("=== 2 failed, 217 passed, 24 skipped in 2522.11s (0:42:02) ===")
    assert failed["counts"] == {"failed": 2, "passed": 217, "skipped": 24}


def test_an_unfinished_log_is_an_error():
    with pytest.raises(ValueError, match="did the run finish"):
        parse_pytest_log("....F..\n")


def _cov(files):
    covered = sum(c for c, _ in files.values())
    total = sum(n for _, n in files.values())
    return {"totals": {"covered_lines": covered, "num_statements": total, "percent_covered": 100 * covered / total},
            "files": {f: {"summary": {"covered_lines": c, "num_statements": n}} for f, (c, n) in files.items()}}


def test_coverage_totals_group_by_package():
    out = coverage_totals(_cov({"engine/loop.py": (9, 10), "engine/sync/weights.py": (1, 4), "kernels/dpo.py": (3, 3)}))
    assert out["percent"] == round(100 * 13 / 17, 2)
    assert out["by_package"]["engine/sync"] == {"covered": 1, "statements": 4, "percent": 25.0}
    assert out["by_package"]["engine"]["statements"] == 10 and out["by_package"]["kernels"]["covered"] == 3
    assert "without" not in out
    scoped = coverage_totals(_cov({"engine/loop.py": (9, 10), "engine/sync/weights.py": (1, 4)}), ("engine/sync",))
    assert scoped["without"] == {"packages": ["engine/sync"], "covered_lines": 9, "statements": 10, "percent": 90.0}


def test_main_writes_a_stamped_report(tmp_path):
    (tmp_path / "t.log").write_text(LOG)
    (tmp_path / "c.json").write_text(json.dumps(_cov({"engine/a.py": (1, 2)})))
    out = tmp_path / "r.json"
    main(["--log", f"test={tmp_path / 't.log'}", "--coverage", f"test={tmp_path / 'c.json'}",
          "--baseline-coverage", str(tmp_path / "c.json"), "--out", str(out)])
    report = json.loads(out.read_text())
    assert report["tiers"]["test"]["seconds"] == 2395.34 and report["coverage"]["before"]["percent"] == 50.0
    assert report["machine"]["cores"] >= 1 and "git_commit" in report["machine"]
