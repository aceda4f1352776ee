"""The CPU demo recipe: everything that exists so the engine can be shown working on 2 cores with
no model hub. Not part of the engine proper; the engine never imports it (tasks may name its
callables by import path, e.g. `engine.demo.chat:gold_quality`).

seed.py       the tiny seed model: character tokenizer + 4-layer Llama + SFT warm-up (`semionline seed`)
synthetic.py  procedurally generated arithmetic word problems (train / RL / held-out splits)
chat.py       the CPU chat task: note prompts and their hidden gold rule
rm_train.py   trains the chat task's reward model (`semionline rm-train`)
plots.py      the demo's accuracy and training-dynamics PNGs
run.py        `make demo`: seed, a semi-online DPO and an online GRPO run, the accuracy table
"""
