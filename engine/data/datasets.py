"""Prompt datasets from any of the places users keep them: `data.train` / `data.eval` values.

    rows = load_prompt_rows("gsm8k_train.jsonl")                         # jsonl (one object a line)
    rows = load_prompt_rows("math.parquet", prompt_key="problem")        # parquet (pyarrow)
    rows = load_prompt_rows("data/rows.json")                            # a JSON array (or JSON lines)
    rows = load_prompt_rows("saved/")                                    # datasets' save_to_disk folder
    rows = load_prompt_rows("saved/@test")                               # ... one split of a DatasetDict
    rows = load_prompt_rows("hf://openai/gsm8k:main@test")               # the hub: NAME[:CONFIG][@SPLIT]

Every record becomes a `PromptRow` through `engine.data.prompts.parse_prompt_record`: the prompt is
`prompt_key`, or the first of prompt/question/problem/messages present (GSM8K's question/answer,
MATH's problem/solution and plain prompt/answer need no keys); a list-valued prompt (or
`messages`) is a chat prompt. The answer is optional here (prompt-only rows for generation, judge
and reward-model tasks); the math reward refuses a row without one (engine/rewards/router.py).

Errors (`PromptFileError`) name the source and the row (`file:line` for jsonl, `source[row k]`
otherwise), and for a missing column the columns that are there. `hf://` needs the hub; offline it
fails at once with what to do instead (a saved folder or a parquet file), never after minutes of
retries. This module reads data only; tokenization is engine/data/encoding.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from engine.data.prompts import PROMPT_KEYS, PromptFileError, PromptRow, jsonl_records, parse_prompt_record

HF_PREFIX = "hf://"
Kind = Literal["jsonl", "json", "parquet", "disk", "hf"]


@dataclass(frozen=True)
class DataSource:
    kind: Kind
    path: str  # file or folder; for "hf" the dataset name
    config: str | None = None  # hf:// only: the dataset's configuration (e.g. "main")
    split: str | None = None  # hf:// and DatasetDict folders; None: "train" / the only split

    def __str__(self) -> str:
        if self.kind == "hf":
            return f"{HF_PREFIX}{self.path}" + (f":{self.config}" if self.config else "") + (f"@{self.split}" if self.split else "")
        return self.path + (f"@{self.split}" if self.split else "")


def parse_source(source: str | Path) -> DataSource:
    """What a `data.train` value names; a missing file or an unknown suffix raises PromptFileError."""
    text = str(source)
    if text.startswith(HF_PREFIX):
        rest = text[len(HF_PREFIX):]
        rest, _, split = rest.partition("@")
        name, _, config = rest.partition(":")
        if not name:
            raise PromptFileError(f"{text}: expected hf://NAME[:CONFIG][@SPLIT], e.g. hf://openai/gsm8k:main@test")
        return DataSource("hf", name, config or None, split or None)
    path, split = Path(text), None
    if not path.exists() and "@" in path.name:
        base, _, split = text.rpartition("@")
        path = Path(base)
    if path.is_dir():
        return DataSource("disk", str(path), split=split or None)
    if not path.exists():
        raise PromptFileError(f"{text}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".parquet"):
        return DataSource(suffix[1:], str(path))  # type: ignore[arg-type]
    raise PromptFileError(f"{text}: unknown data format {suffix or '(no suffix)'!r}; expected .jsonl, .json, "
                          ".parquet, a datasets.save_to_disk folder or hf://NAME[:CONFIG][@SPLIT]")


def _json_records(path: str) -> Iterator[tuple[str, Any]]:
    """A JSON array of objects; a file of JSON lines named .json (what `Dataset.to_json` writes) too."""
    text = Path(path).read_text(encoding="utf-8")
    if not text.lstrip().startswith("["):
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON lines (or broken: _jsonl_records names the line)
        if isinstance(whole, dict) and "\n" in text.strip():
            raise PromptFileError(f"{path}: one JSON object with keys {sorted(whole)[:10]}; expected a JSON array of "
                                  "rows or one row per line")
        yield from jsonl_records(path)
        return
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: invalid JSON: {e}") from e
    for i, obj in enumerate(data):
        yield f"{path}[row {i}]", obj


def _table_records(source: DataSource, rows: Iterator[dict]) -> Iterator[tuple[str, Any]]:
    for i, obj in enumerate(rows):
        yield f"{source}[row {i}]", obj


def _parquet(source: DataSource) -> tuple[list[str], Iterator[dict]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(source.path)
    except Exception as e:  # ArrowInvalid and friends: say which file
        raise PromptFileError(f"{source.path}: cannot read as parquet: {e}") from e
    return table.column_names, iter(table.to_pylist())


def _pick_split(source: DataSource, dataset_dict: Any) -> Any:
    splits = list(dataset_dict.keys())
    split = source.split or ("train" if "train" in splits else (splits[0] if len(splits) == 1 else None))
    if split not in splits:
        raise PromptFileError(f"{source}: {'no split ' + repr(split) if split else 'several splits'} "
                              f"(splits are {splits}); name one as {source.path}@SPLIT")
    return dataset_dict[split]


def _disk(source: DataSource) -> tuple[list[str], Iterator[dict]]:
    import datasets

    try:
        ds = datasets.load_from_disk(source.path)
    except FileNotFoundError as e:
        raise PromptFileError(f"{source.path}: a folder, but not one written by datasets' save_to_disk ({e})") from e
    if isinstance(ds, datasets.DatasetDict):
        ds = _pick_split(source, ds)
    elif source.split:
        raise PromptFileError(f"{source}: the folder holds one dataset, not splits; drop '@{source.split}'")
    return list(ds.column_names), iter(ds)


def _hub(source: DataSource) -> tuple[list[str], Iterator[dict]]:
    import datasets
    from huggingface_hub import HfApi

    if not datasets.config.HF_HUB_OFFLINE:  # probe once: datasets itself retries for ~25 s offline
        try:
            HfApi().dataset_info(source.path, timeout=10)
        except Exception as e:  # noqa: BLE001 - any failure here means: cannot load it from the hub
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise PromptFileError(
                f"{source}: the Hugging Face hub cannot provide dataset {source.path!r} ({type(e).__name__}: {first}). "
                f"Where it is reachable, save it with `datasets.load_dataset({source.path!r}"
                f"{', ' + repr(source.config) if source.config else ''}).save_to_disk(DIR)` (or `.to_parquet(FILE)`) "
                "and set data.train to DIR / FILE; with a cached copy, set HF_HUB_OFFLINE=1"
            ) from None
    try:
        ds = datasets.load_dataset(source.path, source.config, split=source.split or "train")
    except (ValueError, FileNotFoundError, ConnectionError) as e:  # bad config/split, missing offline copy
        raise PromptFileError(f"{source}: {e}") from e
    return list(ds.column_names), iter(ds)


def read_records(source: str | Path) -> tuple[DataSource, list[str] | None, Iterator[tuple[str, Any]]]:
    """The raw records of a source: (parsed source, its columns or None for JSON files, an iterator
    of (origin, record))."""
    src = parse_source(source)
    if src.kind == "jsonl":
        return src, None, jsonl_records(src.path)
    if src.kind == "json":
        return src, None, _json_records(src.path)
    columns, rows = {"parquet": _parquet, "disk": _disk, "hf": _hub}[src.kind](src)
    return src, columns, _table_records(src, rows)


def _check_columns(src: DataSource, columns: list[str], prompt_key: str | None, answer_key: str | None) -> None:
    """A table's missing column fails once, before any row, naming the columns found."""
    for key, what in ((prompt_key, "prompt"), (answer_key, "answer")):
        if key is not None and key not in columns:
            raise PromptFileError(f"{src}: no column {key!r} (data.{what}_key); its columns are {columns}")
    if prompt_key is None and not any(k in columns for k in PROMPT_KEYS):
        raise PromptFileError(f"{src}: no prompt column (looked for {', '.join(PROMPT_KEYS)}; set data.prompt_key); "
                              f"its columns are {columns}")


def load_prompt_rows(source: str | Path, prompt_key: str | None = None, answer_key: str | None = None, *,
                     task: str | None = None) -> list[PromptRow]:
    """Every row of `source` (see the module docstring) as a PromptRow with `origin` set. `task`
    overrides each row's own `task` field (multi-task runs name the task in the config)."""
    src, columns, records = read_records(source)
    if columns is not None:
        _check_columns(src, columns, prompt_key, answer_key)
    rows = []
    for origin, obj in records:
        try:
            row = parse_prompt_record(obj, prompt_key=prompt_key, answer_key=answer_key, require_math_answer=False)
        except ValueError as e:
            raise PromptFileError(f"{origin}: {e}") from e
        row.origin = origin
        if task is not None:
            row.task = task
        rows.append(row)
    if not rows:
        raise PromptFileError(f"{src}: no rows")
    return rows
