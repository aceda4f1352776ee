"""The work both frameworks do in `semionline bench peer` (engine/bench/peer.py): one typed spec,
written to JSON for the TRL subprocess, and the data file both read.

    work = PeerWork(objective="grpo", model="/abs/.cache/seed", data="/tmp/x/prompts.jsonl", ...)
    work.save(path); PeerWork.load(path)
    prepare_prompts(".cache/seed/data/train.jsonl", rows=16 * 4, out="/tmp/x/prompts.jsonl")
    prepare_pairs(".cache/seed/data/train.jsonl", pairs=16 * 4, out="/tmp/x/pairs.jsonl")

Why a prepared file: the file holds exactly `steps x prompts_per_step` rows, so one epoch of it is
the whole run for both frameworks: the same prompts are trained on (each framework in its own
order: TRL in file order, semionline in its seeded permutation), hence the same total work.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Literal

from engine.data.prompts import load_prompts, write_jsonl


@dataclass
class PeerWork:
    """One benchmark's work, identical for TRL and semionline (see `semionline_overrides` and
    engine/bench/peer_trl.py for how each framework is told)."""

    objective: Literal["grpo", "dpo"]
    model: str  # HF checkpoint directory (absolute)
    data: str  # the prepared jsonl: prompt rows (GRPO) or {"prompt", "chosen", "rejected"} rows (DPO)
    prompts_per_step: int  # GRPO: prompts per optimizer step; DPO: preference pairs per step
    samples_per_prompt: int  # GRPO group size (ignored by DPO)
    max_tokens: int  # GRPO: most new tokens per sample; DPO: responses are cut to this many tokens
    steps: int  # optimizer steps per run
    lr: float = 1e-6
    adam_eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    grad_clip: float = 0.1
    temperature: float = 1.0
    top_p: float = 1.0
    micro_batch_size: int = 32  # sequences per forward/backward (DPO: pairs per micro-batch = half)
    chat_template: bool = False  # render prompts with the tokenizer's chat template (instruct models)
    prompt_template: str = "{prompt}"
    dpo_beta: float = 0.1
    seed: int = 0
    max_model_len: int = 512
    prompts: str = ""  # prompt rows (absolute) for semionline's data.train / data.eval (DPO: its tiny eval only)

    def __post_init__(self) -> None:
        if self.objective not in ("grpo", "dpo"):
            raise ValueError(f"objective must be 'grpo' or 'dpo', got {self.objective!r}")
        for name in ("prompts_per_step", "samples_per_prompt", "max_tokens", "steps", "micro_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    @property
    def sequences_per_step(self) -> int:
        """Sequences trained per optimizer step (GRPO: prompts x samples; DPO: 2 per pair)."""
        if self.objective == "grpo":
            return self.prompts_per_step * self.samples_per_prompt
        return 2 * self.prompts_per_step

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> PeerWork:
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"{path}: unknown PeerWork keys {unknown}")
        return cls(**raw)

    def as_dict(self) -> dict:
        return asdict(self)


def prepare_prompts(src: str | Path, rows: int, out: str | Path) -> int:
    """Write the first `rows` prompt rows of `src` (engine's or GSM8K's row shape) to `out` as
    {"prompt", "answer"} rows; a ValueError naming the file when it has fewer."""
    data = load_prompts(src)
    if len(data) < rows:
        raise ValueError(f"{src}: {len(data)} prompt rows, the bench needs {rows} (steps x prompts_per_step)")
    return write_jsonl(out, data[:rows])


def response_text(answer: str) -> str:
    """A response built from a row's answer: a worked solution (GSM8K) as is, a bare answer (the
    seed data, "12") in the seed model's own form " The answer is 12."."""
    answer = answer.strip()
    return f" {answer}" if " " in answer or "\n" in answer else f" The answer is {answer}."


def prepare_pairs(src: str | Path, pairs: int, out: str | Path) -> int:
    """Preference pairs from prompt rows: for row i, chosen = its own answer's response, rejected
    = row i+1's (a wrong answer to this prompt). Rows {"prompt", "chosen", "rejected"}. Timing
    only cares that both frameworks see the same token counts, which this guarantees."""
    data = load_prompts(src)
    if len(data) < pairs + 1:
        raise ValueError(f"{src}: {len(data)} prompt rows, the bench needs {pairs + 1} for {pairs} pairs")
    rows = [{"prompt": data[i].prompt, "chosen": response_text(data[i].answer),
             "rejected": response_text(data[i + 1].answer)} for i in range(pairs)]
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return len(rows)


def load_pair_rows(path: str | Path) -> list[dict[str, str]]:
    """{"prompt", "chosen", "rejected"} rows; a ValueError naming the file and line otherwise."""
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row.get(k), str)]
        if missing:
            raise ValueError(f"{path}:{n}: preference row needs string fields {missing}")
        out.append({k: row[k] for k in ("prompt", "chosen", "rejected")})
    return out
