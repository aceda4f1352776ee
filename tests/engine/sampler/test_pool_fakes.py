"""One engine per node (engine/sampler/pool.py) on fakes: 3 gloo ranks on localhost (rank 0, the
driver, in the pytest process; ranks 1 and 2 spawned), each "node leader" holding a FakeSampler
(tests/fakes.py) instead of a VLLMSampler.
Rank 0 gets its EnginePool from `place_engines` as engine/run.py does; the other leaders get a
RemoteEngine whose service thread (`serve`) runs the driver's commands. Checked: a pooled generate
gives, prompt for prompt, what one engine gives for the whole batch (each slice keeps its seed
offset); a push reaches every engine with the same names and values; a remote engine's failure is
raised on the driver and leaves the group in step; quiet/sleep/wake act on each rank's own engine;
close shuts the remote service down (no hang).

The slow end-to-end twin (real vLLM, torchrun) is tests/engine/test_engines_per_node.py.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import queue
import random
import threading
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from fakes import FakeSampler

from engine.parallel.split import even_split
from engine.sampler import pool as pool_mod
from engine.sampler.pool import EnginePool, RemoteEngine, place_engines

WORLD = 3
FAIL_TOKEN = -7  # a prompt holding it makes the engine that gets it fail to generate
REFUSED = "refused.weight"  # rank 2's engine fails a push that holds this tensor
GROUP_TIMEOUT = datetime.timedelta(seconds=30)  # a hang fails the test instead of blocking it

# (prompts, n, seed) of each pooled generate, in order; prompts are lists of token ids
PROMPTS_A = [[i, i + 1, i * 3] for i in range(7)]
PROMPTS_B = [[100 + i] * (i % 3 + 1) for i in range(8)]


class ByteTokenizer:
    """What FakeSampler needs of a tokenizer (encode), without loading transformers."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(text.encode())


@dataclasses.dataclass
class Engine(FakeSampler):
    """A FakeSampler that knows its rank, counts sleep/wake, and fails on demand."""

    rank: int = 0
    refuse: str | None = None  # a tensor name this engine's push fails on
    sleeps: int = 0
    wakes: int = 0

    def generate(self, prompt_token_ids, **kwargs):
        if any(FAIL_TOKEN in p for p in prompt_token_ids):
            raise ValueError(f"engine {self.rank} cannot sample this prompt")
        return super().generate(prompt_token_ids, **kwargs)

    def push_weights(self, named_tensors):
        received = []
        for name, t in named_tensors:  # fails mid-stream, the rest of the push not taken
            if name == self.refuse:
                raise ValueError(f"engine {self.rank} refuses {name}")
            received.append((name, t))
        return super().push_weights(iter(received))

    def sleep(self) -> None:
        self.sleeps += 1

    def wake_up(self) -> None:
        self.wakes += 1


def weights(seed: int) -> list[tuple[str, torch.Tensor]]:
    """A push: float32, a non-contiguous (transposed) bfloat16, an int64 and a 0-d tensor."""
    g = torch.Generator().manual_seed(seed)
    return [("layers.0.w", torch.randn(3, 5, generator=g)),
            ("layers.0.t", torch.randn(4, 2, generator=g).to(torch.bfloat16).t()),
            ("step", torch.arange(6, dtype=torch.int64).reshape(2, 3) + seed),
            ("scale", torch.tensor(0.5 * seed))]


def refused_push() -> list[tuple[str, torch.Tensor]]:
    """A push rank 2 fails in the middle of (it must still take the tensors after the refused one)."""
    w = weights(2)
    return w[:2] + [(REFUSED, torch.ones(2))] + w[2:]


def as_plain(push: dict[str, torch.Tensor]) -> dict:
    return {name: (str(t.dtype), tuple(t.shape), t.float().tolist()) for name, t in push.items()}


def single_engine(prompts, n: int, seed: int):
    """The reference: one engine samples the whole batch."""
    return Engine(ByteTokenizer()).generate(prompts, n=n, temperature=1.0, top_p=1.0, max_tokens=8,
                                            stop_token_ids=None, seed=seed)


def _gen(pool, prompts, n, seed):
    return pool.generate(prompts, n=n, temperature=1.0, top_p=1.0, max_tokens=8, stop_token_ids=[0], seed=seed)


def _engine_state(engine: Engine) -> dict:
    return {"pushes": [as_plain(p) for p in engine.pushes], "generates": engine.generates,
            "closed": engine.closed, "sleeps": engine.sleeps, "wakes": engine.wakes}


def _place(rank: int, local_rank: int, per_node: bool, built: list):
    """place_engines as build_run calls it, with LOCAL_RANK as torchrun would set it."""
    os.environ["LOCAL_RANK"] = str(local_rank)

    def build() -> Engine:
        engine = Engine(ByteTokenizer(), rank=rank, refuse=REFUSED if rank == 2 else None)
        built.append(engine)
        return engine

    return place_engines(build, per_node=per_node, is_driver=rank == 0)


def _driver_phase_a(pool: EnginePool) -> dict:
    """Leaders [0, 2]: rank 2 is the second engine (group rank 1), rank 1 a bystander."""
    out: dict = {"engines": pool.engines, "ranks": pool.ranks}
    out["gen"] = _gen(pool, PROMPTS_A, 3, 11)
    out["gen_one"] = _gen(pool, PROMPTS_A[:1], 2, 4)  # fewer prompts than engines: the remote gets none
    out["gen_none"] = _gen(pool, [], 2, 4)
    out["push_stats"] = pool.push_weights(weights(1))
    try:
        pool.push_weights(refused_push())
        out["push_error"] = None
    except RuntimeError as e:
        out["push_error"] = str(e)
    try:
        _gen(pool, PROMPTS_A[:3] + [[FAIL_TOKEN]], 1, 0)  # the bad prompt is in engine 2's slice
        out["gen_error"] = None
    except RuntimeError as e:
        out["gen_error"] = str(e)
    out["gen_after_errors"] = _gen(pool, PROMPTS_A, 3, 11)  # the group is still in step
    out["push_after_errors"] = pool.push_weights(weights(3))
    local = pool.local
    with pool.quiet():
        out["quiet_inside"] = local.quiet_depth
    out["quiet_after"] = local.quiet_depth
    pool.sleep()
    pool.wake_up()
    pool.close()
    pool.close()  # a second close sends nothing (the remote service is gone)
    out["local"] = _engine_state(local)
    return out


def _remote(remote: RemoteEngine) -> dict:
    """A remote leader's rank: quiet/sleep/wake its own engine while the service thread runs the
    driver's commands (as WeightSync.training does), then wait for the driver's close."""
    with remote.quiet():
        depth = remote.engine.quiet_depth
    remote.sleep()
    remote.wake_up()
    remote._thread.join(timeout=GROUP_TIMEOUT.total_seconds())
    alive = remote._thread.is_alive()
    if not alive:
        remote.join()
    return {"quiet_inside": depth, "service_alive": alive, "thread": remote._thread.name,
            "engine": _engine_state(remote.engine)}


def _rank_main(rank: int, init_file: str) -> dict:
    """Every rank's part, in the same order everywhere (the collectives must match)."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=GROUP_TIMEOUT)
    new_group, group_args = dist.new_group, []

    def bounded_new_group(ranks, *, timeout, backend):  # keep place_engines' args, bound the wait
        group_args.append((list(ranks), timeout, backend))
        return new_group(ranks, timeout=GROUP_TIMEOUT, backend=backend)

    dist.new_group = bounded_new_group
    try:
        result: dict = {"group_args": group_args}

        # engines=one on 3 ranks: only the driver builds, no group
        built: list = []
        sampler, remote = _place(rank, 0, per_node=False, built=built)
        result["one"] = (type(sampler).__name__, remote, len(built))

        # per_node, leaders [0, 2] (node 0 = ranks 0, 1; node 1 = rank 2)
        built = []
        sampler, remote = _place(rank, [0, 1, 0][rank], per_node=True, built=built)
        result["a_built"] = len(built)
        result["a_types"] = (type(sampler).__name__, type(remote).__name__)
        if rank == 0:
            result["a"] = _driver_phase_a(sampler)
        elif remote is not None:
            result["a"] = _remote(remote)
        dist.barrier()

        # per_node, one rank per node: three engines
        sampler, remote = _place(rank, 0, per_node=True, built=[])
        if rank == 0:
            result["b"] = {"gen": _gen(sampler, PROMPTS_B, 2, 5), "push": sampler.push_weights(weights(4)),
                           "engines": sampler.engines}
            sampler.close()
            result["b"]["local"] = _engine_state(sampler.local)
        else:
            result["b"] = _remote(remote)
        dist.barrier()

        # leaders [0, 1]: a command the service does not know ends it with an error
        errors: list = []
        if rank != 0:  # (the service thread may raise as soon as it starts)
            threading.excepthook = lambda args: errors.append(repr(args.exc_value))
        sampler, remote = _place(rank, [0, 0, 1][rank], per_node=True, built=[])
        if rank == 0:
            sampler._command(("reload",))
            sampler.local.close()
        elif remote is not None:
            result["c"] = _remote(remote)
            result["c"]["errors"] = errors
        dist.barrier()

        # rank 0 not the first rank of its node: every rank refuses the placement
        try:
            _place(rank, [1, 0, 0][rank], per_node=True, built=[])
            result["bad_leaders"] = None
        except RuntimeError as e:
            result["bad_leaders"] = str(e)
        dist.barrier()
        return result
    finally:
        dist.new_group = new_group
        dist.destroy_process_group()


def _worker(rank: int, init_file: str, out: mp.Queue) -> None:
    try:
        out.put((rank, _rank_main(rank, init_file)))
    except BaseException:
        out.put((rank, {"crash": traceback.format_exc()}))


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> dict[int, dict]:
    """Ranks 1 and 2 in spawned processes; rank 0 (the driver) in this one."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    init_file = str(tmp_path_factory.mktemp("pool") / "init")
    procs = {r: ctx.Process(target=_worker, args=(r, init_file, out), daemon=True) for r in range(1, WORLD)}
    for p in procs.values():
        p.start()
    local_rank = os.environ.get("LOCAL_RANK")
    results: dict[int, dict] = {}
    try:
        try:
            results[0] = _rank_main(0, init_file)
        except BaseException:
            results[0] = {"crash": traceback.format_exc()}
        finally:
            if local_rank is None:
                os.environ.pop("LOCAL_RANK", None)
            else:
                os.environ["LOCAL_RANK"] = local_rank
        for _ in procs:
            rank, result = out.get(timeout=60)
            results[rank] = result
    except queue.Empty:
        pytest.fail(f"ranks {sorted(set(range(WORLD)) - set(results))} hung; got {results}")
    finally:
        for p in procs.values():
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
    crashes = {r: res["crash"] for r, res in results.items() if "crash" in res}
    assert not crashes, "\n".join(f"rank {r}:\n{tb}" for r, tb in sorted(crashes.items()))
    assert [p.exitcode for p in procs.values()] == [0] * (WORLD - 1)
    return results


def test_placement_gives_the_driver_a_pool_and_each_other_leader_a_remote_engine(ranks):
    assert [ranks[r]["one"] for r in range(WORLD)] == [("Engine", None, 1), ("NoneType", None, 0),
                                                       ("NoneType", None, 0)]
    assert [ranks[r]["a_types"] for r in range(WORLD)] == [("EnginePool", "NoneType"), ("NoneType", "NoneType"),
                                                           ("NoneType", "RemoteEngine")]
    assert [ranks[r]["a_built"] for r in range(WORLD)] == [1, 0, 1]  # the bystander builds no engine
    assert ranks[0]["a"]["engines"] == 2 and ranks[0]["a"]["ranks"] == [0, 2]
    assert ranks[0]["b"]["engines"] == 3
    for r in range(WORLD):  # every rank made the engines' groups: gloo, a long timeout
        args = ranks[r]["group_args"]
        assert [a[0] for a in args] == [[0, 2], [0, 1, 2], [0, 1]]
        assert all(backend == "gloo" and timeout >= datetime.timedelta(days=1) for _, timeout, backend in args)
    for r in range(WORLD):
        assert "rank 0 must be the first rank of its node (leaders [1, 2])" in ranks[r]["bad_leaders"]


def test_pooled_generate_equals_one_engine_prompt_for_prompt(ranks):
    a, b = ranks[0]["a"], ranks[0]["b"]
    assert a["gen"] == single_engine(PROMPTS_A, 3, 11)
    assert a["gen_after_errors"] == a["gen"]
    assert a["gen_one"] == single_engine(PROMPTS_A[:1], 2, 4)
    assert a["gen_none"] == []
    assert b["gen"] == single_engine(PROMPTS_B, 2, 5)
    # the check can tell: without the seed offset (every slice from `seed`) the samples differ
    unshifted = [g for lo, hi in even_split(len(PROMPTS_B), 3) for g in single_engine(PROMPTS_B[lo:hi], 2, 5)]
    assert unshifted != b["gen"]


def test_each_engine_samples_its_contiguous_slice_at_its_seed_offset(ranks):
    # PROMPTS_A (7 prompts, n=3, seed 11) on 2 engines: [0, 4) on the driver, [4, 7) on rank 2
    local_a, remote_a = ranks[0]["a"]["local"]["generates"], ranks[2]["a"]["engine"]["generates"]
    assert [(g["prompts"], g["n"], g["seed"], g["max_tokens"]) for g in local_a] == [
        (4, 3, 11, 8), (1, 2, 4, 8), (2, 1, 0, 8), (4, 3, 11, 8)]  # an empty slice never reaches the engine
    # rank 2: its slices of the two PROMPTS_A generates; none of the 1-prompt one; the failing one raised
    assert [(g["prompts"], g["n"], g["seed"]) for g in remote_a] == [(3, 3, 11 + 4 * 3), (3, 3, 11 + 4 * 3)]
    # PROMPTS_B (8 prompts, n=2, seed 5) on 3 engines: [0, 3), [3, 6), [6, 8)
    slices = [(r, g["prompts"], g["seed"]) for r, key in ((0, "local"), (1, "engine"), (2, "engine"))
              for g in ranks[r]["b"][key]["generates"]]
    assert slices == [(0, 3, 5), (1, 3, 5 + 3 * 2), (2, 2, 5 + 6 * 2)]


def test_push_reaches_every_engine_with_identical_tensors(ranks):
    local_a, remote_a = ranks[0]["a"]["local"], ranks[2]["a"]["engine"]
    w1, w3 = as_plain(dict(weights(1))), as_plain(dict(weights(3)))
    w2 = as_plain(dict(refused_push()))
    assert local_a["pushes"] == [w1, w2, w3]  # the driver's engine took the push rank 2 refused
    assert remote_a["pushes"] == [w1, w3]
    assert list(remote_a["pushes"][0]) == [name for name, _ in weights(1)]  # in order
    assert ranks[0]["a"]["push_stats"].num_tensors == 4  # the driver's own engine's stats
    assert ranks[0]["a"]["push_stats"].bytes == sum(t.numel() * t.element_size() for _, t in weights(1))
    w4 = as_plain(dict(weights(4)))
    assert ranks[0]["b"]["local"]["pushes"] == ranks[1]["b"]["engine"]["pushes"] == ranks[2]["b"]["engine"]["pushes"] == [w4]
    # each engine's generates after a push saw it (the push ended before the next command)
    assert [g["weights"] for g in remote_a["generates"]] == [0, 1]


def test_remote_failures_are_raised_on_the_driver(ranks):
    a = ranks[0]["a"]
    assert "the vLLM engine on rank 2 failed to push" in a["push_error"]
    assert f"engine 2 refuses {REFUSED}" in a["push_error"]
    assert "the vLLM engine on rank 2 failed to generate" in a["gen_error"]
    assert "engine 2 cannot sample this prompt" in a["gen_error"]


def test_quiet_sleep_wake_act_on_each_ranks_own_engine_and_close_reaches_the_remote(ranks):
    a = ranks[0]["a"]
    assert (a["quiet_inside"], a["quiet_after"]) == (1, 0)
    assert (a["local"]["sleeps"], a["local"]["wakes"], a["local"]["closed"]) == (1, 1, True)
    for r, phase in ((2, "a"), (1, "b"), (2, "b")):
        remote = ranks[r][phase]
        assert remote["thread"] == "engine-service"
        assert remote["service_alive"] is False  # the driver's close ended the service loop
        assert remote["quiet_inside"] == 1
        engine = remote["engine"]
        assert (engine["sleeps"], engine["wakes"], engine["closed"]) == (1, 1, True)
    assert ranks[0]["b"]["local"]["closed"]


def test_an_unknown_command_ends_the_remote_service_with_an_error(ranks):
    c = ranks[1]["c"]
    assert c["service_alive"] is False and c["engine"]["closed"]  # join still closed the engine
    assert c["errors"] == ["RuntimeError(\"engine pool: unknown command 'reload'\")"]
    assert "c" not in ranks[2]  # leaders [0, 1]: rank 2 had no engine


def test_one_process_without_a_process_group_builds_the_driver_engine_alone():
    assert not dist.is_initialized()
    engine = Engine(ByteTokenizer())
    assert place_engines(lambda: engine, per_node=True, is_driver=True) == (engine, None)
    assert place_engines(lambda: engine, per_node=False, is_driver=False) == (None, None)
    assert pool_mod.EnginePool(engine, None, [0]).engines == 1


def test_the_reference_engine_is_seeded_per_sample():
    """single_engine is FakeSampler's rule (seed + i * n + j), so the parity checks above are exact."""
    groups = single_engine([[1], [2]], 2, 9)
    digits = [[int(s.text.split()[-1]) for s in g] for g in groups]
    assert digits == [[random.Random(9 + i * 2 + j).randrange(10) for j in range(2)] for i in range(2)]
