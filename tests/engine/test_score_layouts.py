"""`semionline score` at a pipelined layout, as the user runs it: 4 torchrun ranks (tp 2 x pp 2)
give the same per-token log-probs as one process (tp = pp = 1)."""

import json
import subprocess
import sys

import pytest

PAIRS = [
    {
        "prompt": "Q: Ann has 3 apples. She buys 4 more. How many apples does Ann have?\nA:",
        "response": " 3+4=7. The answer is 7.",
    },
    {
        "prompt": "Q: Tom has 9 pens. He gives away 2. How many pens does Tom have?\nA:",
        "response": " 9-2=6. The answer is 6.",
    },
    {"prompt": "Q: 5 boxes hold 3 coins each. How many coins?\nA:", "response": " 15"},
]


def _score(seed_model, data, out, *layout, nproc=0):
    head = (
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc)]
        if nproc
        else [sys.executable]
    )
    cmd = [
        *head,
        "-m",
        "engine.cli",
        "score",
        "--model",
        str(seed_model),
        "--data",
        str(data),
        "--out",
        str(out),
        "--batch-size",
        "2",
        *map(str, layout),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(x) for x in out.read_text().splitlines()]


@pytest.mark.slow
def test_score_tp2_pp2_equals_single_process(seed_model, tmp_path):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in PAIRS))
    one = _score(seed_model, data, tmp_path / "one.jsonl")
    four = _score(seed_model, data, tmp_path / "four.jsonl", "--tp", 2, "--pp", 2, nproc=4)
    assert [r["prompt"] for r in four] == [p["prompt"] for p in PAIRS]
    for a, b in zip(one, four):
        assert len(a["token_logprobs"]) == len(b["token_logprobs"]) > 0
        assert all(
            abs(x - y) <= 1e-5 * max(1.0, abs(x)) for x, y in zip(a["token_logprobs"], b["token_logprobs"])
        )
