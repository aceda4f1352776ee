"""Data on the real SmolLM2-135M-Instruct tokenizer: chat-templated GSM8K prompts are exactly
`apply_chat_template`'s ids, the stop ids are its EOS, and a UltraFeedback-style pair's responses
end at <|im_end|>.

    .venv/bin/python -m pytest -q tests/real/test_smollm2_data.py
"""

import json

import pyarrow as pa
import pyarrow.parquet as pq
from transformers import AutoTokenizer

from engine.data.datasets import load_prompt_rows
from engine.data.encoding import encode_prompt_row, stop_token_ids
from engine.data.preferences import load_preference_rows

BOXED = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def test_gsm8k_parquet_chat_prompts_and_stop_ids(smollm2_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert stop_token_ids(smollm2_dir, tok) == [tok.convert_tokens_to_ids("<|im_end|>")] == [2]
    rows = [{"question": "Janet has 3 ducks and buys 2 more. How many ducks?", "answer": "3+2=5\n#### 5"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "gsm8k.parquet")
    [row] = load_prompt_rows(tmp_path / "gsm8k.parquet")
    ids = encode_prompt_row(tok, row, prompt_template=BOXED, chat_template=True)
    want = tok.apply_chat_template([{"role": "user", "content": BOXED.format(prompt=rows[0]["question"])}],
                                   add_generation_prompt=True, tokenize=True, return_dict=False)
    assert ids == list(want)
    assert tok.decode(ids).endswith("within \\boxed{}.<|im_end|>\n<|im_start|>assistant\n")
    own = encode_prompt_row(tok, row, prompt_template=BOXED, chat_template=True, system_prompt="Be exact.")
    assert tok.decode(own).startswith("<|im_start|>system\nBe exact.<|im_end|>\n<|im_start|>user\n")


def test_ultrafeedback_pair(smollm2_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    row = {"prompt": "Name a prime.", "chosen": [{"role": "user", "content": "Name a prime."},
                                                 {"role": "assistant", "content": "7 is prime."}],
           "rejected": [{"role": "user", "content": "Name a prime."}, {"role": "assistant", "content": "8."}]}
    (tmp_path / "uf.jsonl").write_text(json.dumps(row) + "\n")
    [pair] = load_preference_rows(tmp_path / "uf.jsonl", tok, chat_template=True,
                                  stop_ids=stop_token_ids(smollm2_dir, tok))
    assert tok.decode(pair.chosen_ids) == "7 is prime.<|im_end|>" and tok.decode(pair.rejected_ids) == "8.<|im_end|>"
    assert tok.decode(pair.prompt_ids).endswith("<|im_start|>user\nName a prime.<|im_end|>\n<|im_start|>assistant\n")
