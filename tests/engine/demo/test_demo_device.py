"""`semionline seed` and `semionline rm-train` take their device from `learner.device`'s resolver
(`engine.parallel.device.resolve_device`, via `--device auto|cpu|cuda`); nothing is trained here.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/engine/demo/test_demo_device.py
"""

import subprocess
import sys

import pytest
import torch

import engine.demo.rm_train as rm_train
import engine.demo.seed as seed
import engine.parallel.device as device_mod
from engine import cli


@pytest.mark.parametrize("command", ["seed", "rm-train"])
def test_cuda_device_without_cuda_fails_before_anything_trains(tmp_path, command):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "engine.cli", command, "--out", str(out), "--device", "cuda"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    for needle in (f"semionline {command}: error: --device=cuda", "torch.cuda.is_available() is False"):
        assert needle in res.stderr, res.stderr[-2000:]
    assert not out.exists() and not list(tmp_path.iterdir())  # nothing built, nothing written


@pytest.fixture
def calls(monkeypatch):
    """Record what the CLI hands the builders (and torch's default device meanwhile) instead of training."""
    seen = []

    def fake_build_seed(out_dir, **kwargs):
        seen.append(("seed", kwargs, torch.get_default_device()))
        return {"out_dir": str(out_dir)}

    def fake_train_reward_model(out_dir, **kwargs):
        seen.append(("rm-train", kwargs, torch.get_default_device()))
        return rm_train.RMReport(str(out_dir), 0, kwargs["steps"], 0, 0.0, 0.0, 0, 0.0)

    monkeypatch.setattr(seed, "build_seed", fake_build_seed)
    monkeypatch.setattr(rm_train, "train_reward_model", fake_train_reward_model)
    return seen


def test_cpu_runs_the_recipe_unchanged(calls, tmp_path):
    assert cli.main(["seed", "--out", str(tmp_path / "s"), "--device", "cpu", "--steps", "7"]) == 0
    assert cli.main(["rm-train", "--out", str(tmp_path / "r"), "--device", "cpu", "--steps", "5"]) == 0
    (_, seed_kwargs, seed_default), (_, rm_kwargs, rm_default) = calls
    assert seed_kwargs == {"seed": 0, "steps": 7}  # no device or precision change on CPU
    assert seed_default == rm_default == torch.device("cpu")
    assert rm_kwargs == {"steps": 5, "seed": 0, "device": torch.device("cpu")}


def test_auto_goes_through_the_learner_device_resolver(calls, monkeypatch, tmp_path):
    asked = []

    def fake_resolve(requested, local_rank=0, *, key="learner.device"):
        asked.append((requested, key))
        return torch.device("cuda", 0)  # as resolve_device answers on a CUDA machine

    monkeypatch.setattr(device_mod, "resolve_device", fake_resolve)
    assert cli.main(["seed", "--out", str(tmp_path / "s")]) == 0
    assert cli.main(["rm-train", "--out", str(tmp_path / "r")]) == 0
    assert asked == [("auto", "--device"), ("auto", "--device")]
    (_, seed_kwargs, seed_default), (_, rm_kwargs, rm_default) = calls
    assert seed_default == torch.device("cuda", 0) and seed_kwargs["precision"] == "fp32"
    assert rm_kwargs["device"] == torch.device("cuda", 0) and rm_default == torch.device("cpu")
    assert torch.get_default_device() == torch.device("cpu")  # the seed's CUDA default does not leak


def test_auto_without_cuda_is_cpu_and_a_bad_value_is_named(calls, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["rm-train", "--out", str(tmp_path / "r")]) == 0
    assert calls[-1][1]["device"] == torch.device("cpu")
    assert cli.main(["seed", "--out", str(tmp_path / "s"), "--device", "tpu"]) == 2
    assert "--device='tpu': expected one of auto, cpu, cuda" in capsys.readouterr().err
    assert len(calls) == 1
