"""Shared fixtures.

`seed_model`: the real CPU seed model (`semionline seed`), which `make test` builds once into
`.cache/seed` and names in SEMIONLINE_SEED_DIR; under a bare `pytest` it is built on first use.
Training tests need it to be a warmed-up model (some answers right, some wrong), or DPO would
find no pairs and GRPO no advantage.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def seed_model() -> Path:
    seed_dir = Path(os.environ.get("SEMIONLINE_SEED_DIR", REPO / ".cache" / "seed")).resolve()  # tests may chdir
    if not (seed_dir / "seed_report.json").exists():
        from engine.demo.seed import build_seed

        build_seed(seed_dir, progress=False)
    return seed_dir
