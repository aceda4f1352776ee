"""A Qwen3 (dense, per-head q/k RMSNorm) checkpoint through the whole weight path: vLLM samples
it with the learner's log-probs, and the learner's weights pushed by their `hf_io` names replace
vLLM's, q/k norms included.

    .venv/bin/python -m pytest tests/engine/model/test_qwen3_vllm.py -q      # ~1 min on 2 cores

The checkpoint is random (2 layers, hidden 128, 4 heads / 2 KV heads of 64: vLLM's CPU build
rejects head_dim < 64), with weights re-drawn at unit scale so the next-token distributions are
peaked and varied, and its q/k norm weights re-drawn too (all-ones would hide a missed norm).
transformers loads a qwen3 checkpoint's tokenizer with its family's byte-level rules, so the
fixture's tokenizer is a byte-level BPE trained here on fixed arithmetic text (320 ids, as many as
the model's vocabulary). Parity with transformers at TP 1 and 2 is `test_llama_vs_hf.py`'s
`qwen3` case.

Measured (fp32, vLLM CPU 0.32, 12 samples x 24 tokens, 2 cores): mean |vLLM - learner| log-prob
per sample 7.7e-7 (6.7e-7 after the push), max per token 2.9e-6 (2.4e-6); the perturbed push moves
the learner's log-probs by 0.36 on average, so a push that missed a tensor would show. Limits:
3e-6 per sample (the issue's bar, and the engine's sampler.max_logprob_gap, are 1e-3), 1e-5 per
token, and a move of at least 0.1.
"""

from pathlib import Path

import pytest
import torch

from engine.learner.batch import pack, response_logprobs
from engine.model.hf_io import iter_hf_weights, load_model
from engine.parallel.mesh import Mesh

PARITY_TOL = 3e-6  # mean |vLLM - learner| per sample (measured <= 7.7e-7)
TOKEN_TOL = 1e-5  # max |vLLM - learner| per token (measured <= 2.9e-6)
VOCAB = 320
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2
PROMPTS = [[1, 60, 61, 14, 62, 72], [1, 80, 81, 82], [1, 100]]


def _byte_level_tokenizer():
    """Byte-level BPE with exactly VOCAB ids, trained on fixed text (deterministic)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    text = [f"{a} + {b} = {a + b}. The answer is {a + b}." for a in range(60) for b in range(0, 60, 7)]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(text, vocab_size=VOCAB, min_frequency=1, special_tokens=SPECIALS, show_progress=False)
    assert bpe.get_vocab_size() == VOCAB
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=SPECIALS[1], eos_token=SPECIALS[2],
                                   pad_token=SPECIALS[0])


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory) -> Path:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=512,
                         tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0, dtype="float32")
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    out = tmp_path_factory.mktemp("qwen3") / "model"
    model.save_pretrained(out)
    _byte_level_tokenizer().save_pretrained(out)
    return out


def _gaps(sampler, model, seed: int) -> tuple[float, float, list[list[int]]]:
    """(max over samples of the mean |vLLM - learner| log-prob, max per token, the samples)."""
    groups = sampler.generate(PROMPTS, n=4, temperature=1.0, top_p=1.0, max_tokens=24, seed=seed)
    prompts = [p for p, g in zip(PROMPTS, groups, strict=True) for _ in g]
    samples = [s for g in groups for s in g]
    batch = pack(prompts, [s.token_ids for s in samples])
    with torch.no_grad():
        learner = batch.split(response_logprobs(model, batch, impl="torch"))
    diffs = [(lp - torch.tensor(s.logprobs)).abs() for lp, s in zip(learner, samples, strict=True)]
    return max(d.mean().item() for d in diffs), max(d.max().item() for d in diffs), [s.token_ids for s in samples]


def test_vllm_samples_qwen3_with_the_learners_logprobs_and_takes_its_weights(qwen3_dir):
    from engine.sampler import VLLMSampler

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # vLLM's worker owns a core; see tests/engine/sampler/test_vllm_engine.py
    try:
        with Mesh.init(tp_size=1) as mesh, VLLMSampler(str(qwen3_dir), seed=0, max_model_len=256,
                                                       kv_cache_gib=0.25) as sampler:
            model = load_model(qwen3_dir, mesh)
            mean_gap, token_gap, _ = _gaps(sampler, model, seed=1)
            print(f"checkpoint: mean gap {mean_gap:.1e}, max token gap {token_gap:.1e}")
            assert mean_gap <= PARITY_TOL and token_gap <= TOKEN_TOL

            original = load_model(qwen3_dir, mesh)
            gen = torch.Generator().manual_seed(1)
            with torch.no_grad():  # a new policy: every tensor moves, the q/k norms too
                for p in model.parameters():
                    p.add_(0.1 * p.std() * torch.randn(p.shape, generator=gen))
            names = [name for name, _ in iter_hf_weights(model)]
            assert "model.layers.1.self_attn.k_norm.weight" in names
            sampler.push_weights(iter_hf_weights(model))
            mean_gap, token_gap, samples = _gaps(sampler, model, seed=2)
            print(f"after push: mean gap {mean_gap:.1e}, max token gap {token_gap:.1e}")
            assert mean_gap <= PARITY_TOL and token_gap <= TOKEN_TOL
            batch = pack([p for p in PROMPTS for _ in range(4)], samples)
            with torch.no_grad():
                moved = (response_logprobs(model, batch) - response_logprobs(original, batch)).abs().mean().item()
            print(f"the push moved the log-probs by {moved:.2f} on average")
            assert moved > 0.1  # the sampler followed the push, not the checkpoint (measured 0.36)
    finally:
        torch.set_num_threads(threads)
