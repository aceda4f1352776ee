"""`run_sweep` in-process on a sampler that needs no vLLM (tests/scoring_sampler.py: FakeSampler's
responses, log-probs from a model holding the pushed weights, so the real learner's fp32 parity
limit applies): done runs are skipped, a run whose settings changed and a run that was stopped
midway are redone, one engine serves every run and gets the seed's weights at each run's step 0;
plus the sweep file's error paths and `ensure_models`.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/engine/experiments/test_sweep_fakes.py
"""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from engine.config import ConfigError
from engine.experiments.sweep import Sweep, config_hash, ensure_models, is_done, run_sweep


@pytest.fixture(autouse=True)
def _restore_threads():
    """setup_process sets torch's thread count for the run; give the test process its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _data(tmp_path: Path, seed_model: Path) -> Path:
    """Short prompts with one-digit answers, scored by fakes:digit_reward: FakeSampler's "Ans <d>"
    responses are right about one time in ten, so groups and pairs carry a signal."""
    from engine.data.prompts import write_jsonl

    d = tmp_path / "data"
    d.mkdir(exist_ok=True)
    rows = [{"prompt": f"Q: {k} + 0?\nA:", "answer": str(k % 10)} for k in range(16)]
    write_jsonl(d / "train.jsonl", rows)
    write_jsonl(d / "eval.jsonl", rows[:4])
    return d


def _sweep_file(tmp_path: Path, seed_model: Path, **over) -> Path:
    data = _data(tmp_path, seed_model)
    tree = {
        "out": str(tmp_path / "sweep"),
        "seed_model": str(seed_model),
        "seeds": [0],
        "base": {"steps": 2, "learner": {"threads": 1},
                 "rollout": {"prompts_per_step": 4, "samples_per_prompt": 8, "max_tokens": 6},
                 "optim": {"lr": 1e-3},
                 "sampler": {"gap_probe_prompts": 2},
                 "eval": {"every": 0, "max_prompts": 4, "samples": 1, "max_tokens": 6, "seed": 5}},
        "tasks": {"digits": {"tasks": {"digits": {"data": f"{data}/train.jsonl", "eval_data": f"{data}/eval.jsonl",
                                                  "reward": "fakes:digit_reward"}}}},
        "methods": {"online GRPO": {"objective": "grpo", "sync_every": 1},
                    "offline DPO": {"objective": "dpo", "sync_every": "offline"}},
    }  # fmt: skip
    tree.update(over)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


class _Factory:
    """`make_sampler` for run_sweep: a ScoringSampler on the seed model, remembering each call."""

    def __init__(self):
        self.calls, self.samplers = [], []

    def __call__(self, cfg, *, model, seed, dtype, cpu_cores):
        from scoring_sampler import ScoringSampler

        from engine.data.tokenizer import load_tokenizer

        self.calls.append({"model": model, "seed": seed, "dtype": dtype, "cpu_cores": cpu_cores})
        s = ScoringSampler(load_tokenizer(model), model)
        self.samplers.append(s)
        return s


def _summary(spec) -> dict:
    return json.loads((spec.run_dir / "summary.json").read_text())


def test_run_sweep_skips_done_runs_and_redoes_changed_and_partial_ones(seed_model, tmp_path):
    path = _sweep_file(tmp_path, seed_model)
    sweep = Sweep.load(path)
    grpo, dpo = sweep.runs()
    assert (grpo.method, dpo.method) == ("online GRPO", "offline DPO")
    assert dpo.tree["offline_rollouts"] == str(sweep.out / "digits" / "offline_rollouts.pt")

    factory = _Factory()
    result = run_sweep(sweep, make_sampler=factory)
    assert result["ran"] == 2 and result["skipped"] == 0 and result["seconds"] >= 0
    # one engine for all runs; none overlaps generation with training, so its worker takes every core
    assert factory.calls == [{"model": str(seed_model), "seed": 0, "dtype": "float32", "cpu_cores": "all"}]
    sampler = factory.samplers[0]
    assert sampler.closed
    seed_weights = load_file(str(seed_model / "model.safetensors"))
    # a shared engine gets the seed's weights at each run's step 0 (then GRPO's 2 syncs; offline
    # DPO's final eval swaps the trained weights in and the seed's back)
    assert len(sampler.pushes) == 1 + 2 + 1 + 2
    for k in (0, 3):
        assert set(sampler.pushes[k]) == set(seed_weights)
        assert all(torch.equal(sampler.pushes[k][n], seed_weights[n]) for n in seed_weights)
    assert not torch.equal(sampler.pushes[2]["lm_head.weight"], seed_weights["lm_head.weight"])  # GRPO trained
    for spec in (grpo, dpo):
        s = _summary(spec)
        assert (s["task"], s["method"], s["seed"], s["steps"]) == (spec.task, spec.method, 0, 2)
        assert s["config_hash"] == config_hash(spec) and is_done(spec)
        assert set(s["eval_accuracy"]) == {"0", "2"}
        rows = [json.loads(x) for x in (spec.run_dir / "metrics.jsonl").read_text().splitlines()]
        assert rows[0]["sync/logprob_gap"] <= 1e-3  # the step-0 probe: the engine holds the seed
    assert _summary(grpo)["eval_accuracy"]["0"] == _summary(dpo)["eval_accuracy"]["0"]  # one step-0 eval
    assert (sweep.out / "digits" / "offline_rollouts.pt").is_file()

    # again: nothing to do, no engine started
    again = _Factory()
    assert run_sweep(Sweep.load(path), make_sampler=again) == {"ran": 0, "skipped": 2, "seconds": 0.0}
    assert again.calls == []

    # offline DPO's settings change (its hash with them), and its folder holds a stray file (as a
    # run stopped midway leaves one): it is redone in a fresh folder; GRPO is not touched
    tree = yaml.safe_load(path.read_text())
    tree["methods"]["offline DPO"]["dpo"] = {"beta": 0.2}
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    changed = Sweep.load(path)
    grpo2, dpo2 = changed.runs()
    assert config_hash(grpo2) == config_hash(grpo) and config_hash(dpo2) != config_hash(dpo)
    assert is_done(grpo2) and not is_done(dpo2)
    (dpo2.run_dir / "stray.txt").write_text("from the killed sweep")
    grpo_summary = (grpo2.run_dir / "summary.json").read_text()
    third = _Factory()
    assert run_sweep(changed, make_sampler=third)["ran"] == 1
    assert not (dpo2.run_dir / "stray.txt").exists()  # the run's folder was deleted first
    assert is_done(dpo2) and _summary(dpo2)["config_hash"] == config_hash(dpo2) and third.samplers[0].closed
    assert (grpo2.run_dir / "summary.json").read_text() == grpo_summary
    (dpo2.run_dir / "summary.json").unlink()  # no summary: a run stopped before its end
    assert not is_done(dpo2)


def test_run_sweep_refuses_torchrun_before_building_an_engine(seed_model, tmp_path, monkeypatch):
    import engine.process

    destroyed = []

    class TwoRanks:
        world_size = 2

        def destroy(self):
            destroyed.append(True)

    monkeypatch.setattr(engine.process, "init_mesh", lambda cfg: TwoRanks())
    factory = _Factory()
    with pytest.raises(ConfigError, match="runs in one process.*not torchrun"):
        run_sweep(Sweep.load(_sweep_file(tmp_path, seed_model)), make_sampler=factory)
    assert destroyed == [True] and factory.calls == []


def test_ensure_models_builds_only_what_is_missing(tmp_path, monkeypatch, capsys):
    import engine.demo.rm_train
    import engine.demo.seed

    built = []
    monkeypatch.setattr(engine.demo.seed, "build_seed", lambda out, **kw: built.append(("seed", Path(out), kw)))
    monkeypatch.setattr(engine.demo.rm_train, "train_reward_model",
                        lambda out, steps: built.append(("rm", Path(out), steps)))
    sweep = Sweep(out=tmp_path / "o", seed_model=tmp_path / "seed", seed_recipe={"steps": 7}, reward_model=tmp_path / "rm",
                  reward_model_steps=11, seeds=[0], base={}, tasks={}, methods={})
    ensure_models(sweep)
    assert built == [("seed", tmp_path / "seed", {"steps": 7}), ("rm", tmp_path / "rm", 11)]
    assert "building the seed model" in capsys.readouterr().out

    built.clear()  # both present: nothing built
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed" / "seed_report.json").write_text("{}")
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    ensure_models(sweep)
    sweep.reward_model = None
    ensure_models(sweep)
    assert built == []


def test_sweep_file_errors(seed_model, tmp_path):
    with pytest.raises(ConfigError, match="sweep file not found"):
        Sweep.load(tmp_path / "nope.yaml")
    path = _sweep_file(tmp_path, seed_model, quick={"methods": ["online GRPO", "online PPO"], "tasks": ["digits"]})
    with pytest.raises(ConfigError, match=r"quick\.methods names \['online PPO'\], not in methods"):
        Sweep.load(path, quick=True)
    path = _sweep_file(tmp_path, seed_model, quick={"methods": ["offline DPO"], "seeds": [3]})
    quick = Sweep.load(path, quick=True)
    assert list(quick.methods) == ["offline DPO"] and quick.seeds == [3] and quick.out == tmp_path / "sweep_quick"
    assert Sweep.load(path, quick=True, out=str(tmp_path / "x")).out == tmp_path / "x"

    tree = yaml.safe_load(path.read_text())
    tree["tasks"]["digits"]["methods"] = ["online GRPO", "online DPO"]
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match=r"sweep task 'digits': methods \['online DPO'\] are not in methods"):
        Sweep.load(path).runs()

    tree["tasks"]["digits"]["methods"] = ["online GRPO"]  # a subset of the methods for this task
    tree["base"]["tasks"] = {"digits": {"stop": ["{seed_model}/x", "y"]}}  # lists are filled in too
    path.write_text(yaml.safe_dump(tree))
    runs = Sweep.load(path).runs()
    assert [r.method for r in runs] == ["online GRPO"]
    assert runs[0].tree["tasks"]["digits"]["stop"] == [f"{seed_model}/x", "y"]
