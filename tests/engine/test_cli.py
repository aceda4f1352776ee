"""The command line as a user runs it: score at TP=1 and TP=2 (torchrun), generate's output
format, and one clear error (exit status 2, no traceback) for each kind of bad input."""

import json
import shutil
import subprocess
import sys

import pytest

PAIRS = [
    {"prompt": "Q: Ann has 3 apples. She buys 4 more. How many apples does Ann have?\nA:", "response": " 3+4=7. The answer is 7."},
    {"prompt": "Q: Tom has 9 pens. He gives away 2. How many pens does Tom have?\nA:", "response": " 9-2=6. The answer is 6."},
    {"prompt": "Q: 5 boxes hold 3 coins each. How many coins?\nA:", "response": " 15"},
]


def _cli(*args, torchrun: int = 0, timeout: int = 300):
    head = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(torchrun)] if torchrun else [sys.executable]
    return subprocess.run([*head, "-m", "engine.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_tp1_equals_tp2(seed_model, tmp_path):
    data = _jsonl(tmp_path / "pairs.jsonl", PAIRS)
    one = _cli("score", "--model", seed_model, "--data", data, "--out", tmp_path / "tp1.jsonl")
    assert one.returncode == 0, one.stderr[-2000:]
    two = _cli("score", "--model", seed_model, "--data", data, "--out", tmp_path / "tp2.jsonl", "--tp", 2, torchrun=2)
    assert two.returncode == 0, two.stderr[-2000:]
    rows1 = [json.loads(x) for x in (tmp_path / "tp1.jsonl").read_text().splitlines()]
    rows2 = [json.loads(x) for x in (tmp_path / "tp2.jsonl").read_text().splitlines()]
    assert len(rows1) == len(rows2) == len(PAIRS)
    for a, b in zip(rows1, rows2):
        assert len(a["token_logprobs"]) == len(b["token_logprobs"]) > 0
        assert a["logprob_sum"] == pytest.approx(sum(a["token_logprobs"]), rel=1e-6)
        assert all(abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a["token_logprobs"], b["token_logprobs"]))


@pytest.mark.slow
def test_generate_output_format(seed_model, tmp_path):
    data = _jsonl(tmp_path / "p.jsonl", [{"prompt": p["prompt"], "answer": "7"} for p in PAIRS[:2]])
    res = _cli("generate", "--model", seed_model, "--data", data, "--n", 3, "--max-tokens", 24, "--out", tmp_path / "g.jsonl")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "g.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in PAIRS[:2]]
    for r in rows:
        assert isinstance(r["prompt_token_ids"], list) and len(r["samples"]) == 3
        for s in r["samples"]:
            assert set(s) == {"text", "token_ids", "token_logprobs"}
            assert len(s["token_ids"]) == len(s["token_logprobs"]) > 0
            assert all(lp <= 0.0 for lp in s["token_logprobs"])


def _fails_with(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    for needle in needles:
        assert needle in res.stderr, res.stderr[-2000:]


def test_unknown_config_key_is_named(tmp_path):
    res = _cli("train", "--config", "configs/demo/grpo.yaml", "--run-dir", tmp_path / "r", "stepz=3")
    _fails_with(res, "unknown config key 'stepz'", "did you mean 'steps'")


def test_cuda_device_without_cuda_fails_before_anything_loads(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    res = _cli("train", "--config", "configs/demo/grpo.yaml", "--run-dir", tmp_path / "r", "learner.device=cuda")
    _fails_with(res, "learner.device=cuda", "torch.cuda.is_available() is False")
    assert not (tmp_path / "r").exists()  # nothing loaded, nothing written


def test_broken_data_row_names_file_and_line(seed_model, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "Q: 1+1?\\nA:", "answer": "2"}\n{"prompt": "Q: 2+2?\\nA:"}\n')
    res = _cli("train", "--config", "configs/demo/grpo.yaml", "--run-dir", tmp_path / "r", f"model={seed_model}",
               f"data.train={bad}", f"data.eval={seed_model}/data/heldout.jsonl")
    _fails_with(res, f"{bad}:2")


def test_model_dir_without_config_or_weights(seed_model, tmp_path):
    data = _jsonl(tmp_path / "pairs.jsonl", PAIRS[:1])
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails_with(_cli("score", "--model", empty, "--data", data, "--out", tmp_path / "o.jsonl"), "config.json")
    no_weights = tmp_path / "no_weights"
    shutil.copytree(seed_model, no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    _fails_with(_cli("score", "--model", no_weights, "--data", data, "--out", tmp_path / "o.jsonl"), "safetensors")


def test_prompt_the_tokenizer_cannot_encode(seed_model, tmp_path):
    data = _jsonl(tmp_path / "pairs.jsonl", [{"prompt": "Q: Zoë has 3 apples.\nA:", "response": " 3"}])
    _fails_with(_cli("score", "--model", seed_model, "--data", data, "--out", tmp_path / "o.jsonl"), "ë")


@pytest.mark.slow
def test_eval_scored_task_against_a_baseline(seed_model, tmp_path):
    """`semionline eval --reward ...`: mean score and win rates against the baseline model's
    responses, as JSON and a markdown table. The scorer here is the chat task's hidden rule (a
    callable reward); the model is its own baseline, so its notes score like the baseline's."""
    from engine.data.prompts import write_jsonl
    from engine.demo.chat import chat_prompts, heldout_size

    write_jsonl(tmp_path / "chat.jsonl", chat_prompts(heldout_size(), split="heldout"))
    args = ["eval", "--model", seed_model, "--data", tmp_path / "chat.jsonl", "--reward", "engine.demo.chat:gold_quality",
            "--max-tokens", 48, "--samples", 2, "--out", tmp_path / "e.json"]
    _fails_with(_cli(*args), "--baseline")
    res = _cli(*args, "--baseline", seed_model)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads((tmp_path / "e.json").read_text())
    assert out["prompts"] == heldout_size() and out["samples"] == 2 and out["failures"] == 0
    assert -4.0 <= out["mean_score"] <= 6.0 and -4.0 <= out["baseline_mean_score"] <= 6.0
    assert 0.2 <= out["win_rate"] <= 0.8 and 0.0 <= out["lc_win_rate"] <= 1.0
    assert "| win rate | LC win rate |" in res.stdout and f"| {seed_model} | {heldout_size()} | 2 |" in res.stdout
