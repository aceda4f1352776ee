"""The vLLM general plugin that turns vLLM's spinning waits into blocking ones (engine/sampler/vllm_plugin.py),
and the CPU core binding of a TP > 1 sampler.

The end-to-end check (the engine's processes are idle after a request) is in test_vllm_engine.py;
here: the plugin is registered, does nothing unless asked, and its wait wakes on a real
notification from vLLM's own SpinCondition writer.
"""

import threading
import time
from importlib.metadata import entry_points

import pytest

from engine.sampler import vllm_plugin


@pytest.fixture
def spin_condition(monkeypatch):
    from vllm.distributed.device_communicators import shm_broadcast

    cls = shm_broadcast.SpinCondition
    # vLLM's own wait (a sampler started earlier in this process may have patched the class:
    # vLLM loads plugins in the caller's process too); whatever was there is restored after.
    monkeypatch.setattr(cls, "wait", getattr(cls.wait, "_vllm_wait", cls.wait))
    return cls


def test_entry_point_is_installed():
    names = {ep.name: ep.value for ep in entry_points(group="vllm.general_plugins")}
    assert names.get("semionline_quiet_wait") == "engine.sampler.vllm_plugin:register"


def test_unset_changes_nothing(spin_condition, monkeypatch):
    monkeypatch.delenv(vllm_plugin.ENV, raising=False)
    original = spin_condition.wait
    vllm_plugin.register()
    assert spin_condition.wait is original


@pytest.mark.parametrize("value", ["-3", "0.5"])
def test_bad_value_is_a_clear_error(spin_condition, monkeypatch, value):
    monkeypatch.setenv(vllm_plugin.ENV, value)  # below 1 ms zmq's poll would not block at all
    with pytest.raises(ValueError, match=vllm_plugin.ENV):
        vllm_plugin.register()


def test_flag_switches_between_quiet_and_vllm_wait(spin_condition, monkeypatch, tmp_path):
    path = vllm_plugin.make_flag(str(tmp_path))
    flag = vllm_plugin.open_flag(path)
    calls = []
    monkeypatch.setattr(spin_condition, "wait", lambda self, timeout_ms=None: calls.append("vllm"))
    monkeypatch.setenv(vllm_plugin.ENV, "5")
    monkeypatch.setenv(vllm_plugin.FLAG_ENV, path)
    vllm_plugin.register()

    class Reader:  # the attributes the quiet wait uses
        is_reader = True

        def __init__(self):
            import zmq

            self.ctx = zmq.Context()
            self.local_notify_socket = self.ctx.socket(zmq.SUB)
            self.poller = zmq.Poller()
            self.poller.register(self.local_notify_socket, zmq.POLLIN)

    reader = Reader()
    try:
        spin_condition.wait(reader, timeout_ms=None)  # flag 0: vLLM's wait
        assert calls == ["vllm"]
        flag[0] = 1
        t0 = time.perf_counter()
        spin_condition.wait(reader, timeout_ms=None)  # quiet: blocks for the 5 ms bound
        assert calls == ["vllm"] and time.perf_counter() - t0 >= 0.004
        flag[0] = 0
        spin_condition.wait(reader, timeout_ms=None)
        assert calls == ["vllm", "vllm"]
    finally:
        reader.ctx.destroy(linger=0)
        flag.close()


def test_quiet_wait_blocks_until_notified(spin_condition, monkeypatch):
    import zmq
    from vllm.utils.network_utils import get_open_zmq_ipc_path

    monkeypatch.setenv(vllm_plugin.ENV, "2000")
    monkeypatch.delenv(vllm_plugin.FLAG_ENV, raising=False)  # no flag file: always quiet
    vllm_plugin.register()
    vllm_plugin.register()  # vLLM may load plugins more than once per process
    assert getattr(spin_condition.wait, "_semionline_quiet", False)

    ctx = zmq.Context()
    address = get_open_zmq_ipc_path()
    writer = spin_condition(is_reader=False, context=ctx, notify_address=address)
    reader = spin_condition(is_reader=True, context=ctx, notify_address=address)
    reader.record_read()  # vLLM's own wait would now spin on sched_yield and return at once
    try:
        time.sleep(0.2)  # let the subscription connect
        t0 = time.perf_counter()
        reader.wait(timeout_ms=50)  # nothing written: blocks until the timeout
        waited = time.perf_counter() - t0
        assert 0.04 < waited < 1.0

        threading.Timer(0.1, writer.notify).start()
        t0 = time.perf_counter()
        reader.wait()  # woken by the notification, long before the 2 s bound
        assert 0.05 < time.perf_counter() - t0 < 1.0
    finally:
        ctx.destroy(linger=0)


def test_cpu_bind_lists_give_each_sampler_worker_its_cores():
    from engine.sampler.vllm_engine import cpu_bind_lists

    assert cpu_bind_lists(1, [0, 1]) == "0-1"
    assert cpu_bind_lists(2, [0, 1]) == "0|1"
    assert cpu_bind_lists(2, [0, 1, 2, 3, 4]) == "0-2|3-4"
    with pytest.raises(ValueError, match="tp=3 CPU workers need 3 cores"):
        cpu_bind_lists(3, [0, 1])


@pytest.mark.parametrize(("cores", "tp", "want"), [("all", 1, "0-1"), ("auto", 1, "0-1"), ("vllm", 1, None),
                                                   ("vllm", 2, "0|1"), ("all", 2, "0|1")])
def test_the_workers_take_every_core_unless_told_to_keep_vllms_binding(cores, tp, want, monkeypatch):
    """sampler.cpu_cores: the environment the engine is built with (read by vLLM's CPU worker)."""
    from engine.config import SamplerConfig
    from engine.sampler.vllm_engine import VLLMSampler

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1})
    sampler = VLLMSampler.__new__(VLLMSampler)
    sampler.cfg, sampler._quiet_path = SamplerConfig(cpu_cores=cores, tp=tp), None
    assert sampler._engine_env(None).get("VLLM_CPU_OMP_THREADS_BIND") == want
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "1")  # the user's own binding wins
    assert "VLLM_CPU_OMP_THREADS_BIND" not in sampler._engine_env(None)


def test_a_run_keeps_vllms_binding_only_when_generation_overlaps_training():
    from engine.config import RunConfig

    assert RunConfig(model="m").sampler_cpu_cores == "all"
    assert RunConfig(model="m", overlap=True, sync_every=2).sampler_cpu_cores == "vllm"
    assert RunConfig(model="m", overlap=True, sync_every=2, sampler={"cpu_cores": "all"}).sampler_cpu_cores == "all"
