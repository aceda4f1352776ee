"""Loading a run config: defaults in code (`engine/config.py`), then a YAML file, then dotted
`key.sub=value` overrides; errors name the key and, for a typo, the nearest valid key.

    cfg = load_config("configs/demo/grpo.yaml", ["steps=3", "rollout.temperature=0.8"])
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from engine.config import ConfigError, RunConfig, TaskConfig

# ----------------------------------------------------------------------------------------------
# Loading: YAML + dotted overrides, with errors that name the key.


def _valid_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        keys.append(prefix + name)
        for ann in (field.annotation, *get_args(field.annotation)):  # X and X | None
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                keys.extend(_valid_keys(ann, prefix + name + "."))
    return keys


def _unknown_key_message(key: str, model: type[BaseModel] = RunConfig, what: str = "config") -> str:
    valid = _valid_keys(model)
    parts = key.split(".")
    if model is RunConfig and len(parts) > 2 and parts[0] == "tasks":  # tasks.<name>.<key>: within TaskConfig
        valid = [f"tasks.{parts[1]}.{k}" for k in _valid_keys(TaskConfig)]
    near = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    if not near:  # try the last component alone, e.g. "rollout.temprature" -> "temperature"
        leaf = key.rsplit(".", 1)[-1]
        near = [k for k in valid if difflib.get_close_matches(leaf, [k.rsplit(".", 1)[-1]], cutoff=0.75)]
    hint = f"; did you mean '{near[0]}'?" if near else ""
    return f"unknown {what} key '{key}'{hint}"


def format_error(err: ValidationError, model: type[BaseModel] = RunConfig, what: str = "config") -> str:
    """pydantic's errors as one line each, naming the key (and the nearest valid one for a typo)."""
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("int", "literal")))
        if e["type"] == "extra_forbidden":
            lines.append(_unknown_key_message(key, model, what))
        elif not key:  # a check across keys: its message names them
            lines.append(f"{what}: {e['msg']}")
        else:
            lines.append(f"{what} key '{key}': {e['msg']} (got {e.get('input')!r})")
    return "\n".join(dict.fromkeys(lines))


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=value` -> (["a", "b"], value) with the value parsed as YAML (numbers, bools, lists)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw != "" else ""
    return key.split("."), value


def apply_override(tree: dict, path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key '{'.'.join(path)}': '{part}' is a value, not a section")
        node = child
    node[path[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults, then the YAML file (if any), then `key.sub=value` overrides."""
    tree: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            tree = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if not isinstance(tree, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of keys to values")
    for text in overrides or []:
        keys, value = parse_override(text)
        apply_override(tree, keys, value)
    return config_from_dict(tree)


def config_from_dict(tree: dict) -> RunConfig:
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_error(e)) from None


def dump_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
