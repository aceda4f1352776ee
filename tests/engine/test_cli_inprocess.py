"""`semionline` verbs called in-process (`engine.cli.main([...])`) with a sampler that needs no vLLM
(tests/scoring_sampler.py: FakeSampler's "Ans <d>" responses, log-probs from a model holding the
pushed weights): train and --resume, eval (math and scored), generate, score with a chat
template, fetch-model, sweep, bench, and the one-line errors (exit status 2).

    OMP_NUM_THREADS=1 .venv/bin/python -m pytest -q tests/engine/test_cli_inprocess.py
"""

import json
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from scoring_sampler import ScoringSampler

import engine.cli
from engine.cli import main
from engine.data.prompts import write_jsonl
from engine.data.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _restore_threads():
    """`train` sets torch's thread count for the run; give the test process its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture
def digits(seed_model, tmp_path):
    """Short prompts with one-digit answers (a sampled digit is right one time in ten)."""
    rows = [{"prompt": f"Q: {k} + 0?\nA:", "answer": str(k % 10)} for k in range(16)]
    write_jsonl(tmp_path / "train.jsonl", rows)
    write_jsonl(tmp_path / "eval.jsonl", rows[:4])
    return rows


@pytest.fixture
def samplers(monkeypatch):
    """Every VLLMSampler.from_config call (eval, generate, train) gets a ScoringSampler."""
    from engine.sampler.vllm_engine import VLLMSampler

    made = []

    def from_config(cfg, *, model, seed, dtype="float32", cpu_cores=None):
        s = ScoringSampler(load_tokenizer(model), model)
        s.model_dir, s.seed = str(model), seed
        made.append(s)
        return s

    monkeypatch.setattr(VLLMSampler, "from_config", staticmethod(from_config))
    return made


def _fails(capsys, argv, *needles):
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after any progress bars
    assert err.startswith(f"semionline {argv[0]}: error: "), err
    for needle in needles:
        assert needle in err, err
    return err


def _digit(text: str) -> str:
    return text.strip().rsplit(" ", 1)[-1]


# -- train ------------------------------------------------------------------------------------


def test_train_then_resume_in_process(seed_model, digits, samplers, tmp_path, monkeypatch, capsys):
    cfg = {"model": str(seed_model), "objective": "grpo", "steps": 2, "sync_every": 1, "learner": {"threads": 1},
           "rollout": {"prompts_per_step": 4, "samples_per_prompt": 8, "max_tokens": 6}, "optim": {"lr": 1e-3},
           "sampler": {"gap_probe_prompts": 2}, "checkpoint": {"every": 1},
           "eval": {"every": 0, "max_prompts": 4, "samples": 1, "max_tokens": 6},
           "tasks": {"digits": {"data": str(tmp_path / "train.jsonl"), "eval_data": str(tmp_path / "eval.jsonl"),
                                "reward": "fakes:digit_reward"}}}  # fmt: skip
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.chdir(tmp_path)  # no --run-dir: a new folder under ./runs
    assert main(["train", "--config", str(tmp_path / "run.yaml")]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    run_dir = Path(out["run_dir"])
    assert run_dir.parent == Path("runs") and run_dir.name.startswith("grpo-s1-")
    assert set(out["eval_accuracy"]) == {"0", "2"} or set(out["eval_accuracy"]) == {0, 2}
    assert len(samplers) == 1 and samplers[0].closed and len(samplers[0].pushes) == 2  # a sync after each step

    # --resume with more steps: continues from the step-2 checkpoint
    assert main(["train", "--resume", str(run_dir), "steps=3"]) == 0
    printed = capsys.readouterr().out
    assert "resuming" in printed and "step" in printed
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows]
    assert steps == sorted(steps) and set(steps) == {0, 1, 2, 3}  # step 3 added, nothing logged twice over
    resumed = samplers[1]
    # the resumed run's engine starts on the seed model and is given the step-2 weights: had it not
    # been, step 3's batch would fail the fp32 parity check (the run would raise)
    assert resumed.closed and len(resumed.pushes) >= 1
    assert all(r.get("sync/logprob_gap", 0.0) <= 1e-3 for r in rows)

    _fails(capsys, ["train", "--resume", run_dir, "--config", tmp_path / "run.yaml"], "drop --config / --run-dir")
    _fails(capsys, ["train", "--resume", tmp_path], "no config.yaml there")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    _fails(capsys, ["train", "--resume", fresh], "no checkpoint yet", "checkpoint.every=K")


# -- eval / generate --------------------------------------------------------------------------


def test_eval_math_counts_what_the_sampler_answered(seed_model, digits, samplers, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(ScoringSampler, "template", " #### {}")  # a final answer the math reward reads
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(seed_model), "--data", str(tmp_path / "train.jsonl"), "--samples", "4",
                 "--max-prompts", "10", "--max-tokens", "12", "--seed", "4", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["prompts"] == 10 and res["samples"] == 4 and res["model"] == str(seed_model)
    (sampler,) = samplers
    assert sampler.closed and sampler.seed == 4 and sampler.generates[0]["prompts"] == 10
    # pass@1 and maj@4 recomputed from the sampler's rule: sample j of prompt i answers digit(seed + i*n + j)
    seed, n = sampler.generates[0]["seed"], sampler.generates[0]["n"]
    answers = [[str(ScoringSampler.digit(seed + i * n + j)) for j in range(n)] for i in range(10)]
    gold = [d["answer"] for d in digits[:10]]
    want = sum(a.count(g) / n for a, g in zip(answers, gold)) / 10
    maj = sum(max(a, key=a.count) == g for a, g in zip(answers, gold)) / 10  # ties: the first sampled
    assert 0 < want < 1 and res["accuracy"] == pytest.approx(want) and res["maj_accuracy"] == pytest.approx(maj)
    assert f"| {seed_model} | 10 | 4 | {want:.3f} | {maj:.3f} |" in printed


def test_eval_errors(seed_model, digits, samplers, tmp_path, capsys):
    write_jsonl(tmp_path / "noanswer.jsonl", [{"prompt": digits[0]["prompt"]}])
    _fails(capsys, ["eval", "--model", seed_model, "--data", tmp_path / "noanswer.jsonl"],
           "no reference answer", "--answer-key")
    _fails(capsys, ["eval", "--model", seed_model, "--data", tmp_path / "train.jsonl", "--reward", "fakes:digit_reward"],
           "give --baseline MODEL")
    _fails(capsys, ["eval", "--model", tmp_path / "nope", "--data", tmp_path / "train.jsonl"], "no such directory")
    _fails(capsys, ["generate", "--model", seed_model, "--data", tmp_path / "x.csv", "--out", tmp_path / "g.jsonl"],
           "x.csv: no such file")
    assert samplers == []  # every error comes before an engine starts


def test_eval_scored_against_a_baseline(seed_model, digits, samplers, tmp_path, capsys):
    """A reward that fails on some responses (None): counted, left out of the means, and reported."""
    out = tmp_path / "e.json"
    assert main(["eval", "--model", str(seed_model), "--data", str(tmp_path / "eval.jsonl"), "--reward",
                 "scoring_sampler:flaky_digit_reward", "--baseline", str(seed_model), "--samples", "2",
                 "--max-tokens", "6", "--judge-url", "http://127.0.0.1:9", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["reward"] == "scoring_sampler:flaky_digit_reward" and res["baseline"] == str(seed_model)
    assert res["prompts"] == 4 and res["samples"] == 2
    assert len(samplers) == 2 and all(s.closed for s in samplers)  # the baseline's engine, then the model's
    base, model = samplers[0].generates[0], samplers[1].generates[0]
    assert (base["n"], model["n"]) == (1, 2)
    digits_out = [ScoringSampler.digit(base["seed"] + i) for i in range(4)]
    digits_out += [ScoringSampler.digit(model["seed"] + k) for k in range(8)]
    failures = sum(d % 2 == 1 for d in digits_out)
    assert 0 < failures < 12 and res["failures"] == failures
    assert 0.0 <= res["mean_score"] <= 1.0 and 0.0 <= res["win_rate"] <= 1.0
    assert "| win rate | LC win rate |" in printed and f"| {seed_model} | 4 | 2 |" in printed
    assert f"{failures} judgements failed after retries and are left out of the means." in printed


def test_generate_writes_what_the_sampler_returned(seed_model, digits, samplers, tmp_path, capsys):
    out = tmp_path / "g.jsonl"
    assert main(["generate", "--model", str(seed_model), "--data", str(tmp_path / "eval.jsonl"), "--n", "3",
                 "--max-tokens", "6", "--prompt-template", "{prompt} Answer:", "--out", str(out)]) == 0
    assert "wrote 4 prompts x 3 samples" in capsys.readouterr().out
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    tok = load_tokenizer(seed_model)
    assert [r["prompt"] for r in rows] == [d["prompt"] for d in digits[:4]]
    (sampler,) = samplers
    assert sampler.generates[0]["n"] == 3 and sampler.generates[0]["max_tokens"] == 6
    for r in rows:
        assert tok.decode(r["prompt_token_ids"]).endswith(r["prompt"][-8:] + " Answer:")  # the template applied
        assert len(r["samples"]) == 3
        for s in r["samples"]:
            assert len(s["token_ids"]) == len(s["token_logprobs"]) > 0 and s["text"].startswith(" Ans ")
            assert all(lp < 0.0 for lp in s["token_logprobs"])  # the model's own log-probs, not FakeSampler's -1
            assert s["token_logprobs"] == pytest.approx(sampler._logprobs(r["prompt_token_ids"], s["token_ids"]))


# -- score ------------------------------------------------------------------------------------


def test_score_with_chat_template_and_eos(tmp_path, capsys):
    """The chat-template branch of score's tokenization (the seed's tokenizer has no template):
    SmolLM2's template, one pair; the response ends at the template's end-of-turn token."""
    model = REPO / ".cache" / "models" / "smollm2-135m"
    if not (model / "fetch_report.json").is_file():
        pytest.skip("smollm2-135m is not built (make fetch-smollm2)")
    write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "What is 2+3?", "response": "5"}])
    out = tmp_path / "s.jsonl"
    assert main(["score", "--model", str(model), "--data", str(tmp_path / "pairs.jsonl"), "--out", str(out),
                 "--device", "cpu", "--chat-template", "--system-prompt", "Be brief."]) == 0
    assert "scored 1 responses" in capsys.readouterr().out
    (row,) = [json.loads(x) for x in out.read_text().splitlines()]
    tok = load_tokenizer(model)
    assert len(row["token_logprobs"]) == len(tok.encode("5", add_special_tokens=False)) + 1  # + <|im_end|>
    assert row["logprob_sum"] == pytest.approx(sum(row["token_logprobs"]), rel=1e-5)
    assert all(lp <= 0.0 for lp in row["token_logprobs"])


# -- fetch-model, sweep, bench ----------------------------------------------------------------


def test_fetch_model_verb(tmp_path, capsys):
    _fails(capsys, ["fetch-model", "llama-9000"], "known names are smollm2-135m", "downloaded on first use")
    report = {"name": "smollm2-135m", "source": "pkg:file.gguf", "seconds": 1.0, "num_layers": 30, "hidden_size": 576,
              "num_heads": 9, "num_kv_heads": 3, "vocab_size": 49152, "tied_embeddings": True,
              "has_chat_template": True, "bytes_on_disk": 123}
    (tmp_path / "smollm2-135m").mkdir()
    (tmp_path / "smollm2-135m" / "fetch_report.json").write_text(json.dumps(report))
    assert main(["fetch-model", "smollm2-135m", "--cache-dir", str(tmp_path)]) == 0  # cached: nothing built
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"path": str(tmp_path / "smollm2-135m"), **report}


def test_sweep_verb_runs_and_reports(seed_model, digits, tmp_path, monkeypatch, capsys):
    from scoring_sampler import ScoringSampler as Sampler

    import engine.experiments.sweep as sweep_mod

    made = []

    def make(cfg, *, model, seed, dtype, cpu_cores):
        made.append(Sampler(load_tokenizer(model), model))
        return made[-1]

    real = sweep_mod.run_sweep
    monkeypatch.setattr(sweep_mod, "run_sweep", lambda sweep: real(sweep, make_sampler=make))
    tree = {"out": str(tmp_path / "sw"), "seed_model": str(seed_model), "seeds": [0],
            "base": {"steps": 1, "learner": {"threads": 1}, "sampler": {"gap_probe_prompts": 2},
                     "rollout": {"prompts_per_step": 4, "samples_per_prompt": 8, "max_tokens": 6},
                     "eval": {"every": 0, "max_prompts": 4, "samples": 1, "max_tokens": 6, "seed": 1}},
            "tasks": {"digits": {"tasks": {"digits": {"data": str(tmp_path / "train.jsonl"),
                                                      "eval_data": str(tmp_path / "eval.jsonl"),
                                                      "reward": "fakes:digit_reward"}}}},
            "methods": {"online GRPO": {"objective": "grpo", "sync_every": 1}}}  # fmt: skip
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(tree))
    assert main(["sweep", "--config", str(tmp_path / "sweep.yaml")]) == 0
    lines = capsys.readouterr().out.splitlines()
    result = json.loads(next(x for x in lines if x.startswith('{"ran"')))
    assert result["ran"] == 1 and result["skipped"] == 0 and result["report"] == str(tmp_path / "sw" / "report.md")
    report = (tmp_path / "sw" / "report.md").read_text()
    assert "- Runs: 1 of 1 done" in report and "Wall time of this sweep invocation" in report
    assert "| online GRPO |" in report and len(made) == 1 and made[0].closed

    # --report-only: no run, no wall time
    assert main(["sweep", "--config", str(tmp_path / "sweep.yaml"), "--report-only"]) == 0
    assert json.loads(next(x for x in capsys.readouterr().out.splitlines() if x.startswith("{")))["ran"] == 0
    assert "Wall time" not in (tmp_path / "sw" / "report.md").read_text() and len(made) == 1
    _fails(capsys, ["sweep", "--config", tmp_path / "none.yaml"], "sweep file not found")


def _fake_bench(monkeypatch, status):
    calls = []
    module = types.ModuleType("engine.bench._fake_for_test")
    module.main = lambda argv: calls.append(argv) or status
    monkeypatch.setitem(sys.modules, module.__name__, module)
    monkeypatch.setitem(engine.cli.BENCHES, "fake", "_fake_for_test")
    return calls


def test_bench_passes_its_arguments_on(monkeypatch):
    calls = _fake_bench(monkeypatch, 0)
    assert main(["bench", "fake", "--n", "3", "--only", "e2e"]) == 0
    assert calls == [["--n", "3", "--only", "e2e"]]


def test_bench_failure_status_reaches_the_exit_status(monkeypatch):
    _fake_bench(monkeypatch, 1)
    assert main(["bench", "fake"]) == 1
