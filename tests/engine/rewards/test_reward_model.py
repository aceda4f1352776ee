"""Reward-model scoring against a plain transformers forward, and the demo reward-model trainer."""

import json
import random

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, LlamaForSequenceClassification

from engine.data.tokenizer import save_tokenizer
from engine.demo.chat import chat_prompts, note_quality, sample_response
from engine.demo.rm_train import CHAT_TEMPLATE, corrupt, make_pairs, rm_config, train_reward_model
from engine.rewards.reward_model import RewardModel, RewardModelError


def _save_rm(path, chat_template: bool, num_labels: int = 1):
    torch.manual_seed(0)
    cfg = rm_config(hidden=64, layers=1)
    cfg.num_labels = num_labels
    LlamaForSequenceClassification(cfg).save_pretrained(path)
    save_tokenizer(path)
    if chat_template:
        tc = json.loads((path / "tokenizer_config.json").read_text())
        tc["chat_template"] = CHAT_TEMPLATE
        (path / "tokenizer_config.json").write_text(json.dumps(tc))
    return path


def _direct(path, ids):
    model = AutoModelForSequenceClassification.from_pretrained(path).eval()
    with torch.no_grad():
        return float(model(input_ids=torch.tensor([ids])).logits[0, 0])


@pytest.mark.parametrize("chat_template", [True, False])
def test_scores_match_unpadded_forward(tmp_path, chat_template):
    path = _save_rm(tmp_path / "rm", chat_template)
    rm = RewardModel(path, batch_size=3)
    tok = AutoTokenizer.from_pretrained(path)
    rows = chat_prompts(5, split="rl")
    rng = random.Random(0)
    prompts = [r.prompt for r in rows]
    responses = [sample_response(r, rng) for r in rows]
    scores = rm.score(prompts, responses)  # batched, sorted by length, right-padded
    for p, r, s in zip(prompts, responses, scores, strict=True):
        ids = rm.encode(p, r)
        if chat_template:  # BOS + prompt + response + EOS, as the template says
            assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
            assert tok.decode(ids[1:-1]) == p + r
        else:
            assert tok.decode(ids, skip_special_tokens=True) == p + r
        assert s == pytest.approx(_direct(path, ids), abs=1e-5)
    assert RewardModel(path, batch_size=1).score(prompts, responses) == pytest.approx(scores, abs=1e-5)


def test_truncation_keeps_the_response_end(tmp_path):
    path = _save_rm(tmp_path / "rm", chat_template=True)
    rm = RewardModel(path, max_length=20)
    ids = rm.encode("Q: a very long prompt that will not fit in twenty tokens\nA:", " fine.")
    full = RewardModel(path).encode("Q: a very long prompt that will not fit in twenty tokens\nA:", " fine.")
    assert len(ids) == 20 and ids == full[-20:]


def test_bad_directories_are_clear_errors(tmp_path):
    with pytest.raises(RewardModelError, match="no config.json"):
        RewardModel(tmp_path)
    path = _save_rm(tmp_path / "two", chat_template=False, num_labels=2)
    with pytest.raises(RewardModelError, match="num_labels=2"):
        RewardModel(path)


def test_pairs_are_ranked_by_the_hidden_rule():
    rows = chat_prompts(200, split="rl")
    pairs = make_pairs(rows, random.Random(0))
    assert len(pairs) > 150
    by_prompt = {r.prompt: r for r in rows}
    for prompt, chosen, rejected in pairs:
        row = by_prompt[prompt]
        assert note_quality(row, chosen) > note_quality(row, rejected)
    corrupted = [corrupt(" Hi Ann! Your shells are lovely. Thank you.", random.Random(i)) for i in range(20)]
    row = chat_prompts(1, split="rl")[0]
    assert all(note_quality(row, c) == -4.0 for c in corrupted if c.strip() != "")


def test_trained_reward_model_ranks_held_out_pairs(tmp_path):
    report = train_reward_model(tmp_path / "rm", steps=60, pairs_per_step=16, n_heldout_pairs=200, progress=False)
    assert report.heldout_pair_accuracy > 0.7, report
    rm = RewardModel(tmp_path / "rm")  # loads like a downloaded reward model
    row = chat_prompts(1, split="heldout")[0]
    name, obj = row.meta["name"], row.meta["obj"]
    good, bad = f" Hi {name}! Your {obj} are lovely. Thank you.", " Hey. The answer is 4."
    s_good, s_bad = rm.score([row.prompt] * 2, [good, bad])
    assert s_good > s_bad


def test_token_budget_batches(tmp_path):
    rm = RewardModel(_save_rm(tmp_path / "rm", chat_template=False), batch_size=4, max_batch_tokens=100)
    lengths = [10, 50, 20, 20, 120, 30, 10, 10]
    batches = rm.batches(lengths)
    assert sorted(i for b in batches for i in b) == list(range(8))
    for b in batches:  # sorted by length, within both caps (an over-long sequence alone)
        assert len(b) <= 4 and (len(b) * max(lengths[i] for i in b) <= 100 or len(b) == 1)
    assert batches == [[0, 6, 7, 2], [3, 5], [1], [4]]


def test_bfloat16_scores_track_float32(tmp_path):
    path = _save_rm(tmp_path / "rm", chat_template=True)
    rows = chat_prompts(6, split="rl")
    rng = random.Random(1)
    prompts, responses = [r.prompt for r in rows], [sample_response(r, rng) for r in rows]
    fp32 = RewardModel(path).score(prompts, responses)
    bf16 = RewardModel(path, dtype="bfloat16", device="cpu", max_batch_tokens=64)
    assert bf16.model.dtype == torch.bfloat16
    assert bf16.score(prompts, responses) == pytest.approx(fp32, abs=3e-3)  # measured max |diff| 1.3e-3
    with pytest.raises(RewardModelError, match="dtype 'fp8'"):
        RewardModel(path, dtype="fp8")


CUSTOM_HEAD = '''
from transformers import LlamaForSequenceClassification


class ShiftedRM(LlamaForSequenceClassification):
    """A custom head: the plain score + 100, so a test can tell that this code ran."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits + 100.0
        return out
'''


def test_custom_code_needs_the_explicit_opt_in(tmp_path):
    path = _save_rm(tmp_path / "rm", chat_template=False)
    plain = RewardModel(path).score(["Q: hi\nA:"], [" hello"])[0]
    (path / "custom_rm.py").write_text(CUSTOM_HEAD)
    cfg = json.loads((path / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForSequenceClassification": "custom_rm.ShiftedRM"}
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RewardModelError, match="needs trust_remote_code: true"):
        RewardModel(path)
    custom = RewardModel(path, trust_remote_code=True).score(["Q: hi\nA:"], [" hello"])[0]
    assert custom == pytest.approx(plain + 100.0, abs=1e-4)
