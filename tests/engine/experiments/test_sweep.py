"""`semionline sweep`: the sweep file, the report's numbers and claims, offline pools shared across
seeds with one engine, and the quick sweep end to end, killed midway and resumed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from engine.config import ConfigError
from engine.config_load import config_from_dict
from engine.experiments.report import Stat, compare, write_report
from engine.experiments.sweep import Sweep, config_hash, slug

REPO = Path(__file__).resolve().parents[3]
PAPER = REPO / "configs" / "paper_cpu.yaml"


def test_paper_sweep_file_expands_and_validates():
    sweep = Sweep.load(PAPER)
    runs = sweep.validate()
    assert len(runs) == 3 * 6 * 3 + 3 + 2 * 3 and len(sweep.seeds) >= 3
    matched = [(s, cfg) for s, cfg in runs if s.task == "multitask (data-matched)"]
    assert {s.method for s, _ in matched} == {"offline DPO", "online DPO"}
    assert all(cfg.rollout.prompts_per_step == 32 and set(cfg.tasks) == {"math", "chat"} for _, cfg in matched)
    mixed = [cfg for s, cfg in runs if s.task == "multitask (math GRPO + chat DPO)"]
    assert len(mixed) == 3 and all(c.objective == "grpo" and c.tasks["chat"].objective == "dpo" for c in mixed)
    assert mixed[0].tasks["chat"].reward == "reward_model" and mixed[0].tasks["math"].objective is None
    by = {(s.task, s.method, s.seed): cfg for s, cfg in runs}
    off = by[("math", "offline DPO", 1)]
    assert off.offline and off.offline_rollouts.endswith("math/offline_rollouts.pt") and off.seed == 1
    assert by[("chat", "semi-online DPO (s=5)", 0)].sync_every == 5
    chat = by[("multitask", "online GRPO", 2)].tasks["chat"]
    assert chat.reward == "reward_model" and chat.reward_model_path == ".cache/rm"
    assert chat.eval_reward == "engine.demo.chat:gold_quality" and chat.data == ".cache/seed_mt/data/chat_train.jsonl"
    assert all(cfg.eval.seed == 1234 for _, cfg in runs)  # one eval seed: the step-0 eval is shared

    quick = Sweep.load(PAPER, quick=True)
    qruns = quick.validate()
    assert len(qruns) == 3 * 6 + 1 + 2 and all(cfg.steps == 2 for _, cfg in qruns)
    assert quick.out == Path("runs/paper_cpu_quick") and quick.seed_model == Path(".cache/seed")


def test_sweep_file_errors_name_the_key(tmp_path):
    tree = yaml.safe_load(PAPER.read_text())
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**tree, "sedes": [0]}))
    with pytest.raises(ConfigError, match="unknown sweep key 'sedes'; did you mean 'seeds'"):
        Sweep.load(bad)
    bad.write_text(yaml.safe_dump({**tree, "quick": {**tree["quick"], "reward_model_stepz": 3}}))
    with pytest.raises(ConfigError, match="'quick.reward_model_stepz'; did you mean 'quick.reward_model_steps'"):
        Sweep.load(bad, quick=True)
    tree["methods"]["online DPO"]["sync_evry"] = 1
    bad.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"online DPO.*sync_evry"):
        Sweep.load(bad).validate()


def test_stats_and_welch():
    a, b = Stat([0.30, 0.32, 0.34]), Stat([0.20, 0.21, 0.19])
    assert a.fmt() == "0.320 ± 0.020" and Stat([0.5]).fmt() == "0.500"
    diff, se = compare(a, b)
    assert diff == pytest.approx(0.12) and se == pytest.approx((0.02**2 / 3 + 0.01**2 / 3) ** 0.5)
    assert compare(Stat([1.0]), b)[1] is None


def _fake_run(path: Path, final: dict, spec, steps: int = 4) -> None:
    path.mkdir(parents=True)
    rows = [{"step": 0, **{k: 0.2 for k in final}}]
    rows += [{"step": t, "reward/mean/math": 0.1 * t, "policy/entropy/math": 1.0, "response/length": 20.0}
             for t in range(1, steps)]
    rows.append({"step": steps, **final})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (path / "summary.json").write_text(json.dumps({"config_hash": config_hash(spec)}))


def test_report_tables_claims_and_plots(tmp_path):
    """A report from metrics files with known numbers: the table's means and spreads, a claim that
    holds (online beats offline by far more than its noise) and one that does not."""
    sweep = Sweep.load(PAPER, out=str(tmp_path))
    sweep.tasks = {"math": sweep.tasks["math"]}
    sweep.methods = {k: sweep.methods[k] for k in ("offline DPO", "online DPO", "online GRPO")}
    finals = {"offline DPO": [0.20, 0.22, 0.21], "online DPO": [0.30, 0.31, 0.32], "online GRPO": [0.25, 0.35, 0.30]}
    cfgs = {(s.method, s.seed): s for s in sweep.runs()}
    for method, accs in finals.items():
        for seed, acc in enumerate(accs):
            _fake_run(tmp_path / "math" / slug(method) / f"seed{seed}", {"eval/math/accuracy": acc}, cfgs[method, seed])
    stale = tmp_path / "math" / slug("online DPO") / "seed0" / "summary.json"  # a run made with other settings
    stale_text = stale.read_text()
    stale.write_text(json.dumps({"config_hash": "0" * 16}))
    assert "| online DPO | 0.315 ± 0.007 |" in write_report(sweep).read_text()  # left out
    stale.write_text(stale_text)
    text = write_report(sweep).read_text()
    assert "| seed model | 0.200 |" in text
    assert "| online DPO | 0.310 ± 0.010 |" in text and "| offline DPO | 0.210 ± 0.010 |" in text
    assert "online DPO beats offline DPO: online DPO 0.310 ± 0.010 vs offline DPO 0.210 ± 0.010" in text
    beats = next(line for line in text.splitlines() if "online DPO beats offline DPO" in line)
    assert beats.endswith("**holds**.")
    close = next(line for line in text.splitlines() if "GRPO is close to online DPO" in line)
    assert close.endswith("**holds**.")  # 0.30 +- 0.05 vs 0.31: within noise
    assert (tmp_path / "math_eval.png").stat().st_size > 5000 and (tmp_path / "math_dynamics.png").is_file()
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["math"]["online DPO"]["eval/math/accuracy"]["values"] == [0.30, 0.31, 0.32]


@pytest.mark.slow
def test_offline_pool_is_made_once_and_shared_with_one_engine(seed_model, tmp_path):
    """Two offline runs (seeds 0 and 1) and an online one in one process with one vLLM engine: the
    second offline run loads the first one's pool (same rollouts, in its own order), and every run
    starts from the seed's weights (the step-0 log-prob gap is checked after each push)."""
    from engine.parallel.mesh import Mesh
    from engine.run import build_run
    from engine.sampler.vllm_engine import VLLMSampler

    pool = tmp_path / "pool.pt"
    base = {"model": str(seed_model), "objective": "dpo", "steps": 3, "data": {"train": f"{seed_model}/data/train.jsonl",
            "eval": f"{seed_model}/data/heldout.jsonl"}, "rollout": {"prompts_per_step": 4, "samples_per_prompt": 4,
            "max_tokens": 40}, "eval": {"every": 0, "max_prompts": 8, "samples": 1, "max_tokens": 40, "seed": 7},
            "optim": {"lr": 1e-4}}  # fmt: skip
    mesh = Mesh.init(tp_size=1, pp_size=1)
    sampler = VLLMSampler(str(seed_model), seed=0)
    cache: dict = {}
    try:
        batches, firsts = [], []
        for k, tree in enumerate([{**base, "seed": 0, "sync_every": "offline", "offline_rollouts": str(pool)},
                                  {**base, "seed": 1, "sync_every": "offline", "offline_rollouts": str(pool)},
                                  {**base, "seed": 2, "sync_every": 1}]):
            loop = build_run(config_from_dict(tree), tmp_path / f"run{k}", mesh, sampler=sampler, step0_cache=cache)
            loop.run()
            batches.append([[r.prompt_index for r in b.rollouts] for b in loop.source.offline])
            rows = [json.loads(x) for x in (tmp_path / f"run{k}" / "metrics.jsonl").read_text().splitlines()]
            firsts.append(rows[0])
            if k == 0:
                mtime = pool.stat().st_mtime_ns
        assert pool.stat().st_mtime_ns == mtime  # made once
        assert sorted(map(tuple, batches[0])) == sorted(map(tuple, batches[1]))  # the same pool...
        assert len(batches[0]) == 3 and batches[2] == []
        assert all(f["sync/logprob_gap"] <= 1e-3 for f in firsts)  # every run starts on the seed's weights
        assert firsts[0]["eval/accuracy"] == firsts[1]["eval/accuracy"] == firsts[2]["eval/accuracy"]  # shared step 0
        assert len(cache) == 1
    finally:
        sampler.close()
        mesh.destroy()


@pytest.mark.slow
def test_quick_sweep_killed_midway_resumes(seed_model, tmp_path):
    """`semionline sweep --quick` (what CI runs): killed (SIGKILL) after its first runs, then run
    again: done runs are skipped, the interrupted one is redone, and the report has every row."""
    out = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "engine.cli", "sweep", "--config", str(PAPER), "--quick", "--out", str(out)]
    cfg = yaml.safe_load(PAPER.read_text())
    rm = REPO / cfg["quick"]["reward_model"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 400
    while time.time() < deadline and len(list(out.glob("*/*/seed0/summary.json"))) < 2 and proc.poll() is None:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.parent for p in out.glob("*/*/seed0/summary.json")}
    assert len(done_before) >= 2 and rm.is_dir()

    t0 = time.time()
    run = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads(next(line for line in run.stdout.splitlines() if line.startswith("{")))
    assert summary["skipped"] == len(done_before) and summary["ran"] == 21 - len(done_before)
    for summary_file in out.glob("*/*/seed0/summary.json"):
        rows = [json.loads(x) for x in (summary_file.parent / "metrics.jsonl").read_text().splitlines()]
        steps = [r["step"] for r in rows]
        assert steps == sorted(steps) and steps[-1] == 2  # one clean run, no metrics from a killed one
        assert [s for s in steps if s > 0] == [1, 2]
    report = (out / "report.md").read_text()
    for task in ("math", "chat", "multitask"):
        assert f"### {task}" in report and (out / f"{task}_eval.png").is_file()
    assert report.count("| online GRPO |") == 4 and "Quick mode" in report  # 3 tasks + the mixed-objective one
    assert len(list(out.glob("*/*/seed0/summary.json"))) == 21
    print(f"resumed quick sweep: {time.time() - t0:.0f} s")
