"""Fixtures for the sampler tests: a tiny random Llama checkpoint in Hugging Face format.

The checkpoint is what vLLM and transformers both load unchanged: `config.json`,
`model.safetensors` (fp32), and a character-level tokenizer (`tokenizer.json` +
`tokenizer_config.json`) whose vocabulary is exactly the model's 256 ids, so every sampled id
decodes to one character. Attention head_dim is 64 because the vLLM CPU build rejects smaller ones.
"""

from pathlib import Path

import pytest
import torch

VOCAB_SIZE = 256
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>"]  # ids 0, 1, 2
EOS_TOKEN_ID = 2


def _alphabet() -> list[str]:
    """253 distinct single printable characters: ASCII 32..126, then Latin-1 / Latin Extended-A."""
    chars = [chr(c) for c in range(32, 127)]
    code = 161
    while len(chars) < VOCAB_SIZE - len(SPECIAL_TOKENS):
        if chr(code).isprintable() and not chr(code).isspace():
            chars.append(chr(code))
        code += 1
    return chars


def build_char_tokenizer():
    """A WordLevel tokenizer over single characters: id = position in SPECIAL_TOKENS + alphabet."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + _alphabet())}
    assert len(vocab) == VOCAB_SIZE
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=512,
    )


def build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Write a random 2-layer Llama (hidden 128, 2 heads of 64, vocab 256) + tokenizer to out_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=0,
        initializer_range=0.2,  # wide enough that the random model has peaked, varied next tokens
    )
    config.dtype = "float32"
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out_dir, safe_serialization=True)
    build_char_tokenizer().save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny_llama"))
