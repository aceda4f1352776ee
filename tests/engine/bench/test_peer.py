"""`semionline bench peer` (engine/bench/peer*.py): statistics, ratio and table on synthetic
timings, the machine stamp, the config and metrics plumbing, and one real tiny run of each side.

    .venv/bin/python -m pytest -q tests/engine/bench/test_peer.py              # fast part
    .venv/bin/python -m pytest -q tests/engine/bench/test_peer.py -m slow      # the real run
"""

import json
import re

import pytest

from engine.bench.peer import main as peer_main
from engine.bench.peer import parse_variant
from engine.bench.peer_semionline import dpo_config, grpo_config, read_steps
from engine.bench.peer_stats import RunTimings, markdown_table, spread, summarize
from engine.bench.peer_work import PeerWork, prepare_pairs, prepare_prompts, response_text
from engine.bench.stamp import machine_stamp
from engine.config_load import config_from_dict


def _run(label, repeat, step_seconds, **phases):
    steps = [{"step": s, **{p: v[i] for p, v in phases.items()}} for i, s in enumerate(step_seconds)]
    return RunTimings(label, repeat, steps, wall_s=sum(step_seconds) + 5.0)


def test_spread_and_summary_on_synthetic_timings():
    assert spread([3.0, 1.0, 2.0, 10.0]) == spread([1.0, 2.0, 3.0, 10.0])
    s = spread([3.0, 1.0, 2.0, 10.0])
    assert (s.median, s.mean, s.low, s.high, s.n) == (2.5, 4.0, 1.0, 10.0, 4)
    runs = [  # first step of every run is a slow warm-up that must not count
        _run("trl", 0, [9.0, 1.0, 1.2], generate=[5.0, 0.4, 0.5]),
        _run("semionline[s1]", 0, [9.0, 2.0, 2.2], generate=[5.0, 1.0, 1.0], train=[3.0, 0.9, 1.1]),
        _run("trl", 1, [9.0, 1.4, 1.6], generate=[5.0, 0.6, 0.7]),
        _run("semionline[s1]", 1, [9.0, 2.0, 2.0], generate=[5.0, 1.0, 1.0], train=[3.0, 0.9, 0.9]),
    ]
    out = summarize(runs, warmup=1)
    trl, sem = out["trl"], out["semionline[s1]"]
    assert trl["phases"]["step"]["median"] == pytest.approx(1.3)  # of 1.0 1.2 1.4 1.6
    assert sem["phases"]["step"]["median"] == pytest.approx(2.0)
    assert sem["ratio"] == pytest.approx(1.3 / 2.0)
    assert sem["ratio_mean"] == pytest.approx(1.3 / 2.05)
    assert sem["paired_ratios"] == pytest.approx([1.1 / 2.1, 1.5 / 2.0])
    assert sem["paired_ratio"]["low"] == pytest.approx(1.1 / 2.1)
    assert trl["startup_s"]["median"] == pytest.approx(5.0)
    assert "ratio" not in trl
    table = markdown_table(out, "tiny")
    assert "| trl | 1.30 (1.00–1.60) | 0.55 (0.40–0.70) | – |" in table
    assert re.search(r"\| semionline\[s1\] \| 2\.00 .* \| 0\.65× \[0\.52–0\.75\] \|", table)


def test_summary_rejects_no_measured_steps_and_missing_baseline():
    with pytest.raises(ValueError, match="none left after 2 warm-up"):
        summarize([_run("trl", 0, [1.0, 1.0])], warmup=2)
    with pytest.raises(ValueError, match="no 'trl' runs"):
        summarize([_run("semionline", 0, [1.0, 1.0])], warmup=1)


def test_machine_stamp():
    s = machine_stamp(matmul_n=256)
    assert s["cores"] >= 1 and s["cpu_model"]
    assert s["matmul_fp32_gflops"] > 0.1  # even a loaded 2-core box does > 1 GFLOP/s
    assert re.fullmatch(r"[0-9a-f]{40}", s["git_commit"]) and isinstance(s["git_dirty"], bool)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", s["utc"])
    assert s["torch"].startswith("2.")


def test_variant_parsing():
    assert parse_variant("s2-overlap:sync_every=2 overlap=true") == (
        "semionline[s2-overlap]", ["sync_every=2", "overlap=true"])
    assert parse_variant("s1:") == ("semionline[s1]", [])
    with pytest.raises(ValueError, match="key=value"):
        parse_variant("s1:sync_every")
    with pytest.raises(ValueError, match="NAME:"):
        parse_variant("s1")


def test_work_files_and_semionline_config(tmp_path):
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps({"question": f"q{i}?", "answer": f"{i}"}) + "\n" for i in range(5)))
    assert prepare_prompts(src, 4, tmp_path / "p.jsonl") == 4
    with pytest.raises(ValueError, match="5 prompt rows, the bench needs 6"):
        prepare_prompts(src, 6, tmp_path / "p.jsonl")
    prepare_pairs(src, 2, tmp_path / "pairs.jsonl")
    rows = [json.loads(x) for x in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    assert rows[0] == {"prompt": "q0?", "chosen": " The answer is 0.", "rejected": " The answer is 1."}
    assert response_text("so 3+4=7\n#### 7") == " so 3+4=7\n#### 7"
    work = PeerWork(objective="grpo", model="/m", data=str(tmp_path / "p.jsonl"), prompts_per_step=2,
                    samples_per_prompt=4, max_tokens=8, steps=2, lr=2e-6)
    work.save(tmp_path / "w.json")
    assert PeerWork.load(tmp_path / "w.json") == work
    cfg = config_from_dict(grpo_config(work))  # the real validator accepts every key
    assert cfg.grpo.kl_coef == 0.0 and cfg.rollout.samples_per_prompt == 4 and cfg.optim.lr == 2e-6
    assert not cfg.grpo.drop_uniform_groups and cfg.eval.max_prompts == 1
    dpo = PeerWork(objective="dpo", model="/m", data=str(tmp_path / "pairs.jsonl"), prompts_per_step=2,
                   samples_per_prompt=2, max_tokens=8, steps=2, dpo_beta=0.2, prompts=str(src))
    cfg = config_from_dict(dpo_config(dpo))
    assert cfg.offline and cfg.data.preferences == dpo.data and cfg.dpo.beta == 0.2 and cfg.data.train == str(src)


def test_read_steps_takes_eval_out(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.1}, {"step": 0, "time/offline_generate": 0.0},
            {"step": 1, "time/step": 2.0, "time/generate": 1.0, "time/train": 0.8, "rollout/response_tokens": 100},
            {"step": 2, "time/step": 3.0, "time/eval": 1.0, "time/generate": 1.0, "time/train": 0.9}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    steps, tokens = read_steps(tmp_path / "metrics.jsonl")
    assert [s["step"] for s in steps] == [2.0, 2.0] and steps[0]["train"] == 0.8 and tokens == [100, 0]


@pytest.mark.slow
def test_real_tiny_run_of_both_sides(seed_model, tmp_path, capsys):
    """Both frameworks for real on the seed model, 2 steps each (1 warm-up, 1 measured)."""
    pytest.importorskip("trl")
    out = tmp_path / "peer.json"
    rc = peer_main(["--model", str(seed_model), "--data", str(seed_model / "data" / "train.jsonl"),
                    "--prompts-per-step", "4", "--samples", "4", "--max-tokens", "8", "--steps", "2",
                    "--repeats", "1", "--micro-batch", "16", "--out", str(out)])
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["order"] == ["trl#0", "semionline[s1]#0"] and res["warmup_steps_skipped"] == 1
    trl, sem = res["summary"]["trl"], res["summary"]["semionline[s1]"]
    assert set(trl["phases"]) >= {"step", "generate", "reward", "score", "train"}
    assert set(sem["phases"]) >= {"step", "generate", "reward", "train", "sync"}
    assert sem["ratio"] > 0 and sem["paired_ratio"]["n"] == 1
    for run in res["runs"]:
        assert len(run["steps"]) == 2 and all(0 < t <= 16 * 8 for t in run["extra"]["response_tokens"])
    assert out.with_suffix(".md").read_text().startswith("### GRPO")
