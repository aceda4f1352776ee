"""Fused kernels for the learner: per-token log-probs from hidden states and the LM head, and the
DPO and GRPO losses. Each op has one signature and three paths, picked with `impl=`
(`paths.py`): Triton (GPU), torch chunked (CPU and fallback) and `*_reference` (plain PyTorch).

    paths.py           which path runs (auto: Triton on CUDA, torch on CPU)
    tp.py              the tensor-parallel collectives (named autograd functions, explicit group)
    logprob.py         token_logprobs: the op, its reference, the torch chunked path
    logprob_triton.py  its Triton kernels (imported on first use)
    lse.py             log-sum-exp statistics shared by those two paths (merge, TP finish)
    dpo.py, grpo.py    the fused losses, their references, their torch paths; grpo.token_weights
    losses_triton.py   the losses' Triton kernels (imported on first use)
    loss_backward.py   the losses' closed-form backwards, shared by their torch and Triton paths

Nothing here imports `engine`, and no module here imports one that imports it back
(`tests/test_imports.py`). See README.md for the file map and the tests.
"""
