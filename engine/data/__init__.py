"""Prompt and preference datasets, and the tokenization every stage shares.

prompts.py      PromptRow (text or chat `messages`), parse_prompt_record, load_prompts (strict jsonl),
                write_jsonl (atomic)
datasets.py     load_prompt_rows: .jsonl / .json / .parquet / save_to_disk folders / hf://NAME[:CONFIG][@SPLIT],
                prompt/answer keys auto-detected (GSM8K, MATH, plain) or named
encoding.py     encode_prompt_row (prompt template, chat template, system prompt), stop_token_ids
preferences.py  PreferenceRow: {"prompt","chosen","rejected"} and chat-style pairs, tokenised for DPO
tokenizer.py    the seed model's character tokenizer; encode_prompt / encode_response / eos
"""
