#!/usr/bin/env bash
# The GPU check in one command (see tools/gpu_check.py for its steps):
#
#   bash tools/gpu_check.sh OUT          on the GPU machine
#   bash tools/gpu_check.sh --cpu OUT    its rehearsal on this machine
#
# Installs the wheels that tools/build_device_wheels.sh put in .device/wheels
# (checked against their SHA256SUMS) into a throwaway folder with pip
# --no-index --no-deps --target, so the machine needs no package index and
# its own packages stay as they are; then runs tools/gpu_check.py with that
# folder and this clone on PYTHONPATH. The report goes to OUT.
#
# Only the wheels that SHA256SUMS lists are installed. The device call
# carries the folder: carry=[".device"] (git ignores it).
#
# On the GPU machine the interpreter is `python3` (the one with torch), or
# PYTHON. With --cpu it is the twin virtualenv's, whose path
# build_device_wheels.sh left in .device/wheels/twin: Python 3.12, torch
# 2.11 and the machine's other packages, so the rehearsal installs and
# imports exactly what the machine will. Further arguments go to gpu_check.py
# (--budget SECONDS, --only STEP ..., --work-dir DIR).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=()
if [ "${1:-}" = --cpu ]; then
    MODE=(--cpu)
    shift
fi
if [ $# -lt 1 ]; then
    echo "usage: bash tools/gpu_check.sh [--cpu] OUT [gpu_check.py options]" >&2
    exit 2
fi
OUT="$1"
shift
WHEELS="${SAR_DEVICE_WHEELS:-$ROOT/.device/wheels}"
if [ ! -f "$WHEELS/SHA256SUMS" ]; then
    echo "gpu_check: no wheels in $WHEELS: run 'bash tools/build_device_wheels.sh'" \
         "on a machine with a package index, then carry .device" >&2
    exit 2
fi
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ ${#MODE[@]} -gt 0 ]; then
    PY="$(cat "$WHEELS/twin" 2>/dev/null || true)/bin/python"
    if [ ! -x "$PY" ]; then
        echo "gpu_check --cpu: no twin virtualenv ($WHEELS/twin): run" \
             "'bash tools/build_device_wheels.sh' first" >&2
        exit 2
    fi
else
    PY=python3
fi

(cd "$WHEELS" && sha256sum --quiet -c SHA256SUMS)
mapfile -t LISTED < <(awk -v dir="$WHEELS" '{print dir "/" $2}' "$WHEELS/SHA256SUMS")
SITE="$(mktemp -d)"
trap 'rm -rf "$SITE"' EXIT
start=$SECONDS
"$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
    --no-compile --no-cache-dir --target "$SITE" "${LISTED[@]}"
echo "[gpu_check] installed ${#LISTED[@]} wheels in $((SECONDS - start)) s"
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
"$PY" "$ROOT/tools/gpu_check.py" "$OUT" "${MODE[@]}" "$@"
