"""Prompt rows as the model expects them (engine/data/encoding.py) and the stop ids of a checkpoint,
on the seed model's real character tokenizer with a small chat template.

    .venv/bin/python -m pytest -q tests/engine/data/test_encoding.py
"""

import json

import pytest

from engine.data.encoding import PromptFormatError, encode_prompt_row, stop_token_ids
from engine.data.prompts import PromptRow
from engine.data.tokenizer import EOS_ID, encode_prompt, load_tokenizer, save_tokenizer

TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


@pytest.fixture()
def tok(tmp_path):
    save_tokenizer(tmp_path)
    return load_tokenizer(tmp_path)


def test_plain_rows(tok):
    row = PromptRow("2+3?", "5")
    assert encode_prompt_row(tok, row) == encode_prompt(tok, "2+3?")
    assert encode_prompt_row(tok, row, prompt_template="Q: {prompt}\nA:") == encode_prompt(tok, "Q: 2+3?\nA:")


def test_chat_rows_render_system_template_and_generation_prompt(tok):
    tok.chat_template = TEMPLATE
    ids = encode_prompt_row(tok, PromptRow("2+3?"), prompt_template="{prompt} Box it: \\boxed{{}}.",
                            chat_template=True, system_prompt="Be exact.")
    assert ids == tok.apply_chat_template(
        [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "2+3? Box it: \\boxed{}."}],
        add_generation_prompt=True, tokenize=True, return_dict=False)
    assert tok.decode(ids[1:]) == "system: Be exact.\nuser: 2+3? Box it: \\boxed{}.\nassistant:"
    own = PromptRow("q2", messages=[{"role": "system", "content": "Own."}, {"role": "user", "content": "q1"},
                                    {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}])
    ids = encode_prompt_row(tok, own, prompt_template="{prompt}!", chat_template=True, system_prompt="Default.")
    assert tok.decode(ids[1:]) == "system: Own.\nuser: q1\nassistant: a1\nuser: q2!\nassistant:"  # the row's own wins
    assert own.messages[-1]["content"] == "q2"  # the row itself is not modified


def test_bad_combinations_name_the_row(tok):
    row = PromptRow("hi", messages=[{"role": "user", "content": "hi"}], origin="data.jsonl:7")
    with pytest.raises(PromptFormatError, match="data.jsonl:7: chat_template is true, but tokenizer .* has no chat "
                                                "template"):
        encode_prompt_row(tok, row, chat_template=True)
    with pytest.raises(PromptFormatError, match="data.jsonl:7: a 'messages' row needs chat_template: true"):
        encode_prompt_row(tok, row)
    with pytest.raises(PromptFormatError, match="system_prompt needs chat_template: true"):
        encode_prompt_row(tok, PromptRow("hi"), system_prompt="x")
    with pytest.raises(PromptFormatError, match=r"prompt_template '\{question\}': KeyError 'question'"):
        encode_prompt_row(tok, PromptRow("hi"), prompt_template="{question}")


def test_stop_ids_from_generation_config(tok, tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    assert stop_token_ids(model, tok) == [EOS_ID]  # no config files: the tokenizer's EOS only
    (model / "config.json").write_text(json.dumps({"eos_token_id": [EOS_ID, 9]}))
    assert stop_token_ids(model, tok) == [EOS_ID, 9]  # config.json when there is no generation_config.json
    # Llama-3.1-Instruct style: three EOS ids, one of them the tokenizer's, in another order.
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": [7, EOS_ID, 11]}))
    assert stop_token_ids(model, tok) == [EOS_ID, 7, 11]
    (model / "generation_config.json").write_text(json.dumps({"eos_token_id": "x"}))
    with pytest.raises(ValueError, match="generation_config.json: eos_token_id must be an integer"):
        stop_token_ids(model, tok)
