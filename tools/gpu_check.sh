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
# (--budget SECONDS for both generations, counted from this script's start;
# --only STEP ...; --work-dir DIR). --stacks "mmseg1x" (or "mmseg1x
# mmseg0x") checks only those generations, in that order; only their sets
# are needed.
set -euo pipefail

START="$(date +%s)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE=()
STACKS=(mmseg0x mmseg1x)
while [ $# -gt 0 ]; do
    case "$1" in
        --cpu) MODE=(--cpu); shift ;;
        --stacks) read -r -a STACKS <<<"${2:-}"; shift 2 || shift ;;
        *) break ;;
    esac
done
if [ $# -lt 1 ] || [ ${#STACKS[@]} -eq 0 ]; then
    echo "usage: bash tools/gpu_check.sh [--cpu] [--stacks \"mmseg0x mmseg1x\"] OUT" \
         "[gpu_check.py options]" >&2
    exit 2
fi
OUT="$1"
shift
declare -A SET=(
    [mmseg0x]="${SAR_DEVICE_WHEELS:-$ROOT/.device/wheels}"
    [mmseg1x]="${SAR_DEVICE_WHEELS_MMSEG1:-$ROOT/.device/wheels-mmseg1}")
for stack in "${STACKS[@]}"; do
    if [ -z "${SET[$stack]+set}" ]; then
        echo "gpu_check: no stack named $stack (mmseg0x, mmseg1x)" >&2
        exit 2
    fi
    if [ ! -f "${SET[$stack]}/SHA256SUMS" ]; then
        echo "gpu_check: no wheels in ${SET[$stack]}: run 'bash tools/build_device_wheels.sh'" \
             "on a machine with a package index, then carry .device" >&2
        exit 2
    fi
done
if [ -n "${PYTHON:-}" ]; then
    PY="$PYTHON"
elif [ ${#MODE[@]} -gt 0 ]; then
    TWIN_FILE="${SET[${STACKS[0]}]}/twin"
    PY="$(cat "$TWIN_FILE" 2>/dev/null || true)/bin/python"
    if [ ! -x "$PY" ]; then
        echo "gpu_check --cpu: no twin virtualenv ($TWIN_FILE): run" \
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
# Every set checked before any is installed.
for stack in "${STACKS[@]}"; do
    (cd "${SET[$stack]}" && sha256sum --quiet -c SHA256SUMS)
done
ARGS=()
for stack in "${STACKS[@]}"; do
    install "${SET[$stack]}"
    ARGS+=(--stack "$stack" "$PY" "${SITES[-1]}")
done
echo "[gpu_check] installed in $(($(date +%s) - START)) s"
# In the background, so that a TERM to this script reaches the check (which
# stops its step and writes its report) before the folders go.
CHECK=
trap '[ -n "$CHECK" ] && kill -TERM "$CHECK" 2>/dev/null || true' TERM INT
"$PY" "$ROOT/tools/gpu_check.py" "$OUT" "${MODE[@]}" --since "$START" \
    "${ARGS[@]}" "$@" &
CHECK=$!
status=0
wait "$CHECK" || status=$?
# A TERM cuts a wait short: wait again until the check has ended.
while kill -0 "$CHECK" 2>/dev/null; do
    status=0
    wait "$CHECK" || status=$?
done
exit "$status"
