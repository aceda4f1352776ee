"""The parts of `engine.bench.gpu_check` (see its docstring for what each measures and its bars).

Every part is `part_<name>(device, *, quick, work_dir) -> dict` with an `ok` flag; figures are
plain floats so the summary is JSON. CUDA-only figures (throughput, peak memory) are absent on CPU.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import math
import sys
import time
from pathlib import Path

import torch

FP32_TOL = 1e-4  # learner vs transformers, fp32 logits and gradients (relative to max(1, |ref|))
KERNEL_TOL = 1e-4  # kernel path vs reference, fp32
TE_FP32_TOL = 2e-3  # TE layers vs transformers, fp32 log-probs; provisional until a GPU run sets it
GEMM_GOAL = 0.70  # token_logprobs forward FLOP/s vs a bf16 GEMM of the same shape (a goal, not a bar)


def set_precise_matmuls(device: torch.device) -> None:
    """fp32 parity needs real fp32 matmuls: TF32 off on CUDA."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def headline(name: str, r: dict) -> str:
    """One line per part for the console."""
    if "error" in r:
        return r["error"][:160]
    keys = {"env": ("torch", "device_name"), "learner_hf": ("fp32_logits_err", "bf16_logprob_gap_mean"),
            "kernels": ("impl", "logprob_err", "fwd_vs_gemm"), "train": ("dpo_float32_loss",),
            "ipc": ("mode", "equal")}[name]
    return "  ".join(f"{k}={r[k]}" for k in keys if k in r)


# -- env ---------------------------------------------------------------------------------------


def part_env(device: torch.device, *, quick: bool, work_dir: Path) -> dict:
    from engine.model.te import te_importable

    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "python": ".".join(map(str, sys.version_info[:3]))}
    for dist in ("triton", "megatron-core", "transformers", "transformer-engine", "vllm"):
        out[dist.replace("-", "_")] = _version(dist)
    out["te_importable"] = te_importable()
    out["vllm_importable"] = importlib.util.find_spec("vllm") is not None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(device_name=props.name, device_gib=round(props.total_memory / 2**30, 1))
    out["ok"] = True
    return out


# -- a random Llama checkpoint, shared by the parts ----------------------------------------------


def hf_llama(work_dir: Path, quick: bool) -> Path:
    """A random GQA Llama saved by transformers (weights at unit scale so every path moves the
    logits); made once per work_dir."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = work_dir / ("llama_quick" if quick else "llama")
    if (path / "config.json").exists():
        return path
    size = dict(vocab_size=512, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2) if quick else dict(
        vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=4,
        num_attention_heads=16, num_key_value_heads=8)
    config = LlamaConfig(**size, head_dim=64, max_position_embeddings=2048, dtype="float32")
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
    model.save_pretrained(path)
    return path


def _next_token_logprobs(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).abs().max()) / max(1.0, float(want.abs().max()))


# -- learner vs transformers -------------------------------------------------------------------


def part_learner_hf(device: torch.device, *, quick: bool, work_dir: Path) -> dict:
    from transformers import LlamaForCausalLM

    from engine.model.hf_io import gather_hf, load_model
    from engine.model.te import convert_to_te, te_importable
    from engine.parallel.mesh import Mesh

    path = hf_llama(work_dir, quick)
    hf = LlamaForCausalLM.from_pretrained(path, dtype=torch.float32).to(device)
    B, T = (2, 32) if quick else (8, 256)
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, hf.config.vocab_size, (B, T), generator=gen).to(device)
    weights = torch.randn(B, T, hf.config.vocab_size, generator=gen).to(device)
    hf_logits = hf(ids).logits
    (hf_logits * weights).sum().backward()
    hf_grads = {n: p.grad for n, p in hf.named_parameters()}
    ref_lp = _next_token_logprobs(hf_logits.detach(), ids)
    out: dict = {}
    with Mesh.init(device=device) as mesh:
        model = load_model(path, mesh)
        logits = model.gather_logits(model(ids))
        (logits * weights).sum().backward()
        out["fp32_logits_err"] = _rel_err(logits.detach(), hf_logits.detach())
        grads = dict(gather_hf(model, {n: p.grad for n, p in model.named_parameters()}, pp_broadcast=True))
        out["fp32_grads_err"] = max(_rel_err(g, hf_grads[n]) for n, g in grads.items())
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            bf16 = _next_token_logprobs(model.gather_logits(model(ids)), ids)
        gap = (bf16 - ref_lp).abs()
        out.update(bf16_logprob_gap_mean=float(gap.mean()), bf16_logprob_gap_max=float(gap.max()))
        if device.type == "cuda" and te_importable():
            te_model = convert_to_te(load_model(path, mesh))
            with torch.no_grad():
                te_fp32 = _next_token_logprobs(te_model.gather_logits(te_model(ids)), ids)
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                    te_bf16 = _next_token_logprobs(te_model.gather_logits(te_model(ids)), ids)
            out["te_fp32_logprob_gap_max"] = float((te_fp32 - ref_lp).abs().max())
            out["te_bf16_logprob_gap_mean"] = float((te_bf16 - ref_lp).abs().mean())
            out["te_vs_megatron_bf16_gap_max"] = float((te_bf16 - bf16).abs().max())
    out["ok"] = out["fp32_logits_err"] <= FP32_TOL and out["fp32_grads_err"] <= FP32_TOL and (
        out.get("te_fp32_logprob_gap_max", 0.0) <= TE_FP32_TOL)
    return out


# -- kernels -----------------------------------------------------------------------------------


def _kernel_impl(device: torch.device) -> str:
    from kernels.paths import triton_interpret

    return "triton" if device.type == "cuda" or triton_interpret() else "torch"


def _logprob_check(impl: str, device: torch.device, n: int, h: int, v: int) -> tuple[float, float]:
    from kernels.logprob import token_logprobs

    gen = torch.Generator().manual_seed(2)
    x0, w0 = torch.randn(n, h, generator=gen), torch.randn(v, h, generator=gen) / h**0.5
    t, g = torch.randint(0, v, (n,), generator=gen).to(device), torch.randn(n, generator=gen).to(device)
    results = []
    for path in (impl, "reference"):
        x, w = x0.to(device).requires_grad_(), w0.to(device).requires_grad_()
        lp = token_logprobs(x, w, t, impl=path)
        (lp * g).sum().backward()
        results.append((lp.detach(), x.grad, w.grad))
    (lp, gx, gw), (lp_r, gx_r, gw_r) = results
    return _rel_err(lp, lp_r), max(_rel_err(gx, gx_r), _rel_err(gw, gw_r))


def _loss_checks(impl: str, device: torch.device) -> dict:
    from kernels.dpo import dpo_loss
    from kernels.grpo import grpo_loss

    gen = torch.Generator().manual_seed(3)
    r = lambda *s: torch.randn(*s, generator=gen).to(device)  # noqa: E731
    pc, pr, rc, rr = (r(16) * 5 for _ in range(4))
    lens = torch.randint(1, 40, (16,), generator=gen).to(device)
    errs = {}
    outs = []
    for path in (impl, "reference"):
        a, b = pc.clone().requires_grad_(), pr.clone().requires_grad_()
        terms = dpo_loss(a, b, rc, rr, beta=0.1, chosen_lengths=lens, rejected_lengths=lens, nll_weight=0.1, impl=path)
        terms.loss.sum().backward()
        outs.append((terms.loss.detach(), a.grad, b.grad))
    errs["dpo_err"] = max(_rel_err(x, y) for x, y in zip(*outs, strict=True))
    lp, old, ref, adv, wt = r(512) * 0.1 - 2, r(512) * 0.1 - 2, r(512) * 0.1 - 2, r(512), r(512).abs() / 512
    outs = []
    for path in (impl, "reference"):
        x = lp.clone().requires_grad_()
        terms = grpo_loss(x, old, ref, adv, wt, clip_eps=0.2, kl_coef=0.001, impl=path)
        terms.loss.backward()
        outs.append((terms.loss.detach(), x.grad))
    errs["grpo_err"] = max(_rel_err(x, y) for x, y in zip(*outs, strict=True))
    return errs


def _cuda_seconds(fn, repeat: int) -> float:
    from engine.bench.kernels import _cuda_time  # one CUDA-event timer for the benches

    return _cuda_time(fn, repeat)


def _throughput(n: int, h: int, v: int, repeat: int = 5) -> dict:
    """token_logprobs (Triton, bf16) forward and forward+backward vs torch.mm of the same shape."""
    from kernels.logprob import token_logprobs

    x = torch.randn(n, h, device="cuda", dtype=torch.bfloat16).requires_grad_()
    w = (torch.randn(v, h, device="cuda", dtype=torch.bfloat16) / h**0.5).requires_grad_()
    t, g = torch.randint(0, v, (n,), device="cuda"), torch.randn(n, device="cuda")
    gemm_s = _cuda_seconds(lambda: torch.mm(x.detach(), w.detach().t()), repeat)
    fwd_s = _cuda_seconds(lambda: token_logprobs(x.detach(), w.detach(), t, impl="triton"), repeat)

    def fwd_bwd():
        x.grad = w.grad = None
        (token_logprobs(x, w, t, impl="triton") * g).sum().backward()

    torch.cuda.reset_peak_memory_stats()
    fb_s = _cuda_seconds(fwd_bwd, repeat)
    peak = torch.cuda.max_memory_allocated()
    flops = 2 * n * h * v
    return {"shape": [n, h, v], "gemm_tflops": flops / gemm_s / 1e12, "fwd_tflops": flops / fwd_s / 1e12,
            "fwd_vs_gemm": gemm_s / fwd_s, "fwd_bwd_vs_gemm": 3 * gemm_s / fb_s,
            "fwd_bwd_peak_gib": peak / 2**30}


def part_kernels(device: torch.device, *, quick: bool, work_dir: Path) -> dict:
    impl = _kernel_impl(device)
    n, h, v = (64, 64, 512) if quick or device.type != "cuda" else (2048, 1024, 32768)
    lp_err, grad_err = _logprob_check(impl, device, n, h, v)
    out = {"impl": impl, "logprob_err": lp_err, "logprob_grad_err": grad_err, **_loss_checks(impl, device)}
    out["ok"] = max(lp_err, grad_err, out["dpo_err"], out["grpo_err"]) <= KERNEL_TOL
    if device.type == "cuda":
        out.update(_throughput(*((4096, 1024, 32768) if quick else (16384, 4096, 128256))))
        out["goal_met"] = out["fwd_vs_gemm"] >= GEMM_GOAL
    return out


# -- 5-step learner runs on a recorded batch ---------------------------------------------------


def recorded_batch(vocab: int, work_dir: Path, quick: bool) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids) of 16 sequences (8 when quick), drawn once from a fixed seed and
    kept in work_dir/recorded_batch_<vocab>.json so every run trains on the same batch."""
    import json

    path = work_dir / f"recorded_batch_{vocab}.json"
    if path.exists():
        return [tuple(s) for s in json.loads(path.read_text())]
    gen = torch.Generator().manual_seed(4)
    lo, hi, count = (4, 12, 8) if quick else (64, 256, 16)
    seqs = [(torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=gen)),), generator=gen).tolist(),
             torch.randint(3, vocab, (int(torch.randint(lo, hi, (1,), generator=gen)),), generator=gen).tolist())
            for _ in range(count)]
    path.write_text(json.dumps(seqs))
    return seqs


def _rollouts(learner, seqs):
    """Rollouts whose behaviour log-probs are the learner's own (version -1: never 'fresh', so the
    parity check, which needs a sampler, is not involved)."""
    from engine.rollout.types import Rollout

    scored = learner.score(seqs)
    return [Rollout(prompt_index=i, prompt_ids=p, response_ids=r, behaviour_logprobs=lp.float().cpu().tolist(),
                    text="", reward=0.0, version=-1) for i, ((p, r), lp) in enumerate(zip(seqs, scored, strict=True))]


def _steps(learner, train, device: torch.device, steps: int) -> dict:
    losses, norms, seconds = [], [], []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        m = train()
        _sync(device)
        seconds.append(time.perf_counter() - t0)
        losses.append(float(m["train/loss"]))
        norms.append(float(m["train/grad_norm"]))
    out = {"loss": losses, "grad_norm": norms, "step_s": seconds}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return out


def part_train(device: torch.device, *, quick: bool, work_dir: Path) -> dict:
    from engine.config import LearnerConfig, OptimConfig
    from engine.learner.learner import Learner
    from engine.parallel.mesh import Mesh
    from engine.rollout.types import Group, PreferencePair

    path = hf_llama(work_dir, quick)
    steps = 2 if quick else 5  # quick: the CPU smoke test's time budget
    out: dict = {}
    with Mesh.init(device=device) as mesh:
        for dtype in ("float32", "bfloat16"):
            for objective in ("dpo", "grpo"):
                learner = Learner(str(path), LearnerConfig(dtype=dtype, micro_batch_size=8), OptimConfig(lr=1e-4), mesh)
                rollouts = _rollouts(learner, recorded_batch(learner.policy.cfg.vocab_size, work_dir, quick))
                if objective == "dpo":
                    pairs = [PreferencePair(rollouts[i], rollouts[i + 1]) for i in range(0, len(rollouts), 2)]
                    run = _steps(learner, lambda p=pairs, lr=learner: lr.train_dpo(p), device, steps)
                else:
                    groups = [Group(rollouts[i : i + 4], [1.0, -1.0, 0.5, -0.5]) for i in range(0, len(rollouts), 4)]
                    run = _steps(learner, lambda g=groups, lr=learner: lr.train_grpo(g), device, steps)
                out[f"{objective}_{dtype}"] = run
                del learner
    for key in [k for k in out if k.startswith("dpo_")]:
        out[f"{key}_loss"] = round(out[key]["loss"][-1], 5)
    finite = all(math.isfinite(x) for r in out.values() if isinstance(r, dict) for x in r["loss"] + r["grad_norm"])
    dpo_learns = all(out[f"dpo_{dt}"]["loss"][-1] < out[f"dpo_{dt}"]["loss"][0] for dt in ("float32", "bfloat16"))
    out["ok"] = finite and dpo_learns
    return out


# -- CUDA IPC round trip -----------------------------------------------------------------------


def _ipc_child(payload: bytes, queue) -> None:
    import pickle

    from torch.multiprocessing.reductions import rebuild_cuda_tensor

    from engine.sampler.gpu_transport import unpack_bucket

    handle, table = pickle.loads(payload)
    args = list(handle)
    args[6] = torch.cuda.current_device()
    buf = rebuild_cuda_tensor(*args)
    queue.put({name: float(t.double().sum()) for name, t in unpack_bucket(buf, table)})


def part_ipc(device: torch.device, *, quick: bool, work_dir: Path) -> dict:
    from engine.sampler.gpu_transport import pack_bucket, unpack_bucket

    gen = torch.Generator().manual_seed(5)
    bucket = [("layers.0.w", torch.randn(257, 64, generator=gen)), ("layers.0.b", torch.randn(17, generator=gen).bfloat16()),
              ("embed", torch.randn(1000, 33, generator=gen).half())]
    bucket = [(n, t.to(device)) for n, t in bucket]
    want = {n: float(t.double().sum()) for n, t in bucket}
    buf, table = pack_bucket(bucket)
    if device.type != "cuda":
        got = {n: t for n, t in unpack_bucket(buf, table)}
        equal = all(torch.equal(got[n], t) for n, t in bucket)
        return {"mode": "in-process (CPU)", "equal": equal, "ok": equal}
    import pickle

    import torch.multiprocessing as mp
    from torch.multiprocessing.reductions import reduce_tensor

    torch.cuda.synchronize()
    _, handle = reduce_tensor(buf)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_ipc_child, args=(pickle.dumps((handle, table)), queue))
    child.start()
    got = queue.get(timeout=120)
    child.join(timeout=60)
    big = [(f"layers.{i}.w", torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)) for i in range(8)]
    pack_s = _cuda_seconds(lambda: pack_bucket(big), 3)
    nbytes = sum(t.numel() * t.element_size() for _, t in big)
    equal = got == want
    return {"mode": "cuda ipc, separate process", "equal": equal, "pack_gb_per_s": nbytes / pack_s / 1e9,
            "ok": equal and child.exitcode == 0}
