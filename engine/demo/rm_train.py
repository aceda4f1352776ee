"""Train the CPU demo's reward model: a tiny Llama sequence classifier fitted with a Bradley-Terry
loss on pairs of notes for the chat task (`engine/demo/chat.py`), saved in the format of a real
reward model (Skywork-Reward, Athene-RM): `LlamaForSequenceClassification`, `num_labels = 1`,
plus a tokenizer with a chat template. `engine/rewards/reward_model.py` loads it like any other.

    semionline rm-train --out .cache/rm                # ~1 minute on 2 CPU cores
    python -m engine.demo.rm_train --out .cache/rm --steps 300

`device`: where it trains, already resolved (the CLI's `--device auto|cpu|cuda` goes through
`engine.parallel.device.resolve_device`, as `learner.device` does); the default, cpu, is the
recipe as it always ran.

Pairs: two notes sampled for one prompt, ranked by the task's hidden quality rule (ties skipped).
A quarter of the notes are corrupted first (a part cut, characters swapped, the text truncated)
and rank lowest, so the model learns to score text outside the task's forms low. Otherwise a
policy under RL would find such text and exploit it. The report gives held-out pair accuracy on
prompts that neither the reward model nor the policy ever trains on.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from transformers import LlamaConfig, LlamaForSequenceClassification

from engine.data.prompts import PromptRow
from engine.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, load_tokenizer, save_tokenizer
from engine.demo.chat import chat_prompts, heldout_size, note_quality, sample_response
from engine.files import atomic_dir

# Renders (user: prompt, assistant: response) as BOS + prompt + response + EOS: the policy's own
# format, so the reward model reads exactly the text the policy wrote.
CHAT_TEMPLATE = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}{{ eos_token }}"
CORRUPT_QUALITY = -10.0


@dataclass
class RMReport:
    out_dir: str
    params: int
    steps: int
    pairs_per_step: int
    final_loss: float
    heldout_pair_accuracy: float  # held-out prompts, untied pairs, corrupted notes included
    heldout_pairs: int
    seconds: float


def corrupt(text: str, rng: random.Random) -> str:
    """A note pushed outside the task's forms (what a drifting policy might write)."""
    kind = rng.randrange(3)
    if kind == 0 and len(text) > 4:  # truncated mid-way
        return text[: rng.randrange(2, len(text) - 1)]
    chars = list(text)
    for _ in range(rng.randint(1, 4)):  # characters swapped for random ones
        chars[rng.randrange(len(chars))] = rng.choice("abcdefghijklmnopqrstuvwxyz .!,")
    out = "".join(chars)
    return out + out[-rng.randint(1, min(8, len(out))):] if kind == 2 else out  # or a stutter at the end


def sample_note(row: PromptRow, rng: random.Random, corrupt_fraction: float) -> tuple[str, float]:
    text = sample_response(row, rng)
    if rng.random() < corrupt_fraction:
        bad = corrupt(text, rng)
        if note_quality(row, bad) == -4.0:  # really outside the forms
            return bad, CORRUPT_QUALITY
    return text, note_quality(row, text)


def make_pairs(rows: Sequence[PromptRow], rng: random.Random, corrupt_fraction: float = 0.25):
    """(prompt, chosen, rejected) for each row whose two sampled notes differ in quality."""
    out = []
    for row in rows:
        (a, qa), (b, qb) = sample_note(row, rng, corrupt_fraction), sample_note(row, rng, corrupt_fraction)
        if qa != qb:
            out.append((row.prompt, a, b) if qa > qb else (row.prompt, b, a))
    return out


def rm_config(hidden: int = 128, layers: int = 2) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=VOCAB_SIZE, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 8 * 8, num_hidden_layers=layers,
        num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, head_dim=64, max_position_embeddings=512,
        bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, num_labels=1, tie_word_embeddings=False,
        dtype="float32",
    )  # fmt: skip


def _encode(tok, prompt: str, response: str) -> list[int]:
    return list(tok.apply_chat_template([{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                                        tokenize=True, return_dict=False))


def _scores(model, tok, prompts: Sequence[str], responses: Sequence[str]) -> torch.Tensor:
    enc = [_encode(tok, p, r) for p, r in zip(prompts, responses, strict=True)]
    width = max(len(e) for e in enc)
    ids = torch.full((len(enc), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, e in enumerate(enc):
        ids[i, : len(e)] = torch.tensor(e)
        mask[i, : len(e)] = 1
    return model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits[:, 0]


def train_reward_model(out_dir: str | Path, *, steps: int = 300, pairs_per_step: int = 32, lr: float = 1e-3,
                       seed: int = 0, n_heldout_pairs: int = 400, progress: bool = True,
                       device: torch.device | str = "cpu") -> RMReport:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    torch.manual_seed(seed)
    rng = random.Random(f"semionline-rm:{seed}")
    with atomic_dir(out_dir) as tmp:
        save_tokenizer(tmp)
        cfg_path = tmp / "tokenizer_config.json"
        tok_cfg = json.loads(cfg_path.read_text())
        tok_cfg["chat_template"] = CHAT_TEMPLATE
        cfg_path.write_text(json.dumps(tok_cfg, indent=2) + "\n")
        tok = load_tokenizer(tmp)
        model = LlamaForSequenceClassification(rm_config()).to(device)  # initialised on CPU, then moved
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        train_rows = chat_prompts(steps * pairs_per_step, split="sft", seed=seed)
        losses: list[float] = []
        model.train()
        bar = tqdm(range(steps), desc="reward model", disable=not progress, dynamic_ncols=True)
        for step in bar:
            pairs = make_pairs(train_rows[step * pairs_per_step : (step + 1) * pairs_per_step], rng)
            if not pairs:
                continue
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (step + 1) / 20)
            prompts = [p for p, _, _ in pairs]
            scores = _scores(model, tok, prompts + prompts, [c for _, c, _ in pairs] + [r for _, _, r in pairs])
            margin = scores[: len(pairs)] - scores[len(pairs) :]
            loss = -F.logsigmoid(margin).mean() + 1e-3 * scores.pow(2).mean()  # keeps scores centred near 0
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
        heldout_rows = chat_prompts(heldout_size(), split="heldout", seed=seed)
        heldout = make_pairs([heldout_rows[i % len(heldout_rows)] for i in range(n_heldout_pairs)],
                             random.Random(f"semionline-rm-eval:{seed}"))
        with torch.no_grad():
            prompts = [p for p, _, _ in heldout]
            s = _scores(model, tok, prompts + prompts, [c for _, c, _ in heldout] + [r for _, _, r in heldout])
        accuracy = float((s[: len(heldout)] > s[len(heldout) :]).float().mean())
        model.save_pretrained(tmp)
        report = RMReport(out_dir=str(out_dir), params=sum(p.numel() for p in model.parameters()), steps=steps,
                          pairs_per_step=pairs_per_step, final_loss=sum(losses[-10:]) / max(1, len(losses[-10:])),
                          heldout_pair_accuracy=accuracy, heldout_pairs=len(heldout),
                          seconds=round(time.perf_counter() - start, 2))
        (tmp / "rm_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report
