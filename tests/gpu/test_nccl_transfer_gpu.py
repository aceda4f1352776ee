"""Disaggregated sampler (`sampler.gpus`) end to end: a tiny Llama's engine on cuda:1, the
"learner" on cuda:0, weights pushed over NCCL through vLLM's weight-transfer API, then the
engine's log-probs checked against transformers on the pushed weights (the parity check).

    pytest -m gpu tests/gpu/test_nccl_transfer_gpu.py -q

Needs 2 CUDA devices and vLLM's CUDA build; skips with the reason otherwise. Never run on a GPU
yet (written on a CPU machine); the CPU half is tests/engine/sampler/test_nccl_transfer.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

_FIXTURES = Path(__file__).resolve().parents[1] / "engine" / "sampler" / "conftest.py"


def _needs_two_gpus_and_vllm_cuda() -> None:
    if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        pytest.skip(f"needs 2 CUDA devices (learner on cuda:0, sampler on cuda:1); this machine shows {n}")
    try:
        from vllm.platforms import current_platform
    except ImportError as e:
        pytest.skip(f"vLLM is not importable: {e}")
    if not current_platform.is_cuda():
        pytest.skip(f"vLLM's CUDA build is absent (the installed vLLM targets {current_platform.device_type!r})")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    spec = importlib.util.spec_from_file_location("_sampler_fixtures", _FIXTURES)
    fixtures = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fixtures)
    return fixtures.build_tiny_llama(tmp_path_factory.mktemp("tiny_llama_nccl"))


def _gap(hf, sampler, prompt: list[int]) -> float:
    out = sampler.generate([prompt], n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=0)[0][0]
    ids = torch.tensor([prompt + out.token_ids], device="cuda:0")
    with torch.no_grad():
        logits = hf(ids).logits[0, len(prompt) - 1 : -1].float()
    ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.token_ids, device="cuda:0")[:, None])[:, 0]
    return float((ref.cpu() - torch.tensor(out.logprobs)).abs().mean())


def test_nccl_push_to_an_engine_on_its_own_gpu_keeps_parity(tiny_llama):
    _needs_two_gpus_and_vllm_cuda()
    from transformers import AutoModelForCausalLM

    from engine.parallel.device import check_sampler_gpus
    from engine.sampler.vllm_engine import VLLMSampler

    torch.cuda.set_device(0)  # the learner's device: rank 0 of the transfer group opens here
    check_sampler_gpus([1], torch.device("cuda", 0), learner_gpus=[0], device_count=torch.cuda.device_count())
    hf = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32).to("cuda:0").eval()
    seed_weights = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    gen = torch.Generator(device="cuda:0").manual_seed(0)
    new = {k: v + 0.1 * v.std() * torch.randn(v.shape, generator=gen, device="cuda:0") for k, v in seed_weights.items()}
    free0_before, total0 = torch.cuda.mem_get_info(0)
    with VLLMSampler(str(tiny_llama), max_model_len=256, gpus=[1], gpu_memory_utilization=0.5, bucket_mib=0,
                     enforce_eager=True) as sampler:
        assert sampler.transport_name == "nccl"
        # the engine's memory is on cuda:1, not the learner's cuda:0
        assert free0_before - torch.cuda.mem_get_info(0)[0] < 0.2 * total0
        prompt = [1, 20, 21, 14]
        hf.load_state_dict(new)
        stats = sampler.push_weights(iter(new.items()))
        assert stats.num_buckets == 5 and stats.num_tensors == len(new)  # embed, 2 layers, norm, lm_head
        assert stats.bytes == sum(v.numel() * 4 for v in new.values()) and stats.seconds > 0
        assert _gap(hf, sampler, prompt) <= 1e-3
        hf.load_state_dict(seed_weights)  # a second push (a second start/finish session) back to the seed
        sampler.push_weights(iter(seed_weights.items()))
        assert sampler.version == 2 and _gap(hf, sampler, prompt) <= 1e-3
