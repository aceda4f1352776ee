"""The seed tokenizer loads through transformers unchanged, round-trips text exactly, and refuses
characters it cannot encode instead of dropping them."""

import json
import re

import pytest

from engine.data.tokenizer import (
    ALPHABET,
    BOS_ID,
    EOS_ID,
    PAD_ID,
    VOCAB_SIZE,
    UnencodableTextError,
    encode_example,
    encode_prompt,
    encode_response,
    eos_token_id,
    load_tokenizer,
    save_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    save_tokenizer(out)
    return load_tokenizer(out)  # transformers.AutoTokenizer, as vLLM loads it


def test_files_and_special_ids(tokenizer, tmp_path):
    save_tokenizer(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"tokenizer.json", "tokenizer_config.json",
                                                    "special_tokens_map.json"}
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["eos_token"] == "</s>"
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (PAD_ID, BOS_ID, EOS_ID)
    assert eos_token_id(tokenizer) == EOS_ID
    assert len(tokenizer) == VOCAB_SIZE and VOCAB_SIZE % 64 == 0
    assert all(tokenizer.decode([i]) for i in range(VOCAB_SIZE))  # every id the model can emit decodes


@pytest.mark.parametrize("text", [
    "Q: Ann has 7 apples. She buys 5 more.\nHow many?\nA:",
    "  leading and  double  spaces, trailing \n\n",
    ALPHABET,
    "",
])  # fmt: skip
def test_round_trip_is_exact(tokenizer, text):
    ids = encode_prompt(tokenizer, text)
    assert ids[0] == BOS_ID and len(ids) == len(text) + 1  # one token per character
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer.decode(encode_response(tokenizer, text)) == text
    assert tokenizer(text)["input_ids"] == ids  # a text prompt given to vLLM gets the same ids


def test_example_is_prompt_then_response_then_eos(tokenizer):
    prompt, response = "Q: 2+3?\nA:", " 2+3=5. The answer is 5."
    ex = encode_example(tokenizer, prompt, response)
    assert ex.input_ids == encode_prompt(tokenizer, prompt) + encode_response(tokenizer, response) + [EOS_ID]
    assert ex.prompt_len == len(prompt) + 1
    assert tokenizer.decode(ex.input_ids[ex.prompt_len:], skip_special_tokens=True) == response
    # character-level: tokenizing the halves separately equals tokenizing the whole
    assert ex.input_ids[:-1] == encode_prompt(tokenizer, prompt + response)


@pytest.mark.parametrize("bad, name", [("Janet’s ducks", "’"), ("a\tb", "\\t"), ("café", "é")])
def test_unencodable_character_is_named(tokenizer, bad, name):
    with pytest.raises(UnencodableTextError, match=re.escape(f"character '{name}'")):
        encode_prompt(tokenizer, bad)
    with pytest.raises(UnencodableTextError, match="response"):
        encode_response(tokenizer, bad)
