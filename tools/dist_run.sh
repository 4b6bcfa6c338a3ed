#!/usr/bin/env bash
# bash tools/dist_run.sh SCRIPT NPROC [SCRIPT arguments]
# Shared by dist_train.sh and dist_test.sh: runs tools/SCRIPT in NPROC
# processes per node through torch.distributed.run, one per GPU, or NPROC
# CPU processes over gloo when there is no GPU. Multi-node: set NNODES,
# NODE_RANK, MASTER_ADDR and PORT on every node. PYTHON picks the interpreter.
set -e
SCRIPT=$1
NPROC=$2
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
PORT=${PORT:-29500}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
TOOLS="$(cd "$(dirname "$0")" && pwd)"
# PYTHON picks the interpreter; by default `python`, or the project's .venv
# (made by `make install`) when `python` has no torch, as in a new shell.
if [ -z "${PYTHON:-}" ]; then
    PYTHON=python
    if ! "$PYTHON" -c 'import torch' >/dev/null 2>&1 \
            && [ -x "$TOOLS/../.venv/bin/python" ]; then
        PYTHON="$TOOLS/../.venv/bin/python"
    fi
fi

PYTHONPATH="$TOOLS/..${PYTHONPATH:+:$PYTHONPATH}" \
exec "$PYTHON" -m torch.distributed.run \
    --nnodes="$NNODES" \
    --node_rank="$NODE_RANK" \
    --master_addr="$MASTER_ADDR" \
    --nproc_per_node="$NPROC" \
    --master_port="$PORT" \
    "$TOOLS/$SCRIPT" "${@:3}" --launcher pytorch
