"""Measure the sampler/learner log-prob gap per precision, to set `sampler.max_logprob_gap`'s
dtype-dependent default (docs/decisions.d/gpu.md has the figures).

    python -m engine.bench.precision_gap --model .cache/seed --data .cache/seed/data/train.jsonl \\
        --prompts 64 --n 4 --out runs/precision_gap.json
    python -m engine.bench.precision_gap --model .cache/models/smollm2-135m \\
        --data ../shared/data/gsm8k_test.jsonl --chat --prompts 16 --n 2 --max-tokens 128

For each sampler dtype (vLLM, `VLLMSampler`) it samples `n` responses per prompt at temperature 1
and keeps vLLM's per-token log-probs; then the learner (the engine's own `load_model` +
`PipelinedModel`, fp32 parameters, bf16 compute under autocast exactly as `Learner` runs it)
scores the same tokens in each dtype. Reported per (sampler dtype, learner dtype): mean and max
|learner - sampler| over all response tokens, plus learner bf16 vs learner fp32 on the same tokens.
Runs on CPU (vLLM's CPU build) or GPU; the samplers are built one at a time before the learner's
process group exists (an in-process vLLM engine refuses an initialised torch.distributed).
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

DTYPES = ("float32", "bfloat16")


@dataclass(frozen=True)
class Gap:
    sampler_dtype: str
    learner_dtype: str
    mean: float
    max: float
    tokens: int


def sample(model: str, prompt_ids: list[list[int]], *, dtype: str, n: int, max_tokens: int, eos: int,
           seed: int) -> list[tuple[list[int], list[int], list[float]]]:
    """(prompt ids, response ids, sampler log-probs) of every non-empty sample."""
    from engine.sampler.vllm_engine import VLLMSampler

    max_len = max(len(p) for p in prompt_ids) + max_tokens + 8
    with VLLMSampler(model, seed=seed, dtype=dtype, max_model_len=max(256, max_len), kv_cache_gib=0.5) as sampler:
        outs = sampler.generate(prompt_ids, n=n, temperature=1.0, top_p=1.0, max_tokens=max_tokens,
                                stop_token_ids=[eos], seed=seed)
    return [(p, list(s.token_ids), list(s.logprobs)) for p, o in zip(prompt_ids, outs, strict=True) for s in o
            if len(s.token_ids)]


def learner_logprobs(model_dir: str, seqs, dtype: str, mesh, micro_batch: int = 16) -> torch.Tensor:
    """Flat per-token log-probs of every response, as `Learner.score` computes them."""
    from engine.learner.batch import pack
    from engine.learner.passes import PipelinedModel
    from engine.model.hf_io import load_model

    model = load_model(model_dir, mesh).eval().requires_grad_(False)

    def autocast():
        if dtype == "bfloat16":
            return torch.autocast(device_type=mesh.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    passes = PipelinedModel(model, impl="torch", autocast=autocast)
    out = []
    for i in range(0, len(seqs), micro_batch):
        chunk = seqs[i : i + micro_batch]
        batch = pack([p for p, _, _ in chunk], [r for _, r, _ in chunk])
        with torch.no_grad():
            out.append(passes.logprobs([batch])[0].float().cpu())
    return torch.cat(out)


def measure(model: str, prompt_ids: list[list[int]], *, n: int, max_tokens: int, eos: int, seed: int,
            device: str = "auto") -> dict:
    from engine.parallel.device import local_rank, resolve_device
    from engine.parallel.mesh import Mesh

    samples = {dt: sample(model, prompt_ids, dtype=dt, n=n, max_tokens=max_tokens, eos=eos, seed=seed) for dt in DTYPES}
    gaps, self_gap = [], {}
    with Mesh.init(device=resolve_device(device, local_rank())) as mesh:
        for sdt, seqs in samples.items():
            behaviour = torch.tensor([lp for _, _, lps in seqs for lp in lps], dtype=torch.float32)
            scored = {ldt: learner_logprobs(model, seqs, ldt, mesh) for ldt in DTYPES}
            for ldt, lp in scored.items():
                d = (lp - behaviour).abs()
                gaps.append(Gap(sdt, ldt, float(d.mean()), float(d.max()), int(d.numel())))
            d = (scored["bfloat16"] - scored["float32"]).abs()
            self_gap[sdt] = {"mean": float(d.mean()), "max": float(d.max()), "tokens": int(d.numel())}
    return {"model": model, "prompts": len(prompt_ids), "n": n, "max_tokens": max_tokens,
            "gaps": [asdict(g) for g in gaps], "learner_bf16_vs_fp32": self_gap}


def main(argv: list[str] | None = None) -> dict:
    from engine.data.prompts import load_prompts
    from engine.data.tokenizer import encode_formatted_prompt, eos_token_id, load_tokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True, help="prompt jsonl (engine/data/prompts.py rows)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--chat", action="store_true", help="apply the tokenizer's chat template (instruct models)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    tok = load_tokenizer(args.model)
    rows = load_prompts(args.data)[: args.prompts]
    prompt_ids = [encode_formatted_prompt(tok, r.prompt, chat=args.chat) for r in rows]
    result = measure(args.model, prompt_ids, n=args.n, max_tokens=args.max_tokens, eos=eos_token_id(tok),
                     seed=args.seed, device=args.device)
    for g in result["gaps"]:
        print(f"sampler {g['sampler_dtype']:>8}  learner {g['learner_dtype']:>8}  mean |gap| {g['mean']:.3e}  "
              f"max {g['max']:.3e}  tokens {g['tokens']}")
    for sdt, g in result["learner_bf16_vs_fp32"].items():
        print(f"learner bf16 vs fp32 on {sdt} samples: mean {g['mean']:.3e}  max {g['max']:.3e}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
