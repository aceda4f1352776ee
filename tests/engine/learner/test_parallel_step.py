"""Tensor × pipeline × data parallelism against the single-process learner and transformers.

    PYTHONPATH=. python -m pytest tests/engine/learner/test_parallel_step.py -q

One torchrun job of 4 gloo ranks (`parallel_worker.py`) runs every layout (tp, pp, dp) in turn on
sub-meshes; for each, the logits, one GRPO step and one DPO step (losses, metrics, every weight
after each step) must match the single-process run to 1e-5 relative, and the logits must match
transformers to 1e-4 absolute, and the Hugging Face export of the loaded model must be
bit-identical to its input. A training-state checkpoint written at one layout and loaded at
others must give back bit-identical weights, and the next step (with the restored AdamW moments
and schedule) must match the single-process run's (exceptions, explained in the worker: the DPO margin, a difference
of near-equal sums, is compared relative to those sums; the k-projection bias, whose gradient is
exactly zero, must only keep a noise-sized update). Tiny random fp32 models: a Llama (4 layers, GQA) at every layout
of the issue plus interleaved virtual stages, and a Qwen2 with tied embeddings (the embedding
lives on the first stage and a synchronised copy on the last) at the pipelined layouts.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from engine.rollout.types import Group, PreferencePair, Rollout

REPO = Path(__file__).resolve().parents[3]
TINY = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    head_dim=16,
    initializer_range=0.1,
    dtype="float32",
)
# (tp, pp, dp, virtual stages per pipeline rank)
LAYOUTS = {
    "llama": [[2, 1, 1, 1], [1, 2, 1, 1], [2, 2, 1, 1], [1, 1, 2, 1], [1, 2, 2, 1], [1, 2, 1, 2]],
    "qwen2_tied": [[1, 2, 1, 1], [2, 2, 1, 1]],
}
# training-state checkpoint written after the GRPO step at `save`, loaded at each of `load`
CHECKPOINTS = {
    "llama": {"save": [2, 2, 1, 1], "load": [[1, 1, 1, 1], [1, 2, 2, 1], [2, 1, 1, 1]]},
    "qwen2_tied": {"save": [2, 2, 1, 1], "load": [[1, 1, 1, 1], [1, 2, 1, 1]]},
}


def _rollouts(count: int, seed: int) -> list[Rollout]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        prompt = torch.randint(3, 128, (int(torch.randint(2, 9, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(
            3, 128, (int(torch.randint(1, 12, (1,), generator=g)),), generator=g
        ).tolist()
        behaviour = (-4.5 + 0.3 * torch.randn(len(response), generator=g)).tolist()
        out.append(
            Rollout(
                prompt_index=i,
                prompt_ids=prompt,
                response_ids=response,
                behaviour_logprobs=behaviour,
                text="",
                reward=float(i % 2),
                version=-1,  # made-up behaviour log-probs: not from the learner's weights, no parity check
            )
        )
    return out


def _prepare(workdir: Path) -> None:
    torch.manual_seed(0)
    models = {
        "llama": LlamaForCausalLM(LlamaConfig(**TINY, num_key_value_heads=2)),
        "qwen2_tied": Qwen2ForCausalLM(Qwen2Config(**TINY, num_key_value_heads=4, tie_word_embeddings=True)),
    }
    input_ids = torch.randint(1, 128, (3, 13), generator=torch.Generator().manual_seed(1))
    input_ids[1, 9:] = 0
    cases = {}
    for name, model in models.items():
        with torch.no_grad():  # HF inits biases and norms to constants: give them values of their own
            for pname, p in model.named_parameters():
                if pname.endswith("bias") or pname.endswith("norm.weight"):
                    p.add_(0.1 * torch.randn(p.shape))
        model.save_pretrained(workdir / name)
        with torch.no_grad():
            torch.save(model.eval()(input_ids).logits, workdir / f"hf_logits_{name}.pt")
        cases[name] = {"dir": str(workdir / name), "layouts": LAYOUTS[name], **CHECKPOINTS[name]}
    (workdir / "cases.json").write_text(json.dumps(cases))
    rollouts = _rollouts(9, seed=0)  # 9 sequences: uneven across micro-batches and DP ranks
    groups = [
        Group(rollouts=rollouts[:4], advantages=[1.0, -0.5, 0.25, -0.75]),
        Group(rollouts=rollouts[4:], advantages=[0.5, -1.0, 0.75, -0.25, 0.0]),
    ]
    pairs = [PreferencePair(chosen=a, rejected=b) for a, b in zip(_rollouts(5, seed=1), _rollouts(5, seed=2))]
    torch.save({"groups": groups, "pairs": pairs, "input_ids": input_ids}, workdir / "batch.pt")


def test_layouts_match_single_process_and_transformers(tmp_path):
    _prepare(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "4",
        str(Path(__file__).with_name("parallel_worker.py")),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-6000:]
    results = json.loads((tmp_path / "results.json").read_text())  # the worker asserted every bound
    for name in LAYOUTS:  # a checkpoint's model/ folder is a sharded Hugging Face checkpoint
        assert (
            AutoModelForCausalLM.from_pretrained(tmp_path / f"ckpt_{name}" / "model").config.num_hidden_layers
            == 4
        )
    for name, layouts in LAYOUTS.items():
        for layout in layouts:
            errs = results[name][_key(layout)]
            assert errs["logits"] <= 1e-5 and errs["vs transformers (max abs)"] <= 1e-4, (name, layout, errs)
            assert errs["grpo:weights"] <= 1e-5 and errs["dpo:weights"] <= 1e-5, (name, layout, errs)
            assert errs["HF export bit-exact (tensors differing)"] == 0, (name, layout, errs)
        for layout in CHECKPOINTS[name]["load"]:
            errs = results[name][f"checkpoint {_key(CHECKPOINTS[name]['save'])} -> {_key(layout)}"]
            assert errs["loaded weights bit-exact (max abs diff)"] == 0.0, (name, layout, errs)
            assert errs["logits_after"] <= 1e-5 and errs["dpo:weights"] <= 1e-5, (name, layout, errs)


def _key(layout: list[int]) -> str:
    return "x".join(map(str, layout[:3])) + (f" v{layout[3]}" if layout[3] > 1 else "")
