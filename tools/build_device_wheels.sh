#!/usr/bin/env bash
# Prepare, on a CPU machine, everything tools/gpu_check.sh installs on the GPU
# machine, which has Python 3.12 and torch 2.11 but no mmcv, no mmseg and no
# package index:
#
#   bash tools/build_device_wheels.sh
#
# 1. a "twin" virtualenv of the GPU machine's own stack (Python 3.12,
#    exactly requirements/lock/device-twin.txt; torch there is PyPI's build,
#    which runs on the CPU): mmcv-full is built against it, and
#    `tools/gpu_check.sh --cpu` rehearses the check in it;
# 2. mmcv-full 1.7.2 built from its sdist against that torch, CPU ops only
#    (none of the models in configs/ calls mmcv's CUDA kernels), with the
#    same patch as tools/setup_env.sh, and its debug symbols stripped (78 MB
#    of the extension is debug information);
# 3. the pure-Python wheels of requirements/lock/device.txt that the twin
#    lacks, at the lock's versions and hashes;
# 4. all of them in .device/wheels (git-ignored) with SHA256SUMS, under the
#    device tool's 64 MiB limit for what travels; a folder named by
#    DEVICE_OUT keeps whatever else it holds (tools/_device_set.sh).
#
# Idempotent and cached like setup_env.sh's wheel: the set is kept in
# $WHEEL_CACHE/device/<tag>-<hash of its recipe> and the twin in
# $WHEEL_CACHE/device/twin-<tag>,
# so a second run (or a fresh clone) takes seconds.
#
# Environment knobs:
#   PYTHON312    the Python 3.12 interpreter (default: python3.12)
#   WHEEL_CACHE  where built wheels are kept (default ~/.cache/sar/wheels)
#   DEVICE_OUT   where the set is put (default: .device/wheels in the clone)
#   MAX_JOBS     parallel compile jobs for mmcv-full (default: nproc)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MMCV_VERSION=1.7.2
WHEEL_CACHE="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sar/wheels}"
DEVICE_OUT="${DEVICE_OUT:-$ROOT/.device/wheels}"
LIMIT_BYTES=$((60 * 1024 * 1024))  # 64 MiB travel, the repository included
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
# The GPU machine's CPU ops: never compile CUDA kernels here, even where a
# GPU is visible, so the wheel is the same wherever it is built.
export FORCE_CUDA=0

log() { printf '[build_device_wheels] %s\n' "$*"; }
# shellcheck source=tools/_mmcv_wheel.sh
source "$ROOT/tools/_mmcv_wheel.sh"
# shellcheck source=tools/_device_set.sh
source "$ROOT/tools/_device_set.sh"
# shellcheck source=tools/_env_common.sh
source "$ROOT/tools/_env_common.sh"

is_py312() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; }
if [ -z "${PYTHON312:-}" ]; then
    # python3.12 on the PATH, else a pyenv-installed 3.12 (pyenv's shim
    # fails when 3.12 is installed but not selected).
    for candidate in "$(command -v python3.12 || true)" \
            "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python3.12; do
        if is_py312 "$candidate"; then PYTHON312="$candidate"; break; fi
    done
fi
if ! is_py312 "${PYTHON312:-}"; then
    echo "build_device_wheels: needs a Python 3.12 interpreter (the GPU machine's);" \
         "set PYTHON312=/path/to/python3.12" >&2
    exit 2
fi

# 1. The twin of the GPU machine's stack.
TWIN_TORCH="$(sed -n 's/^torch==//p' "$ROOT/requirements/device-twin.txt")"
TAG="py312-torch$TWIN_TORCH-cpu"
TWIN="$WHEEL_CACHE/device/twin-$TAG"
TPY="$TWIN/bin/python"
if ! "$TPY" -c "import torch, torchvision, cv2, yaml, matplotlib, sys; sys.exit(torch.__version__.split('+')[0] != '$TWIN_TORCH')" >/dev/null 2>&1; then
    log "creating the twin virtualenv $TWIN (torch $TWIN_TORCH: several GB)"
    rm -rf "$TWIN"
    "$PYTHON312" -m venv "$TWIN"
fi
# The twin is exactly requirements/lock/device-twin.txt (uv pip sync: what
# the lock does not name goes); seconds when it already is.
if ! "$TPY" "$ROOT/tools/locks.py" check "$ROOT/requirements/lock/device-twin.txt" >/dev/null 2>&1; then
    PYTHON="$PYTHON312"
    ensure_uv
    "$UV" pip sync -q --no-config --python "$TPY" "$ROOT/requirements/lock/device-twin.txt"
fi
[ "$(CUDA_VISIBLE_DEVICES='' mmcv_wheel_tag "$TPY")" = "$TAG" ] \
    || { echo "build_device_wheels: the twin's torch is not $TWIN_TORCH" >&2; exit 1; }

# Keyed on its recipe: a change to the requirements, to the mmcv build or
# to this script makes a new set (the mmcv-full wheel is cached by tag).
KEY="$(cat "$ROOT"/requirements/device*.txt "$ROOT"/requirements/lock/device*.txt \
    "$ROOT/requirements/lock/build.txt" "$ROOT/tools/_mmcv_wheel.sh" \
    "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"
SET="$WHEEL_CACHE/device/$TAG-$KEY"
if [ ! -f "$SET/SHA256SUMS" ] || ! (cd "$SET" && sha256sum --quiet -c SHA256SUMS); then
    rm -rf "$SET"
    mkdir -p "$SET"
    # 2. mmcv-full, built once per tag (the same cache setup_env.sh uses).
    FULL="$(ls "$WHEEL_CACHE/$TAG"/mmcv_full-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$FULL" ]; then
        log "building mmcv-full $MMCV_VERSION for $TAG (10-15 minutes on 2 cores)"
        build_mmcv_wheel "$TPY" "$WHEEL_CACHE/$TAG"
        FULL="$(ls "$WHEEL_CACHE/$TAG"/mmcv_full-"$MMCV_VERSION"-*.whl | head -n1)"
    fi
    log "stripping the debug symbols of $(basename "$FULL")"
    WORK="$(mktemp -d)"
    "$TPY" -m wheel unpack -d "$WORK" "$FULL" >/dev/null
    find "$WORK" -name '*.so' -exec strip --strip-debug {} +
    # `wheel pack` writes the RECORD anew, with the stripped files' hashes.
    "$TPY" -m wheel pack -d "$SET" "$WORK"/mmcv_full-* >/dev/null
    rm -rf "$WORK"
    # 3. The pure-Python rest, for CPython 3.12 on x86-64 Linux: the pins
    #    of requirements/lock/device.txt that the twin (the machine's image)
    #    lacks, checked against the lock's hashes.
    log "downloading the wheels of requirements/lock/device.txt that the machine lacks"
    "$TPY" "$ROOT/tools/locks.py" subset "$ROOT/requirements/lock/device.txt" \
        --minus "$ROOT/requirements/lock/device-twin.txt" > "$SET/carried.txt"
    "$TPY" -m pip --disable-pip-version-check -q download --no-deps \
        --require-hashes --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$SET" -r "$SET/carried.txt"
    rm "$SET/carried.txt"
    # The set must import in the twin as gpu_check.sh installs it there:
    # a dependency missing from requirements/device.txt shows here.
    PROBE="$(mktemp -d)"
    "$TPY" -m pip --disable-pip-version-check -q install --no-index \
        --no-deps --no-compile --target "$PROBE" "$SET"/*.whl
    if ! PYTHONPATH="$PROBE" "$TPY" -c 'import mmcv, mmcv.ops, mmcv.runner, mmcls, mmseg.apis, prettytable' \
            >"$PROBE.log" 2>&1; then
        tail -n 5 "$PROBE.log" >&2
        echo "build_device_wheels: the set does not import in the twin;" \
             "add the missing package to requirements/device.txt" >&2
        rm -rf "$PROBE" "$PROBE.log" "$SET"
        exit 1
    fi
    rm -rf "$PROBE" "$PROBE.log"
    (cd "$SET" && sha256sum -- *.whl > SHA256SUMS)
fi

# 4. Into the clone, checked.
SIZE="$(cat "$SET"/*.whl | wc -c)"
if [ "$SIZE" -gt "$LIMIT_BYTES" ]; then
    echo "build_device_wheels: the set is $SIZE bytes, over $LIMIT_BYTES" >&2
    exit 1
fi
place_device_set "$SET" "$DEVICE_OUT" "$TWIN"
log "ready: $(ls "$DEVICE_OUT"/*.whl | wc -l) wheels, $((SIZE / 1024)) KiB in $DEVICE_OUT (twin: $TWIN)"
