"""The sweep report's less travelled paths (engine/experiments/report.py), from metrics files with
known numbers: scored-task columns (gold quality, RM reward), claims with one seed ("cannot
tell") or missing runs ("not measured"), the multi-task vs single-task claims, a method absent from
a task, a metric a method never logged, a task whose runs logged no eval, and the wall time."""

import json
import math
from pathlib import Path

import pytest

from engine.experiments.report import Stat, write_report
from engine.experiments.sweep import Sweep, config_hash, slug

METHODS = ["offline DPO", "semi-online DPO (s=5)", "online DPO", "online GRPO"]


def _sweep(out: Path) -> Sweep:
    tasks = {"math": {"tasks": {"math": {}}}, "chat": {"tasks": {"chat": {}}},
             "multitask": {"tasks": {"math": {}, "chat": {}, "poetry": {}}}, "noeval": {"tasks": {"math": {}}},
             "unrun": {"tasks": {"math": {}}}}  # fmt: skip
    return Sweep(out=out, seed_model=Path("seed"), seed_recipe={}, reward_model=None, reward_model_steps=1,
                 seeds=[0, 1], base={"steps": 3}, tasks=tasks, methods={m: {} for m in METHODS})


def _run(sweep: Sweep, task: str, method: str, seed: int, final: dict, initial: dict | None = None) -> None:
    spec = next(s for s in sweep.runs() if (s.task, s.method, s.seed) == (task, method, seed))
    spec.run_dir.mkdir(parents=True)
    rows = [{"step": 0, **(initial or {k: 0.1 for k in final})},
            {"step": 1, "response/length": 10.0 + seed, "reward/mean": 0.5},
            {"step": 3, "response/length": 12.0, **final}]
    (spec.run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (spec.run_dir / "summary.json").write_text(json.dumps({"config_hash": config_hash(spec), "seconds": 30.0}))


def _line(text: str, start: str) -> str:
    return next(x for x in text.splitlines() if x.startswith(start))


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    sweep = _sweep(out)
    math_acc = {"offline DPO": [0.20, 0.22], "semi-online DPO (s=5)": [0.30, 0.34], "online DPO": [0.30, 0.32]}
    for method, accs in math_acc.items():
        for seed, acc in enumerate(accs):
            _run(sweep, "math", method, seed, {"eval/math/accuracy": acc})
    _run(sweep, "math", "online GRPO", 0, {"eval/math/accuracy": 0.40})  # one seed only
    for seed, (gold, rm) in enumerate([(1.0, 0.5), (1.2, 0.7)]):
        _run(sweep, "chat", "online DPO", seed, {"eval/chat/gold/score": gold, "eval/chat/gold/win_rate": 0.6,
                                                 "eval/chat/reward": rm})
        _run(sweep, "chat", "offline DPO", seed, {"eval/chat/gold/score": gold - 0.5, "eval/chat/gold/win_rate": 0.4,
                                                  "eval/chat/reward": rm - 0.5})
    for seed, acc in enumerate([0.50, 0.52]):
        _run(sweep, "multitask", "online DPO", seed, {"eval/math/accuracy": acc, "eval/chat/gold/score": 1.1,
                                                      "eval/chat/gold/win_rate": 0.5, "eval/chat/reward": 0.6})
    # logged no chat metrics; poetry has no single-task runs to compare with
    _run(sweep, "multitask", "online GRPO", 0, {"eval/math/accuracy": 0.45, "eval/poetry/accuracy": 0.3})
    _run(sweep, "noeval", "online DPO", 0, {"train/loss": 1.0})  # no eval at all
    path = write_report(sweep, wall_seconds=90.0)
    return out, path.read_text(), json.loads((out / "report.json").read_text())


def test_scored_task_columns_and_empty_cells(report):
    out, text, data = report
    assert "| model | chat: gold quality | chat: gold win rate vs seed | chat: RM reward |" in text
    assert "| online DPO | 1.100 ± 0.141 | 0.600 ± 0.000 | 0.600 ± 0.141 |" in text
    assert "| semi-online DPO" not in text.split("### chat")[1].split("###")[0]  # a method without runs: no row
    multi = text.split("### multitask")[1].split("###")[0]
    assert "| online GRPO | 0.450 | — | — | — | 0.300 |" in multi  # one seed: no spread; metrics it never logged: —
    assert "### noeval" not in text and "### unrun" not in text  # nothing to tabulate
    assert not (out / "noeval_eval.png").exists() and (out / "noeval_dynamics.png").is_file()
    assert not (out / "unrun_dynamics.png").exists() and (out / "multitask_eval.png").is_file()
    grpo = data["math"]["online GRPO"]["eval/math/accuracy"]
    assert grpo["values"] == [0.40] and math.isnan(grpo["std"])


def test_claims_with_one_seed_missing_runs_and_multitask(report):
    _, text, _ = report
    assert _line(text, "- GRPO is close to online DPO: online GRPO 0.400 vs online DPO 0.310 ± 0.014") == (
        "- GRPO is close to online DPO: online GRPO 0.400 vs online DPO 0.310 ± 0.014 (difference +0.090) — "
        "**cannot tell (one seed)**.")
    alike = _line(text, "- Semi-online and online DPO perform alike: semi-online DPO (s=5) 0.320 ± 0.028")
    assert alike.endswith("(difference +0.010, 2·SE = 0.045) — **holds**.")
    chat = text.split("**chat, chat (eval/chat/gold/score)**")[1].split("**")[0]
    assert "- Semi-online and online DPO perform alike — not measured (missing runs)." in chat
    assert ("- Multi-tasking helps math (eval/math/accuracy), online DPO: multi-task 0.510 ± 0.014 vs math-only "
            "0.310 ± 0.014 (difference +0.200, 2·SE = 0.028) — **holds**.") in text
    assert ("- Multi-tasking helps chat (eval/chat/gold/score), online DPO: multi-task 1.100 ± 0.000 vs chat-only "
            "1.100 ± 0.141 (difference +0.000, 2·SE = 0.200) — **does not hold (within noise)**.") in text
    assert "**chat, chat (eval/chat/reward)**" in text
    assert "**multitask, poetry (eval/poetry/accuracy)**" in text and "Multi-tasking helps poetry" not in text  # scored tasks: gold score and RM reward both judged
    assert "Multi-tasking helps math (eval/math/accuracy), online GRPO: multi-task 0.450 vs math-only 0.400 " \
           "(difference +0.050) — **cannot tell (one seed)**." in text


def test_head_counts_runs_and_times(report):
    _, text, _ = report
    assert "- Runs: 15 of 40 done (5 tasks × up to 4 methods × 2 seeds [0, 1]); 3 optimizer steps each" in text
    assert "- Run time: 15 runs, 7.5 min in all" in text
    assert "- Wall time of this sweep invocation: 1.5 min." in text


def test_stat_edge_cases():
    assert Stat().fmt() == "—" and math.isnan(Stat().mean) and math.isnan(Stat([1.0]).std)
    assert slug("semi-online DPO (s=5)") == "semi_online_dpo_s_5"
