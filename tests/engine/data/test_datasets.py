"""Prompt datasets from every supported place (engine/data/datasets.py): jsonl, .json, parquet,
save_to_disk folders (one dataset or splits), hf:// (offline: a fast, clear error), key
auto-detection for GSM8K / MATH / plain rows, chat rows, and bad input naming source and row.

    .venv/bin/python -m pytest -q tests/engine/data/test_datasets.py
"""

import json
import time

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.data.datasets import load_prompt_rows, parse_source
from engine.data.prompts import PromptFileError, PromptRow, load_prompts

GSM8K = [{"question": "Tom has 3 apples and buys 4. How many?", "answer": "3+4=7\n#### 7"},
         {"question": "What is 6 times 7?", "answer": "6*7=42\n#### 42"}]
MATH = [{"problem": "Compute $\\frac{1}{2}+\\frac{1}{4}$.", "solution": "It is $\\boxed{\\frac{3}{4}}$.",
         "level": "Level 1"}]


def _parquet(path, rows):
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_gsm8k_parquet_needs_no_keys(tmp_path):
    rows = load_prompt_rows(_parquet(tmp_path / "gsm8k.parquet", GSM8K))
    assert [(r.prompt, r.answer, r.task) for r in rows] == [(g["question"], g["answer"], "math") for g in GSM8K]
    assert rows[1].origin == f"{tmp_path / 'gsm8k.parquet'}[row 1]"


def test_math_parquet_and_explicit_keys(tmp_path):
    path = _parquet(tmp_path / "math.parquet", MATH)
    assert load_prompt_rows(path) == [PromptRow(MATH[0]["problem"], MATH[0]["solution"])]
    other = _parquet(tmp_path / "other.parquet", [{"q": "2+2?", "gold": 4}])
    assert load_prompt_rows(other, prompt_key="q", answer_key="gold") == [PromptRow("2+2?", "4")]


def test_parquet_without_the_prompt_column_names_its_columns(tmp_path):
    path = _parquet(tmp_path / "bad.parquet", [{"text": "x", "label": "1"}])
    with pytest.raises(PromptFileError) as err:
        load_prompt_rows(path)
    assert str(err.value) == (f"{path}: no prompt column (looked for prompt, question, problem, messages; set "
                              "data.prompt_key); its columns are ['text', 'label']")
    with pytest.raises(PromptFileError, match=r"no column 'question' \(data.prompt_key\); its columns are \['text', 'label'\]"):
        load_prompt_rows(path, prompt_key="question")
    with pytest.raises(PromptFileError, match=r"no column 'answer' \(data.answer_key\)"):
        load_prompt_rows(path, prompt_key="text", answer_key="answer")


def test_save_to_disk_folder_and_splits(tmp_path):
    datasets.Dataset.from_list(GSM8K).save_to_disk(tmp_path / "one")
    assert [r.prompt for r in load_prompt_rows(tmp_path / "one")] == [g["question"] for g in GSM8K]
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list(GSM8K),
                               "test": datasets.Dataset.from_list(GSM8K[:1])})
    dd.save_to_disk(tmp_path / "dict")
    assert len(load_prompt_rows(tmp_path / "dict")) == 2  # "train" by default
    test = load_prompt_rows(f"{tmp_path / 'dict'}@test")
    assert len(test) == 1 and test[0].origin == f"{tmp_path / 'dict'}@test[row 0]"
    with pytest.raises(PromptFileError, match=r"no split 'dev' \(splits are \['train', 'test'\]\)"):
        load_prompt_rows(f"{tmp_path / 'dict'}@dev")
    (tmp_path / "plain").mkdir()
    with pytest.raises(PromptFileError, match="not one written by datasets' save_to_disk"):
        load_prompt_rows(tmp_path / "plain")


def test_json_array_and_json_lines(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(GSM8K))
    assert len(load_prompt_rows(tmp_path / "a.json")) == 2
    datasets.Dataset.from_list(GSM8K).to_json(tmp_path / "b.json")  # datasets writes JSON lines
    assert load_prompt_rows(tmp_path / "b.json") == load_prompt_rows(tmp_path / "a.json")
    (tmp_path / "c.json").write_text(json.dumps({"data": GSM8K}, indent=2))
    with pytest.raises(PromptFileError, match=r"c.json: one JSON object with keys \['data'\]; expected a JSON array"):
        load_prompt_rows(tmp_path / "c.json")


def test_prompt_only_and_chat_rows(tmp_path):
    path = tmp_path / "chat.jsonl"
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a prime."}]
    path.write_text(json.dumps({"prompt": "Say hi."}) + "\n" + json.dumps({"messages": messages}) + "\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "TRL style"}], "answer": "x"}) + "\n")
    rows = load_prompt_rows(path)
    assert (rows[0].prompt, rows[0].answer, rows[0].messages) == ("Say hi.", "", None)
    assert rows[1].messages == messages and rows[1].prompt == "Name a prime."
    assert rows[2].messages == [{"role": "user", "content": "TRL style"}] and rows[2].answer == "x"
    assert load_prompt_rows(path, task="chat")[0].task == "chat"
    with pytest.raises(PromptFileError, match=f"{path}:1: missing field 'answer'"):
        load_prompts(path)  # the strict loader keeps requiring answers for math rows


@pytest.mark.parametrize("turns, why", [
    ([{"role": "user", "content": "a"}, {"role": "tool", "content": "b"}, {"role": "user", "content": "c"}],
     "field 'messages' turn 1: unknown role 'tool' (allowed: system, user, assistant)"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
     "the last turn must be 'user'"),
    ([{"role": "user"}], "turn 0: expected"),
    ([], "non-empty list"),
])  # fmt: skip
def test_bad_messages_name_file_and_row(tmp_path, turns, why):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"messages": turns}) + "\n")
    with pytest.raises(PromptFileError) as err:
        load_prompt_rows(path)
    assert str(err.value).startswith(f"{path}:2: ") and why in str(err.value)


def test_unknown_role_in_parquet_names_the_row(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "a"}]}, {"messages": [{"role": "robot", "content": "b"}]}]
    path = _parquet(tmp_path / "chat.parquet", rows)
    with pytest.raises(PromptFileError, match=r"chat.parquet\[row 1\]: field 'messages' turn 0: unknown role 'robot'"):
        load_prompt_rows(path)


def test_hf_offline_is_fast_and_says_what_to_do():
    t0 = time.perf_counter()
    with pytest.raises(PromptFileError) as err:
        load_prompt_rows("hf://openai/gsm8k:main@test")
    message = str(err.value)
    assert message.startswith("hf://openai/gsm8k:main@test: the Hugging Face hub cannot provide dataset 'openai/gsm8k'")
    assert "save_to_disk(DIR)" in message and "HF_HUB_OFFLINE=1" in message
    assert time.perf_counter() - t0 < 15  # one probe, not datasets' ~25 s of retries


def test_sources_and_bad_paths(tmp_path):
    src = parse_source("hf://openai/gsm8k:main@test")
    assert (src.kind, src.path, src.config, src.split) == ("hf", "openai/gsm8k", "main", "test")
    assert str(src) == "hf://openai/gsm8k:main@test" and parse_source("hf://x/y").split is None
    with pytest.raises(PromptFileError, match="no such file or folder"):
        load_prompt_rows(tmp_path / "missing.jsonl")
    (tmp_path / "d.csv").write_text("prompt,answer\n")
    with pytest.raises(PromptFileError, match=r"unknown data format '\.csv'"):
        load_prompt_rows(tmp_path / "d.csv")
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(PromptFileError, match="cannot read as parquet"):
        load_prompt_rows(tmp_path / "bad.parquet")
