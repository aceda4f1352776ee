"""Worker of test_sync_layouts.py: one torchrun job of 4 gloo ranks pushes a learner's weights
into one vLLM sampler at every learner layout (tp, pp) in {(1,1), (2,1), (1,2), (2,2)}, in
buckets of one layer, and measures the sampler/learner log-prob gap after each push.

    PYTHONPATH=. torchrun --standalone --nproc-per-node 4 tests/engine/sync/layouts_worker.py SEED_DIR OUT.json
    PYTHONPATH=. torchrun --standalone --nproc-per-node 2 tests/engine/sync/layouts_worker.py SEED_DIR OUT.json \
        --sampler-tp 2 --layouts 1x1,2x1

Rank 0 owns the sampler (vLLM TP = 1 by default, its own process), so every layout with tp = 2
is also a sampler TP != learner TP case; with `--sampler-tp 2` (two vLLM workers, one per core)
the learner TP = 1 layout is. Before each push the learner's weights are scaled by per-tensor
factors (a function of the parameter name only, so TP shards and replicated norms stay
consistent), which the sampler cannot have seen: a push that misses or misplaces a shard shows up
as a gap. Rank 0 writes OUT.json: per layout the gap, bytes moved, parameter bytes, buckets and
the transport's peak buffer bytes.
"""

import json
import zlib

import torch
import torch.distributed as dist

from engine.config import RunConfig
from engine.data.prompts import load_prompts
from engine.data.tokenizer import encode_prompt, load_tokenizer
from engine.learner.learner import Learner
from engine.parallel.mesh import Mesh

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]


def main(seed_dir: str, out_path: str, sampler_tp: int = 1, layouts: list[tuple[int, int]] = LAYOUTS) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    groups = {n: dist.new_group(list(range(n))) for n in sorted({tp * pp for tp, pp in layouts})}
    tok = load_tokenizer(seed_dir)
    prompts = [encode_prompt(tok, r.prompt) for r in load_prompts(f"{seed_dir}/data/heldout.jsonl")[:8]]
    sampler = None
    if rank == 0:
        from engine.sampler.vllm_engine import VLLMSampler

        sampler = VLLMSampler(seed_dir, seed=0, max_model_len=256, kv_cache_gib=0.25, bucket_mib=0, tp=sampler_tp)
    results = {}
    for version, (tp, pp) in enumerate(layouts, start=1):
        mesh = Mesh.sub_mesh(tp, pp, 1)
        if mesh is not None:
            cfg = RunConfig(model=seed_dir, kernels="torch", learner={"tp": tp, "pp": pp})
            learner = Learner(cfg.model, cfg.learner, cfg.optim, mesh, kernels=cfg.kernels)
            with torch.no_grad():
                for name, p in learner.policy.named_parameters():
                    p.mul_(1.0 + 0.02 * (zlib.crc32(f"{name}/{version}".encode()) % 5))
            stats = None
            if rank == 0:
                stats = sampler.push_weights(learner.hf_weights())
            else:
                for _ in learner.hf_weights():  # the TP gathers and PP broadcasts are collective
                    pass
            probe = None
            if rank == 0:
                outs = sampler.generate(prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=32,
                                        stop_token_ids=[tok.eos_token_id], seed=version)
                probe = [(p, list(o[0].token_ids), list(o[0].logprobs)) for p, o in zip(prompts, outs, strict=True)]
            box = [probe]
            dist.broadcast_object_list(box, src=0, group=groups[tp * pp])
            probe = box[0]
            scored = learner.score([(p, r) for p, r, _ in probe])
            if rank == 0:
                diffs = torch.cat([(lp - torch.tensor(s)).abs() for lp, (_, _, s) in zip(scored, probe, strict=True)])
                results[f"tp{tp}-pp{pp}"] = {
                    "logprob_gap": float(diffs.mean()), "tokens": diffs.numel(), "bytes": stats.bytes,
                    "param_bytes": learner.param_bytes, "buckets": stats.num_buckets,
                    "peak_buffer_bytes": stats.peak_bytes, "seconds": stats.seconds,
                }
            mesh.destroy()
        dist.barrier()
    if rank == 0:
        sampler.close()
        with open(out_path, "w") as f:
            json.dump(results, f, indent=1)
    dist.destroy_process_group()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("seed_dir")
    ap.add_argument("out")
    ap.add_argument("--sampler-tp", type=int, default=1)
    ap.add_argument("--layouts", default=",".join(f"{tp}x{pp}" for tp, pp in LAYOUTS))
    a = ap.parse_args()
    main(a.seed_dir, a.out, a.sampler_tp, [tuple(int(x) for x in lay.split("x")) for lay in a.layouts.split(",")])
