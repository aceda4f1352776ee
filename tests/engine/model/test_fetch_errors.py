"""fetch_model's build path without converting SmolLM2 (engine/model/fetch.py): a GGUF "package"
made in a temporary folder, `convert_gguf` run on the tiny seed model in place of transformers' GGUF
reader (the copy into a fresh LlamaForCausalLM, the dropped quantization_config, the save), the
cache marker, an old folder without the marker replaced, a failed build leaving nothing behind,
and a folder built by another process while this one waited for the lock.

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/engine/model/test_fetch_errors.py
"""

import json
import os
import stat

import pytest

from engine.model import fetch
from engine.model.fetch import MARKER, FetchError, GGUFSource, fetch_model, gguf_file, read_report


@pytest.fixture
def gguf_pkg(tmp_path, monkeypatch):
    """An importable package `tiny_gguf_pkg` holding `tiny.gguf`, registered as the fetch name `tiny`."""
    root = tmp_path / "site"
    (root / "tiny_gguf_pkg").mkdir(parents=True)
    (root / "tiny_gguf_pkg" / "__init__.py").write_text("raise ImportError('never imported')\n")
    (root / "tiny_gguf_pkg" / "tiny.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(root))
    source = GGUFSource(package="tiny_gguf_pkg", pip_spec="tiny-gguf==1.0", filename="tiny.gguf")
    monkeypatch.setitem(fetch.KNOWN_MODELS, "tiny", source)
    monkeypatch.setattr(fetch, "_check_gguf_deps", lambda: None)
    return source


FACTS = {"num_layers": 1, "hidden_size": 8, "num_heads": 2, "num_kv_heads": 1, "vocab_size": 16,
         "tied_embeddings": False, "has_chat_template": False}


def _fake_convert(calls):
    def convert(gguf_path, out_dir):
        calls.append((gguf_path, out_dir))
        assert out_dir.is_dir() and not any(out_dir.iterdir())  # a fresh temporary folder
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"x" * 100)
        return dict(FACTS)
    return convert


def test_file_missing_from_the_package(gguf_pkg, tmp_path):
    assert gguf_file(gguf_pkg) == tmp_path / "site" / "tiny_gguf_pkg" / "tiny.gguf"  # located, never imported
    (tmp_path / "site" / "tiny_gguf_pkg" / "tiny.gguf").unlink()
    with pytest.raises(FetchError, match=r"tiny\.gguf: missing from the installed package tiny-gguf==1\.0.*"
                                         r"--force-reinstall --no-deps tiny-gguf==1\.0"):
        gguf_file(gguf_pkg)


def test_build_publishes_with_a_marker_and_replaces_an_unfinished_folder(gguf_pkg, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(fetch, "convert_gguf", _fake_convert(calls))
    cache = tmp_path / "cache"
    old = cache / "tiny"
    old.mkdir(parents=True)
    (old / "leftover.bin").write_text("from an older layout")  # no marker: not finished
    out = fetch_model("tiny", cache)
    assert out == old and not (out / "leftover.bin").exists()
    assert calls == [(tmp_path / "site" / "tiny_gguf_pkg" / "tiny.gguf", calls[0][1])]
    assert calls[0][1].parent == cache and calls[0][1].name.startswith(".tiny.") and not calls[0][1].exists()
    report = read_report(out)
    assert report.name == "tiny" and report.source == "tiny-gguf==1.0:tiny.gguf" and report.bytes_on_disk == 102
    assert (report.num_layers, report.vocab_size) == (1, 16) and report.seconds >= 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700
    assert stat.S_IMODE((out / MARKER).stat().st_mode) == 0o666 & ~umask
    assert sorted(p.name for p in cache.iterdir()) == [".tiny.lock", "tiny"]  # no temporary folder left

    assert fetch_model("tiny", cache) == out and len(calls) == 1  # cached: not built again


def test_failed_build_leaves_nothing(gguf_pkg, tmp_path, monkeypatch):
    def broken(gguf_path, out_dir):
        (out_dir / "config.json").write_text("{}")
        raise FetchError("conversion failed")

    monkeypatch.setattr(fetch, "convert_gguf", broken)
    with pytest.raises(FetchError, match="conversion failed"):
        fetch_model("tiny", tmp_path / "cache")
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [".tiny.lock"]


def test_built_by_another_process_while_waiting_for_the_lock(gguf_pkg, tmp_path, monkeypatch):
    from contextlib import contextmanager

    cache = tmp_path / "cache"
    real_locked = fetch._locked

    @contextmanager
    def locked_after_other(path):
        with real_locked(path):  # the other process finished its build just before we got the lock
            (cache / "tiny").mkdir()
            (cache / "tiny" / MARKER).write_text(json.dumps({"name": "tiny"}))
            yield

    monkeypatch.setattr(fetch, "_locked", locked_after_other)
    monkeypatch.setattr(fetch, "convert_gguf", lambda *a: pytest.fail("built twice"))
    assert fetch_model("tiny", cache) == cache / "tiny"


def _hf_stand_in(monkeypatch, seed_model, *, model_type="llama", extra_key=False):
    """transformers' GGUF reader replaced by the seed model (a Llama) marked as quantised."""
    import transformers

    def tokenizer(folder, gguf_file):
        return transformers.PreTrainedTokenizerFast.from_pretrained(str(seed_model))

    def model(folder, gguf_file, dtype):
        m = transformers.LlamaForCausalLM.from_pretrained(str(seed_model), dtype=dtype)
        m.config.quantization_config = {"quant_method": "gguf"}
        m.config.model_type = model_type
        if extra_key:
            sd = m.state_dict()
            m.state_dict = lambda: {**sd, "model.bogus.weight": sd["lm_head.weight"]}
        return m

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", staticmethod(tokenizer))
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", staticmethod(model))
    monkeypatch.setattr(fetch, "_check_gguf_deps", lambda: None)


def test_convert_gguf_copies_the_weights_into_a_plain_checkpoint(seed_model, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    _hf_stand_in(monkeypatch, seed_model)
    out = tmp_path / "out"
    facts = fetch.convert_gguf(tmp_path / "x.gguf", out)
    cfg = json.loads((seed_model / "config.json").read_text())
    assert facts == {"num_layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"],
                     "num_heads": cfg["num_attention_heads"], "num_kv_heads": cfg["num_key_value_heads"],
                     "vocab_size": cfg["vocab_size"], "tied_embeddings": False, "has_chat_template": False}
    saved = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in saved and saved["model_type"] == "llama"
    got, want = load_file(str(out / "model.safetensors")), load_file(str(seed_model / "model.safetensors"))
    assert set(got) == set(want) and all(torch.equal(got[k], want[k].float()) for k in want)
    assert (out / "tokenizer.json").is_file()
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == cfg["max_position_embeddings"]


def test_convert_gguf_refuses_other_architectures_and_misfits(seed_model, tmp_path, monkeypatch):
    _hf_stand_in(monkeypatch, seed_model, model_type="qwen2")
    with pytest.raises(FetchError, match="model_type 'qwen2'; only Llama GGUF files"):
        fetch.convert_gguf(tmp_path / "x.gguf", tmp_path / "a")
    _hf_stand_in(monkeypatch, seed_model, extra_key=True)
    with pytest.raises(FetchError, match=r"do not fit LlamaForCausalLM \(missing \[\], unexpected \['model.bogus.weight'\]\)"):
        fetch.convert_gguf(tmp_path / "x.gguf", tmp_path / "b")
