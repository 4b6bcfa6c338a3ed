#!/usr/bin/env bash
# Prepare, on a CPU machine, everything tools/gpu_check.sh installs on the GPU
# machine, which has Python 3.12 and torch 2.11 but no mmcv, no mmseg and no
# package index:
#
#   bash tools/build_device_wheels.sh
#
# 1. a "twin" virtualenv of the GPU machine's own stack (Python 3.12,
#    exactly requirements/lock/device-twin.txt; torch there is PyPI's build,
#    which runs on the CPU): the mmcv wheels are built against it, and
#    `tools/gpu_check.sh --cpu` rehearses the check in it;
# 2. two sets of wheels, one per mmseg generation, each with its mmcv built
#    from the sdist against that torch, CPU ops only (none of the models in
#    configs/ calls mmcv's CUDA kernels), with the same patch as
#    tools/setup_env.sh, and its debug symbols stripped (78 MB of mmcv-full's
#    extension is debug information):
#    - mmseg 0.30: mmcv-full 1.7.2 and the pure-Python wheels of
#      requirements/lock/device.txt that the twin lacks;
#    - mmseg 1.x: mmcv 2.1.0 and those of requirements/lock/device-mmseg1.txt
#      (mmengine 0.10.7, mmsegmentation 1.2.2, ...);
#    at the locks' versions and hashes;
# 3. the sets in .device/wheels and .device/wheels-mmseg1 (git-ignored),
#    each with SHA256SUMS, together under the device tool's 64 MiB limit for
#    what travels; a folder named by DEVICE_OUT or DEVICE_OUT_MMSEG1 keeps
#    whatever else it holds (tools/_device_set.sh).
#
# Idempotent and cached like setup_env.sh's wheel: each set is kept in
# $WHEEL_CACHE/device/<tag>-<generation>-<hash of its recipe> and the twin
# in $WHEEL_CACHE/device/twin-<tag>,
# so a second run (or a fresh clone) takes seconds.
#
# Environment knobs:
#   PYTHON312    the Python 3.12 interpreter (default: python3.12)
#   WHEEL_CACHE  where built wheels are kept (default ~/.cache/sar/wheels)
#   DEVICE_OUT   where the mmseg 0.30 set is put (default: .device/wheels in
#                the clone)
#   DEVICE_OUT_MMSEG1
#                where the mmseg 1.x set is put (default:
#                .device/wheels-mmseg1 in the clone)
#   MAX_JOBS     parallel compile jobs for the mmcv builds (default: nproc)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MMCV_VERSION=1.7.2
MMCV1_VERSION=2.1.0
WHEEL_CACHE="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sar/wheels}"
DEVICE_OUT="${DEVICE_OUT:-$ROOT/.device/wheels}"
DEVICE_OUT_MMSEG1="${DEVICE_OUT_MMSEG1:-$ROOT/.device/wheels-mmseg1}"
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
# to this script makes a new set (the mmcv wheels are cached by tag).
KEY="$(cat "$ROOT"/requirements/device*.txt "$ROOT"/requirements/lock/device*.txt \
    "$ROOT/requirements/lock/build.txt" "$ROOT/tools/_mmcv_wheel.sh" \
    "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)"

# build_set NAME MMCV_PACKAGE MMCV_VERSION LOCK PROBE [locks.py subset options]
#   makes $WHEEL_CACHE/device/$TAG-NAME-$KEY (unless it is there and
#   whole) and sets SET to it: the mmcv wheel, stripped; LOCK's pins that
#   the twin lacks (with the options' changes); checked to run PROBE (Python
#   code) in the twin as gpu_check.sh installs the set there.
build_set() {
    local name="$1" pkg="$2" version="$3" lock="$4" probe="$5"
    shift 5
    SET="$WHEEL_CACHE/device/$TAG-$name-$KEY"
    if [ -f "$SET/SHA256SUMS" ] && (cd "$SET" && sha256sum --quiet -c SHA256SUMS); then
        return 0
    fi
    rm -rf "$SET"
    mkdir -p "$SET"
    # The mmcv wheel, built once per tag (the same cache setup_env.sh
    #    and setup_env_mmseg1.sh use).
    local built work probe_dir
    built="$(ls "$WHEEL_CACHE/$TAG/${pkg//-/_}-$version"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$built" ]; then
        log "building $pkg $version for $TAG (10-15 minutes on 2 cores)"
        build_mmcv_wheel "$TPY" "$WHEEL_CACHE/$TAG" "$pkg" "$version"
        built="$(ls "$WHEEL_CACHE/$TAG/${pkg//-/_}-$version"-*.whl | head -n1)"
    fi
    log "stripping the debug symbols of $(basename "$built")"
    work="$(mktemp -d)"
    "$TPY" -m wheel unpack -d "$work" "$built" >/dev/null
    find "$work" -name '*.so' -exec strip --strip-debug {} +
    # `wheel pack` writes the RECORD anew, with the stripped files' hashes.
    "$TPY" -m wheel pack -d "$SET" "$work/${pkg//-/_}-$version" >/dev/null
    rm -rf "$work"
    # The pure-Python rest, for CPython 3.12 on x86-64 Linux: the pins
    #    of LOCK that the twin (the machine's image) lacks, checked against
    #    the lock's hashes.
    log "downloading the wheels of requirements/lock/$(basename "$lock") that the machine lacks"
    "$TPY" "$ROOT/tools/locks.py" subset "$lock" \
        --minus "$ROOT/requirements/lock/device-twin.txt" "$@" > "$SET/carried.txt"
    "$TPY" -m pip --disable-pip-version-check -q download --no-deps \
        --require-hashes --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$SET" -r "$SET/carried.txt"
    rm "$SET/carried.txt"
    # The set must work in the twin as gpu_check.sh installs it there: a
    # dependency missing from the requirements shows here.
    probe_dir="$(mktemp -d)"
    "$TPY" -m pip --disable-pip-version-check -q install --no-index \
        --no-deps --no-compile --target "$probe_dir" "$SET"/*.whl
    if ! (cd "$ROOT" && PYTHONPATH="$probe_dir:$ROOT" "$TPY" -c "$probe") \
            >"$probe_dir.log" 2>&1; then
        tail -n 5 "$probe_dir.log" >&2
        echo "build_device_wheels: the $name set does not import in the twin;" \
             "add the missing package to its requirements file" >&2
        rm -rf "$probe_dir" "$probe_dir.log" "$SET"
        exit 1
    fi
    rm -rf "$probe_dir" "$probe_dir.log"
    (cd "$SET" && sha256sum -- *.whl > SHA256SUMS)
}

# mmseg 0.30: mmcv-full 1.7.2 and requirements/lock/device.txt.
build_set mmseg0x mmcv-full "$MMCV_VERSION" "$ROOT/requirements/lock/device.txt" \
    'import mmcv, mmcv.ops, mmcv.runner, mmcls, mmseg.apis, prettytable'
SET0="$SET"
# mmseg 1.x: mmcv 2.1.0 and requirements/lock/device-mmseg1.txt, where
# setuptools is carried whatever the twin holds (see
# requirements/device-mmseg1.txt) and opencv-python is not: mmengine asks
# for it, and the image's opencv-python-headless is the same cv2. The probe
# also resolves a config's `mmseg::` base, as mmengine does it.
build_set mmseg1x mmcv "$MMCV1_VERSION" "$ROOT/requirements/lock/device-mmseg1.txt" \
    'import mmcv.ops, mmengine, mmseg.apis, sar.mmseg1x; from mmengine.config import Config; Config.fromfile("configs/mmseg1x/sar/sar_fcn_hr48_4xb4-160k_ade20k-512x512.py")' \
    --keep setuptools --drop opencv-python
SET1="$SET"

# Into the clone, checked: both sets travel together.
SIZE="$(cat "$SET0"/*.whl "$SET1"/*.whl | wc -c)"
if [ "$SIZE" -gt "$LIMIT_BYTES" ]; then
    echo "build_device_wheels: the two sets are $SIZE bytes, over $LIMIT_BYTES" >&2
    exit 1
fi
place_device_set "$SET0" "$DEVICE_OUT" "$TWIN"
place_device_set "$SET1" "$DEVICE_OUT_MMSEG1" "$TWIN"
log "ready: $(ls "$DEVICE_OUT"/*.whl | wc -l) + $(ls "$DEVICE_OUT_MMSEG1"/*.whl | wc -l) wheels," \
    "$((SIZE / 1024)) KiB in $DEVICE_OUT and $DEVICE_OUT_MMSEG1 (twin: $TWIN)"
