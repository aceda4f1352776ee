"""Typed, validated run configuration: defaults in code, YAML files that select values, dotted
overrides from the command line.

    semionline train --config configs/demo/grpo.yaml steps=3 sync_every=2 rollout.temperature=0.8

A key that does not exist fails at load time with a message naming it and the nearest valid key;
a value out of range names the key and the allowed range. The resolved config is written into the
run directory (`config.yaml`) so a run can always be reproduced from its folder.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.rewards.judge import JudgeConfig


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    # Prompt rows: .jsonl, .json, .parquet, a `datasets.save_to_disk` folder (DIR or DIR@SPLIT), or
    # hf://NAME[:CONFIG][@SPLIT] (engine/data/datasets.py). Rows are {"prompt"|"messages", "answer"}
    # or the columns named by prompt_key / answer_key (unset: prompt, question, problem or messages;
    # answer or solution; so GSM8K and MATH work as they are).
    train: str = ".cache/seed/data/train.jsonl"
    eval: str = ".cache/seed/data/heldout.jsonl"
    prompt_key: str | None = None
    answer_key: str | None = None
    prompt_template: str = "{prompt}"  # applied to each row's prompt text
    chat_template: bool = False  # render the prompt with the tokenizer's chat template (instruct models)
    system_prompt: str | None = None  # a system turn for rows without one (needs chat_template)
    # Offline DPO straight from preference rows ({"prompt", "chosen", "rejected"}, or chat-style
    # chosen/rejected message lists): the run trains on these pairs instead of sampling
    # (engine/data/preferences.py); needs objective=dpo and sync_every=offline.
    preferences: str | None = None


class RewardConfig(_Section):
    # A task whose every reward errored (judge down, math-verify crashing, ...) for this many
    # consecutive steps stops the run with the reasons; 0 = never.
    max_error_steps: int = Field(5, ge=0)
    # Reward models: on the learner's device and dtype unless set here; batched by tokens.
    device: str | None = None
    dtype: Literal["float32", "bfloat16"] | None = None
    max_batch_tokens: int = Field(16384, ge=1)
    trust_remote_code: bool = False  # custom reward-model heads run code from the checkpoint: opt in


class RolloutConfig(_Section):
    prompts_per_step: int = Field(16, ge=1)
    samples_per_prompt: int = Field(8, ge=2)
    temperature: float = Field(1.0, gt=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1)


class OptimConfig(_Section):
    lr: float = Field(1e-6, gt=0.0)
    adam_eps: float = Field(1e-8, gt=0.0)
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float = Field(0.1, gt=0.0)
    warmup_steps: int = Field(0, ge=0)


class DPOConfig(_Section):
    beta: float = Field(0.1, gt=0.0)
    nll_weight: float = Field(0.0, ge=0.0)  # weight of the NLL term on the chosen response
    length_normalize: bool = False  # divide summed log-probs by response length
    pairs: Literal["random", "extremes"] = "random"  # random correct vs incorrect, or max vs min


class GRPOConfig(_Section):
    clip_eps: float = Field(0.2, gt=0.0, lt=1.0)
    kl_coef: float = Field(0.001, ge=0.0)
    std_normalize: bool = False  # the paper: advantage r - mean(r), no std division
    reduction: Literal["token", "sequence"] = "token"
    tis_cap: float | None = Field(None, gt=0.0)  # truncated importance sampling cap
    drop_uniform_groups: bool = False  # drop groups whose rewards are all equal


class LearnerConfig(_Section):
    # Layout: tp x pp ranks per replica; data parallelism takes the rest of the torchrun world.
    tp: int = Field(1, ge=1)  # tensor-parallel size
    pp: int = Field(1, ge=1)  # pipeline stages (1F1B over micro-batches)
    virtual_stages: int = Field(1, ge=1)  # model chunks per pipeline rank (>1: interleaved 1F1B)
    # auto: CUDA when torch.cuda.is_available() (cuda:LOCAL_RANK, NCCL for the tensor groups),
    # else CPU (gloo); cuda without a GPU fails before anything loads (engine/parallel/device.py)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bfloat16: bf16 compute (autocast) over fp32 parameters, which are the optimizer's master weights
    dtype: Literal["float32", "bfloat16"] = "float32"
    te: Literal["auto", "on", "off"] = "auto"  # Transformer Engine layers: auto = on CUDA when installed
    micro_batch_size: int = Field(32, ge=1)  # sequences per forward/backward
    threads: int = Field(0, ge=0)  # torch intra-op threads; 0 = the node's cores over its ranks, less
    # one for the vLLM worker only when it generates beside the learner (overlap; engine/process.py)

    @field_validator("virtual_stages")
    @classmethod
    def _check_virtual_stages(cls, v: int, info) -> int:
        if v > 1 and info.data.get("pp", 1) == 1:
            raise ValueError("virtual_stages > 1 (interleaved 1F1B) needs learner.pp > 1")
        return v


class SamplerConfig(_Section):
    # vLLM tensor parallelism of the sampler, independent of the learner's (weights are pushed as
    # full tensors and each vLLM worker takes its shard). On CPU each worker needs a core.
    tp: int = Field(1, ge=1)
    # CPU cores of the vLLM worker(s). all: every core of the process (split over `tp` workers);
    # vllm: vLLM's own binding (one core per worker on a one-NUMA-node machine; tp > 1 still splits
    # every core); auto: all, unless the run overlaps generation with training (RunConfig.sampler_cpu_cores)
    cpu_cores: Literal["auto", "all", "vllm"] = "auto"
    # one: rank 0's engine makes every rollout. per_node: the first rank of every node runs an
    # engine too; rank 0 splits each generate across them and streams every push to all
    # (engine/sampler/pool.py). On one node the two are the same.
    engines: Literal["one", "per_node"] = "one"
    kv_cache_gib: float = Field(1.0, gt=0.0)
    max_model_len: int = Field(512, ge=16)
    separate_process: bool = True  # vLLM engine core in its own process (CPU overlap)
    # Weight-push bucket (whole layers, closed at the first layer boundary past this size; 0 = one
    # layer per bucket): a sync holds about one bucket plus one layer (engine/sync/buckets.py).
    bucket_mib: float = Field(64.0, ge=0.0)
    # auto: shared-memory files (separate process) or in-process; cuda_ipc: colocated GPU engine
    # (GPU only, untested on CPU machines; engine/sampler/gpu_transport.py)
    transport: Literal["auto", "cuda_ipc"] = "auto"
    # resident: the engine keeps its memory (fraction) and can generate while the learner trains;
    # time_sliced: it sleeps while the learner trains (GPU only: vLLM sleep mode; not with overlap)
    placement: Literal["resident", "time_sliced"] = "resident"
    # Disaggregated placement: CUDA device indices (this node's numbering, as the learner's
    # cuda:LOCAL_RANK) that the engine runs on alone, one per sampler.tp worker; weights go over NCCL
    # through vLLM's weight-transfer API (engine/sampler/nccl_transfer.py; GPU only, never run on a
    # GPU yet). None: colocated. Raise gpu_memory_utilization: the GPUs are the engine's own.
    gpus: list[int] | None = None
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: the learner's dtype
    # Stop the run when the sampler's log-probs differ from the learner's by more than this on
    # average. None: 1e-3 when sampler and learner are fp32, 1e-1 when either is bf16 (measured
    # gaps: docs/decisions.md, 2026-11-30; RunConfig.logprob_gap_limit).
    max_logprob_gap: float | None = Field(None, gt=0.0)
    # CUDA graphs for generation (GPU); on CPU vLLM runs eager whatever this says. None: eager on
    # CPU, graphs on GPU.
    enforce_eager: bool | None = None
    gpu_memory_utilization: float = Field(0.3, gt=0.0, le=1.0)  # GPU: the engine's share (colocated)
    # How the sampler is checked against the learner after each sync. batch: on the next batch's
    # own tokens, from the training forward pass, before the optimizer step (free; the last sync of
    # a run, which no batch follows, gets a probe). probe: generate gap_probe_prompts samples right
    # after the push and score them with the learner (costs a generate + a forward per sync).
    parity_check: Literal["batch", "probe"] = "batch"
    gap_probe_prompts: int = Field(8, ge=1)
    # vLLM's processes wait for each other by blocking (at most this many ms between checks)
    # instead of spinning (engine/sampler/vllm_plugin.py). auto: 5 ms on CPU, vLLM's spin on GPU;
    # null: always vLLM's spin.
    quiet_wait_ms: Literal["auto"] | Annotated[float, Field(ge=1.0)] | None = "auto"  # zmq polls whole ms

    @model_validator(mode="after")
    def _check_transport(self) -> SamplerConfig:
        if self.transport == "cuda_ipc" and not self.separate_process:
            raise ValueError("sampler.transport=cuda_ipc needs sampler.separate_process=true")
        return self

    @model_validator(mode="after")
    def _check_gpus(self) -> SamplerConfig:
        """What `gpus` needs that a config alone shows; the learner's device (CUDA, not among these
        GPUs) is checked when the mesh's device is resolved (engine/parallel/device.py)."""
        g = self.gpus
        if g is None:
            return self
        where = f"sampler.gpus={g}"
        if not g or any(i < 0 for i in g) or len(set(g)) != len(g):
            raise ValueError(f"{where}: expected distinct CUDA device indices >= 0 (or null: colocated)")
        if len(g) != self.tp:
            raise ValueError(f"{where}: one GPU per sampler worker, so {len(g)} GPU(s) need sampler.tp={len(g)} "
                             f"(sampler.tp={self.tp})")
        if self.transport == "cuda_ipc":
            raise ValueError(f"{where} (disaggregated, NCCL) cannot use sampler.transport=cuda_ipc, which shares "
                             "the learner's GPU with a colocated engine; leave transport=auto")
        if self.placement == "time_sliced":
            raise ValueError(f"{where}: the engine has its own GPUs and never sleeps; use sampler.placement=resident")
        if not self.separate_process:
            raise ValueError(f"{where} needs sampler.separate_process=true (the engine runs in its own processes)")
        return self


class EvalConfig(_Section):
    every: int = Field(10, ge=0)  # optimizer steps between evals; 0 = only at start and end
    max_prompts: int = Field(200, ge=1)
    samples: int = Field(1, ge=1)  # pass@1 averaged over this many samples per prompt
    temperature: float = Field(0.6, ge=0.0)  # the paper: 0.6 / top-p 0.9; 0 = greedy
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    max_tokens: int = Field(64, ge=1)
    # Sampling seed of every eval; None: the run's seed. A sweep fixes it so that all its runs are
    # evaluated on the same random numbers and the seed model's step-0 eval is shared.
    seed: int | None = None


class TaskConfig(_Section):
    """One task of a multi-task run: its prompts, its reward, and how it is trained.

    The step's loss is the weighted sum over tasks of each task's own loss (DPO: mean over its
    pairs; GRPO: its token- or sequence-level mean), with weights `weight / sum(weights)`; each
    task also gets `weight / sum(weights)` of `rollout.prompts_per_step`.
    """

    data: str  # training prompts (jsonl rows; see engine/data/prompts.py)
    eval_data: str | None = None  # held-out prompts for this task's evaluation
    reward: str = "math"  # math | reward_model | judge | package.module:function
    reward_model_path: str | None = None  # for reward: reward_model (HF sequence-classification dir)
    reward_max_length: int = Field(2048, ge=8)
    judge: JudgeConfig | None = None  # for reward: judge (engine/rewards/judge.py: endpoint, prompts, score range)
    # A second scorer used only at evaluation (same choices as `reward`; reward_model uses
    # reward_model_path, judge uses `judge`), reported as eval/<task>/gold/*: the paper trains on
    # a reward model and reports a stronger judge's win rates. The CPU chat task's hidden rule is
    # engine.demo.chat:gold_quality.
    eval_reward: str | None = None
    objective: Literal["dpo", "grpo"] | None = None  # None: the run's `objective`
    weight: float = Field(1.0, gt=0.0)
    samples_per_prompt: int | None = Field(None, ge=2)  # None: rollout.samples_per_prompt
    max_tokens: int | None = Field(None, ge=1)  # None: rollout.max_tokens
    prompt_key: str | None = None  # as in `data`
    answer_key: str | None = None
    prompt_template: str = "{prompt}"  # applied to each row's prompt text
    chat_template: bool = False  # render the prompt with the tokenizer's chat template (instruct models)
    system_prompt: str | None = None
    dpo: DPOConfig | None = None  # None: the run's `dpo` (e.g. beta 0.1 math, 0.01 chat)
    grpo: GRPOConfig | None = None  # None: the run's `grpo`


class LogConfig(_Section):
    rollouts: int = Field(0, ge=0)  # write RUN_DIR/rollouts/step_<k>.jsonl every this many steps; 0 = never


class CheckpointConfig(_Section):
    every: int = Field(0, ge=0)  # optimizer steps between training-state checkpoints; 0 = none
    keep: int = Field(2, ge=1)  # newest checkpoints kept in RUN_DIR/checkpoints


class RunConfig(_Section):
    objective: Literal["dpo", "grpo"] = "grpo"
    sync_every: int | Literal["offline"] = 1  # s: 1 online, >1 semi-online, offline = never
    # Rollout production in a producer thread, concurrent with optimization (engine/overlap.py);
    # false = the synchronous path (generate, then train), the debugging path.
    overlap: bool = False
    # Steps a batch may lag the learner (t - 1 - version). None = s - 1, the synchronous path's
    # versions exactly; larger values (GRPO only; pair with grpo.tis_cap) let generation cross syncs.
    max_staleness: int | None = Field(None, ge=0)
    steps: int = Field(20, ge=1)
    seed: int = 0
    model: str = ".cache/seed"  # HF checkpoint: the policy's start and the reference
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    optim: OptimConfig = OptimConfig()
    dpo: DPOConfig = DPOConfig()
    grpo: GRPOConfig = GRPOConfig()
    learner: LearnerConfig = LearnerConfig()
    sampler: SamplerConfig = SamplerConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    reward: RewardConfig = RewardConfig()
    log: LogConfig = LogConfig()
    # Multi-task runs: task name -> TaskConfig. Empty: one task from `data`, `objective` and the
    # math reward (the single-task configs in configs/demo).
    tasks: dict[str, TaskConfig] = {}
    # Deterministic algorithms only (torch.use_deterministic_algorithms): with a fixed layout and thread
    # count a resumed run then reproduces the metrics of an uninterrupted one.
    # Offline runs: a file holding the seed's rollouts for every step. The first run that names it
    # generates and writes it; later runs with the same model, data, rollout settings and steps
    # (a sweep's other seeds) load it and see its batches in their own seed's order.
    offline_rollouts: str | None = None
    deterministic: bool = False
    # Log-prob and loss kernels (kernels/): None = auto, Triton on CUDA and the chunked torch path on
    # CPU; "reference" is the plain full-logits path (for A/B checks).
    kernels: Literal["triton", "torch", "reference"] | None = None

    @field_validator("kernels")
    @classmethod
    def _check_kernels(cls, v: str | None) -> str | None:
        if v == "triton":
            import torch

            from kernels.paths import triton_interpret

            if not torch.cuda.is_available() and not triton_interpret():
                raise ValueError(
                    "'triton' needs a CUDA device; use 'torch' on CPU "
                    "(or set TRITON_INTERPRET=1 to run the Triton code in its slow interpreter)"
                )
        return v

    @field_validator("sync_every")
    @classmethod
    def _check_sync_every(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("must be an integer >= 1 or 'offline'")
        return v

    @model_validator(mode="after")
    def _check_tasks(self) -> RunConfig:
        if self.offline_rollouts and not self.offline:
            raise ValueError("offline_rollouts is the seed's rollout pool of an offline run: it needs sync_every=offline")
        if self.data.preferences and (self.objective != "dpo" or not self.offline or self.tasks):
            raise ValueError("data.preferences (offline DPO on preference rows) needs objective=dpo, "
                             "sync_every=offline and no tasks")
        return self

    @model_validator(mode="after")
    def _check_max_staleness(self) -> RunConfig:
        if self.overlap and self.sampler.placement == "time_sliced":
            raise ValueError("overlap=true needs sampler.placement=resident (a sleeping engine cannot generate)")
        k = self.max_staleness
        if k is None or self.offline:
            return self
        s = int(self.sync_every)
        if k < s - 1:
            raise ValueError(f"max_staleness={k} must be >= sync_every - 1 = {s - 1} (a batch for step t is "
                             "made with the weights of the last sync before t)")
        if k > s - 1 and self.objective != "grpo":
            raise ValueError(f"max_staleness={k} > sync_every - 1 needs objective=grpo (DPO keeps the exact s)")
        return self

    def run_tasks(self) -> dict[str, TaskConfig]:
        """Every run as a list of tasks: `tasks`, or for a config without it one task, "default",
        from `data`, `objective`, `dpo`, `grpo` and the math reward (one code path for both)."""
        if self.tasks:
            return dict(self.tasks)
        d = self.data
        return {"default": TaskConfig(
            data=d.train, eval_data=d.eval, reward="math", objective=self.objective, dpo=self.dpo, grpo=self.grpo,
            prompt_key=d.prompt_key, answer_key=d.answer_key, prompt_template=d.prompt_template,
            chat_template=d.chat_template, system_prompt=d.system_prompt,
        )}  # fmt: skip

    @property
    def sampler_cpu_cores(self) -> str:
        """`sampler.cpu_cores` with auto resolved: every core unless generation overlaps training."""
        if self.sampler.cpu_cores != "auto":
            return self.sampler.cpu_cores
        return "vllm" if self.overlap and not self.offline else "all"

    @property
    def sampler_dtype(self) -> str:
        return self.learner.dtype if self.sampler.dtype == "auto" else self.sampler.dtype

    @property
    def logprob_gap_limit(self) -> float:
        """The parity check's limit: `sampler.max_logprob_gap`, else by the two sides' dtypes."""
        if self.sampler.max_logprob_gap is not None:
            return self.sampler.max_logprob_gap
        return 1e-3 if self.learner.dtype == "float32" and self.sampler_dtype == "float32" else 1e-1

    @property
    def staleness_bound(self) -> int:
        """The most steps a batch may lag: the batch for step t uses a version >= t - 1 - bound."""
        if self.offline:
            return 0
        return int(self.sync_every) - 1 if self.max_staleness is None else self.max_staleness

    @property
    def offline(self) -> bool:
        return self.sync_every == "offline"

    def sync_due(self, step: int) -> bool:
        """Whether the sampler receives the learner's weights after optimizer step `step`."""
        return not self.offline and step % int(self.sync_every) == 0
