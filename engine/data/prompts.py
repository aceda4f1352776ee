"""Prompt datasets: the `PromptRow` every stage passes around, and strict jsonl read / atomic write.

    rows = load_prompts(".cache/seed/data/heldout.jsonl")    # list[PromptRow]
    write_jsonl("out.jsonl", rows)                            # temp file + rename

Other formats (.json, .parquet, save_to_disk folders, hf://) and key selection: engine/data/datasets.py
(`load_prompt_rows`), which parses every record with `parse_prompt_record` below.

Accepted row shapes (one JSON object per line; blank lines are skipped):

    {"prompt": str, "answer": str}                 the engine's own files (seed data, exports)
    {"question": str, "answer": str}               ../shared/data (GSM8K, MATH-500): `answer` is
                                                   the full worked solution; it is kept as is and
                                                   the math reward extracts the final answer
    {"problem": str, "solution": str}              MATH
    {"messages": [{"role", "content"}, ...]}       a chat prompt (system / user / assistant turns,
                                                   the last one user); needs data.chat_template
    optional: "task": str (default "math"), "meta": object

`answer` may be a JSON integer (kept as its decimal string). `load_prompts` requires it for task
"math" (verifiable); `load_prompt_rows` allows prompt-only rows (generation, judge / RM tasks).
Anything else (invalid JSON, a missing or mistyped field, an unknown role) raises `PromptFileError`
naming the file and line: a broken data file is a bug to fix, never rows to skip silently.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


class PromptFileError(ValueError):
    """A data file row that cannot be read; the message starts with `path:line:`."""


ROLES = ("system", "user", "assistant")  # the roles a `messages` prompt row may hold
PROMPT_KEYS = ("prompt", "question", "problem", "messages")  # tried in order when no prompt_key is set
ANSWER_KEYS = ("answer", "solution")  # GSM8K / plain: answer; MATH: solution (tried in order)


@dataclass
class PromptRow:
    prompt: str  # the text the model continues (the seed model: "Q: ...\nA:"); messages: the last user turn
    answer: str = ""  # reference answer or worked solution; "" for tasks without one
    task: str = "math"  # selects the reward: "math" is verified by math-verify
    meta: dict[str, Any] = field(default_factory=dict)  # free-form, carried through untouched
    # A chat prompt ({"role", "content"} turns, the last one "user"); None: a plain text prompt.
    messages: list[dict[str, str]] | None = None
    origin: str = field(default="", compare=False, repr=False)  # "file:line" or "source[row k]", for errors

    def to_json(self) -> dict[str, Any]:
        """The jsonl form `load_prompts` reads back; `task`, `meta`, `messages` only when set."""
        out: dict[str, Any] = {"messages": self.messages} if self.messages else {"prompt": self.prompt}
        out["answer"] = self.answer
        if self.task != "math":
            out["task"] = self.task
        if self.meta:
            out["meta"] = self.meta
        return out


def parse_messages(value: Any, key: str = "messages") -> list[dict[str, str]]:
    """A validated chat prompt: a non-empty list of {"role", "content"} turns with roles in ROLES,
    ending with a user turn (the model answers it). Raises ValueError naming the turn."""
    if not isinstance(value, list) or not value:
        raise ValueError(f"field {key!r} must be a non-empty list of {{\"role\", \"content\"}} turns")
    turns = []
    for k, turn in enumerate(value):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            raise ValueError(f"field {key!r} turn {k}: expected {{\"role\": str, \"content\": str}}, got {turn!r:.80}")
        if turn["role"] not in ROLES:
            raise ValueError(f"field {key!r} turn {k}: unknown role {turn['role']!r} (allowed: {', '.join(ROLES)})")
        turns.append({"role": turn["role"], "content": turn["content"]})
    if turns[-1]["role"] != "user":
        raise ValueError(f"field {key!r}: the last turn must be 'user' (the model answers it), got {turns[-1]['role']!r}")
    return turns


def _pick(obj: dict, key: str | None, candidates: tuple[str, ...], what: str) -> str | None:
    if key is not None:
        if key not in obj:
            raise ValueError(f"missing field {key!r} (data.{what}_key); fields are {sorted(obj)}")
        return key
    return next((k for k in candidates if k in obj), None)


def parse_prompt_record(obj: Any, *, prompt_key: str | None = None, answer_key: str | None = None,
                        require_math_answer: bool = True) -> PromptRow:
    """One record as a PromptRow. The prompt is `prompt_key` or the first of PROMPT_KEYS present; a
    list value (or `messages`) is a chat prompt. The answer is `answer_key` or the first of
    ANSWER_KEYS present. Raises ValueError naming the offending field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    key = _pick(obj, prompt_key, PROMPT_KEYS, "prompt")
    if key is None:
        raise ValueError(f"missing field 'prompt' (or {', '.join(repr(k) for k in PROMPT_KEYS[1:])}; set data.prompt_key "
                         f"to name another); fields are {sorted(obj)}")
    messages = None
    if isinstance(obj[key], list):
        messages = parse_messages(obj[key], key)
        prompt = messages[-1]["content"]
    elif isinstance(obj[key], str):
        prompt = obj[key]
    else:
        raise ValueError(f"field {key!r} must be a string (or a list of chat turns), got {type(obj[key]).__name__}")
    task = obj.get("task", "math")
    if not isinstance(task, str) or not task:
        raise ValueError(f"field 'task' must be a non-empty string, got {task!r}")
    akey = _pick(obj, answer_key, ANSWER_KEYS, "answer")
    if akey is not None and obj[akey] is None and not require_math_answer:
        akey = None  # a null cell of a table's answer column: a prompt-only row
    if akey is None:
        if task == "math" and require_math_answer:
            raise ValueError("missing field 'answer' (required for task 'math')")
        answer: Any = ""
    else:
        answer = obj[akey]
    if isinstance(answer, int) and not isinstance(answer, bool):
        answer = str(answer)
    if not isinstance(answer, str):
        raise ValueError(f"field {akey!r} must be a string or integer, got {type(answer).__name__}")
    meta = obj.get("meta", {})
    if not isinstance(meta, dict):
        raise ValueError(f"field 'meta' must be an object, got {type(meta).__name__}")
    return PromptRow(prompt=prompt, answer=answer, task=task, meta=meta, messages=messages)


def _row_from_json(obj: Any) -> PromptRow:
    """Raises ValueError with a message naming the offending field."""
    return parse_prompt_record(obj)


def jsonl_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """("path:line", parsed JSON) for every non-blank line; PromptFileError naming the line on bad JSON."""
    try:
        f = open(path, encoding="utf-8")  # noqa: SIM115 - closed below, errors name the file
    except OSError as e:
        raise PromptFileError(f"{path}: cannot open: {e.strerror}") from e
    with f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{lineno}", json.loads(line)
            except json.JSONDecodeError as e:
                raise PromptFileError(f"{path}:{lineno}: invalid JSON: {e}") from e


def _read_jsonl(path: str | Path, parse: Callable[[Any], T]) -> list[T]:
    """Every row of a jsonl file through `parse`; PromptFileError("path:line: why") on a bad row."""
    rows: list[T] = []
    for origin, obj in jsonl_records(path):
        try:
            row = parse(obj)
        except ValueError as e:
            raise PromptFileError(f"{origin}: {e}") from e
        if isinstance(row, PromptRow):
            row.origin = origin
        rows.append(row)
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
