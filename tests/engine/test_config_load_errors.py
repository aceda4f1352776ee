"""Config loading errors that name what is wrong (engine/config_load.py): unreadable YAML, a
top level that is not a mapping, malformed overrides, an override into a value, and the nearest
valid key found by the last component of a dotted key."""

import pytest

from engine.config import ConfigError
from engine.config_load import _unknown_key_message, load_config, parse_override


def test_yaml_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(bad)
    bad.write_text("- steps: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: the top level must be a mapping of keys to values"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.yaml")


def test_override_errors():
    with pytest.raises(ConfigError, match="override '=3' has an empty key"):
        parse_override("=3")
    with pytest.raises(ConfigError, match="override 'steps' is not of the form key=value"):
        parse_override("steps")
    with pytest.raises(ConfigError, match=r"config key 'steps\.x': 'steps' is a value, not a section"):
        load_config(None, ["steps=3", "steps.x=1"])
    assert parse_override("rollout.temperature=") == (["rollout", "temperature"], "")
    cfg = load_config(None, ["steps=3", "rollout.temperature=0.5"])
    assert cfg.steps == 3 and cfg.rollout.temperature == 0.5


def test_nearest_key_by_its_last_component():
    msg = _unknown_key_message("qqqqqqqqqqqqqqqqqqqqqqqqqqqq.temprature")
    assert msg.startswith("unknown config key 'qqqqqqqqqqqqqqqqqqqqqqqqqqqq.temprature'; did you mean '")
    assert msg.endswith(".temperature'?")
    assert _unknown_key_message("qqqqqqqqqqqqqqqqqqqqqqqqqqqq.zzzzzz") == \
        "unknown config key 'qqqqqqqqqqqqqqqqqqqqqqqqqqqq.zzzzzz'"
