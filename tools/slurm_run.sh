#!/usr/bin/env bash
# bash tools/slurm_run.sh SCRIPT PARTITION JOB_NAME [SCRIPT arguments]
# Shared by slurm_train.sh and slurm_test.sh: one srun task per GPU.
# GPUS (total), GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS and PYTHON as in
# mmseg's scripts.
set -x
SCRIPT=$1
PARTITION=$2
JOB_NAME=$3
GPUS=${GPUS:-4}
GPUS_PER_NODE=${GPUS_PER_NODE:-4}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
SRUN_ARGS=${SRUN_ARGS:-""}
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
srun -p "$PARTITION" \
    --job-name="$JOB_NAME" \
    --gres=gpu:"$GPUS_PER_NODE" \
    --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" \
    --kill-on-bad-exit=1 \
    ${SRUN_ARGS} \
    "$PYTHON" -u "$TOOLS/$SCRIPT" "${@:4}" --launcher slurm
