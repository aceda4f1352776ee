"""Data-source paths engine/data/datasets.py takes less often: a malformed hf:// name, a broken JSON
array, an empty source, a single saved dataset given a split, and hf:// loading once the hub is
(or is declared) reachable, with load_dataset stood in for (no network)."""

import datasets
import pytest

from engine.data.datasets import load_prompt_rows, parse_source
from engine.data.prompts import PromptFileError


def test_hf_source_needs_a_name():
    with pytest.raises(PromptFileError, match=r"hf://:main: expected hf://NAME\[:CONFIG\]\[@SPLIT\]"):
        parse_source("hf://:main")
    src = parse_source("hf://openai/gsm8k:main@test")
    assert (src.kind, src.path, src.config, src.split, str(src)) == ("hf", "openai/gsm8k", "main", "test",
                                                                     "hf://openai/gsm8k:main@test")


def test_broken_json_array_and_empty_sources(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"prompt": "Q: 1+1?", "answer": "2"},')
    with pytest.raises(PromptFileError, match=r"bad\.json: invalid JSON: "):
        load_prompt_rows(bad)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    with pytest.raises(PromptFileError, match=r"empty\.json: no rows"):
        load_prompt_rows(empty)


def test_one_saved_dataset_has_no_splits(tmp_path):
    datasets.Dataset.from_list([{"question": "Q: 2+2?", "answer": "4"}]).save_to_disk(tmp_path / "one")
    with pytest.raises(PromptFileError, match=r"the folder holds one dataset, not splits; drop '@train'"):
        load_prompt_rows(f"{tmp_path / 'one'}@train")
    (row,) = load_prompt_rows(tmp_path / "one")
    assert (row.prompt, row.answer) == ("Q: 2+2?", "4")


def test_hub_source_offline_loads_through_load_dataset(monkeypatch):
    calls = []

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if split == "nosuch":
            raise ValueError(f"Unknown split {split!r}")
        return datasets.Dataset.from_list([{"problem": "Q: 3+4?", "solution": "7"}, {"problem": "Q: 1+0?", "solution": "1"}])

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # no probe of the hub
    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    rows = load_prompt_rows("hf://org/math:main@test", task="math")
    assert [(r.prompt, r.answer, r.task) for r in rows] == [("Q: 3+4?", "7", "math"), ("Q: 1+0?", "1", "math")]
    assert rows[1].origin == "hf://org/math:main@test[row 1]"
    assert load_prompt_rows("hf://org/math")[0].answer == "7"
    with pytest.raises(PromptFileError, match=r"hf://org/math@nosuch: Unknown split 'nosuch'"):
        load_prompt_rows("hf://org/math@nosuch")
    with pytest.raises(PromptFileError, match=r"no column 'question' \(data\.prompt_key\); its columns are \['problem', 'solution'\]"):
        load_prompt_rows("hf://org/math", prompt_key="question")
    assert calls[:2] == [("org/math", "main", "test"), ("org/math", None, "train")]
