"""Disaggregated sampler (`sampler.gpus`): everything of the NCCL weight transfer that a CPU can check.

    python -m pytest -q tests/engine/sampler/test_nccl_transfer.py

No vLLM engine starts and vLLM is not imported (it takes ~15 s): the vLLM signatures the transfer
is built against are read from the installed vLLM's source with `ast`; the push runs against a
fake engine and a fake communicator that rendezvous like NCCL (a broadcast waits for the receiver),
so a push that does not overlap `update_weights` with the broadcasts, or sends in another order
than the metadata, fails here. The GPU end-to-end test is tests/gpu/test_nccl_transfer_gpu.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import queue
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from engine.config import RunConfig, SamplerConfig
from engine.parallel.device import DeviceError, check_sampler_gpus, local_world_size
from engine.sampler import nccl_transfer
from engine.sampler.nccl_transfer import (
    NcclWeightTransport,
    bucket_update_info,
    engine_args,
    engine_device_ids,
    transfer_world_size,
    worker_init_info,
)

TIMEOUT = 5.0

# -- config and device validation ------------------------------------------------------------


def test_gpus_default_is_colocated_and_a_valid_list_parses_without_cuda():
    assert SamplerConfig().gpus is None
    cfg = SamplerConfig(gpus=[2, 3], tp=2, gpu_memory_utilization=0.9)
    assert cfg.gpus == [2, 3]
    assert RunConfig.model_validate({"sampler": {"gpus": [1]}}).sampler.gpus == [1]


@pytest.mark.parametrize(("settings", "message"), [
    ({"gpus": []}, "distinct CUDA device indices"),
    ({"gpus": [-1]}, "distinct CUDA device indices"),
    ({"gpus": [1, 1], "tp": 2}, "distinct CUDA device indices"),
    ({"gpus": [1, 2]}, "need sampler.tp=2"),
    ({"gpus": [1], "tp": 2}, "need sampler.tp=1"),
    ({"gpus": [1], "transport": "cuda_ipc"}, "cannot use sampler.transport=cuda_ipc"),
    ({"gpus": [1], "placement": "time_sliced"}, "use sampler.placement=resident"),
    ({"gpus": [1], "separate_process": False}, "needs sampler.separate_process=true"),
])
def test_gpus_config_errors_name_the_key(settings, message):
    with pytest.raises(ValueError, match=message) as err:
        SamplerConfig(**settings)
    assert "sampler.gpus=" in str(err.value)


def test_sampler_gpus_need_a_cuda_learner_and_gpus_of_their_own():
    check_sampler_gpus(None, torch.device("cpu"), [])  # colocated: nothing to check
    cuda0 = torch.device("cuda", 0)
    check_sampler_gpus([2, 3], cuda0, learner_gpus=range(2), device_count=4)
    with pytest.raises(DeviceError, match=r"needs the learner on CUDA.*resolved to cpu"):
        check_sampler_gpus([1], torch.device("cpu"), [])
    with pytest.raises(DeviceError, match=r"overlaps the learner.s GPUs \[0, 1, 2\] .* at \[1, 2\]"):
        check_sampler_gpus([1, 2, 3], cuda0, learner_gpus=range(3), device_count=8)
    with pytest.raises(DeviceError, match=r"GPU\(s\) \[4\] do not exist, this node shows 4"):
        check_sampler_gpus([3, 4], cuda0, learner_gpus=[0], device_count=4)


def test_init_mesh_refuses_sampler_gpus_on_a_cpu_learner_before_any_group(monkeypatch):
    from engine import process
    from engine.parallel.mesh import Mesh

    def no_mesh(*a, **k):
        raise AssertionError("Mesh.init must not run")

    monkeypatch.setattr(Mesh, "init", no_mesh)
    cfg = RunConfig.model_validate({"learner": {"device": "cpu"}, "sampler": {"gpus": [1]}})
    with pytest.raises(DeviceError, match="sampler.gpus=\\[1\\].*needs the learner on CUDA"):
        process.init_mesh(cfg)


def test_local_world_size_reads_torchrun(monkeypatch):
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert local_world_size() == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert local_world_size() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "x")
    with pytest.raises(DeviceError, match="LOCAL_WORLD_SIZE"):
        local_world_size()


# -- engine arguments, devices, handshake payload, bucket metadata ------------------------------


def test_engine_args_enable_vllm_nccl_transfer_on_the_sampler_gpus():
    args = engine_args(SamplerConfig(gpus=[6, 7], tp=2), cuda_visible="0,1,2,3,4,5,6,7")
    assert args == {"weight_transfer_config": {"backend": "nccl"}, "device_ids": [6, 7]}
    with pytest.raises(ValueError, match="colocated"):
        engine_args(SamplerConfig())
    with pytest.raises(ValueError, match=r"index\(es\) \[4\] out of range.*4 device\(s\) visible"):
        engine_args(SamplerConfig(gpus=[4]), cuda_visible="0,1,2,3")


def test_engine_device_ids_index_cuda_visible_devices():
    assert engine_device_ids([1, 3], None) == ["1", "3"]
    assert engine_device_ids([1, 3], "") == ["1", "3"]
    assert engine_device_ids([2, 3], "3,4, 5,6") == ["5", "6"]  # this process's cuda:2 is physical 5
    assert engine_device_ids([0], "GPU-aa,GPU-bb") == ["GPU-aa"]
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES='5'"):
        engine_device_ids([1], "5")


def test_worker_init_info_puts_the_workers_after_the_trainer():
    info = worker_init_info("127.0.0.1", 29555, num_workers=2)
    assert info == {"master_address": "127.0.0.1", "master_port": 29555, "rank_offset": 1, "world_size": 3,
                    "packed": False}
    assert transfer_world_size(4) == 5
    with pytest.raises(ValueError, match="at least one worker"):
        transfer_world_size(0)


def test_bucket_update_info_follows_the_send_order_and_vllm_dtype_names():
    bucket = [("model.layers.0.mlp.up_proj.weight", torch.zeros(4, 2, dtype=torch.bfloat16)),
              ("model.layers.0.input_layernorm.weight", torch.zeros(2)),
              ("model.layers.0.self_attn.q_proj.weight", torch.zeros(3, 2, dtype=torch.float16))]
    info = bucket_update_info(bucket)
    assert info == {"names": [n for n, _ in bucket], "dtype_names": ["bfloat16", "float32", "float16"],
                    "shapes": [[4, 2], [2], [3, 2]]}
    for name, (_, t) in zip(info["dtype_names"], bucket, strict=True):
        assert getattr(torch, name) is t.dtype  # how vLLM's worker reads it back
    json.dumps(info)  # plain data: travels through collective_rpc as is


# -- the installed vLLM's API, read from its source ------------------------------------------


def _vllm_tree(rel: str) -> ast.Module:
    spec = importlib.util.find_spec("vllm")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("vLLM is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    return ast.parse(path.read_text())


def _class(tree: ast.Module, name: str) -> ast.ClassDef:
    found = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == name]
    assert found, f"class {name} not found"
    return found[0]


def _fields(cls: ast.ClassDef) -> tuple[set[str], set[str]]:
    """(all annotated fields, those without a default) of a dataclass; ClassVars left out."""
    every, required = set(), set()
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if "ClassVar" in ast.unparse(node.annotation):
                continue
            every.add(node.target.id)
            if node.value is None:
                required.add(node.target.id)
    return every, required


def _params(tree: ast.Module, cls: str | None, func: str) -> list[str]:
    scope = _class(tree, cls).body if cls else tree.body
    fns = [n for n in scope if isinstance(n, ast.FunctionDef) and n.name == func]
    assert fns, f"{cls}.{func} not found"
    a = fns[0].args
    return [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs]


def test_payloads_match_the_installed_vllm_dataclasses():
    init_every, init_required = _fields(_class(_vllm_tree("distributed/weight_transfer/nccl_common.py"),
                                               "NCCLWeightTransferInitInfo"))
    info = worker_init_info("127.0.0.1", 1, 1)
    assert set(info) <= init_every and init_required <= set(info)
    upd_every, upd_required = _fields(_class(_vllm_tree("distributed/weight_transfer/nccl_engine.py"),
                                             "NCCLWeightTransferUpdateInfo"))
    upd = bucket_update_info([("w", torch.zeros(1))])
    assert set(upd) == upd_every == upd_required
    wt_fields, _ = _fields(_class(_vllm_tree("config/weight_transfer.py"), "WeightTransferConfig"))
    assert set(engine_args(SamplerConfig(gpus=[1]))["weight_transfer_config"]) <= wt_fields


def test_the_vllm_calls_used_exist_with_these_parameters():
    args = _class(_vllm_tree("engine/arg_utils.py"), "EngineArgs")
    names = {n.target.id for n in args.body if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    assert set(engine_args(SamplerConfig(gpus=[1]))) <= names
    offline = _vllm_tree("entrypoints/rl/offline.py")  # mixed into vllm.LLM
    assert _params(offline, "RLOfflineMixin", "init_weight_transfer_engine") == ["self", "request"]
    assert _params(offline, "RLOfflineMixin", "start_weight_update") == ["self"]
    assert _params(offline, "RLOfflineMixin", "update_weights") == ["self", "request"]
    assert _params(offline, "RLOfflineMixin", "finish_weight_update")[0] == "self"
    src = ast.unparse(offline)
    assert "request['init_info']" in src and "request['update_info']" in src  # the dict forms we send
    llm = _class(_vllm_tree("entrypoints/llm.py"), "LLM")
    assert "RLOfflineMixin" in [ast.unparse(b) for b in llm.bases]
    worker = _vllm_tree("v1/worker/gpu_worker.py")
    assert _params(worker, "Worker", "init_weight_transfer_engine") == ["self", "init_info"]
    assert _params(worker, "Worker", "update_weights") == ["self", "update_info"]
    common = _vllm_tree("distributed/weight_transfer/nccl_common.py")
    assert _params(common, None, "trainer_init") == ["init_info", "rank"]
    pynccl = _vllm_tree("distributed/device_communicators/pynccl.py")
    assert _params(pynccl, "PyNcclCommunicator", "broadcast") == ["self", "tensor", "src", "stream"]


# -- a push against a fake engine and a fake NCCL group ---------------------------------------


class FakeGroup:
    """A broadcast returns only once the receiver took the tensor, as NCCL's does."""

    def __init__(self):
        self.wire: queue.Queue = queue.Queue()
        self.sent: list[torch.Tensor] = []
        self.destroyed = False

    def broadcast(self, tensor: torch.Tensor, src: int, stream=None) -> None:
        assert src == 0 and tensor.is_contiguous()
        done = threading.Event()
        self.wire.put((tensor.clone(), done))
        if not done.wait(TIMEOUT):
            raise TimeoutError("broadcast: no receiver (update_weights not running alongside)")
        self.sent.append(tensor)

    def destroy(self) -> None:
        self.destroyed = True


class FakeEngine:
    """vLLM's side: `update_weights` receives the bucket's tensors in metadata order."""

    def __init__(self, group: FakeGroup, fail_after: int | None = None):
        self.group, self.fail_after = group, fail_after
        self.calls: list[str] = []
        self.infos: list[dict] = []
        self.loaded: dict[str, torch.Tensor] = {}
        self.active = False

    def start_weight_update(self) -> None:
        assert not self.active
        self.active = True
        self.calls.append("start")

    def update_weights(self, request: dict) -> None:
        assert self.active and set(request) == {"update_info"}
        info = request["update_info"]
        self.calls.append("update")
        self.infos.append(info)
        for name, dtype_name, shape in zip(info["names"], info["dtype_names"], info["shapes"], strict=True):
            try:
                tensor, done = self.group.wire.get(timeout=TIMEOUT)
            except queue.Empty:
                raise TimeoutError(f"update_weights: {name} never broadcast") from None
            assert tensor.dtype == getattr(torch, dtype_name) and list(tensor.shape) == shape, name
            self.loaded[name] = tensor
            done.set()
        if self.fail_after is not None and len(self.infos) > self.fail_after:
            raise RuntimeError("worker failed to load")

    def finish_weight_update(self, weight_version=None) -> None:
        assert self.active
        self.active = False
        self.calls.append("finish")


def _state() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [("model.embed_tokens.weight", torch.randn(8, 4, generator=g)),
            ("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 4, generator=g).t()),  # a strided view
            ("model.layers.0.mlp.up_proj.weight", torch.randn(6, 4, generator=g).to(torch.bfloat16)),
            ("model.layers.1.self_attn.q_proj.weight", torch.randn(4, 4, generator=g)),
            ("model.layers.1.mlp.up_proj.weight", torch.randn(6, 4, generator=g)),
            ("model.norm.weight", torch.randn(4, generator=g)),
            ("lm_head.weight", torch.randn(8, 4, generator=g))]


@pytest.mark.parametrize(("bucket_bytes", "buckets"), [(0, 5), (1 << 30, 1)])
def test_push_sends_each_bucket_with_its_metadata_in_order(bucket_bytes, buckets):
    group = FakeGroup()
    engine = FakeEngine(group)
    transport = NcclWeightTransport(engine, group, torch.device("cpu"), bucket_bytes=bucket_bytes)
    state = _state()
    stats = transport.push(iter(state))
    assert engine.calls == ["start"] + ["update"] * buckets + ["finish"]
    assert stats.num_buckets == buckets and stats.num_tensors == len(state)
    assert stats.bytes == sum(t.numel() * t.element_size() for _, t in state)
    assert 0 < stats.peak_bytes <= stats.bytes and stats.seconds > 0
    assert [n for info in engine.infos for n in info["names"]] == [n for n, _ in state]
    assert len(group.sent) == len(state)
    for (name, want), got in zip(state, group.sent, strict=True):
        assert torch.equal(got, want) and torch.equal(engine.loaded[name], want)
    if buckets == 5:  # whole layers per bucket: layer 0's two tensors travel together
        assert engine.infos[1]["names"] == [state[1][0], state[2][0]]
    transport.close()
    assert group.destroyed
    transport.close()  # idempotent


def test_a_worker_error_stops_the_push_before_finish():
    group = FakeGroup()
    engine = FakeEngine(group, fail_after=1)
    transport = NcclWeightTransport(engine, group, torch.device("cpu"), bucket_bytes=0)
    with pytest.raises(RuntimeError, match="worker failed to load"):
        transport.push(iter(_state()))
    assert engine.calls == ["start", "update", "update"]  # no finish: the reload stays open
    transport.close()


def test_push_refuses_duplicate_names_and_non_tensors():
    group = FakeGroup()
    transport = NcclWeightTransport(FakeEngine(group), group, torch.device("cpu"))
    with pytest.raises(ValueError, match="given twice"):
        transport.push([("a", torch.zeros(1)), ("a", torch.zeros(1))])
    with pytest.raises(TypeError, match="not a torch.Tensor"):
        NcclWeightTransport(FakeEngine(group), group, "cpu").push([("a", [1.0])])
    with pytest.raises(ValueError, match="bucket_bytes"):
        NcclWeightTransport(FakeEngine(group), group, "cpu", bucket_bytes=-1)


def test_connect_needs_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="needs CUDA"):
        NcclWeightTransport.connect(object(), 1)


# -- VLLMSampler picks it when sampler.gpus is set -------------------------------------------


class _FakeLLM:
    built: list[dict] = []
    instances: list[_FakeLLM] = []

    def __init__(self, **kwargs):
        _FakeLLM.built.append(kwargs)
        _FakeLLM.instances.append(self)
        self.shutdowns = 0
        core = types.SimpleNamespace(shutdown=self._shutdown)
        self.llm_engine = types.SimpleNamespace(engine_core=core)

    def _shutdown(self):
        self.shutdowns += 1


@pytest.fixture
def fake_vllm(monkeypatch, tmp_path):
    """`vllm` replaced by a module whose LLM records its arguments (no engine, no vLLM import)."""
    module = types.ModuleType("vllm")
    module.LLM = _FakeLLM
    module.envs = types.SimpleNamespace(disable_envs_cache=lambda: None)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "auto")  # tp=2 here must not need 2 free cores
    _FakeLLM.built.clear()
    _FakeLLM.instances.clear()
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def test_sampler_with_gpus_builds_the_engine_on_them_and_connects_over_nccl(fake_vllm, monkeypatch):
    from engine.sampler.vllm_engine import VLLMSampler

    connected = []

    class FakeTransport:
        name = "nccl"

        def __init__(self):
            self.closed = False

        def close(self):
            self.closed = True

    def connect(llm, num_workers, bucket_bytes):
        connected.append((llm, num_workers, bucket_bytes))
        return FakeTransport()

    monkeypatch.setattr(nccl_transfer.NcclWeightTransport, "connect", staticmethod(connect))
    cfg = SamplerConfig(gpus=[2, 3], tp=2, bucket_mib=1.0, quiet_wait_ms=None)
    sampler = VLLMSampler.from_config(cfg, model=str(fake_vllm), seed=0)
    kwargs = _FakeLLM.built[-1]
    assert kwargs["weight_transfer_config"] == {"backend": "nccl"} and kwargs["device_ids"] == [2, 3]
    assert kwargs["tensor_parallel_size"] == 2 and kwargs["enable_sleep_mode"] is False
    assert connected == [(sampler._llm, 2, 1 << 20)] and sampler.transport_name == "nccl"
    transport, llm = sampler._transport, sampler._llm
    sampler.close()
    assert transport.closed and llm.shutdowns == 1


def test_sampler_without_gpus_keeps_the_colocated_transport(fake_vllm):
    from engine.sampler.vllm_engine import VLLMSampler

    sampler = VLLMSampler.from_config(SamplerConfig(quiet_wait_ms=None), model=str(fake_vllm), seed=0)
    kwargs = _FakeLLM.built[-1]
    assert "weight_transfer_config" not in kwargs and "device_ids" not in kwargs
    assert sampler.transport_name == "shm_file"
    sampler.close()


def test_a_failed_handshake_shuts_the_engine_down(fake_vllm, monkeypatch):
    from engine.sampler.vllm_engine import VLLMSampler

    def connect(llm, num_workers, bucket_bytes):
        raise RuntimeError("rendezvous timed out")

    monkeypatch.setattr(nccl_transfer.NcclWeightTransport, "connect", staticmethod(connect))
    with pytest.raises(RuntimeError, match="rendezvous timed out"):
        VLLMSampler.from_config(SamplerConfig(gpus=[1]), model=str(fake_vllm), seed=0)
    assert _FakeLLM.built[-1]["device_ids"] == [1] and _FakeLLM.instances[-1].shutdowns == 1
