"""Worker of test_parallel_step.py: one torchrun job of 4 ranks runs every layout in turn.

    PYTHONPATH=. torchrun --standalone --nproc-per-node 4 tests/engine/learner/parallel_worker.py WORKDIR

WORKDIR holds what the test prepared: `cases.json` (case name -> HF checkpoint dir, layouts, the
checkpoint save/load layouts), `batch.pt` (GRPO groups, DPO pairs, input ids) and
`hf_logits_<case>.pt` (transformers' logits). For each case the single-process run (tp = pp =
dp = 1, on rank 0) is the reference; every layout then builds a `Learner` on a sub-mesh of ranks
0..n-1 and rank 0 compares with the reference:

- the logits (and against transformers), one GRPO step then one DPO step (metrics, every weight);
- the HF export of the untouched reference model (`save_hf`): bit-identical to the input files;
- training-state checkpoints: written after the GRPO step at the `save` layout, loaded at each
  `load` layout, which then takes the DPO step: weights bit-identical after loading, the DPO step
  as the reference's.

Rank 0 writes `results.json` (errors per case and layout); a failed check exits non-zero.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file

from engine.config import RunConfig
from engine.learner.checkpoint import load_learner_state, save_learner_state
from engine.learner.learner import Learner
from engine.model.hf_io import save_hf
from engine.parallel.mesh import Mesh

METRICS = (
    "train/loss",
    "train/grad_norm",
    "kl/ref",
    "policy/entropy",
    "logprob/chosen",
    "logprob/rejected",
    "policy/ratio_mean",
)
DPO_BETA, LR, K_BIAS = 0.1, 1e-3, "self_attn.k_proj.bias"
REL_TOL, HF_ABS_TOL = 1e-5, 1e-4


def tolerance(key: str) -> float:
    if "transformers" in key:
        return HF_ABS_TOL
    if "bit-exact" in key:
        return 0.0
    return 1e-2 if "k_proj.bias" in key else REL_TOL


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))


def name(layout: list[int]) -> str:
    return "x".join(map(str, layout[:3])) + (f" v{layout[3]}" if layout[3] > 1 else "")


def run_layout(
    case: dict, layout: list[int], batch: dict, workdir: Path, *, save: bool = False, load: bool = False
) -> dict | None:
    tp, pp, dp, virtual = layout
    mesh = Mesh.sub_mesh(tp, pp, dp)
    if mesh is None:
        return None
    assert mesh.rank == (mesh.pp_rank * dp + mesh.dp_rank) * tp + mesh.tp_rank, mesh  # TP fastest, PP slowest
    assert [dist.get_world_size(g) for g in (mesh.tp_group, mesh.pp_group, mesh.dp_group)] == [tp, pp, dp]
    assert mesh.pp_peer(mesh.pp_rank) == mesh.rank and (mesh.embed_group is not None) == (pp > 1)
    cfg = RunConfig(
        model=case["dir"],
        kernels="torch",
        optim={"lr": LR, "adam_eps": 1e-4, "grad_clip": 1.0},
        learner={"tp": tp, "pp": pp, "virtual_stages": virtual, "micro_batch_size": 3},
        grpo={"clip_eps": 0.2, "kl_coef": 0.1},
    )
    torch.manual_seed(0)
    learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
    ckpt = workdir / f"ckpt_{case['name']}"
    out = {}
    if load:
        load_learner_state(learner, ckpt)
    else:
        out["logits"] = learner.policy_passes.logits(batch["input_ids"])
        out["grpo"] = learner.train_grpo(batch["groups"], cfg.grpo)
        export = workdir / f"export_{case['name']}_{name(layout).replace(' ', '')}"
        save_hf(learner.reference, export)
        out["export"] = export
    if save:
        save_learner_state(learner, ckpt)
        mesh.barrier()
    out["weights_grpo"] = {n: t.clone() for n, t in learner.hf_weights()}
    out["dpo"] = learner.train_dpo(batch["pairs"], cfg.dpo)
    out["weights_dpo"] = {n: t.clone() for n, t in learner.hf_weights()}
    out["logits_after"] = learner.policy_passes.logits(batch["input_ids"])
    mesh.destroy()
    return out


def compare(got: dict, want: dict, steps=("grpo", "dpo")) -> dict[str, float]:
    errs = {"logits_after": rel_err(got["logits_after"], want["logits_after"])}
    if "logits" in got:
        errs["logits"] = rel_err(got["logits"], want["logits"])
    for step in steps:
        for key in METRICS:
            if key in want[step]:
                a, b = got[step][key], want[step][key]
                errs[f"{step}:{key}"] = abs(a - b) / max(abs(b), 1e-12)
        if step == "dpo":  # a difference of near-equal sums: relative to the sums it is made of
            scale = DPO_BETA * max(abs(want[step]["logprob/chosen"]), abs(want[step]["logprob/rejected"]))
            errs["dpo:dpo/margin (rel. to beta*logprob)"] = (
                abs(got[step]["dpo/margin"] - want[step]["dpo/margin"]) / scale
            )
        errs.update(compare_weights(got[f"weights_{step}"], want[f"weights_{step}"], step))
    return errs


def compare_weights(got: dict, want: dict, step: str) -> dict[str, float]:
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())
    errs = {f"{step}:weights": max(rel_err(got[n], w) for n, w in want.items() if not n.endswith(K_BIAS))}
    # The k-projection bias has an exactly zero gradient (adding q.b_k to every score of a query
    # row leaves its softmax unchanged): its Adam update is normalised rounding noise, so it is
    # only required to stay noise-sized (< 1% of one learning-rate step) at every layout.
    k_bias = [float((got[n] - w).abs().max()) / LR for n, w in want.items() if n.endswith(K_BIAS)]
    if k_bias:
        errs[f"{step}:k_proj.bias |diff| / lr"] = max(k_bias)
    return errs


def export_errors(export: Path, original: Path) -> dict[str, float]:
    got, want = load_file(export / "model.safetensors"), {}
    for path in sorted(original.glob("*.safetensors")):
        want.update(load_file(path))
    assert got.keys() == want.keys(), sorted(got.keys() ^ want.keys())
    mismatched = [n for n in want if got[n].dtype != want[n].dtype or not torch.equal(got[n], want[n])]
    return {"HF export bit-exact (tensors differing)": float(len(mismatched))}


def main() -> None:
    workdir = Path(sys.argv[1])
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    batch = torch.load(workdir / "batch.pt", weights_only=False)
    results, failures = {}, []

    def record(case_name: str, key: str, errs: dict[str, float]) -> None:
        results[case_name][key] = errs
        failures.extend(f"{case_name} {key} {k}: {v:.3g}" for k, v in errs.items() if v > tolerance(k))
        print(f"{case_name} {key}: " + " ".join(f"{k}={v:.1e}" for k, v in errs.items()), flush=True)

    for case_name, case in json.loads((workdir / "cases.json").read_text()).items():
        case["name"] = case_name
        reference = run_layout(case, [1, 1, 1, 1], batch, workdir)
        saved = None
        if rank == 0:
            hf = torch.load(workdir / f"hf_logits_{case_name}.pt")
            results[case_name] = {
                "1x1x1 vs transformers (max abs)": float((reference["logits"] - hf).abs().max())
            }
        for layout in case["layouts"]:
            dist.barrier()
            got = run_layout(case, layout, batch, workdir, save=layout == case["save"])
            if rank == 0:
                errs = compare(got, reference)
                errs["vs transformers (max abs)"] = float((got["logits"] - hf).abs().max())
                errs.update(export_errors(got["export"], Path(case["dir"])))
                record(case_name, name(layout), errs)
                saved = got if layout == case["save"] else saved
        for layout in case["load"]:
            dist.barrier()
            got = run_layout(case, layout, batch, workdir, load=True)
            if rank == 0:
                errs = compare(got, reference, steps=("dpo",))
                loaded = compare_weights(got["weights_grpo"], saved["weights_grpo"], "loaded")
                errs["loaded weights bit-exact (max abs diff)"] = max(
                    float((got["weights_grpo"][n] - w).abs().max()) for n, w in saved["weights_grpo"].items()
                )
                errs.update({k: v for k, v in loaded.items() if "k_proj" not in k})
                record(case_name, f"checkpoint {name(case['save'])} -> {name(layout)}", errs)
    if rank == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()
    if failures:
        raise SystemExit("parity failures:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
