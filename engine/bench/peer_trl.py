"""TRL's side of `semionline bench peer`: one `GRPOTrainer` or `DPOTrainer` run on a `PeerWork`,
in its own process, with per-step phase timings written to JSON. Needs the `bench` extra (trl).

    python -m engine.bench.peer_trl --work WORK.json --out TIMINGS.json [--threads 2] [--precompute-ref]

engine/bench/peer.py starts it; run by hand only to debug one TRL run. Settings mirror semionline's
(see `grpo_config` / `dpo_config`): HF `generate` (no vLLM), CPU, fp32, no gradient checkpointing,
no KL (beta 0), advantages r - mean(r) (scale_rewards none), token-level loss (dapo), constant LR,
the same AdamW settings, micro-batches of the same size, and semionline's math reward.

Phases per optimizer step, timed by wrapping the trainer's own methods: generate (HF generate),
reward (`_calculate_rewards`), score (the rest of `_generate_and_score_completions`: tokenizing,
padding, any old-policy / reference log-prob pass), reference (DPO: the reference forward), train
(the rest of the step: forward, backward, optimizer), step (wall time between two step ends).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from engine.bench.peer_work import PeerWork, load_pair_rows
from engine.data.prompts import load_prompts


def semionline_prompt_ids(tok, row, work: PeerWork) -> list[int]:
    """The prompt ids semionline's sampler gets for `row` (its one encoding function)."""
    try:
        from engine.data.encoding import encode_prompt_row
    except ImportError:  # before engine/data/encoding.py existed
        from engine.data.tokenizer import encode_formatted_prompt

        return encode_formatted_prompt(tok, row.prompt, template=work.prompt_template, chat=work.chat_template)
    return encode_prompt_row(tok, row, prompt_template=work.prompt_template, chat_template=work.chat_template)


class PhaseClock:
    """Seconds per phase accumulated within the current optimizer step; `close_step` files them."""

    def __init__(self) -> None:
        self.current: dict[str, float] = {}
        self.steps: list[dict[str, float]] = []
        self.tokens: list[int] = []
        self._tokens = 0
        self._last = time.perf_counter()

    def add(self, phase: str, seconds: float) -> None:
        self.current[phase] = self.current.get(phase, 0.0) + seconds

    def start(self) -> None:
        self._last = time.perf_counter()

    def close_step(self, derive) -> None:
        now = time.perf_counter()
        step = {"step": now - self._last, **self.current}
        self.steps.append(derive(step))
        self.tokens.append(self._tokens)
        self.current, self._tokens, self._last = {}, 0, now


def _callback(clock: PhaseClock, derive):
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            clock.start()

        def on_step_end(self, args, state, control, **kw):
            clock.close_step(derive)

    return StepClock()


def _grpo_derive(step: dict[str, float]) -> dict[str, float]:
    rollout = step.pop("rollout", 0.0)
    gen, reward = step.get("generate", 0.0), step.get("reward", 0.0)
    step["score"] = max(0.0, rollout - gen - reward)
    step["train"] = max(0.0, step["step"] - rollout)
    return step


def _dpo_derive(step: dict[str, float]) -> dict[str, float]:
    step["train"] = max(0.0, step["step"] - step.get("reference", 0.0))
    return step


def _texts(completions) -> list[str]:
    """Completion texts from TRL's `completions` (strings, or assistant message lists)."""
    return [c if isinstance(c, str) else c[-1]["content"] for c in completions]


def math_reward_fn(prompts, completions, answer, **kwargs) -> list[float]:
    """semionline's own math reward (math-verify worker pool), so both pay the same reward cost."""
    from engine.rewards.math import math_reward_batch

    rewards, _ = math_reward_batch(_texts(completions), list(answer))
    return rewards


def _common_args(work: PeerWork, out_dir: str, micro: int, accum: int) -> dict:
    return dict(
        output_dir=out_dir, per_device_train_batch_size=micro, gradient_accumulation_steps=accum,
        learning_rate=work.lr, adam_beta1=work.betas[0], adam_beta2=work.betas[1], adam_epsilon=work.adam_eps,
        weight_decay=work.weight_decay, max_grad_norm=work.grad_clip, lr_scheduler_type="constant",
        warmup_steps=0, max_steps=work.steps, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, seed=work.seed,
        dataloader_num_workers=0, disable_dropout=True,
    )  # fmt: skip


def _micro(sequences: int, micro: int) -> tuple[int, int]:
    """(micro-batch, accumulation steps) covering `sequences` per optimizer step."""
    micro = min(micro, sequences)
    if sequences % micro:
        raise ValueError(f"micro_batch_size {micro} must divide the {sequences} sequences of a step")
    return micro, sequences // micro


def load_model(work: PeerWork):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(work.model)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(work.model, dtype=torch.float32)
    return model, tok


def check_prompt_ids(work: PeerWork, tok, trl_prompts: list) -> None:
    """TRL must see the token ids semionline sees; a ValueError naming the first row otherwise."""
    rows = load_prompts(work.data)
    for i, (row, p) in enumerate(zip(rows, trl_prompts, strict=True)):
        ours = semionline_prompt_ids(tok, row, work)
        if work.chat_template:
            theirs = tok.apply_chat_template(p, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        else:
            theirs = tok(text=p)["input_ids"]
        if list(theirs) != list(ours):
            raise ValueError(f"{work.data} row {i + 1}: TRL tokenizes the prompt as {list(theirs)[:12]}..., "
                             f"semionline as {ours[:12]}...: the two would not do the same work")


def run_grpo(work: PeerWork, out_dir: str) -> PhaseClock:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    model, tok = load_model(work)
    rows = load_prompts(work.data)
    texts = [work.prompt_template.format(prompt=r.prompt) for r in rows]
    prompts = [[{"role": "user", "content": t}] for t in texts] if work.chat_template else texts
    check_prompt_ids(work, tok, prompts)
    data = Dataset.from_dict({"prompt": prompts, "answer": [r.answer for r in rows]})
    micro, accum = _micro(work.sequences_per_step, work.micro_batch_size)
    args = GRPOConfig(
        **_common_args(work, out_dir, micro, accum), num_generations=work.samples_per_prompt,
        max_completion_length=work.max_tokens, temperature=work.temperature, top_p=work.top_p, top_k=0,
        beta=0.0, loss_type="dapo", scale_rewards="none", epsilon=0.2, shuffle_dataset=False,
        use_vllm=False, log_completions=False, mask_truncated_completions=False,
    )  # fmt: skip
    clock = PhaseClock()

    class TimedGRPO(GRPOTrainer):
        def _generate_single_turn(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._generate_single_turn(*a, **k)
            clock.add("generate", time.perf_counter() - t0)
            clock._tokens += sum(len(c) for c in out[0])
            return out

        def _calculate_rewards(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._calculate_rewards(*a, **k)
            clock.add("reward", time.perf_counter() - t0)
            return out

        def _generate_and_score_completions(self, *a, **k):
            t0 = time.perf_counter()
            out = super()._generate_and_score_completions(*a, **k)
            clock.add("rollout", time.perf_counter() - t0)
            return out

    trainer = TimedGRPO(model=model, reward_funcs=[math_reward_fn], args=args, train_dataset=data,
                        processing_class=tok, callbacks=[_callback(clock, _grpo_derive)])
    trainer.train()
    return clock


def run_dpo(work: PeerWork, out_dir: str, precompute_ref: bool) -> PhaseClock:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model, tok = load_model(work)
    rows = load_pair_rows(work.data)
    if work.chat_template:
        rows = [{"prompt": [{"role": "user", "content": work.prompt_template.format(prompt=r["prompt"])}],
                 "chosen": [{"role": "assistant", "content": r["chosen"]}],
                 "rejected": [{"role": "assistant", "content": r["rejected"]}]} for r in rows]
    else:
        rows = [{**r, "prompt": work.prompt_template.format(prompt=r["prompt"])} for r in rows]
    data = Dataset.from_list(rows)
    micro, accum = _micro(work.prompts_per_step, max(1, work.micro_batch_size // 2))
    args = DPOConfig(**_common_args(work, out_dir, micro, accum), beta=work.dpo_beta, loss_type=["sigmoid"],
                     max_length=work.max_model_len, precompute_ref_log_probs=precompute_ref)
    clock = PhaseClock()
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                         callbacks=[_callback(clock, _dpo_derive)])
    ref = trainer.ref_model
    if ref is not None:  # None with precompute_ref_log_probs: the pass ran once, at init
        starts: list[float] = []
        ref.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))
        ref.register_forward_hook(lambda *_: clock.add("reference", time.perf_counter() - starts.pop()))
    trainer.train()
    return clock


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.bench.peer_trl", description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="PeerWork JSON written by engine/bench/peer.py")
    ap.add_argument("--out", required=True, help="where to write the timings JSON")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = all cores)")
    ap.add_argument("--precompute-ref", action="store_true", help="DPO: reference log-probs once, before training")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    work = PeerWork.load(args.work)
    with tempfile.TemporaryDirectory(prefix="peer_trl_") as out_dir:
        if work.objective == "grpo":
            clock = run_grpo(work, out_dir)
        else:
            clock = run_dpo(work, out_dir, args.precompute_ref)
    import trl

    result = {"steps": clock.steps, "response_tokens": clock.tokens, "wall_s": time.perf_counter() - t0,
              "trl": trl.__version__, "threads": torch.get_num_threads(), "precompute_ref": args.precompute_ref}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
