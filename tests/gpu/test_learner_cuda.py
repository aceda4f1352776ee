"""The learner's GPU path without vLLM, through the GPU check's own parts
(engine/bench/gpu_check_parts.py), each asserted against its bar.

    pytest -m gpu tests/gpu/test_learner_cuda.py -q
"""

import math

import pytest
import torch

from engine.bench import gpu_check_parts as parts

pytestmark = pytest.mark.gpu
CUDA = torch.device("cuda", 0)


@pytest.fixture(autouse=True)
def _precise():
    parts.set_precise_matmuls(CUDA)


def test_learner_matches_transformers_fp32_on_cuda(tmp_path):
    r = parts.part_learner_hf(CUDA, quick=False, work_dir=tmp_path)
    assert r["fp32_logits_err"] <= parts.FP32_TOL and r["fp32_grads_err"] <= parts.FP32_TOL, r
    assert r["bf16_logprob_gap_mean"] < 0.05, r  # documented figure; a gross error still fails


def test_triton_kernels_match_their_references_on_cuda(tmp_path):
    r = parts.part_kernels(CUDA, quick=True, work_dir=tmp_path)
    assert r["impl"] == "triton"
    assert max(r["logprob_err"], r["logprob_grad_err"], r["dpo_err"], r["grpo_err"]) <= parts.KERNEL_TOL, r


def test_five_dpo_and_grpo_steps_on_a_recorded_batch(tmp_path):
    r = parts.part_train(CUDA, quick=False, work_dir=tmp_path)
    for key in ("dpo_float32", "dpo_bfloat16", "grpo_float32", "grpo_bfloat16"):
        assert len(r[key]["loss"]) == 5 and all(math.isfinite(x) for x in r[key]["loss"]), r[key]
    assert r["dpo_float32"]["loss"][-1] < r["dpo_float32"]["loss"][0]


def test_cuda_ipc_round_trip_to_another_process(tmp_path):
    r = parts.part_ipc(CUDA, quick=True, work_dir=tmp_path)
    assert r["mode"].startswith("cuda ipc") and r["equal"], r
