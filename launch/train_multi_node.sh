#!/usr/bin/env bash
# Multi-node training under torchrun: run this once on every node, with the same rendezvous
# endpoint (host:port of node 0), the node count, this node's rank and the ranks per node.
#
#   launch/train_multi_node.sh ENDPOINT NNODES NODE_RANK NPROC_PER_NODE [semionline train arguments ...]
#
#   # node 0 (host node0, reachable by the others on port 29500):
#   launch/train_multi_node.sh node0:29500 2 0 8 --config configs/demo/grpo.yaml model=/shared/models/Llama-3.1-8B-Instruct learner.tp=8 learner.pp=2 --run-dir /shared/runs/x
#   # node 1:
#   launch/train_multi_node.sh node0:29500 2 1 8 --config configs/demo/grpo.yaml model=/shared/models/Llama-3.1-8B-Instruct learner.tp=8 learner.pp=2 --run-dir /shared/runs/x
#
# It runs exactly:
#   torchrun --nnodes NNODES --node-rank NODE_RANK --nproc-per-node NPROC_PER_NODE \
#            --master-addr HOST --master-port PORT -m engine.cli train [arguments ...]
# World size = NNODES * NPROC_PER_NODE = tp * pp * dp. Keep a TP group inside one node
# (tp <= NPROC_PER_NODE): ranks are ordered TP fastest, then DP, then PP (engine/parallel/mesh.py).
# The run directory (checkpoints, metrics) must be on a file system every node sees; rank 0 (node 0)
# owns the sampler. Resume with the same command and `--resume RUN_DIR` in place of the config.
set -euo pipefail
if [[ $# -lt 4 || "$1" != *:* ]]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
ENDPOINT=$1 NNODES=$2 NODE_RANK=$3 NPROC_PER_NODE=$4
shift 4
cd "$(dirname "$0")/.."
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec python -m torch.distributed.run --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE" \
    --master-addr "${ENDPOINT%:*}" --master-port "${ENDPOINT##*:}" -m engine.cli train "$@"
