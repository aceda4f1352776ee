"""`CausalLM` + `hf_io` against Hugging Face transformers, at TP=1 (in process) and TP=2 (torchrun).

    .venv/bin/python -m pytest tests/engine/model -q

Tiny random fp32 models (weights re-drawn at unit scale so every path moves the logits):
`llama_gqa` (4 heads / 2 kv heads, head_dim 64 != hidden/heads, Llama-3.1 RoPE scaling),
`llama_mqa` (2 heads / 1 kv head, sharded checkpoint; TP=1 only), `qwen2_tied` (q/k/v bias,
tied embeddings, sharded checkpoint) and `qwen3` (per-head q/k RMSNorm before RoPE, 4 heads / 2 kv
heads of 64; its norm weights are re-drawn too, so a missed norm or a TP-partial norm gradient shows).
Logits and gradients must match transformers to TOL = 1e-5 (relative to max |want| above 1;
measured on 2 CPU cores: logits <= 4.1e-6 (TP=2 gathered), gradients <= 2.7e-6; the issue's bar is 1e-4);
checkpoints re-saved by `save_hf` must be bit-identical and load back into transformers.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from engine.model.config import ModelConfig, RopeScaling
from engine.model.hf_io import iter_hf_weights, load_model, save_hf
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh

REPO = Path(__file__).resolve().parents[3]
TINY = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, dtype="float32")
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
CASES = {
    "llama_gqa": (LlamaForCausalLM, LlamaConfig(**TINY, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                                rope_parameters=LLAMA3_ROPE, eos_token_id=[2, 3])),
    "llama_mqa": (LlamaForCausalLM, LlamaConfig(**TINY, num_attention_heads=2, num_key_value_heads=1)),
    "qwen2_tied": (Qwen2ForCausalLM, Qwen2Config(**TINY, num_attention_heads=2, num_key_value_heads=2,
                                                 tie_word_embeddings=True, bos_token_id=5, eos_token_id=6)),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config(**TINY, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
}
SHARDED = {"llama_mqa", "qwen2_tied"}
TOL = 1e-5  # fp32 parity with transformers, see the module docstring
TP2_CASES = ("llama_gqa", "qwen2_tied", "qwen3")


def _tiny_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t0")


def _reference(hf_model: torch.nn.Module, input_ids: torch.Tensor, loss_weights: torch.Tensor) -> dict:
    hf_model.zero_grad()
    logits = hf_model(input_ids).logits
    (logits * loss_weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in hf_model.named_parameters()}
    return {"input_ids": input_ids, "loss_weights": loss_weights, "logits": logits.detach(), "grads": grads}


@pytest.fixture(scope="module")
def hf_cases(tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    """case -> (HF checkpoint dir, reference dict from transformers)."""
    root = tmp_path_factory.mktemp("hf")
    gen = torch.Generator().manual_seed(0)
    out = {}
    for case, (cls, config) in CASES.items():
        torch.manual_seed(0)
        model = cls(config).eval()
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("norm.weight"):
                    p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
                elif name.endswith("bias"):
                    p.copy_(0.1 * torch.randn(p.shape, generator=gen))
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
        model_dir = root / case
        model.save_pretrained(model_dir, max_shard_size="150KB" if case in SHARDED else "1GB")
        _tiny_tokenizer(config.vocab_size).save_pretrained(model_dir)
        input_ids = torch.randint(1, config.vocab_size, (3, 19), generator=gen)
        input_ids[1, 12:] = 0  # right padding
        input_ids[2, 5:] = 0
        loss_weights = torch.randn(3, 19, config.vocab_size, generator=gen)
        out[case] = (model_dir, _reference(model, input_ids, loss_weights))
    assert (root / "qwen2_tied" / "model.safetensors.index.json").exists()  # really sharded
    return out


@pytest.fixture(scope="module")
def mesh():
    with Mesh.init(tp_size=1) as mesh:
        yield mesh


def _hf_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(path))
    return tensors


def _assert_close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float = TOL) -> None:
    """max |got - want| <= tol (absolute while |want| <= 1, relative to max |want| above)."""
    err = (got - want).abs().max().item()
    assert err <= tol * max(1.0, want.abs().max().item()), f"{name}: max abs diff {err:.3g}"


def _assert_checkpoint_round_trip(saved: Path, original: Path, ref: dict) -> None:
    got, want = _hf_tensors(saved), _hf_tensors(original)
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name
    saved_cfg = json.loads((saved / "config.json").read_text())
    assert ModelConfig.from_hf_dict(saved_cfg) == ModelConfig.from_hf_dict(json.loads((original / "config.json").read_text()))
    assert not [p for p in saved.parent.iterdir() if p.name.startswith(f".{saved.name}.")]  # no temp dirs left
    reloaded = AutoModelForCausalLM.from_pretrained(saved).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(ref["input_ids"]).logits, ref["logits"])
    assert AutoTokenizer.from_pretrained(saved).convert_tokens_to_ids("t7") == 7


def test_mesh_single_process(mesh):
    assert (mesh.world_size, mesh.rank, mesh.tp_size, mesh.tp_rank, mesh.dp_size, mesh.pp_size) == (1, 0, 1, 0, 1, 1)
    assert mesh.tp_group.size() == 1


@pytest.mark.parametrize("case", CASES)
def test_tp1_logits_and_grads_match_hf(case, hf_cases, mesh):
    model_dir, ref = hf_cases[case]
    model = load_model(model_dir, mesh)
    local = model(ref["input_ids"])
    assert local.shape == ref["logits"].shape and ref["logits"].abs().max() < 10
    assert (model.gather_logits(local).detach() - ref["logits"]).abs().max() <= TOL
    hidden = model.hidden_states(ref["input_ids"])
    assert hidden.shape == (3, 19, model.cfg.hidden_size)
    _assert_close("hidden @ lm_head_weight.T", (hidden @ model.lm_head_weight.T).detach(), ref["logits"])

    (model.gather_logits(local) * ref["loss_weights"]).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)
    grads = dict(iter_hf_weights(model))
    assert grads.keys() == ref["grads"].keys()
    for name, grad in grads.items():
        _assert_close(f"grad {name}", grad, ref["grads"][name])


@pytest.mark.parametrize("case", ["llama_gqa", "qwen2_tied", "qwen3"])
def test_tp1_save_hf_round_trip(case, hf_cases, mesh, tmp_path):
    model_dir, ref = hf_cases[case]
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "stale.txt").write_text("replaced")  # an existing out_dir is replaced as a whole
    save_hf(load_model(model_dir, mesh), out, tokenizer_dir=model_dir)
    assert not (out / "stale.txt").exists()
    _assert_checkpoint_round_trip(out, model_dir, ref)


def test_tp2_matches_hf_and_round_trips(hf_cases, mesh, tmp_path):
    cfg = ModelConfig.from_hf_dict(CASES["llama_gqa"][1].to_dict())
    weights = {name: t.clone() for name, t in iter_hf_weights(CausalLM(cfg, mesh, seed=7))}
    torch.save({"config": cfg.to_hf_dict(), "weights": weights}, tmp_path / "init_tp1.pt")
    for case in TP2_CASES:
        torch.save(hf_cases[case][1], tmp_path / f"ref_{case}.pt")
    (tmp_path / "cases.json").write_text(json.dumps({case: str(hf_cases[case][0]) for case in TP2_CASES}))
    (tmp_path / "vocab_odd").mkdir()
    (tmp_path / "vocab_odd" / "config.json").write_text(json.dumps({**cfg.to_hf_dict(), "vocab_size": 255}))

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(Path(__file__).with_name("tp2_worker.py")), str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    for case in TP2_CASES:
        _assert_checkpoint_round_trip(tmp_path / f"saved_{case}", hf_cases[case][0], hf_cases[case][1])


def test_load_errors_name_the_problem(hf_cases, mesh, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nowhere", mesh)
    with pytest.raises(FileNotFoundError, match=r"has no config\.json"):
        load_model(tmp_path, mesh)
    model_dir = hf_cases["llama_gqa"][0]
    config = json.loads((model_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors weight files"):
        load_model(tmp_path, mesh)

    tensors = load_file(model_dir / "model.safetensors")
    missing = {k: v for k, v in tensors.items() if k != "model.norm.weight"}
    save_file({**missing, "model.extra.weight": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"missing 1 \['model.norm.weight'\], unexpected 1 \['model.extra.weight'\]"):
        load_model(tmp_path, mesh)
    save_file({**tensors, "model.norm.weight": torch.zeros(7)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"'model.norm.weight' has shape \(7,\), config.json implies \(128,\)"):
        load_model(tmp_path, mesh)
    (tmp_path / "config.json").write_text(json.dumps({**config, "hidden_act": "gelu"}))
    with pytest.raises(ValueError, match="hidden_act='gelu' is not supported"):
        load_model(tmp_path, mesh)


def test_config_round_trip_and_validation():
    for _, hf_config in CASES.values():
        cfg = ModelConfig.from_hf_dict(hf_config.to_dict())
        assert ModelConfig.from_hf_dict(cfg.to_hf_dict()) == cfg
        again = type(hf_config)(**cfg.to_hf_dict())  # transformers reads it back unchanged
        assert ModelConfig.from_hf_dict(again.to_dict()) == cfg
    gqa = ModelConfig.from_hf_dict(CASES["llama_gqa"][1].to_dict())
    assert gqa.rope_scaling == RopeScaling(8.0, 1.0, 4.0, 16) and gqa.eos_token_id == (2, 3)
    assert gqa.head_dim == 64 and gqa.num_key_value_heads == 2 and gqa.dtype == "float32"

    with pytest.raises(ValueError, match="vocab_size=255 is not divisible by the tensor-parallel size 2"):
        ModelConfig.from_hf_dict({**gqa.to_hf_dict(), "vocab_size": 255}).check_tensor_parallel(2)
    with pytest.raises(ValueError, match="num_attention_heads=4 must be divisible by num_key_value_heads=3"):
        ModelConfig.from_hf_dict({**gqa.to_hf_dict(), "num_key_value_heads": 3})
    qwen3 = ModelConfig.from_hf_dict(CASES["qwen3"][1].to_dict())
    assert qwen3.qk_norm and not gqa.qk_norm and not qwen3.attention_bias
    with pytest.raises(ValueError, match="attention_bias=True with model_type 'qwen3' means an o_proj bias"):
        ModelConfig.from_hf_dict({**qwen3.to_hf_dict(), "attention_bias": True})
    with pytest.raises(ValueError, match="use_sliding_window=True is not supported"):
        ModelConfig.from_hf_dict({**qwen3.to_hf_dict(), "use_sliding_window": True})
    with pytest.raises(ValueError, match="rope_type='yarn' is not supported"):
        ModelConfig.from_hf_dict({**gqa.to_hf_dict(), "rope_parameters": {"rope_type": "yarn"}, "rope_scaling": None})
