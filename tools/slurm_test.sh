#!/usr/bin/env bash
# bash tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]
exec bash "$(dirname "$0")/slurm_run.sh" test.py "$@"
