"""A fake sampler that holds real weights: FakeSampler's responses ("Ans <d>"), but each token's
log-prob comes from a Hugging Face LlamaForCausalLM holding the weights last pushed into it (the
model directory's weights until the first push). The learner's parity check then means what it
means with vLLM: a run whose sampler does not hold the learner's weights stops with
LogprobGapError, at the fp32 limit (1e-3), without starting an engine.

    sampler = ScoringSampler(tokenizer, seed_model)   # also a context manager, as VLLMSampler
    sampler.template = " #### {}"                      # responses the math reward can read
"""

from __future__ import annotations

import random

import torch
from fakes import FakeSampler

from engine.sampler.vllm_engine import Sample


class ScoringSampler(FakeSampler):
    template = " Ans {}"  # sample j of prompt i answers digit(seed + i * n + j), as FakeSampler

    @staticmethod
    def digit(k: int) -> int:
        return random.Random(k).randrange(10)

    def __init__(self, tokenizer, model_dir):
        super().__init__(tokenizer)
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()

    def push_weights(self, named_tensors):
        stats = super().push_weights(named_tensors)
        self.model.load_state_dict({k: v.float() for k, v in self.pushes[-1].items()}, strict=True)
        return stats

    @torch.no_grad()
    def _logprobs(self, prompt: list[int], response: list[int]) -> list[float]:
        ids = torch.tensor([list(prompt) + list(response)])
        logp = torch.log_softmax(self.model(ids).logits[0].float(), dim=-1)
        pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
        return logp[pos, torch.tensor(response)].tolist()

    def generate(self, prompt_token_ids, *, n, temperature, top_p, max_tokens, stop_token_ids, seed=0):
        self.generates.append({"prompts": len(prompt_token_ids), "n": n, "seed": seed, "max_tokens": max_tokens,
                               "weights": len(self.pushes)})
        out = []
        for i, prompt in enumerate(prompt_token_ids):
            group = []
            for j in range(n):
                text = self.template.format(self.digit(seed + i * n + j))
                ids = self.tokenizer.encode(text, add_special_tokens=False)[:max_tokens]
                group.append(Sample(token_ids=ids, logprobs=self._logprobs(prompt, ids), text=text,
                                    finish_reason="stop"))
            out.append(group)
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def flaky_digit_reward(prompts, responses, rows):
    """fakes.digit_reward, but a judge that fails (None) on every response ending in an odd digit."""
    return [None if r.strip()[-1:] in "13579" and r.strip()[-1:] else float(r.strip().endswith(row.answer))
            for r, row in zip(responses, rows, strict=True)]
