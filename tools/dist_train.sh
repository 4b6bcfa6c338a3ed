#!/usr/bin/env bash
# bash tools/dist_train.sh CONFIG N [train.py options]
# N processes: one per GPU, or N CPU processes (gloo) without GPUs.
# NNODES, NODE_RANK, MASTER_ADDR, PORT and PYTHON: see dist_run.sh.
exec bash "$(dirname "$0")/dist_run.sh" train.py "$2" "$1" "${@:3}"
