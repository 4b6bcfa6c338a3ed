#!/usr/bin/env bash
# bash tools/slurm_train.sh PARTITION JOB_NAME CONFIG [train.py options]
exec bash "$(dirname "$0")/slurm_run.sh" train.py "$@"
