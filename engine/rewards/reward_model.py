"""Reward-model reward: a Hugging Face sequence-classification model scores (prompt, response).

    from engine.rewards.reward_model import RewardModel
    rm = RewardModel("path/to/Skywork-Reward-Llama-3.1-8B", max_length=4096, max_batch_tokens=32768,
                     device="cuda", dtype="bfloat16")
    scores = rm.score(prompts, responses)          # list[float], one scalar per pair

The directory is what Athene-RM, Skywork-Reward and the like ship: `config.json` with a
`*ForSequenceClassification` architecture and `num_labels == 1`, weights, and a tokenizer. When
the tokenizer has a chat template the pair is rendered as a two-turn conversation (user: prompt,
assistant: response), exactly as such models were trained; otherwise the text is prompt +
response. Sequences longer than `max_length` keep their end (the response is what is judged):
tokens are dropped from the front of the prompt, and a pair whose response alone exceeds the
limit is cut to its last `max_length` tokens.

Batches are sorted by length and cut by a token budget: a batch holds as many sequences as fit
in `max_batch_tokens` padded tokens (rows x longest), capped at `batch_size` rows, so a few long
pairs do not blow up memory and many short ones are not scored one small batch at a time. Rows are
right-padded; transformers' sequence-classification heads read the score at the last non-pad token,
so padding never changes a score (a test checks this). The model runs on the `device` and `dtype`
it is given (the run passes the learner's: a reward model on CPU in fp32 beside a GPU learner in
bf16 is the slowest part of a step). Custom heads (`auto_map` in config.json, e.g. some Skywork /
InternLM reward models) need `trust_remote_code=True`, an explicit opt-in, because it runs the
checkpoint's own Python. This is the torch path; on GPU an 8B reward model is better served by a
vLLM pooling engine, which would plug in behind the same `score` method.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class RewardModelError(ValueError):
    """The directory is not a usable single-score sequence-classification reward model."""


def _dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in ("float32", "bfloat16", "float16"):
        raise RewardModelError(f"reward model dtype {dtype!r}: use float32, bfloat16 or float16")
    return getattr(torch, dtype)


class RewardModel:
    def __init__(self, path: str | Path, *, max_length: int = 2048, batch_size: int = 16,
                 max_batch_tokens: int = 16384, device: str | torch.device = "cpu",
                 dtype: str | torch.dtype = torch.float32, trust_remote_code: bool = False):
        path = Path(path)
        if not (path / "config.json").exists():
            raise RewardModelError(f"reward model {path}: no config.json (expected a Hugging Face model directory)")
        if batch_size < 1 or max_batch_tokens < 1:
            raise RewardModelError(f"reward model {path}: batch_size={batch_size}, max_batch_tokens={max_batch_tokens}: "
                                   "need >= 1")
        auto_map = json.loads((path / "config.json").read_text()).get("auto_map")
        if auto_map and not trust_remote_code:
            raise RewardModelError(f"reward model {path}: config.json maps to the checkpoint's own code ({auto_map}); "
                                   "running it needs trust_remote_code: true (an explicit opt-in)")
        self.path = path
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_batch_tokens = max_batch_tokens
        self.device = torch.device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=_dtype(dtype), trust_remote_code=trust_remote_code).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise RewardModelError(f"reward model {path}: num_labels={self.model.config.num_labels}, expected 1 "
                                   "(a scalar score per sequence)")
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id
        if pad is None:
            raise RewardModelError(f"reward model {path}: the tokenizer has neither a pad nor an EOS token")
        self.pad_id = pad
        self.model.config.pad_token_id = pad  # how the head finds each row's last real token

    def encode(self, prompt: str, response: str) -> list[int]:
        """Token ids of one pair, with the chat template when the tokenizer has one, truncated
        from the front to `max_length`."""
        if self.tokenizer.chat_template:
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
            ids = self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
            if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # some tokenizers return an encoding
                ids = ids["input_ids"]
            ids = list(ids)
        else:
            ids = self.tokenizer(prompt + response, add_special_tokens=True)["input_ids"]
        return ids[-self.max_length :]

    def batches(self, lengths: Sequence[int]) -> list[list[int]]:
        """Indices grouped into batches: sorted by length, each at most `batch_size` rows and
        `max_batch_tokens` padded tokens (a single longer sequence gets a batch of its own)."""
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        out: list[list[int]] = []
        for i in order:
            if out and len(out[-1]) < self.batch_size and (len(out[-1]) + 1) * lengths[i] <= self.max_batch_tokens:
                out[-1].append(i)
            else:
                out.append([i])
        return out

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        encoded = [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)]
        scores = [0.0] * len(encoded)
        for idx in self.batches([len(e) for e in encoded]):
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):
                ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
                mask[row, : len(encoded[i])] = 1
            logits = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).logits
            for row, i in enumerate(idx):
                scores[i] = float(logits[row, 0].float())
        return scores
