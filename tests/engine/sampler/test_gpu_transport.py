"""CUDA IPC weight push into a colocated vLLM engine (GPU only; skipped without CUDA).

    python -m pytest -q tests/engine/sampler/test_gpu_transport.py

Also checks the bucket packing on CPU tensors, which needs no GPU.
"""

import pytest
import torch

from engine.sampler.gpu_transport import pack_bucket, unpack_bucket

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_pack_unpack_roundtrip_keeps_names_dtypes_and_values():
    bucket = [("a", torch.randn(3, 5)), ("b", torch.arange(7, dtype=torch.int64)), ("c", torch.randn(2).half())]
    buf, table = pack_bucket(bucket)
    assert buf.dtype == torch.uint8 and all(off % 16 == 0 for *_, off in table)
    out = list(unpack_bucket(buf, table))
    assert [n for n, _ in out] == ["a", "b", "c"]
    for (_, want), (_, got) in zip(bucket, out, strict=True):
        assert got.dtype == want.dtype and torch.equal(got, want)


@cuda
@pytest.mark.gpu
def test_cuda_ipc_push_keeps_parity(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    from engine.sampler.vllm_engine import VLLMSampler

    hf = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    new = {k: v + 0.1 * v.std() * torch.randn(v.shape, generator=gen) for k, v in hf.state_dict().items()}
    hf.load_state_dict(new)
    with VLLMSampler(str(tiny_llama_dir), max_model_len=256, kv_cache_gib=0.25, transport="cuda_ipc",
                     bucket_mib=0) as s:
        stats = s.push_weights((k, v.cuda()) for k, v in new.items())
        assert stats.num_buckets == 5 and stats.bytes == sum(v.numel() * 4 for v in new.values())
        prompt = [1, 20, 21, 14]
        out = s.generate([prompt], n=1, temperature=1.0, top_p=1.0, max_tokens=16, seed=0)[0][0]
        ids = torch.tensor([prompt + out.token_ids])
        with torch.no_grad():
            logits = hf(ids).logits[0, len(prompt) - 1 : -1]
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(out.token_ids)[:, None])[:, 0]
        assert (ref - torch.tensor(out.logprobs)).abs().mean() <= 1e-3
