"""Task building, prompt splitting and per-task training units."""

import random

import pytest

from engine.config_load import load_config
from engine.data.prompts import PromptRow, write_jsonl
from engine.data.tokenizer import load_tokenizer, save_tokenizer
from engine.demo.chat import chat_prompts
from engine.demo.rm_train import train_reward_model
from engine.rollout.types import DEFAULT, Rollout
from engine.tasks import build_tasks, split_prompts


def test_split_prompts():
    assert split_prompts([1.0], 16) == [16]
    assert split_prompts([1.0, 1.0], 16) == [8, 8]
    assert split_prompts([3.0, 1.0], 16) == [12, 4]
    assert split_prompts([1.0, 1.0, 1.0], 16) == [6, 5, 5]
    assert split_prompts([100.0, 1.0], 4) == [3, 1]  # a small weight still gets a prompt
    assert sum(split_prompts([0.3, 0.7, 2.0], 7)) == 7
    with pytest.raises(ValueError):
        split_prompts([1.0], 0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    save_tokenizer(d / "tok")
    write_jsonl(d / "math.jsonl", [PromptRow(prompt="Q: 2+3?\nA:", answer="5")] * 3)
    write_jsonl(d / "chat.jsonl", chat_prompts(4, split="rl"))
    train_reward_model(d / "rm", steps=2, pairs_per_step=4, n_heldout_pairs=4, progress=False)
    return d


def _rollout(i, reward, task):
    return Rollout(prompt_index=i, prompt_ids=[1, 5], response_ids=[7, 8], behaviour_logprobs=[-1.0, -1.0], text="",
                   reward=reward, version=0, task=task)


def test_single_task_run_is_the_default_task(files):
    cfg = load_config(None, [f"data.train={files / 'math.jsonl'}", f"data.eval={files / 'math.jsonl'}",
                             "objective=dpo", "rollout.samples_per_prompt=4"])
    (task,) = build_tasks(cfg, load_tokenizer(files / "tok"))
    assert (task.name, task.objective, task.reward_source, task.samples_per_prompt) == (DEFAULT, "dpo", "math", 4)
    assert len(task.rows) == 3 and task.ids[0][0] == 1 and len(task.eval_rows) == 3
    out = task.score([0, 1], [" The answer is 5.", " The answer is 4."])
    assert out.rewards == [1.0, 0.0]


def test_multi_task_rewards_objectives_and_units(files):
    cfg = load_config(None, [
        f"tasks.math.data={files / 'math.jsonl'}", "tasks.math.objective=grpo", "tasks.math.weight=3",
        f"tasks.chat.data={files / 'chat.jsonl'}", "tasks.chat.reward=reward_model",
        f"tasks.chat.reward_model_path={files / 'rm'}", "tasks.chat.objective=dpo", "tasks.chat.dpo.beta=0.01",
        "tasks.chat.samples_per_prompt=4", "grpo.drop_uniform_groups=true",
    ])  # fmt: skip
    math, chat = build_tasks(cfg, load_tokenizer(files / "tok"))
    assert (math.name, math.objective, math.weight, chat.dpo.beta, chat.samples_per_prompt) == ("math", "grpo", 3.0,
                                                                                                 0.01, 4)
    scores = chat.score([0, 1], [" Hi.", " Bye."]).rewards
    assert len(scores) == 2 and all(isinstance(s, float) for s in scores)

    rng = random.Random(0)
    chat_groups = [[_rollout(0, s, "chat") for s in (0.3, -1.2, 2.5, 0.1)], [_rollout(1, 1.0, "chat")]]
    part = chat.to_part(chat_groups, rng)  # scores: the highest vs the lowest; a 1-sample group is dropped
    assert part.objective == "dpo" and len(part.pairs) == 1
    assert (part.pairs[0].chosen.reward, part.pairs[0].rejected.reward) == (2.5, -1.2)
    math_groups = [[_rollout(0, r, "math") for r in (1.0, 0.0, 0.0, 1.0)], [_rollout(1, 1.0, "math")] * 4]
    part = math.to_part(math_groups, rng)  # the uniform group carries no signal
    assert part.objective == "grpo" and len(part.groups) == 1 and part.groups[0].advantages == [0.5, -0.5, -0.5, 0.5]


def test_prompt_template_and_chat_template(files):
    from engine.data.tokenizer import encode_formatted_prompt, encode_prompt

    tok = load_tokenizer(files / "tok")
    plain = encode_formatted_prompt(tok, "2+3?", template="Q: {prompt}\nA:")
    assert plain == encode_prompt(tok, "Q: 2+3?\nA:")
    with pytest.raises(ValueError, match="has none"):
        encode_formatted_prompt(tok, "2+3?", chat=True)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}User: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}Assistant:{% endif %}")
    ids = encode_formatted_prompt(tok, "2+3?", template="{prompt} Think.", chat=True)
    assert ids[0] == tok.bos_token_id and tok.decode(ids[1:]) == "User: 2+3? Think.\nAssistant:"
