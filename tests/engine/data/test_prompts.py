"""Prompt files: both row shapes load, broken rows fail naming file and line, writes are atomic."""

import json
import shutil
from pathlib import Path

import pytest

from engine.data.prompts import PromptFileError, PromptRow, load_prompts, write_jsonl

SHARED_GSM8K = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "gsm8k_test.jsonl"


def _write(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_prompt_answer_rows(tmp_path):
    path = _write(tmp_path / "p.jsonl", [
        json.dumps({"prompt": "Q: 1+1?\nA:", "answer": "2"}),
        "",
        json.dumps({"prompt": "Say hi.", "task": "chat"}),
        json.dumps({"prompt": "Q: 2*3?\nA:", "answer": 6, "meta": {"src": "x"}}),
    ])  # fmt: skip
    rows = load_prompts(path)
    assert rows == [
        PromptRow(prompt="Q: 1+1?\nA:", answer="2"),
        PromptRow(prompt="Say hi.", answer="", task="chat"),
        PromptRow(prompt="Q: 2*3?\nA:", answer="6", meta={"src": "x"}),
    ]


def test_question_answer_rows_keep_the_solution(tmp_path):
    if SHARED_GSM8K.exists():
        src = tmp_path / "gsm8k.jsonl"
        with SHARED_GSM8K.open() as f:
            src.write_text("".join(next(f) for _ in range(5)))
    else:  # the same shape as ../shared/data/gsm8k_test.jsonl
        src = _write(tmp_path / "gsm8k.jsonl", [json.dumps({"question": "Q?", "answer": "3+4=7\n#### 7"})])
    rows = load_prompts(src)
    first = json.loads(src.read_text().splitlines()[0])
    assert rows[0].prompt == first["question"] and rows[0].answer == first["answer"]
    assert "####" in rows[0].answer and rows[0].task == "math"


@pytest.mark.parametrize("bad, why", [
    ('{"prompt": "x", "answer": "1"', "invalid JSON"),
    ('{"answer": "1"}', "missing field 'prompt'"),
    ('{"prompt": "x"}', "missing field 'answer'"),
    ('{"prompt": 5, "answer": "1"}', "'prompt' must be a string"),
    ('{"prompt": "x", "answer": [1]}', "'answer' must be a string or integer"),
    ('{"prompt": "x", "answer": "1", "meta": 3}', "'meta' must be an object"),
    ('["x", "1"]', "expected a JSON object"),
])  # fmt: skip
def test_broken_row_names_file_and_line(tmp_path, bad, why):
    path = _write(tmp_path / "bad.jsonl", [json.dumps({"prompt": "ok", "answer": "1"}), "", bad])
    with pytest.raises(PromptFileError) as err:
        load_prompts(path)
    assert str(err.value).startswith(f"{path}:3: ") and why in str(err.value)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(PromptFileError, match="no rows"):
        load_prompts(_write(tmp_path / "empty.jsonl", [""]))


def test_write_round_trip_and_atomic(tmp_path):
    rows = [PromptRow("Q: a\nA:", "1"), PromptRow("hi", "", task="chat", meta={"k": [1, 2]})]
    path = tmp_path / "sub" / "rows.jsonl"
    assert write_jsonl(path, rows) == 2
    assert load_prompts(path) == rows
    assert json.loads(path.read_text().splitlines()[0]) == {"prompt": "Q: a\nA:", "answer": "1"}
    write_jsonl(path, [{"prompt": "x", "answer": "2"}])  # plain mappings, replacing the file
    assert load_prompts(path) == [PromptRow("x", "2")]

    def broken():
        yield PromptRow("y", "3")
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError):
        write_jsonl(path, broken())
    assert load_prompts(path) == [PromptRow("x", "2")]  # the old file is untouched
    assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]  # no temp file left
    shutil.rmtree(path.parent)
