"""Benchmarks, run as `semionline bench <what>`; each prints its figures and writes JSON that is
committed under docs/reports/ (figures in README.md / BENCHMARKS.md come from those files).

kernels.py      log-prob paths side by side, one GRPO step
learner.py      learner tokens/s and FLOP/s against a matmul, the pp=2 bubble
e2e.py          a run with overlap off vs on, weight sync share, timeline PNG
math_reward.py  math-verify on the real GSM8K / MATH-500 data
peer.py         semionline and TRL on the same work, alternating (ratios)
gpu_check.py    the CUDA node check (launch/gpu_check.sh)
"""
