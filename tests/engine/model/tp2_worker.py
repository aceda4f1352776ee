"""TP=2 half of test_llama_vs_hf.py: run by that test under torchrun, one process per TP rank.

    PYTHONPATH=. torchrun --standalone --nproc-per-node 2 tests/engine/model/tp2_worker.py WORKDIR

WORKDIR holds what the test prepared: `cases.json` (case name -> HF checkpoint dir), per case
`ref_<case>.pt` (input ids, loss weights, transformers' logits and gradients) and
`init_tp1.pt` (a seeded random init at TP=1). Each rank asserts; a failure exits non-zero.
Checkpoints re-saved at TP=2 go to WORKDIR/saved_<case> for the test to compare.
"""

import json
import sys
from pathlib import Path

import torch
from megatron.core import parallel_state

from engine.model.config import ModelConfig
from engine.model.hf_io import iter_hf_weights, load_model, save_hf
from engine.model.llama import CausalLM
from engine.parallel.mesh import Mesh

TOL = 1e-5  # as test_llama_vs_hf.TOL (measured at TP=2: logits <= 4.1e-6, gradients <= 2.7e-6)


def check_close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    err = (got - want).abs().max().item()
    scale = max(1.0, want.abs().max().item())
    assert err <= tol * scale, f"{name}: max abs diff {err:.3g} > {tol} x {scale:.3g}"


def check_case(case: str, model_dir: str, workdir: Path, mesh: Mesh) -> None:
    ref = torch.load(workdir / f"ref_{case}.pt")
    model = load_model(model_dir, mesh)
    ids = ref["input_ids"]
    local = model(ids)
    vocab_shard = model.cfg.vocab_size // mesh.tp_size
    want_local = ref["logits"][..., mesh.tp_rank * vocab_shard:(mesh.tp_rank + 1) * vocab_shard]
    check_close(f"{case} local logits", local.detach(), want_local, TOL)
    hidden = model.hidden_states(ids)
    check_close(f"{case} hidden @ lm_head_weight.T", (hidden @ model.lm_head_weight.T).detach(), want_local, TOL)
    logits = model.gather_logits(local)
    err = (logits.detach() - ref["logits"]).abs().max().item()
    assert err <= TOL, f"{case} gathered logits: max abs diff {err:.3g} > {TOL}"
    print(f"rank {mesh.rank} {case}: logits max abs diff {err:.2g}")

    (logits * ref["loss_weights"]).sum().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)  # the HF view of the parameters is now the HF view of the gradients
    grads = dict(iter_hf_weights(model))
    assert grads.keys() == ref["grads"].keys(), sorted(grads.keys() ^ ref["grads"].keys())
    for name, grad in grads.items():
        check_close(f"{case} grad {name}", grad, ref["grads"][name], TOL)

    save_hf(load_model(model_dir, mesh), workdir / f"saved_{case}", tokenizer_dir=model_dir)


def main() -> None:
    workdir = Path(sys.argv[1])
    mesh = Mesh.init(tp_size=2)
    assert (mesh.world_size, mesh.tp_size, mesh.tp_rank, mesh.dp_size) == (2, 2, mesh.rank, 1), mesh
    for case, model_dir in json.loads((workdir / "cases.json").read_text()).items():
        check_case(case, model_dir, workdir, mesh)

    init_ref = torch.load(workdir / "init_tp1.pt")
    cfg = ModelConfig.from_hf_dict(init_ref["config"])
    got = dict(iter_hf_weights(CausalLM(cfg, mesh, seed=7)))
    for name, want in init_ref["weights"].items():
        assert torch.equal(got[name], want), f"seeded random init differs between TP=1 and TP=2 at {name}"

    try:
        load_model(workdir / "vocab_odd", mesh)
        raise AssertionError("load_model accepted vocab_size=255 at tp=2")
    except ValueError as e:
        assert "vocab_size=255" in str(e) and "vocab_odd" in str(e) and "tensor-parallel size 2" in str(e), e
    assert not parallel_state.model_parallel_is_initialized()  # explicit tp_group only, no megatron globals
    mesh.destroy()
    print(f"rank {mesh.rank}: ok")


if __name__ == "__main__":
    main()
