"""Preference datasets for offline DPO, as TRL users hold them, tokenised the way training tokenises.

    pairs = load_preference_rows("prefs.jsonl", tokenizer, chat_template=True,
                                 stop_ids=stop_token_ids(model_dir, tokenizer))
    pairs[0].prompt_ids, pairs[0].chosen_ids, pairs[0].rejected_ids      # list[int] each

Accepted rows (any source engine/data/datasets.py reads: jsonl, json, parquet, saved folders, hf://):

    {"prompt": str, "chosen": str, "rejected": str}                    plain text
    {"prompt": str | [turns], "chosen": [assistant turn], "rejected": [assistant turn]}
                                                                        TRL conversational
    {"chosen": [user, ..., assistant], "rejected": [user, ..., assistant], "prompt"?: str}
                                                                        UltraFeedback style: the prompt
                                                                        is the turns before the last
                                                                        (they must be the same in both)

The prompt goes through `encode_prompt_row` (the prompt template, chat template and system prompt
of the run), so a pair's prompt ids are the ids the sampler would be given. Responses:

* without the chat template: `encode_response(text) + [eos]` (what `score` and SFT use);
* with it: the conversation `prompt turns + assistant turn` is rendered and the response is what
  follows the prompt ids, up to and including the first stop id (a chat template's trailing
  newline after <|im_end|> is not part of the response; the sampler stops at the stop id too). A
  template that does not render the prompt as a prefix of the conversation is refused.

Message-list rows need `chat_template=True`. Errors name the source and row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerBase

from engine.data.datasets import read_records
from engine.data.encoding import chat_messages, chat_response_ids, encode_prompt_row
from engine.data.prompts import PromptFileError, PromptRow, parse_messages
from engine.data.tokenizer import encode_response, eos_token_id


@dataclass(frozen=True)
class PreferenceText:
    """One pair before tokenisation: the prompt (text or turns) and the two responses' texts."""

    prompt: PromptRow  # .messages set for chat prompts
    chosen: str
    rejected: str


@dataclass(frozen=True)
class PreferenceRow:
    """One tokenised preference pair; each response ends with a stop id."""

    prompt_ids: list[int]  # (P,)
    chosen_ids: list[int]  # (C,) response tokens only
    rejected_ids: list[int]  # (R,) response tokens only
    origin: str = field(default="", compare=False)  # "file:line" / "source[row k]"


def _assistant_reply(turns: list[Any], key: str) -> tuple[list[dict[str, str]], str]:
    """(turns before the last, the last turn's content); the last turn must be the assistant's."""
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"field {key!r} must be a string or a non-empty list of chat turns")
    last = turns[-1]
    if not isinstance(last, dict) or last.get("role") != "assistant" or not isinstance(last.get("content"), str):
        raise ValueError(f"field {key!r}: the last turn must be {{\"role\": \"assistant\", \"content\": str}}, "
                         f"got {last!r:.80}")
    before = parse_messages(turns[:-1], key) if len(turns) > 1 else []
    return before, last["content"]


def parse_preference_record(obj: Any) -> PreferenceText:
    """One row (see the module docstring); raises ValueError naming the field."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected an object, got {type(obj).__name__}")
    for key in ("chosen", "rejected"):
        if key not in obj:
            raise ValueError(f"missing field {key!r}; fields are {sorted(obj)} (rows are prompt/chosen/rejected)")
    chosen, rejected, prompt = obj["chosen"], obj["rejected"], obj.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str | list):
            raise ValueError("missing field 'prompt' (a string or a list of chat turns) for string responses")
        messages = parse_messages(prompt, "prompt") if isinstance(prompt, list) else None
        text = messages[-1]["content"] if messages else prompt
        return PreferenceText(PromptRow(text, messages=messages), chosen, rejected)
    if isinstance(chosen, str) or isinstance(rejected, str):
        raise ValueError("fields 'chosen' and 'rejected' must both be strings or both be lists of chat turns")
    chosen_before, chosen_text = _assistant_reply(chosen, "chosen")
    rejected_before, rejected_text = _assistant_reply(rejected, "rejected")
    if chosen_before != rejected_before:
        raise ValueError("'chosen' and 'rejected' differ before their last (assistant) turn; the prompt must be shared")
    if chosen_before:
        messages = chosen_before
    elif isinstance(prompt, list):
        messages = parse_messages(prompt, "prompt")
    elif isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        raise ValueError("no prompt: 'chosen'/'rejected' hold only the assistant turn and there is no 'prompt' field")
    return PreferenceText(PromptRow(messages[-1]["content"], messages=messages), chosen_text, rejected_text)


def encode_preference(tokenizer: PreTrainedTokenizerBase, pair: PreferenceText, *, prompt_template: str = "{prompt}",
                      chat_template: bool = False, system_prompt: str | None = None,
                      stop_ids: Sequence[int] | None = None) -> PreferenceRow:
    """Token ids of one pair (see the module docstring). `stop_ids`: the model's stop ids
    (`stop_token_ids`); default: the tokenizer's EOS."""
    stop_ids = list(stop_ids) if stop_ids else [eos_token_id(tokenizer)]
    prompt_ids = encode_prompt_row(tokenizer, pair.prompt, prompt_template=prompt_template,
                                   chat_template=chat_template, system_prompt=system_prompt)
    if chat_template:
        turns = chat_messages(pair.prompt, prompt_template, system_prompt)
        chosen, rejected = (chat_response_ids(tokenizer, turns, prompt_ids, t, stop_ids)
                            for t in (pair.chosen, pair.rejected))
    else:
        chosen, rejected = ([*encode_response(tokenizer, t), stop_ids[0]] for t in (pair.chosen, pair.rejected))
    return PreferenceRow(prompt_ids=prompt_ids, chosen_ids=chosen, rejected_ids=rejected, origin=pair.prompt.origin)


def load_preference_rows(source: str | Path, tokenizer: PreTrainedTokenizerBase, *, prompt_template: str = "{prompt}",
                         chat_template: bool = False, system_prompt: str | None = None,
                         stop_ids: Sequence[int] | None = None) -> list[PreferenceRow]:
    """Every pair of `source`, tokenised; PromptFileError("origin: why") on a bad row."""
    src, _, records = read_records(source)
    rows = []
    for origin, obj in records:
        try:
            pair = parse_preference_record(obj)
            pair.prompt.origin = origin
            rows.append(encode_preference(tokenizer, pair, prompt_template=prompt_template, chat_template=chat_template,
                                          system_prompt=system_prompt, stop_ids=stop_ids))
        except ValueError as e:  # PromptFormatError and UnencodableTextError are ValueErrors too
            message = str(e).removeprefix(f"{origin}: ")
            raise PromptFileError(f"{origin}: {message}") from e
    if not rows:
        raise PromptFileError(f"{src}: no rows")
    return rows
