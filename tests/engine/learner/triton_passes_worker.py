"""Child process of test_passes_triton.py: `dpo_pass` / `grpo_pass` with the Triton kernels (run
by Triton's CPU interpreter) against the torch kernels, on one tiny random model.

    TRITON_INTERPRET=1 PYTHONPATH=. .venv/bin/python tests/engine/learner/triton_passes_worker.py OUT.json

It must start with TRITON_INTERPRET=1 already set: triton decides at import whether it compiles
or interprets, and megatron (imported by the model) imports triton. Writes, per objective, the
largest relative differences of the metrics and of the gradients.
"""

import contextlib
import json
import os
import sys
from types import SimpleNamespace

import torch

from engine.learner.passes import PipelinedModel, dpo_pass, grpo_pass
from engine.model.config import ModelConfig
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh
from engine.rollout.types import Group, PreferencePair, Rollout

TINY = ModelConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=16)


def _rollouts(count: int) -> list[Rollout]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i in range(count):
        prompt = torch.randint(3, 96, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
        response = torch.randint(3, 96, (int(torch.randint(1, 9, (1,), generator=g)),), generator=g).tolist()
        behaviour = (-3.0 + 0.5 * torch.randn(len(response), generator=g)).tolist()
        out.append(Rollout(i, prompt, response, behaviour, "", float(i % 2), version=-1))
    return out


def _run(mesh, impl: str, objective: str) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    policy = PipelinedModel(CausalLM(TINY, mesh, seed=1, init_std=0.2), impl=impl, autocast=contextlib.nullcontext)
    reference = PipelinedModel(CausalLM(TINY, mesh, seed=2, init_std=0.2), impl=impl,
                               autocast=contextlib.nullcontext)
    seqs = _rollouts(8)
    if objective == "dpo":
        pairs = [PreferencePair(seqs[i], seqs[i + 1]) for i in range(0, 8, 2)]
        c = SimpleNamespace(beta=0.5, length_normalize=False, nll_weight=0.1)
        result = dpo_pass(policy, reference, pairs, c, micro_batch_size=4)
    else:
        groups = [Group(seqs[i : i + 4], [1.0, -0.5, 0.25, -0.75]) for i in (0, 4)]
        c = SimpleNamespace(clip_eps=0.2, kl_coef=0.1, reduction="token", tis_cap=2.0)
        result = grpo_pass(policy, reference, groups, c, micro_batch_size=3)
    return result.metrics, {n: p.grad.clone() for n, p in policy.model.named_parameters()}


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET") == "1", "start with TRITON_INTERPRET=1 (see the docstring)"
    torch.set_num_threads(1)
    out = {}
    with Mesh.init(tp_size=1) as mesh:
        for objective in ("dpo", "grpo"):
            (m_torch, g_torch), (m_triton, g_triton) = _run(mesh, "torch", objective), _run(mesh, "triton", objective)
            assert m_torch.keys() == m_triton.keys()
            scale = max(g.abs().max().item() for g in g_torch.values())
            out[objective] = {
                "metrics_rel": max(abs(m_triton[k] - m_torch[k]) / max(1.0, abs(m_torch[k])) for k in m_torch),
                "grads_rel": max((g_triton[n] - g_torch[n]).abs().max().item() for n in g_torch) / scale,
            }
    with open(sys.argv[1], "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    main()
