import pytest

from engine.config import ConfigError, dump_config, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("objective: dpo\nsync_every: 5\nrollout:\n  samples_per_prompt: 4\n")
    cfg = load_config(path, ["steps=3", "sync_every=2", "dpo.beta=0.05", "optim.betas=[0.9, 0.95]"])
    assert (cfg.objective, cfg.sync_every, cfg.steps) == ("dpo", 2, 3)
    assert cfg.rollout.samples_per_prompt == 4 and cfg.dpo.beta == 0.05 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.grpo.kl_coef == 0.001  # default in code


def test_sync_every_offline_and_schedule():
    cfg = load_config(None, ["sync_every=offline", "steps=4"])
    assert cfg.offline and not any(cfg.sync_due(t) for t in range(1, 5))
    cfg = load_config(None, ["sync_every=2", "steps=4"])
    assert [cfg.sync_due(t) for t in range(1, 5)] == [False, True, False, True]


@pytest.mark.parametrize(
    "override, needle",
    [
        ("stepz=3", "unknown config key 'stepz'; did you mean 'steps'?"),
        ("rollout.temprature=0.5", "did you mean 'rollout.temperature'?"),
        ("sync_every=0", "sync_every"),
        ("objective=ppo", "objective"),
        ("rollout.top_p=1.5", "rollout.top_p"),
        ("steps", "key=value"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_unknown_key_in_yaml_and_missing_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("grpo:\n  kl_coeff: 0.1\n")
    with pytest.raises(ConfigError, match="unknown config key 'grpo.kl_coeff'; did you mean 'grpo.kl_coef'"):
        load_config(path)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["sync_every=offline", "grpo.tis_cap=2.0"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_demo_configs_load():
    for name in ["configs/demo/dpo.yaml", "configs/demo/grpo.yaml"]:
        load_config(name)


def test_kernels_key(monkeypatch):
    assert load_config(None, ["kernels=torch"]).kernels == "torch" and load_config(None).kernels is None
    with pytest.raises(ConfigError, match="kernels"):
        load_config(None, ["kernels=cuda"])
    import torch

    if not torch.cuda.is_available():
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        with pytest.raises(ConfigError, match="config key 'kernels'.*'triton' needs a CUDA device"):
            load_config(None, ["kernels=triton"])
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        assert load_config(None, ["kernels=triton"]).kernels == "triton"
