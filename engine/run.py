"""A run's components, built from its config in one place (every entry point comes here):

    loop = build_run(cfg, "runs/x", mesh)       # after setup_process(cfg, mesh)
    summary = loop.run()

    learner   = Learner(cfg.model, cfg.learner, cfg.optim, mesh)     engine/learner/
    sampler   = VLLMSampler.from_config(cfg.sampler, ...)            engine/sampler/ (placed per node)
    source    = RolloutSource(cfg, tokenizer, sampler)               engine/rollout/source.py
    sync      = WeightSync(cfg, learner, mesh, sampler=...)          engine/sync/weights.py
    evaluator = Evaluator(cfg, source, sync, mesh)                   engine/evaluator.py

A sweep hands in its open `sampler` (one engine for many runs; the run leaves it open) and its
`step0_cache` (the seed's step-0 evaluation, shared by runs with the same eval settings).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

from engine.config import RunConfig
from engine.config_load import dump_config
from engine.data.encoding import stop_token_ids
from engine.data.tokenizer import load_tokenizer
from engine.evaluator import Evaluator
from engine.learner.learner import Learner
from engine.loop import RunLoop
from engine.metrics import MetricsLogger
from engine.model.fetch import resolve_model
from engine.model.hf_io import check_checkpoint_dir
from engine.parallel.mesh import Mesh
from engine.rollout.log import RolloutLog
from engine.rollout.source import RolloutSource
from engine.sampler.pool import place_engines
from engine.sampler.vllm_engine import VLLMSampler
from engine.sync.weights import WeightSync


def build_run(cfg: RunConfig, run_dir: str | Path, mesh: Mesh, *, sampler=None,
              step0_cache: dict | None = None) -> RunLoop:
    run_dir, driver = Path(run_dir), mesh.rank == 0
    model = str(resolve_model(cfg.model))  # a local folder, a known name (fetch-model) or a hub id
    if model != cfg.model:
        cfg = cfg.model_copy(update={"model": model})
    if driver:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    check_checkpoint_dir(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    stop_ids = stop_token_ids(cfg.model, tokenizer)  # every EOS id of generation_config.json
    source = RolloutSource(cfg, tokenizer, None, driver=driver, stop_ids=stop_ids, clock0=0.0,
                           device=mesh.device.type)
    learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
    owns, remote = sampler is None, None
    if owns:  # this rank's engine (engines=per_node: the first rank of every node runs one)
        build = partial(VLLMSampler.from_config, cfg.sampler, model=cfg.model, seed=cfg.seed, dtype=cfg.sampler_dtype,
                        cpu_cores=cfg.sampler_cpu_cores)
        sampler, remote = place_engines(build, per_node=cfg.sampler.engines == "per_node", is_driver=driver)
    source.sampler = sampler
    sync = WeightSync(cfg, learner, mesh, sampler=sampler, engine=sampler if sampler is not None else remote,
                      probe_prompts=source.eval_ids, stop_ids=stop_ids, shared=not owns)
    evaluator = Evaluator(cfg, source, sync, mesh, step0_cache=step0_cache)

    def close_sampler() -> None:
        if sampler is not None and owns:
            sampler.close()  # an EnginePool also tells the other nodes' engines to close
        if remote is not None:
            remote.join()

    source.clock0 = time.perf_counter()  # origin of the time/at_* metrics (a timeline)
    return RunLoop(cfg, run_dir, mesh, learner=learner, source=source, sync=sync, evaluator=evaluator,
                   logger=MetricsLogger(run_dir, enabled=driver), close_sampler=close_sampler,
                   rollout_log=RolloutLog(run_dir, cfg.log.rollouts, tokenizer) if driver else None)
