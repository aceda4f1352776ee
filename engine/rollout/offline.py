"""The offline rollout pool on disk (`offline_rollouts: FILE`): a sweep's offline runs share the
seed's rollouts instead of each generating them again.

    pool = cached_pool(Path(cfg.offline_rollouts), pool_key(cfg), make)   # make() -> the pool

The file holds the pool and the key of the settings it was made with (the seed model's weights,
prompts, sampling, steps); a file made with other settings is replaced. Writes are atomic. What
a pool entry holds is RolloutSource's business (engine/rollout/source.py).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch

from engine.config import RunConfig
from engine.files import atomic_write


def pool_key(cfg: RunConfig) -> str:
    """What the offline pool depends on: the seed model's weights, prompts, sampling, steps."""
    digest = hashlib.sha256()
    for f in sorted(Path(cfg.model).glob("*.safetensors")):
        digest.update(f.read_bytes())
    return json.dumps({"weights": digest.hexdigest(), "data": cfg.data.model_dump(), "rollout": cfg.rollout.model_dump(),
                       "tasks": {n: t.model_dump() for n, t in cfg.tasks.items()}, "steps": cfg.steps}, sort_keys=True)


def cached_pool(path: Path, key: str, make: Callable[[], list]) -> list:
    """The pool saved at `path` if it was made for `key`, else `make()`, written to `path`."""
    if path.is_file():
        saved = torch.load(path, weights_only=False)
        if saved.get("key") == key:
            print(f"offline rollouts: loaded {path}", flush=True)
            return saved["pool"]
        print(f"offline rollouts: {path} was made for other settings; making a new pool", flush=True)
    pool = make()
    atomic_write(path, lambda tmp: torch.save({"key": key, "pool": pool}, tmp))
    return pool
