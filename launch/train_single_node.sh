#!/usr/bin/env bash
# Single-node training under torchrun: NPROC learner ranks on this machine, any TP x PP x DP layout.
#
#   launch/train_single_node.sh NPROC [semionline train arguments ...]
#
#   launch/train_single_node.sh 4 --config configs/demo/grpo.yaml learner.tp=2 learner.pp=2 --run-dir runs/tp2pp2
#   launch/train_single_node.sh 4 --config configs/demo/dpo.yaml learner.pp=2 --run-dir runs/pp2dp2   # dp = 4/(1*2)
#   launch/train_single_node.sh 4 --resume runs/tp2pp2                      # continue from its newest checkpoint
#
# It runs exactly:
#   torchrun --standalone --nproc-per-node NPROC -m engine.cli train [arguments ...]
# The data-parallel size is NPROC / (learner.tp * learner.pp). Rank 0 also owns the vLLM sampler.
# On CPU each rank gets OMP_NUM_THREADS=1 unless you set it (torchrun's default would oversubscribe).
set -euo pipefail
if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
NPROC=$1
shift
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m torch.distributed.run --standalone --nproc-per-node "$NPROC" -m engine.cli train "$@"
