"""Prompt datasets, the synthetic arithmetic task and the tokenization every stage shares.

prompts.py    PromptRow, load_prompts (strict jsonl), write_jsonl (atomic)
synthetic.py  procedurally generated word problems; SFT / RL / held-out splits
tokenizer.py  the seed model's character tokenizer; encode_prompt / encode_response / eos
"""
