"""The JSON record a printing bench writes (`--json`), and the CUDA-only tile sweep's refusal on CPU."""

import json

import pytest
import torch

from engine.bench.stamp import RecordedOutput


def test_the_record_holds_what_was_printed_with_the_stamp_and_command(tmp_path, capsys):
    path = tmp_path / "out.json"
    with RecordedOutput(path, "semionline bench x --json out.json"):
        print("rows/s: 2981")
        print("timeouts: 0")
    record = json.loads(path.read_text())
    assert record["output"] == ["rows/s: 2981", "timeouts: 0"] and record["completed"]
    assert record["command"] == "semionline bench x --json out.json"
    assert record["machine"]["cores"] >= 1 and record["machine"]["matmul_fp32_gflops"] > 0
    assert capsys.readouterr().out == "rows/s: 2981\ntimeouts: 0\n"  # still printed
    assert not (tmp_path / "out.json.tmp").exists()


def test_a_failed_bench_is_recorded_as_incomplete_and_without_a_path_nothing_is_written(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(RuntimeError), RecordedOutput(path, "bench"):
        print("half")
        raise RuntimeError("boom")
    record = json.loads(path.read_text())
    assert record["output"] == ["half"] and not record["completed"]
    with RecordedOutput(None, "bench"):
        print("nothing recorded")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_the_tile_sweep_needs_cuda(capsys):
    from engine.bench.logprob_tune import main

    assert main([]) == 2
    assert "needs a CUDA device" in capsys.readouterr().err
