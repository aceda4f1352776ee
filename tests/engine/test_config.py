import pytest

from engine.config import ConfigError
from engine.config_load import dump_config, load_config


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


def test_tasks_schema_and_path_checks(tmp_path):
    from engine.tasks import check_paths

    data = tmp_path / "math.jsonl"
    data.write_text('{"prompt": "Q: 1+1?\\nA:", "answer": "2"}\n')
    cfg = load_config(None, [f"tasks.math.data={data}", "tasks.math.objective=grpo",
                             f"tasks.chat.data={data}", "tasks.chat.reward=reward_model",
                             f"tasks.chat.reward_model_path={tmp_path}", "tasks.chat.dpo.beta=0.01",
                             "tasks.chat.objective=dpo", "tasks.chat.weight=0.5"])
    assert cfg.tasks["chat"].dpo.beta == 0.01 and cfg.tasks["math"].dpo is None and cfg.tasks["chat"].weight == 0.5
    check_paths(cfg)
    missing = load_config(None, [f"tasks.math.data={tmp_path / 'nope.jsonl'}"])
    with pytest.raises(ConfigError, match=r"'tasks.math.data': .*nope.jsonl: no such file or folder"):
        check_paths(missing)
    no_rm = load_config(None, [f"tasks.chat.data={data}", "tasks.chat.reward=reward_model"])
    with pytest.raises(ConfigError, match="tasks.chat.reward_model_path"):
        check_paths(no_rm)
    with pytest.raises(ConfigError, match="did you mean 'tasks.chat.dpo.beta'"):
        load_config(None, [f"tasks.chat.data={data}", "tasks.chat.dpo.betta=1"])
    with pytest.raises(ConfigError, match="'data.train': .*no such file or folder"):
        check_paths(load_config(None, ["data.train=/no/such/file.jsonl"]))


@pytest.mark.parametrize("name", ["math_grpo", "math_dpo", "chat_dpo", "chat_grpo", "multitask"])
def test_paper_configs_load_and_name_missing_user_files(name, monkeypatch):
    from pathlib import Path

    from engine.tasks import check_paths

    monkeypatch.chdir(Path(__file__).resolve().parents[2])  # the configs' paths are repo-relative
    cfg = load_config(f"configs/paper/{name}.yaml")
    assert cfg.optim.lr == 1e-6 and cfg.optim.grad_clip == 0.1
    if name.startswith("math"):
        check_paths(cfg)  # the GSM8K / MATH-500 files ship in data/
        assert cfg.data.chat_template and "\\boxed{}" in cfg.data.prompt_template.format(prompt="")
    else:
        with pytest.raises(ConfigError, match=r"'tasks\.chat\.data': data/chat/train.jsonl: no such file or folder"):
            check_paths(cfg)
