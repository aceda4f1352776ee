"""A prompt row as the model expects it, and every token id that ends a response.

    ids = encode_prompt_row(tokenizer, row, prompt_template="{prompt}\\nPut the answer in \\\\boxed{{}}.",
                            chat_template=True, system_prompt="You are a careful mathematician.")
    stop = stop_token_ids(model_dir, tokenizer)     # [eos, *generation_config eos ids], deduplicated

One function for every stage (sampling, evaluation, `generate`, `score`, preference data), so the
prompt ids a run samples from are exactly the ids it trains on:

* plain text rows: `prompt_template` is applied to the text; with `chat_template` the result is
  one user turn (after `system_prompt`'s system turn, if set) rendered by the tokenizer's chat
  template with the generation prompt; without it, `encode_prompt` (BOS + tokens: the seed model
  and base models).
* `messages` rows (engine/data/prompts.py): `prompt_template` is applied to the last user turn,
  `system_prompt` is a default used when the row has no system turn of its own, and the turns go
  through the chat template. A messages row without `chat_template` is an error: there is no
  single right way to flatten turns into text.

Stop ids. Instruct models end a turn with a token that is not `tokenizer.eos_token` (Llama-3.1-
Instruct: <|eot_id|> and <|eom_id|> besides <|end_of_text|>); `generation_config.json` lists them
all. vLLM adds them to its stop set by itself, so the engine states them explicitly: the sampler's
`stop_token_ids` and the learner's notion of where a response ends must be the same list.
This module must not import torch (it is used by the data pipeline and the sampler).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from engine.data.prompts import PromptRow
from engine.data.tokenizer import encode_prompt


class PromptFormatError(ValueError):
    """A row that cannot be rendered with the run's template settings; the message names the row."""


def _name(tokenizer: PreTrainedTokenizerBase) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


def format_prompt_text(template: str, text: str) -> str:
    """`template` with `{prompt}` replaced by `text` (other braces doubled: `\\\\boxed{{}}`)."""
    try:
        return template.format(prompt=text)
    except (KeyError, IndexError, ValueError) as e:
        raise PromptFormatError(f"prompt_template {template!r}: {type(e).__name__} {e}; its only field is "
                                "{prompt}, and literal braces are doubled ({{ }})") from None


def chat_messages(row: PromptRow, prompt_template: str = "{prompt}",
                  system_prompt: str | None = None) -> list[dict[str, str]]:
    """The turns the chat template renders for `row` (see the module docstring)."""
    if row.messages:
        turns = [dict(t) for t in row.messages]
        turns[-1]["content"] = format_prompt_text(prompt_template, turns[-1]["content"])
    else:
        turns = [{"role": "user", "content": format_prompt_text(prompt_template, row.prompt)}]
    if system_prompt is not None and turns[0]["role"] != "system":
        turns.insert(0, {"role": "system", "content": system_prompt})
    return turns


def apply_chat(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]], *,
               add_generation_prompt: bool = True) -> list[int]:
    """`tokenizer.apply_chat_template` as token ids; a tokenizer without a template is an error."""
    if not tokenizer.chat_template:
        raise PromptFormatError(f"chat_template is true, but tokenizer {_name(tokenizer)!r} has no chat template "
                                "(a base model?): set data.chat_template: false, or use the instruct model")
    ids = tokenizer.apply_chat_template(turns, add_generation_prompt=add_generation_prompt, tokenize=True,
                                        return_dict=False)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some tokenizers return an encoding
        ids = ids["input_ids"]
    return [int(i) for i in ids]


def encode_prompt_row(tokenizer: PreTrainedTokenizerBase, row: PromptRow, *, prompt_template: str = "{prompt}",
                      chat_template: bool = False, system_prompt: str | None = None) -> list[int]:
    """The prompt token ids of `row` as the model expects them (see the module docstring)."""
    where = f"{row.origin}: " if row.origin else ""
    try:
        if chat_template:
            return apply_chat(tokenizer, chat_messages(row, prompt_template, system_prompt))
        if row.messages:
            raise PromptFormatError("a 'messages' row needs chat_template: true (data.chat_template)")
        if system_prompt is not None:
            raise PromptFormatError("system_prompt needs chat_template: true (a plain-text prompt has no system turn)")
        return encode_prompt(tokenizer, format_prompt_text(prompt_template, row.prompt))
    except PromptFormatError as e:
        raise PromptFormatError(f"{where}{e}") from None


def chat_response_ids(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]], prompt_ids: list[int],
                      text: str, stop_ids: Sequence[int]) -> list[int]:
    """A response's ids under the chat template: the rendering of `turns` + the assistant turn,
    after `prompt_ids` (the rendering with the generation prompt), up to and including the first
    stop id (a template's newline after the end-of-turn token is not part of the response; the
    sampler stops there too); `stop_ids[0]` is appended when the rendering has none."""
    full = apply_chat(tokenizer, [*turns, {"role": "assistant", "content": text}], add_generation_prompt=False)
    if full[: len(prompt_ids)] != prompt_ids:
        raise PromptFormatError("the chat template does not render the prompt (with its generation prompt) as a "
                                "prefix of the conversation, so the response ids cannot be cut from it")
    response = full[len(prompt_ids):]
    ends = [k for k, t in enumerate(response) if t in stop_ids]
    return response[: ends[0] + 1] if ends else [*response, stop_ids[0]]


def _eos_ids(value: object, where: str) -> list[int]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{where}: eos_token_id must be an integer or a list of integers, got {value!r}")
    return list(values)


def stop_token_ids(model_dir: str | Path, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a response: `tokenizer.eos_token_id` first, then each `eos_token_id` of
    the model's `generation_config.json` (or, without that file, of `config.json`, as vLLM and
    transformers fall back), without repeats. Raises ValueError when there is none at all."""
    model_dir = Path(model_dir)
    ids = _eos_ids(tokenizer.eos_token_id, f"tokenizer {_name(tokenizer)!r}")
    for name in ("generation_config.json", "config.json"):
        path = model_dir / name
        if path.is_file():
            ids += _eos_ids(json.loads(path.read_text()).get("eos_token_id"), str(path))
            break
    out = list(dict.fromkeys(ids))
    if not out:
        raise ValueError(f"{model_dir}: no EOS token id in the tokenizer, generation_config.json or config.json; "
                         "responses could never end")
    return out
