"""A real pretrained instruct model end to end (SmolLM2-135M-Instruct: a Llama with a BPE tokenizer,
a chat template and tied embeddings), on GSM8K prompts under the chat template with the paper's
\\boxed{} instruction:

- the learner's log-probs equal transformers' (fp32) on chat-templated prompts and gold answers;
- two GRPO steps of `configs/real/smollm2_gsm8k_grpo.yaml` run through the CLI: vLLM's sample
  log-probs equal the learner's (the run's parity check, logged as sync/logprob_gap), and the
  rollout log holds exactly the ids of `tokenizer.apply_chat_template`;
- `semionline generate` takes prompt-only rows with --chat-template.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
INSTRUCTION = "{prompt}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


def _rows(n: int) -> list[dict]:
    lines = (REPO / "data" / "gsm8k" / "train.jsonl").read_text().splitlines()[:n]
    return [json.loads(line) for line in lines]


def _chat_ids(tok, question: str) -> list[int]:
    ids = tok.apply_chat_template([{"role": "user", "content": INSTRUCTION.format(prompt=question)}],
                                  add_generation_prompt=True, tokenize=True, return_dict=False)
    return list(ids["input_ids"] if isinstance(ids, dict) else ids)


def test_learner_logprobs_equal_transformers_on_chat_prompts(smollm2_dir):
    from transformers import AutoModelForCausalLM

    from engine.data.encoding import chat_response_ids, stop_token_ids
    from engine.data.tokenizer import load_tokenizer
    from engine.learner.learner import score_sequences
    from engine.learner.passes import PipelinedModel
    from engine.model.hf_io import load_model
    from engine.parallel.mesh import Mesh

    tok = load_tokenizer(smollm2_dir)
    stop = stop_token_ids(smollm2_dir, tok)
    seqs = []
    for row in _rows(3):
        prompt = _chat_ids(tok, row["question"])
        turns = [{"role": "user", "content": INSTRUCTION.format(prompt=row["question"])}]
        seqs.append((prompt, chat_response_ids(tok, turns, prompt, row["answer"], stop)))
    mesh = Mesh.init(tp_size=1, pp_size=1)
    try:
        import contextlib

        passes = PipelinedModel(load_model(str(smollm2_dir), mesh).eval(), impl="torch", autocast=contextlib.nullcontext)
        ours = score_sequences(passes, seqs, micro_batch_size=3)
    finally:
        mesh.destroy()
    hf = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    worst = 0.0
    for (prompt, response), lp in zip(seqs, ours, strict=True):
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = hf(ids).logits[0, len(prompt) - 1 : -1].float()
        ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(response)[:, None])[:, 0]
        worst = max(worst, float((lp - ref).abs().max()))
    print(f"learner vs transformers, max |gap| {worst:.2e}")
    assert worst <= 1e-4, worst  # measured 1.7e-5 (30 layers of fp32, two implementations)


@pytest.mark.slow
def test_two_grpo_steps_with_the_chat_template(smollm2_dir, tmp_path):
    from engine.data.tokenizer import load_tokenizer

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "engine.cli", "train", "--config", "configs/real/smollm2_gsm8k_grpo.yaml",
           "--run-dir", str(run), f"model={smollm2_dir}", "steps=2", "log.rollouts=1", "eval.every=0",
           "eval.max_prompts=2", "eval.max_tokens=16", "rollout.max_tokens=48"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in rows if r["step"] > 0}
    gaps = [r["sync/logprob_gap"] for r in rows if "sync/logprob_gap" in r]
    assert gaps and max(gaps) <= 1e-3, gaps  # vLLM's sample log-probs vs the learner's, after every sync
    assert steps[2]["parity/batch_tokens"] > 0  # step 2's batch was checked token by token
    tok = load_tokenizer(smollm2_dir)
    by_question = {r["question"]: r for r in _rows(7473)}
    logged = [json.loads(x) for x in (run / "rollouts" / "step_000001.jsonl").read_text().splitlines()]
    assert len(logged) == 2 * 4
    for entry in logged:
        question = entry["prompt"].split("<|im_start|>user\n", 1)[1].split("\nPlease reason", 1)[0]
        assert entry["prompt_ids"] == _chat_ids(tok, by_question[question]["question"])
        assert entry["response_ids"] and len(entry["behaviour_logprobs"]) == len(entry["response_ids"])
        assert entry["version"] == 0 and entry["task"] == "default"


@pytest.mark.slow
def test_generate_prompt_only_rows_with_the_chat_template(smollm2_dir, tmp_path):
    from engine.data.tokenizer import load_tokenizer

    data = tmp_path / "prompts.jsonl"
    data.write_text(json.dumps({"question": "What is 2 + 3?"}) + "\n")
    out = tmp_path / "samples.jsonl"
    cmd = [sys.executable, "-m", "engine.cli", "generate", "--model", str(smollm2_dir), "--data", str(data),
           "--chat-template", "--prompt-template", INSTRUCTION, "--n", "2", "--max-tokens", "8", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["prompt_token_ids"] == _chat_ids(load_tokenizer(smollm2_dir), "What is 2 + 3?")
    assert len(row["samples"]) == 2 and all(len(s["token_logprobs"]) == len(s["token_ids"]) for s in row["samples"])
