"""The tokenizer of the CPU seed model, and the one tokenization every stage uses.

Two parts:

* `build_tokenizer` / `save_tokenizer`: a character-level tokenizer made with the `tokenizers`
  library (GPT-2 style byte-level pre-tokenizer, BPE with no merges, so one printable-ASCII
  character or newline is one token). It is saved as `tokenizer.json` + `tokenizer_config.json` +
  `special_tokens_map.json`, which `transformers.AutoTokenizer.from_pretrained(DIR)` and vLLM load
  unchanged; decoding gives back the exact text (spaces and newlines kept). The vocabulary is
  padded with `<reserved_k>` specials to `VOCAB_SIZE` = 128 (a multiple of 64, so tensor
  parallelism 2 divides it) so that every id the model can emit decodes.
* `encode_prompt` / `encode_response` / `encode_example`: THE tokenization of a prompt and a
  response, for any Hugging Face tokenizer (this one or a real model's). Sampler, learner,
  `score` and SFT all call these, so a response's token ids never depend on which stage made them:

      prompt_ids   = [bos] + tokens(prompt)        (no BOS when the tokenizer has none)
      response_ids = tokens(response)              (no EOS)
      sft / score  = prompt_ids + response_ids + [eos]

  Text that the tokenizer cannot encode (a character outside its vocabulary, which a tokenizer
  without byte fallback would silently drop) raises `UnencodableTextError` naming the character.

This module must not import torch or the model: it is used by the data pipeline and the sampler.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoTokenizer, PreTrainedTokenizerBase

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
EOS_TOKEN = "</s>"
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"  # printable ASCII + newline
VOCAB_SIZE = 128  # 3 specials + 96 characters + 29 reserved; a multiple of 64
MODEL_MAX_LENGTH = 512


class UnencodableTextError(ValueError):
    """Raised when a prompt or response holds a character the tokenizer cannot represent."""


@dataclass(frozen=True)
class EncodedExample:
    """One prompt + response as trained on: `input_ids = prompt_ids + response_ids + [eos]`."""

    input_ids: list[int]  # (T,)
    prompt_len: int  # tokens before the response; response and EOS are input_ids[prompt_len:]


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map (what the ByteLevel pre-tokenizer emits)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in keep}
    shifted = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


def build_tokenizer() -> Tokenizer:
    """The seed model's character-level tokenizer (ids: <pad>=0, <s>=1, </s>=2, then ALPHABET)."""
    byte_map = _bytes_to_unicode()
    vocab = {PAD_TOKEN: PAD_ID, BOS_TOKEN: BOS_ID, EOS_TOKEN: EOS_ID}
    for ch in ALPHABET:
        vocab[byte_map[ord(ch)]] = len(vocab)
    reserved = [f"<reserved_{k}>" for k in range(VOCAB_SIZE - len(vocab))]
    for name in reserved:
        vocab[name] = len(vocab)
    assert len(vocab) == VOCAB_SIZE, len(vocab)

    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, *reserved)])
    # `tokenizer(text)` (what vLLM calls on a text prompt) adds BOS, matching `encode_prompt`.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A", pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B", special_tokens=[(BOS_TOKEN, BOS_ID)]
    )
    return tok


def save_tokenizer(out_dir: str | Path) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json into `out_dir`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer().save(str(out_dir / "tokenizer.json"))
    specials = {"bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN, "pad_token": PAD_TOKEN}
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **specials,
        "model_max_length": MODEL_MAX_LENGTH,
        "clean_up_tokenization_spaces": False,
        "padding_side": "right",
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")


def load_tokenizer(model_dir: str | Path) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model directory, exactly as vLLM will load it."""
    return AutoTokenizer.from_pretrained(str(model_dir))


def _tokens(tokenizer: PreTrainedTokenizerBase, text: str, what: str) -> list[int]:
    ids = tokenizer.encode(text, add_special_tokens=False)
    unk = tokenizer.unk_token_id
    if (unk is None or unk not in ids) and _decode(tokenizer, ids) == text:
        return ids
    # Slow path: find the culprit. A tokenizer whose normaliser merely rewrites text (NFC, spaces)
    # without losing a character is accepted.
    for pos, ch in enumerate(text):
        ch_ids = tokenizer.encode(ch, add_special_tokens=False)
        if not ch_ids or (unk is not None and unk in ch_ids) or _decode(tokenizer, ch_ids) != ch:
            raise UnencodableTextError(
                f"{what} has character {ch!r} (U+{ord(ch):04X}) at position {pos} that tokenizer "
                f"{getattr(tokenizer, 'name_or_path', '') or type(tokenizer).__name__!r} cannot encode: "
                f"{text[max(0, pos - 30): pos + 30]!r}"
            )
    return ids


def _decode(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """BOS (when the tokenizer has one) + the prompt's tokens. Raises UnencodableTextError."""
    ids = _tokens(tokenizer, text, "prompt")
    bos = tokenizer.bos_token_id
    return ids if bos is None else [bos, *ids]


def encode_formatted_prompt(tokenizer: PreTrainedTokenizerBase, text: str, *, template: str = "{prompt}",
                            chat: bool = False) -> list[int]:
    """A data row's prompt as the model should see it: `template` (e.g. "{prompt}\nPlease reason
    step by step, and put your final answer within \\boxed{{}}.") applied to the row's text, then
    either the tokenizer's chat template as one user turn with the generation prompt (instruct
    models) or plain `encode_prompt` (the seed model, base models)."""
    text = template.format(prompt=text)
    if not chat:
        return encode_prompt(tokenizer, text)
    if not tokenizer.chat_template:
        raise ValueError(f"chat_template=true but tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has none")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                        tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def encode_response(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """The response's tokens, no BOS and no EOS. Raises UnencodableTextError."""
    return _tokens(tokenizer, text, "response")


def eos_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The id that ends every response (and the sampler's stop token)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token")
    return int(eos)


def encode_example(tokenizer: PreTrainedTokenizerBase, prompt: str, response: str) -> EncodedExample:
    """prompt_ids + response_ids + [eos]: the sequence SFT trains on and `score` scores."""
    prompt_ids = encode_prompt(tokenizer, prompt)
    response_ids = encode_response(tokenizer, response)
    return EncodedExample(input_ids=[*prompt_ids, *response_ids, eos_token_id(tokenizer)],
                          prompt_len=len(prompt_ids))
