"""Prompt datasets: the `PromptRow` every stage passes around, and strict jsonl read / atomic write.

    rows = load_prompts(".cache/seed/data/heldout.jsonl")    # list[PromptRow]
    write_jsonl("out.jsonl", rows)                            # temp file + rename

Accepted row shapes (one JSON object per line; blank lines are skipped):

    {"prompt": str, "answer": str}                 the engine's own files (seed data, exports)
    {"question": str, "answer": str}               ../shared/data (GSM8K, MATH-500): `answer` is
                                                   the full worked solution; it is kept as is and
                                                   the math reward extracts the final answer
    optional: "task": str (default "math"), "meta": object

`answer` may be a JSON integer (kept as its decimal string). It is required for task "math"
(verifiable) and optional (default "") for other tasks (reward model / judge prompts).
Anything else (invalid JSON, a missing or mistyped field) raises `PromptFileError` naming the
file and line: a broken data file is a bug to fix, never rows to skip silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class PromptFileError(ValueError):
    """A data file row that cannot be read; the message starts with `path:line:`."""


@dataclass
class PromptRow:
    prompt: str  # the text the model continues (the seed model: "Q: ...\nA:")
    answer: str = ""  # reference answer or worked solution; "" for tasks without one
    task: str = "math"  # selects the reward: "math" is verified by math-verify
    meta: dict[str, Any] = field(default_factory=dict)  # free-form, carried through untouched

    def to_json(self) -> dict[str, Any]:
        """The jsonl form `load_prompts` reads back; `task` and `meta` only when not default."""
        out: dict[str, Any] = {"prompt": self.prompt, "answer": self.answer}
        if self.task != "math":
            out["task"] = self.task
        if self.meta:
            out["meta"] = self.meta
        return out


def _row_from_json(obj: Any) -> PromptRow:
    """Raises ValueError with a message naming the offending field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "prompt" in obj:
        key = "prompt"
    elif "question" in obj:
        key = "question"
    else:
        raise ValueError(f"missing field 'prompt' (or 'question'); fields are {sorted(obj)}")
    prompt = obj[key]
    if not isinstance(prompt, str):
        raise ValueError(f"field {key!r} must be a string, got {type(prompt).__name__}")
    task = obj.get("task", "math")
    if not isinstance(task, str) or not task:
        raise ValueError(f"field 'task' must be a non-empty string, got {task!r}")
    if "answer" not in obj:
        if task == "math":
            raise ValueError("missing field 'answer' (required for task 'math')")
        answer: Any = ""
    else:
        answer = obj["answer"]
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise ValueError(f"field 'answer' must be a string or integer, got {type(answer).__name__}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"field 'meta' must be an object, got {type(meta).__name__}")
    return PromptRow(prompt=prompt, answer=answer, task=task, meta=meta)


def _read_jsonl(path: str | Path, parse: Callable[[Any], T]) -> list[T]:
    """Every row of a jsonl file through `parse`; PromptFileError("path:line: why") on a bad row."""
    path = Path(path)
    rows: list[T] = []
    try:
        f = path.open(encoding="utf-8")
    except OSError as e:
        raise PromptFileError(f"{path}: cannot open: {e.strerror}") from e
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{lineno}: invalid JSON: {e}") from e
            try:
                rows.append(parse(obj))
            except ValueError as e:
                raise PromptFileError(f"{path}:{lineno}: {e}") from e
    if not rows:
        raise PromptFileError(f"{path}: no rows")
    return rows


def load_prompts(path: str | Path) -> list[PromptRow]:
    """Every row of a jsonl prompt file. Raises PromptFileError("path:line: why") on a bad row."""
    return _read_jsonl(path, _row_from_json)


def _pair_from_json(obj: Any) -> tuple[str, str]:
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    for key in ("prompt", "response"):
        if key not in obj:
            raise ValueError(f"missing field {key!r} (rows are {{\"prompt\": str, \"response\": str}})")
        if not isinstance(obj[key], str):
            raise ValueError(f"field {key!r} must be a string, got {type(obj[key]).__name__}")
    return obj["prompt"], obj["response"]


def load_pairs(path: str | Path) -> list[tuple[str, str]]:
    """(prompt, response) rows for `semionline score`; errors name the file and line."""
    return _read_jsonl(path, _pair_from_json)


def write_jsonl(path: str | Path, rows: Iterable[PromptRow | Mapping[str, Any]]) -> int:
    """Write rows (PromptRow or plain mappings) as jsonl, atomically: a temp file in the same
    directory renamed over `path`, so readers never see a half-written file. Returns the count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for row in rows:
                obj = row.to_json() if isinstance(row, PromptRow) else dict(row)
                f.write(json.dumps(obj, ensure_ascii=False) + "\n")
                count += 1
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count
