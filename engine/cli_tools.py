"""The `semionline` verbs that use a model outside a run: eval, generate, score.

    semionline generate --model .cache/models/smollm2-135m --data gsm8k.parquet --chat-template \\
        --prompt-template "{prompt}\\nPut the final answer in \\\\boxed{{}}." --n 4 --out samples.jsonl
    semionline eval --model runs/x/final --data .cache/seed/data/heldout.jsonl --samples 4
    semionline score --model .cache/seed --data pairs.jsonl --out scored.jsonl

Prompts are read and tokenized as a run does (`data.*` keys, engine/data/): any data source
(.jsonl, .json, .parquet, a saved dataset, hf://), `{"prompt"}` or `{"messages"}` rows, prompt-only
rows where no reference answer is needed, the prompt template and the chat template, and every
EOS id of the model's generation_config.json stops sampling.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


class UserError(Exception):
    """An error in the user's input, reported as one line without a traceback."""


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompts (as the data.* config keys)")
    g.add_argument("--prompt-template", default="{prompt}", help="applied to each row's prompt text")
    g.add_argument("--chat-template", action="store_true", help="render prompts with the tokenizer's chat template")
    g.add_argument("--system-prompt", default=None, help="a system turn for rows without one (with --chat-template)")
    g.add_argument("--prompt-key", default=None, help="the prompt column (default: prompt/question/problem/messages)")
    g.add_argument("--answer-key", default=None, help="the answer column (default: answer/solution)")


def add_tool_parsers(sub) -> None:
    """The `eval`, `generate` and `score` verbs of the `semionline` parser."""
    for name, helptext in [("eval", "held-out math accuracy"), ("generate", "sample responses with log-probs")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--out", default=None if name == "eval" else argparse.SUPPRESS, required=name == "generate")
        p.add_argument("--temperature", type=float, default=0.6 if name == "eval" else 1.0)
        p.add_argument("--top-p", type=float, default=0.9 if name == "eval" else 1.0)
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--seed", type=int, default=0)
        if name == "eval":
            p.add_argument("--samples", type=int, default=1, help="pass@1 averaged over k samples")
            p.add_argument("--max-prompts", type=int, default=10**9)
            p.add_argument("--reward", default="math",
                           help="math (pass@1, maj@k) | reward_model | judge | package.module:function (score, win rate)")
            p.add_argument("--baseline", default=None, help="model whose responses the win rates are against (the seed)")
            p.add_argument("--reward-model", default=None, help="for --reward reward_model: its directory")
            p.add_argument("--judge-url", default=None, help="for --reward judge: an OpenAI-compatible base URL")
            p.add_argument("--judge-model", default=None)
            p.add_argument("--judge-api-key-env", default=None, help="NAME of the variable holding the judge's key")
            p.set_defaults(fn=cmd_eval)
        else:
            p.add_argument("--n", type=int, default=1)
            p.set_defaults(fn=cmd_generate)
        add_prompt_args(p)

    p = sub.add_parser("score", help="the learner's per-token log-probs of prompt/response pairs")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--append-eos", action="store_true", help="score an EOS token after each response")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="as learner.device")
    add_prompt_args(p)
    p.set_defaults(fn=cmd_score)


def _prompts(args, tok, limit: int | None = None):
    """(rows, prompt ids) of `args.data`, encoded as a run encodes them."""
    from engine.data.datasets import load_prompt_rows
    from engine.data.encoding import encode_prompt_row

    rows = load_prompt_rows(args.data, args.prompt_key, args.answer_key)[:limit]
    ids = [encode_prompt_row(tok, r, prompt_template=args.prompt_template, chat_template=args.chat_template,
                             system_prompt=args.system_prompt) for r in rows]
    return rows, ids


def _model(args):
    """The model directory (a local folder, a known name or a hub id) and its tokenizer."""
    from engine.data.tokenizer import load_tokenizer
    from engine.model.fetch import resolve_model
    from engine.model.hf_io import check_checkpoint_dir

    model = str(resolve_model(args.model))
    check_checkpoint_dir(model)
    return model, load_tokenizer(model)


def _sampler(model: str, seed: int):
    """An engine with the run config's default `sampler` settings."""
    from engine.config import SamplerConfig
    from engine.sampler.vllm_engine import VLLMSampler

    return VLLMSampler.from_config(SamplerConfig(), model=model, seed=seed)


def cmd_eval(args) -> None:
    """Math: pass@1 over k samples and maj@k. Reward-model / judge / callable rewards: mean score
    and (length-controlled) win rate against a baseline model's responses (e.g. the seed's)."""
    from engine.config import EvalConfig
    from engine.data.encoding import stop_token_ids
    from engine.evaluate import evaluate_math

    cfg = EvalConfig(max_prompts=args.max_prompts, samples=args.samples, temperature=args.temperature,
                     top_p=args.top_p, max_tokens=args.max_tokens)
    if args.reward != "math" and not args.baseline:
        raise UserError(f"--reward {args.reward}: give --baseline MODEL (win rates are against its responses)")
    model, tok = _model(args)
    rows, ids = _prompts(args, tok, cfg.max_prompts)
    stop = stop_token_ids(model, tok)
    if args.reward == "math":
        missing = next((r for r in rows if not r.answer.strip()), None)
        if missing is not None:
            raise UserError(f"{missing.origin}: no reference answer, which --reward math needs (--answer-key)")
        with _sampler(model, args.seed) as sampler:
            res = evaluate_math(sampler, ids, rows, cfg, stop_token_ids=stop, seed=args.seed)
        out = {"model": args.model, "data": args.data, **res.__dict__}
        table = (f"| model | prompts | samples | pass@1 | maj@{res.samples} | mean length |\n|---|---|---|---|---|---|\n"
                 f"| {args.model} | {res.prompts} | {res.samples} | {res.accuracy:.3f} | {res.maj_accuracy:.3f} | "
                 f"{res.mean_length:.1f} |")
    else:
        res, out, table = _eval_scored(args, model, ids, rows, cfg, stop)
    print(json.dumps(out, indent=2))
    print("\n" + table)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))


def _eval_scored(args, model: str, ids, rows, cfg, stop):
    from engine.evaluate import baseline_responses, evaluate_reward
    from engine.model.hf_io import check_checkpoint_dir
    from engine.rewards.judge import JudgeConfig
    from engine.rewards.router import build_reward

    judge = None
    if args.judge_url:
        judge = JudgeConfig(base_url=args.judge_url, model=args.judge_model or "judge", api_key_env=args.judge_api_key_env)
    reward = build_reward(args.reward, path=args.reward_model, judge=judge)
    check_checkpoint_dir(args.baseline)
    with _sampler(args.baseline, args.seed) as sampler:  # one baseline response per prompt
        baseline = baseline_responses(sampler, ids, cfg, stop_token_ids=stop, seed=args.seed + 1)
    with _sampler(model, args.seed) as sampler:
        res = evaluate_reward(sampler, ids, rows, cfg, reward=reward, baseline=baseline, stop_token_ids=stop,
                              seed=args.seed)
    out = {"model": args.model, "baseline": args.baseline, "data": args.data, "reward": args.reward,
           **{k: v for k, v in res.__dict__.items() if k != "extra"}}
    table = ("| model | prompts | samples | mean score | baseline score | win rate | LC win rate | mean length |\n"
             "|---|---|---|---|---|---|---|---|\n"
             f"| {args.model} | {res.prompts} | {res.samples} | {res.mean_score:.3f} | {res.baseline_mean_score:.3f} "
             f"| {res.win_rate:.3f} | {res.lc_win_rate:.3f} | {res.mean_length:.1f} |")
    if res.failures:
        table += f"\n\n{res.failures} judgements failed after retries and are left out of the means."
    return res, out, table


def cmd_generate(args) -> None:
    from engine.data.encoding import stop_token_ids
    from engine.data.prompts import write_jsonl

    model, tok = _model(args)
    rows, ids = _prompts(args, tok)
    with _sampler(model, args.seed) as sampler:
        outs = sampler.generate(ids, n=args.n, temperature=args.temperature, top_p=args.top_p,
                                max_tokens=args.max_tokens, stop_token_ids=stop_token_ids(model, tok), seed=args.seed)
    write_jsonl(args.out, [
        {"prompt": r.prompt, "prompt_token_ids": p,
         "samples": [{"text": s.text, "token_ids": list(s.token_ids), "token_logprobs": list(s.logprobs)} for s in o]}
        for r, p, o in zip(rows, ids, outs, strict=True)
    ])  # fmt: skip
    print(f"wrote {len(rows)} prompts x {args.n} samples to {args.out}")


def _score_pairs(args, tok, model: str) -> tuple[list[tuple[str, str]], list[tuple[list[int], list[int]]]]:
    """(prompt, response) texts and their ids, tokenized the way generate and training do."""
    from engine.data.encoding import chat_messages, chat_response_ids, encode_prompt_row, stop_token_ids
    from engine.data.prompts import PromptRow, load_pairs
    from engine.data.tokenizer import encode_response

    pairs = load_pairs(args.data)
    stop = stop_token_ids(model, tok)
    seqs = []
    for p, r in pairs:
        row = PromptRow(prompt=p)
        prompt_ids = encode_prompt_row(tok, row, prompt_template=args.prompt_template,
                                       chat_template=args.chat_template, system_prompt=args.system_prompt)
        if args.chat_template:  # the assistant turn as the template renders it, up to its end token
            turns = chat_messages(row, args.prompt_template, args.system_prompt)
            seqs.append((prompt_ids, chat_response_ids(tok, turns, prompt_ids, r, stop)))
        else:
            seqs.append((prompt_ids, encode_response(tok, r) + ([stop[0]] if args.append_eos else [])))
    return pairs, seqs


def cmd_score(args) -> None:
    import contextlib

    from engine.data.prompts import write_jsonl
    from engine.learner.learner import score_sequences
    from engine.learner.passes import PipelinedModel
    from engine.model.hf_io import load_model
    from engine.parallel.device import local_rank, resolve_device
    from engine.parallel.mesh import Mesh

    model_dir, tok = _model(args)
    mesh = Mesh.init(tp_size=args.tp, pp_size=args.pp, device=resolve_device(args.device, local_rank(), key="--device"))
    try:
        rows, seqs = _score_pairs(args, tok, model_dir)
        model = PipelinedModel(load_model(model_dir, mesh).eval(), impl=None, autocast=contextlib.nullcontext)
        out = score_sequences(model, seqs, args.batch_size, dp_mesh=mesh)  # DP replicas share the work
        if mesh.rank == 0:
            write_jsonl(args.out, [
                {"prompt": p, "response": r, "token_logprobs": lp.tolist(), "logprob_sum": float(lp.sum())}
                for (p, r), lp in zip(rows, out, strict=True)
            ])  # fmt: skip
            print(f"scored {len(rows)} responses (layout {mesh.layout}) -> {args.out}")
    finally:
        mesh.destroy()
