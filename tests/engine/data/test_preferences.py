"""Preference rows (engine/data/preferences.py): plain, TRL-conversational and UltraFeedback-style
rows tokenised as training tokenises them, from jsonl and parquet, and bad rows naming the row.

    .venv/bin/python -m pytest -q tests/engine/data/test_preferences.py
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.data.encoding import encode_prompt_row
from engine.data.preferences import load_preference_rows
from engine.data.prompts import PromptFileError, PromptRow
from engine.data.tokenizer import EOS_ID, encode_prompt, encode_response, load_tokenizer, save_tokenizer

CHATML = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
          "{% if add_generation_prompt %}<s>assistant\n{% endif %}")


@pytest.fixture()
def tok(tmp_path):
    save_tokenizer(tmp_path / "tok")
    return load_tokenizer(tmp_path / "tok")


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plain_text_pairs(tok, tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "Q: 2+2?\nA:", "chosen": " 4", "rejected": " 5"}])
    [pair] = load_preference_rows(path, tok, prompt_template="{prompt}")
    assert pair.prompt_ids == encode_prompt(tok, "Q: 2+2?\nA:")
    assert pair.chosen_ids == [*encode_response(tok, " 4"), EOS_ID]
    assert pair.rejected_ids == [*encode_response(tok, " 5"), EOS_ID]
    assert pair.origin == f"{path}:1"


def test_chat_pairs_ultrafeedback_and_trl_styles(tok, tmp_path):
    tok.chat_template = CHATML
    ultra = {"prompt": "Name a prime.", "chosen": [{"role": "user", "content": "Name a prime."},
                                                   {"role": "assistant", "content": "7"}],
             "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8"}]}
    trl = {"prompt": [{"role": "user", "content": "Name a prime."}], "chosen": [{"role": "assistant", "content": "7"}],
           "rejected": [{"role": "assistant", "content": "8"}]}
    text = {"prompt": "Name a prime.", "chosen": "7", "rejected": "8"}
    pairs = load_preference_rows(_jsonl(tmp_path / "p.jsonl", [ultra, trl, text]), tok, chat_template=True,
                                 system_prompt="Be brief.")
    assert len(pairs) == 3 and pairs[0] == pairs[1] == pairs[2]  # three spellings of one pair
    want_prompt = encode_prompt_row(tok, PromptRow("Name a prime."), chat_template=True, system_prompt="Be brief.")
    assert pairs[0].prompt_ids == want_prompt
    assert tok.decode(pairs[0].prompt_ids) == "<s>system\nBe brief.</s>\n<s>user\nName a prime.</s>\n<s>assistant\n"
    assert tok.decode(pairs[0].chosen_ids) == "7</s>" and pairs[0].rejected_ids[-1] == EOS_ID  # newline cut


def test_chat_pairs_from_parquet_with_nested_turns(tok, tmp_path):
    tok.chat_template = CHATML
    row = {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
           "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go away"}]}
    path = tmp_path / "uf.parquet"
    pq.write_table(pa.Table.from_pylist([row, row]), path)
    pairs = load_preference_rows(path, tok, chat_template=True)
    assert len(pairs) == 2 and tok.decode(pairs[1].rejected_ids) == "Go away</s>"
    assert pairs[1].origin == f"{path}[row 1]"


@pytest.mark.parametrize("row, why", [
    ({"prompt": "p", "chosen": "a"}, "missing field 'rejected'"),
    ({"chosen": "a", "rejected": "b"}, "missing field 'prompt'"),
    ({"prompt": "p", "chosen": "a", "rejected": [{"role": "assistant", "content": "b"}]}, "must both be strings"),
    ({"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "user", "content": "y"}, {"role": "assistant", "content": "b"}]}, "differ before their last"),
    ({"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]},
     "no prompt"),
    ({"chosen": [{"role": "user", "content": "x"}], "rejected": [{"role": "user", "content": "x"}]},
     "the last turn must be {\"role\": \"assistant\""),
    ({"chosen": [{"role": "critic", "content": "x"}, {"role": "assistant", "content": "a"}],
      "rejected": [{"role": "critic", "content": "x"}, {"role": "assistant", "content": "b"}]}, "unknown role 'critic'"),
])  # fmt: skip
def test_bad_rows_name_file_and_row(tok, tmp_path, row, why):
    tok.chat_template = CHATML
    path = _jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}, row])
    with pytest.raises(PromptFileError) as err:
        load_preference_rows(path, tok, chat_template=True)
    assert str(err.value).startswith(f"{path}:2: ") and why in str(err.value)


def test_chat_rows_need_the_chat_template(tok, tmp_path):
    row = {"chosen": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "a"}],
           "rejected": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "b"}]}
    path = _jsonl(tmp_path / "c.jsonl", [row])
    with pytest.raises(PromptFileError, match=r"c.jsonl:1: a 'messages' row needs chat_template: true"):
        load_preference_rows(path, tok)
    with pytest.raises(PromptFileError, match=r"c.jsonl:1: chat_template is true, but tokenizer .* has no chat template"):
        load_preference_rows(path, tok, chat_template=True)


def test_template_whose_prompt_is_not_a_prefix_is_refused(tok, tmp_path):
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                         "{% if add_generation_prompt %}ASSISTANT:{% endif %}")  # not how it renders the reply
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "b"}])
    with pytest.raises(PromptFileError, match="p.jsonl:1: the chat template does not render the prompt"):
        load_preference_rows(path, tok, chat_template=True)
