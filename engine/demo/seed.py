"""Build the tiny CPU seed model that the demo's RL runs start from; nothing is downloaded.

    semionline seed --out .cache/seed             # the CLI (engine/cli.py) calls build_seed
    python -m engine.demo.seed --out .cache/seed        # the same, without the CLI

Steps: a character tokenizer (engine/data/tokenizer.py) -> a randomly initialised ~3M-parameter
`LlamaForCausalLM` (head_dim 64, which vLLM's CPU build needs; vocab 128, a multiple of 64 so
TP=2 divides it; untied embeddings; fp32) -> supervised warm-up on synthetic arithmetic problems
(engine/demo/synthetic.py; loss on response + EOS tokens only; AdamW) in two phases -> greedy
held-out accuracy with `transformers.generate` -> saved atomically (temp dir + rename) into `out_dir`:

    out_dir/config.json, model.safetensors, generation_config.json, tokenizer files
    out_dir/data/train.jsonl      RL prompts (training distribution)   {"prompt", "answer"}
    out_dir/data/heldout.jsonl    held-out prompts, never trained on    {"prompt", "answer"}
    out_dir/seed_report.json      SeedReport

Phase 1 (600 steps of 16, lr 1e-3): worked solutions only (" 7+5=12. 12-3=9. The answer is 9.").
Phase 2 (`mix_steps` = 150, lr 3e-4): half of the responses are bare answers (" The answer is 9."),
like a base model that sometimes answers without working. The seed then answers directly about
half the time, and its bare answers are mostly wrong (a 3M-parameter model cannot do two steps of
arithmetic in one token), so it solves ~20% of the held-out problems (seed 0, temperature 0.6)
while its worked solutions solve ~35%. That is the room RL has: learning that working it out
pays is a behaviour shared by every prompt, so a few dozen RL steps learn it and it carries over
to held-out problems. Without phase 2, RL at the demo's scale has only per-problem arithmetic to
improve, which it learns on the prompts it trains on but which does not carry over in 30 steps
(docs/decisions.md, 2026-11-26). ~2.5 minutes on 2 idle CPU cores with the defaults (bf16
autocast where the CPU has native bf16; about twice that in fp32 elsewhere). The build uses every
core it is given (`num_threads`); on a machine shared with other torch jobs, fewer threads avoid
OpenMP threads spinning against each other.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from engine.data.prompts import PromptRow, write_jsonl
from engine.data.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    VOCAB_SIZE,
    EncodedExample,
    encode_example,
    encode_prompt,
    eos_token_id,
    load_tokenizer,
    save_tokenizer,
)
from engine.demo.chat import chat_prompts, heldout_size, note_quality, sample_response
from engine.demo.synthetic import Difficulty, heldout_prompts, rl_prompts, sft_problems
from engine.files import atomic_dir

ANSWER_RE = re.compile(r"The answer is (-?\d+)")


@dataclass(frozen=True)
class SeedModelConfig:
    """Shape of the seed model (a Llama-family decoder)."""

    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4  # head_dim = hidden_size / num_heads = 64
    num_kv_heads: int = 2
    intermediate_size: int = 688  # SwiGLU
    vocab_size: int = VOCAB_SIZE
    max_position_embeddings: int = 512

    def to_hf(self) -> LlamaConfig:
        if self.hidden_size % self.num_heads or self.hidden_size // self.num_heads != 64:
            raise ValueError(f"head_dim must be 64 (vLLM's CPU build), got {self.hidden_size}/{self.num_heads}")
        if self.vocab_size % 64:
            raise ValueError(f"vocab_size must be a multiple of 64, got {self.vocab_size}")
        return LlamaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers, num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads, head_dim=64, hidden_act="silu",
            max_position_embeddings=self.max_position_embeddings, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
            initializer_range=0.02, attention_bias=False, mlp_bias=False, dtype="float32",
        )  # fmt: skip


@dataclass(frozen=True)
class SFTConfig:
    """Supervised warm-up: AdamW with linear warm-up and cosine decay to 10%."""

    steps: int = 600
    batch_size: int = 16
    lr: float = 1e-3  # 3e-3 stalls the warm-up (the copy-from-prompt skill never forms)
    weight_decay: float = 0.1
    warmup_steps: int = 20
    grad_clip: float = 1.0
    precision: str = "auto"  # "fp32", "bf16" (autocast; fp32 master weights) or "auto"
    curriculum: float = 0.3  # the shortest 30% of batches first (see _length_grouped_batches)


@dataclass
class SeedReport:
    out_dir: str
    seed: int
    params: int
    steps: int
    batch_size: int
    sft_examples: int
    precision: str  # what "auto" resolved to
    num_threads: int
    final_loss: float  # mean response-token loss over the last 10 steps
    heldout_accuracy: float  # transformers greedy, "The answer is N" vs the reference
    heldout_worked_fraction: float  # greedy responses that show their steps ("a+b=c. ...")
    heldout_prompts: int
    rl_prompts: int
    max_response_tokens: int  # longest SFT response + EOS: a safe sampler max_tokens is this or more
    mix_steps: int  # second warm-up phase: math with `direct_fraction` bare answers, and chat notes
    direct_fraction: float
    chat_fraction: float  # of the warm-up examples (both phases) that are chat notes
    chat_heldout_quality: float  # greedy notes on the held-out chat prompts, by the hidden rule (-4..6)
    train_seconds: float
    eval_seconds: float
    seconds: float  # the whole build
    model: dict = field(default_factory=dict)
    difficulty: dict = field(default_factory=dict)


def _resolve_precision(precision: str) -> str:
    """"auto" -> bf16 where the CPU has native bf16 dot products (the warm-up runs ~2x faster and
    learns as fast per step as fp32), else fp32 (bf16 is emulated there: much slower)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"precision must be 'auto', 'fp32' or 'bf16', got {precision!r}")
    if precision != "auto":
        return precision
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "fp32"
    return "bf16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "fp32"


def _length_grouped_batches(examples: Sequence[EncodedExample], batch_size: int, rng: random.Random, *,
                            curriculum: float = 0.0) -> list[list[EncodedExample]]:
    """Batches of similar length (sorted inside chunks of 16 batches: little padding), shuffled.
    With `curriculum` = f, the shortest fraction f of the batches come first, shortest first: the
    copy-a-number-from-the-prompt skill forms sooner on short prompts and the warm-up takes off
    earlier and more reliably across seeds."""
    chunk = batch_size * 16
    batches = []
    for start in range(0, len(examples), chunk):
        part = sorted(examples[start : start + chunk], key=lambda e: len(e.input_ids))
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    n_first = int(len(batches) * curriculum)
    if n_first:
        batches.sort(key=lambda b: max(len(e.input_ids) for e in b))  # stable: ties stay shuffled
        rest = batches[n_first:]
        rng.shuffle(rest)
        batches = batches[:n_first] + rest
    return batches


def _collate(batch: Sequence[EncodedExample]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input ids (B, T) and the loss mask over next-token targets (B, T-1)."""
    width = -(-max(len(e.input_ids) for e in batch) // 16) * 16  # few distinct shapes: bounded kernel caches
    ids = torch.full((len(batch), width), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(batch), width - 1), dtype=torch.bool)
    for i, e in enumerate(batch):
        ids[i, : len(e.input_ids)] = torch.tensor(e.input_ids)
        mask[i, e.prompt_len - 1 : len(e.input_ids) - 1] = True  # predicts response tokens and EOS
    return ids, mask


def response_loss(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor, *,
                  bf16: bool = False) -> torch.Tensor:
    """Mean next-token cross-entropy over masked (response) positions. No attention mask is needed:
    padding only sits after the real tokens and attention is causal. With `bf16` the decoder runs
    under bf16 autocast but the LM head and loss stay fp32 (bf16 logits stall the warm-up)."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model.model(input_ids=ids[:, :-1]).last_hidden_state  # (B, T-1, H)
    logits = model.lm_head(hidden.float())  # (B, T-1, V)
    losses = torch.nn.functional.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    return (losses * mask).sum() / mask.sum()


def train_sft(model: LlamaForCausalLM, examples: Sequence[EncodedExample], cfg: SFTConfig, *,
              seed: int = 0, progress: bool = True) -> list[float]:
    """Supervised warm-up in place; returns the loss of every step."""
    precision = _resolve_precision(cfg.precision)
    rng = random.Random(f"semionline-seed-sft:{seed}")
    batches = _length_grouped_batches(examples, cfg.batch_size, rng, curriculum=cfg.curriculum)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "embed" in n]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    model.train()
    losses: list[float] = []
    bar = tqdm(range(cfg.steps), desc="seed sft", disable=not progress, dynamic_ncols=True)
    for step in bar:
        ids, mask = _collate(batches[step % len(batches)])
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = response_loss(model, ids, mask, bf16=precision == "bf16")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def greedy_responses(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                     max_new_tokens: int = 64, batch_size: int = 64) -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) with transformers.generate."""
    eos = eos_token_id(tokenizer)
    pad = eos if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths batch together
    texts: dict[int, str] = {}
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        encoded = [encode_prompt(tokenizer, prompts[i]) for i in idx]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded])  # left padding
        attn = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        gen = model.generate(input_ids=ids, attention_mask=attn, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=eos, pad_token_id=pad)
        for i, row in zip(idx, gen[:, width:].tolist(), strict=True):
            texts[i] = tokenizer.decode(row, skip_special_tokens=True)
    return [texts[i] for i in range(len(prompts))]


def direct_solution(problem) -> str:
    """The bare answer, without the worked steps: " The answer is N."."""
    return f" The answer is {problem.answer}."


def mixed_responses(problems: Sequence, direct_fraction: float, *, seed: int = 0) -> list[str]:
    """The phase-2 responses: each problem's bare answer with probability `direct_fraction`,
    else its worked solution (deterministic in `seed`)."""
    rng = random.Random(f"semionline-seed-direct:{seed}")
    return [direct_solution(p) if rng.random() < direct_fraction else p.solution for p in problems]


def shows_work(response: str) -> bool:
    """True when the response starts with a worked step (" 7+5=12. ..."), not a bare answer."""
    return bool(re.match(r"\s*\d+\s*[-+*]", response))


def answer_is_correct(response: str, answer: str) -> bool:
    """The number after the last "The answer is" equals `answer` (a quick stand-in for the math
    reward, which also takes the last "answer is" phrase)."""
    found = ANSWER_RE.findall(response)
    return bool(found) and found[-1] == answer.strip()


def heldout_accuracy(responses: Sequence[str], rows: Sequence[PromptRow]) -> float:
    """Fraction of `responses` (one per row) that end in the row's right "The answer is N"."""
    return sum(answer_is_correct(t, r.answer) for t, r in zip(responses, rows, strict=True)) / max(1, len(rows))


def build_seed(out_dir: str | Path, *, seed: int = 0, steps: int = 600, batch_size: int = 16, lr: float = 1e-3,
               precision: str = "auto", curriculum: float = 0.3, n_rl_prompts: int = 4000, n_heldout: int = 200,
               difficulty: Difficulty = Difficulty(), model_config: SeedModelConfig = SeedModelConfig(),
               num_threads: int | None = None, mix_steps: int = 150, direct_fraction: float = 0.5,
               mix_lr: float = 3e-4, chat_fraction: float = 0.0, n_chat_prompts: int = 2000,
               progress: bool = True) -> SeedReport:
    """Build the seed model directory (see the module docstring); returns what was measured."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    threads = num_threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    sft_cfg = SFTConfig(steps=steps, batch_size=batch_size, lr=lr, precision=precision, curriculum=curriculum,
                        warmup_steps=min(20, max(1, steps // 10)))

    with atomic_dir(out_dir) as tmp:
        save_tokenizer(tmp)
        tokenizer = load_tokenizer(tmp)  # train on exactly what vLLM will load
        # Both phases: a `chat_fraction` of the examples are chat notes (engine/demo/chat.py); 0 in
        # the math demo's seed. With 1/6 (720 + 180 steps) the 3M-parameter model learned neither task
        # well: notes came out garbled and worked-solution accuracy fell from 36% to 17%.
        n_notes1 = round(steps * batch_size * chat_fraction)
        n_notes2 = round(mix_steps * batch_size * chat_fraction)
        problems = sft_problems(steps * batch_size - n_notes1, seed=seed, difficulty=difficulty)
        note_rng = random.Random(f"semionline-seed-chat:{seed}")
        note_rows = chat_prompts(n_notes1 + n_notes2, split="sft", seed=seed)
        notes = [encode_example(tokenizer, r.prompt, sample_response(r, note_rng)) for r in note_rows]
        examples = [encode_example(tokenizer, p.prompt, p.solution) for p in problems] + notes[:n_notes1]
        train_rows = rl_prompts(n_rl_prompts, seed=seed, difficulty=difficulty)
        heldout_rows = heldout_prompts(n_heldout, seed=seed, difficulty=difficulty)

        model = LlamaForCausalLM(model_config.to_hf())
        t0 = time.perf_counter()
        losses = train_sft(model, examples, sft_cfg, seed=seed, progress=progress)
        if mix_steps:
            n_math = mix_steps * batch_size - n_notes2
            extra = sft_problems(len(problems) + n_math, seed=seed, difficulty=difficulty)[len(problems):]
            responses = mixed_responses(extra, direct_fraction, seed=seed)
            mixed = [encode_example(tokenizer, p.prompt, r) for p, r in zip(extra, responses, strict=True)]
            mixed += notes[n_notes1:]
            mix_cfg = SFTConfig(steps=mix_steps, batch_size=batch_size, lr=mix_lr, precision=precision, curriculum=0.0,
                                warmup_steps=1)
            losses += train_sft(model, mixed, mix_cfg, seed=seed + 1, progress=progress)
        train_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        max_response_tokens = max(len(e.input_ids) - e.prompt_len for e in examples)  # incl. EOS
        chat_heldout = chat_prompts(heldout_size(), split="heldout", seed=seed)
        accuracy, worked, chat_quality = _evaluate_seed(model, tokenizer, heldout_rows, chat_heldout,
                                                        max_response_tokens)
        eval_seconds = time.perf_counter() - t0

        model.generation_config = GenerationConfig(bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID)
        model.save_pretrained(tmp)  # model.safetensors + config.json
        for name, rows in (("train", train_rows), ("heldout", heldout_rows)):
            write_jsonl(tmp / "data" / f"{name}.jsonl", [PromptRow(prompt=r.prompt, answer=r.answer) for r in rows])
        write_jsonl(tmp / "data" / "chat_train.jsonl", chat_prompts(n_chat_prompts, split="rl", seed=seed))
        write_jsonl(tmp / "data" / "chat_heldout.jsonl", chat_heldout)

        report = SeedReport(
            out_dir=str(out_dir), seed=seed, params=sum(p.numel() for p in model.parameters()), steps=steps,
            batch_size=batch_size, sft_examples=len(examples), precision=_resolve_precision(precision),
            num_threads=threads, final_loss=sum(losses[-10:]) / max(1, len(losses[-10:])),
            heldout_accuracy=accuracy, heldout_worked_fraction=worked, heldout_prompts=len(heldout_rows), rl_prompts=len(train_rows),
            max_response_tokens=max_response_tokens, mix_steps=mix_steps, direct_fraction=direct_fraction,
            chat_fraction=chat_fraction, chat_heldout_quality=chat_quality,
            train_seconds=round(train_seconds, 2),
            eval_seconds=round(eval_seconds, 2), seconds=0.0, model=asdict(model_config),
            difficulty=asdict(difficulty),
        )  # fmt: skip
        report.seconds = round(time.perf_counter() - start, 2)
        (tmp / "seed_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def _evaluate_seed(model, tokenizer, heldout_rows, chat_heldout, max_response_tokens: int) -> tuple[float, float, float]:
    """Greedy held-out accuracy, the fraction of worked (not bare) answers, and the chat notes' gold quality."""
    responses = greedy_responses(model, tokenizer, [r.prompt for r in heldout_rows],
                                 max_new_tokens=max_response_tokens + 16)
    accuracy = heldout_accuracy(responses, heldout_rows)
    worked = sum(shows_work(t) for t in responses) / max(1, len(heldout_rows))
    notes = greedy_responses(model, tokenizer, [r.prompt for r in chat_heldout], max_new_tokens=80)
    chat_quality = sum(note_quality(r, t) for r, t in zip(chat_heldout, notes, strict=True)) / len(chat_heldout)
    return accuracy, worked, chat_quality
