"""semionline: offline, semi-online and online RL fine-tuning (DPO, GRPO) with a vLLM sampler.

The engine proper (imports point down this list):

    cli.py          `semionline` verbs; process set-up (process.py) and `build_run` (run.py)
    run.py          a run's components built from its config, in one place
    loop.py         the run loop: produce, train, sync every s, evaluate, checkpoint
    rollout/        RolloutSource (prompts, sampling, rewards, pairs/groups), typed batches
    sync/           WeightSync (push, version, parity), layer buckets
    evaluator.py    held-out evaluation of a run (baselines, the sweep's step-0 cache)
    learner/        the policy and reference, backward/update, checkpoints of its state
    sampler/        the vLLM engine, its transports and per-node placement
    rewards/        math-verify, reward model, LLM judge, callables; the router
    data/           prompt files, tokenization
    model/          the megatron-core decoder, HF I/O, weight name tables
    parallel/       the mesh (TP x PP x DP), pipeline schedule, gradients, even splits

Beside it: `demo/` (the CPU demo recipe), `experiments/` (the paper's sweep and report),
`bench/` (`semionline bench ...`). `kernels/` (the repo root) never imports the engine.
docs/architecture.md follows one optimizer step through these files.
"""
