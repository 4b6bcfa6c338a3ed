#!/usr/bin/env bash
# The GPU check in one command, mmseg 0.30 then mmseg 1.x (see
# tools/gpu_check.py for the steps):
#
#   bash tools/gpu_check.sh OUT          on the GPU machine
#   bash tools/gpu_check.sh --cpu OUT    its rehearsal on this machine
#
# Installs the two wheel sets that tools/build_device_wheels.sh put in
# .device/wheels (mmseg 0.30) and .device/wheels-mmseg1 (mmseg 1.x), each
# checked against its SHA256SUMS, into a throwaway folder each with pip
# --no-index --no-deps --target, so the machine needs no package index and
# its own packages stay as they are; then runs tools/gpu_check.py once per
# generation, with its folder and this clone on PYTHONPATH, within one
# budget (--stack). The reports go to OUT/mmseg0x and OUT/mmseg1x.
#
# Only the wheels that SHA256SUMS lists are installed. The device call
# carries the folder: carry=[".device"] (git ignores it).
#
# On the GPU machine the interpreter is `python3` (the one with torch), or
# PYTHON. With --cpu it is the twin virtualenv's, whose path
# build_device_wheels.sh left in .device/wheels/twin: Python 3.12, torch
# 2.11 and the machine's other packages, so the rehearsal installs and
# imports exactly what the machine will. Further arguments go to gpu_check.py
# (--budget SECONDS for both generations, --only STEP ..., --work-dir DIR).
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
WHEELS1="${SAR_DEVICE_WHEELS_MMSEG1:-$ROOT/.device/wheels-mmseg1}"
for set in "$WHEELS" "$WHEELS1"; do
    if [ ! -f "$set/SHA256SUMS" ]; then
        echo "gpu_check: no wheels in $set: run 'bash tools/build_device_wheels.sh'" \
             "on a machine with a package index, then carry .device" >&2
        exit 2
    fi
done
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

SITES=()
trap 'rm -rf "${SITES[@]}"' EXIT
# install SET: its listed wheels into a new folder, appended to SITES.
install() {
    local set="$1" site listed
    mapfile -t listed < <(awk -v dir="$set" '{print dir "/" $2}' "$set/SHA256SUMS")
    site="$(mktemp -d)"
    SITES+=("$site")
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps \
        --no-compile --no-cache-dir --target "$site" "${listed[@]}"
    echo "[gpu_check] installed ${#listed[@]} wheels of $set"
}
# Both sets checked before either is installed.
(cd "$WHEELS" && sha256sum --quiet -c SHA256SUMS)
(cd "$WHEELS1" && sha256sum --quiet -c SHA256SUMS)
start=$SECONDS
install "$WHEELS"
install "$WHEELS1"
echo "[gpu_check] installed both sets in $((SECONDS - start)) s"
"$PY" "$ROOT/tools/gpu_check.py" "$OUT" "${MODE[@]}" \
    --stack mmseg0x "$PY" "${SITES[0]}" --stack mmseg1x "$PY" "${SITES[1]}" "$@"
