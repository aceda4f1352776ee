#!/usr/bin/env bash
# The GPU check: the one command to run on a CUDA node. It runs the GPU-marked tests, then the GPU
# benchmark (engine/bench/gpu_check.py), and writes everything under $OUT (default runs/gpu_check):
#   summary.json  the benchmark's figures (learner vs transformers, kernels vs references and vs a
#                 bf16 GEMM, 5-step DPO/GRPO runs, CUDA IPC round trip), pytest.log, bench.log
#
#   bash launch/gpu_check.sh                      # on the CUDA node, from anywhere in the repo
#   bash launch/gpu_check.sh --fetch-wheels       # beforehand, where the package registry is
#                                                 # reachable: the ~11 MiB of wheels a bare node lacks
#                                                 # -> .cache/gpu_wheels (PYVER=3.12 by default)
#   PYTHON=python3 OUT=/tmp/gc GPU_WHEELS=/path bash launch/gpu_check.sh
#
# It uses the torch already on the node (e.g. Python 3.12, torch 2.11, triton 3.6) and needs no
# vLLM (the sampler's GPU parts run where vLLM is installed). Python packages the engine imports
# and the node lacks (megatron-core 0.16.1, pydantic, pytest, ...) are pip-installed from
# $GPU_WHEELS (--no-index) when the wheel is there, else from the registry if reachable; if
# neither works it says which package is missing and stops (rc 3). No CUDA: rc 2.
# Budget: under 8 minutes on one H200 (tests ~3 min, benchmark ~3 min, first Triton compiles included).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([ -x .venv-gpu/bin/python ] && echo .venv-gpu/bin/python || echo python3)}
OUT=${OUT:-runs/gpu_check}
WHEELS=${GPU_WHEELS:-.cache/gpu_wheels}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# What the learner path imports beyond torch/transformers/numpy (the GPU image's own), pinned as in pyproject.toml.
PINS="megatron-core==0.16.1 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
safetensors==0.8.0 pyyaml==6.0.4 tokenizers==0.23.3 pytest==9.2.0 pluggy==1.7.0 iniconfig==2.3.1 einops==0.8.2"

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p "$WHEELS"
  plats=""; for m in $(seq 35 -1 5); do plats="$plats --platform manylinux_2_${m}_x86_64"; done
  # shellcheck disable=SC2086
  exec "$PY" -m pip download --no-deps --only-binary :all: --python-version "${PYVER:-3.12}" $plats \
    --platform manylinux2014_x86_64 -d "$WHEELS" $PINS
fi

mkdir -p "$OUT"
"$PY" -c "import torch" 2>/dev/null || { echo "gpu_check: $PY cannot import torch (set PYTHON=...)"; exit 3; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 2)" \
  || { echo "gpu_check: torch.cuda.is_available() is False with $PY: not a CUDA node (or a CPU torch)"; exit 2; }

pin_of() {  # module name -> pinned requirement
  local dist; case "$1" in megatron) dist=megatron-core;; yaml) dist=pyyaml;; pydantic_core) dist=pydantic-core;;
    typing_inspection) dist=typing-inspection;; annotated_types) dist=annotated-types;; *) dist=$1;; esac
  for p in $PINS; do [ "${p%%==*}" = "$dist" ] && { echo "$p"; return; }; done; echo "$dist"
}
# Import what the check runs; install each missing module (wheel dir first, then the registry).
for _ in $(seq 1 12); do
  missing=$("$PY" -c "
try:
    import pytest, engine.bench.gpu_check_parts, engine.learner.learner, engine.sampler.gpu_transport, engine.model.te
except ModuleNotFoundError as e:
    print(e.name.split('.')[0])" 2>/dev/null)
  [ -z "$missing" ] && break
  case "$missing" in torch|triton|transformers|numpy)
    echo "gpu_check: $PY has no $missing; the check uses the node's own torch stack (make setup-gpu builds one)"; exit 3;; esac
  req=$(pin_of "$missing")
  echo "gpu_check: installing $req (module $missing is missing)"
  "$PY" -m pip install -q --no-deps --no-index --find-links "$WHEELS" "$req" 2>/dev/null \
    || "$PY" -m pip install -q --no-deps "$req" \
    || { echo "gpu_check: cannot install $req: no wheel in $WHEELS and no registry (run --fetch-wheels where one is reachable)"; exit 3; }
done
[ -z "$missing" ] || { echo "gpu_check: module $missing still missing after installing $req"; exit 3; }

"$PY" -c "import torch, triton; print(f'gpu_check: {torch.cuda.get_device_name()} torch {torch.__version__} (CUDA {torch.version.cuda}) triton {triton.__version__}')"
start=$(date +%s)
# Every GPU-marked test; the sampler's (CUDA IPC into a vLLM engine) only where vLLM imports.
tests="tests/gpu tests/kernels"
"$PY" -c "import vllm" 2>/dev/null && tests="$tests tests/engine/sampler/test_gpu_transport.py"
# shellcheck disable=SC2086
timeout 330 "$PY" -m pytest -m gpu $tests -q -rs -p no:cacheprovider 2>&1 | tee "$OUT/pytest.log"
tests_rc=${PIPESTATUS[0]}
timeout 300 "$PY" -m engine.bench.gpu_check --device cuda --out "$OUT/summary.json" 2>&1 | tee "$OUT/bench.log"
bench_rc=${PIPESTATUS[0]}
echo "gpu_check: tests rc=$tests_rc, benchmark rc=$bench_rc, $(( $(date +%s) - start )) s; summary: $OUT/summary.json"
[ "$tests_rc" = 0 ] && [ "$bench_rc" = 0 ]
