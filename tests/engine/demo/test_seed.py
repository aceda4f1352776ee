"""The seed builder end to end with a handful of steps: the directory it writes loads in
transformers unchanged, holds the data files, and the greedy evaluation it reports is sound."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from engine.data.prompts import load_prompts
from engine.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, encode_example, encode_prompt
from engine.demo.seed import (
    SeedModelConfig,
    _collate,
    answer_is_correct,
    build_seed,
    greedy_responses,
    mixed_responses,
    response_loss,
    shows_work,
)
from engine.demo.synthetic import sft_problems


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("seed") / "model"
    report = build_seed(out, steps=3, mix_steps=2, batch_size=4, n_rl_prompts=40, n_heldout=8, progress=False)
    return out, report


def test_directory_loads_in_transformers(seed_dir):
    out, report = seed_dir
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.head_dim == 64 and cfg.hidden_size // cfg.num_attention_heads == 64
    assert cfg.vocab_size % 64 == 0 and len(tok) == cfg.vocab_size
    assert not cfg.tie_word_embeddings
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (BOS_ID, EOS_ID, PAD_ID)
    assert model.dtype == torch.float32
    assert (out / "model.safetensors").exists()
    assert report.params == sum(p.numel() for p in model.parameters())
    assert 2_000_000 < report.params < 5_000_000
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dir left


def test_data_files_and_report(seed_dir):
    out, report = seed_dir
    train = load_prompts(out / "data" / "train.jsonl")
    heldout = load_prompts(out / "data" / "heldout.jsonl")
    assert (len(train), len(heldout)) == (40, 8)
    assert {r.prompt for r in train}.isdisjoint(r.prompt for r in heldout)
    first = json.loads((out / "data" / "heldout.jsonl").read_text().splitlines()[0])
    assert set(first) == {"prompt", "answer"} and first["prompt"].endswith("\nA:") and first["answer"].isdigit()
    saved = json.loads((out / "seed_report.json").read_text())
    assert saved["steps"] == 3 and saved["mix_steps"] == 2 and saved["heldout_prompts"] == 8
    assert 0.0 <= saved["heldout_worked_fraction"] <= 1.0 and 0.0 <= saved["heldout_accuracy"] <= 1.0
    assert saved["model"] == SeedModelConfig().__dict__ and saved["seconds"] > 0


def test_batched_greedy_matches_one_prompt_at_a_time(seed_dir):
    out, _ = seed_dir
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tok = AutoTokenizer.from_pretrained(out)
    prompts = [r.prompt for r in load_prompts(out / "data" / "heldout.jsonl")][:4] + ["Q: 2+2?\nA:"]
    batched = greedy_responses(model, tok, prompts, max_new_tokens=12)
    single = [greedy_responses(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert batched == single  # left padding does not change a greedy answer


def test_loss_covers_response_and_eos_only(seed_dir):
    out, _ = seed_dir
    tok = AutoTokenizer.from_pretrained(out)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(SeedModelConfig(num_layers=1).to_hf()).eval()
    examples = [encode_example(tok, "Q: 1+1?\nA:", " 2."), encode_example(tok, "Q: a longer one, 3*3?\nA:", " 9.")]
    ids, mask = _collate(examples)
    assert ids.shape[1] % 16 == 0 and ids[0, len(examples[0].input_ids)] == PAD_ID
    assert mask.sum() == 2 * (3 + 1)  # each row: 3 response tokens + EOS
    assert ids[0, 1:][mask[0]].tolist() == examples[0].input_ids[examples[0].prompt_len:]
    with torch.no_grad():
        loss = response_loss(model, ids, mask)
        padded = ids.clone()
        padded[0, len(examples[0].input_ids):] = 60  # whatever sits after EOS changes nothing
        assert torch.allclose(response_loss(model, padded, mask), loss)
        bf16 = response_loss(model, ids, mask, bf16=True)
        assert torch.allclose(bf16, loss, atol=0.05)


def test_answer_check():
    assert answer_is_correct(" 2+3=5. The answer is 5.", "5")
    assert not answer_is_correct(" 2+3=5. The answer is 6.", "5")
    assert answer_is_correct(" The answer is 4. The answer is 5.", "5")  # the last one counts
    assert not answer_is_correct(" 2+3=5.", "5")


def test_prompt_encoding_of_saved_tokenizer_matches_training(seed_dir):
    out, _ = seed_dir
    tok = AutoTokenizer.from_pretrained(out)
    row = load_prompts(out / "data" / "train.jsonl")[0]
    assert encode_prompt(tok, row.prompt) == tok(row.prompt)["input_ids"]  # what vLLM sees for text


def test_phase_two_mixes_bare_answers_into_worked_solutions():
    problems = sft_problems(400, seed=0)
    responses = mixed_responses(problems, 0.5, seed=0)
    direct = [r for r in responses if not shows_work(r)]
    assert 0.4 < len(direct) / len(problems) < 0.6
    for p, r in zip(problems, responses, strict=True):  # both kinds keep the right final answer
        assert r in (p.solution, f" The answer is {p.answer}.") and answer_is_correct(r, p.answer)
    assert all(shows_work(r) for r in mixed_responses(problems, 0.0, seed=0))
    assert mixed_responses(problems, 0.5, seed=0) == responses  # deterministic
    assert not shows_work(" The answer is 12.") and shows_work(" 3*7=21. 21+7=28. The answer is 28.")
