#!/usr/bin/env bash
# Build the SAR development environment: a virtualenv with torch, mmcv-full
# 1.7.2 (built from its sdist, patched for torch 2.x), mmsegmentation 0.30.0 and
# this package in editable mode.
#
# Idempotent: every step first checks whether its result is already there, so
# a second run takes seconds. The built mmcv-full wheel is kept in a cache
# outside the clone (WHEEL_CACHE, default ~/.cache/sar/wheels) so fresh clones
# on the same machine reuse it, and copied into the clone's git-ignored
# .cache/wheels.
#
# Environment knobs:
#   VENV            virtualenv to create/use (default: .venv in the project root)
#   PYTHON          interpreter for a new virtualenv (default: python3.11, else python3)
#   SAR_SYSTEM_SITE 1: create the virtualenv with --system-site-packages, so an
#                   already-installed torch (e.g. a CUDA build) is reused
#   TORCH_SPEC      what to pip-install when torch is missing
#   MAX_JOBS        parallel compile jobs for mmcv-full (default: nproc)
#   WHEEL_CACHE     where built wheels are kept
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
MMCV_VERSION=1.7.2
MMSEG_VERSION=0.30.0
WHEEL_CACHE="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sar/wheels}"
LOCAL_CACHE="$ROOT/.cache/wheels"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

log() { printf '[setup_env] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV with $PYTHON"
    if [ "${SAR_SYSTEM_SITE:-0}" = 1 ]; then
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check -q)

has() { "$PY" "$@" >/dev/null 2>&1; }

# 1. torch + torchvision (mmcv.runner imports torchvision). An existing torch
#    is kept whatever its version: sar checks the supported range on import.
if ! has -c 'import torch, torchvision'; then
    log "installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "${PIP[@]}" install $TORCH_SPEC
fi

# 2. The runtime venv keeps the setuptools its packages ask for (torch 2.14
#    requires >= 77). An environment made by an older version of this script
#    holds the build tools' setuptools<70: put it right.
CONFLICTS="$("$PY" -m pip check 2>&1 || true)"
if grep -q 'requirement setuptools' <<<"$CONFLICTS"; then
    log "upgrading setuptools in $VENV to what its packages require"
    "${PIP[@]}" install --upgrade setuptools
fi

# The build tools live in a throwaway venv of their own: mmcv-full 1.7.2's
# setup.py imports pkg_resources (setuptools<70), which torch forbids in the
# runtime venv, and pip's resolver would print an ERROR there about it. The
# build venv sees the runtime venv's torch through a .pth file, after its
# own site-packages, so its setuptools<70 wins there and only there.
make_build_venv() {
    local dir="$1"
    local base
    base="$("$PY" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    "$base" -m venv "$dir"
    "$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' \
        > "$dir/.purelib"
    "$PY" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
        > "$(cat "$dir/.purelib")/sar_runtime.pth"
    "$dir/bin/python" -m pip --disable-pip-version-check -q install \
        --no-warn-conflicts 'setuptools<70' wheel ninja
}

# 3. mmcv-full with compiled ops, from the wheel cache or built from its sdist.
mmcv_ok() {
    has -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '$MMCV_VERSION')"
}
if ! mmcv_ok; then
    # The wheel depends on the Python ABI, the torch build and CUDA presence.
    TAG="$("$PY" -c '
import sys, torch
cuda = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda and torch.cuda.is_available() else "cpu"
print("py%d%d-torch%s-%s" % (sys.version_info[0], sys.version_info[1], torch.__version__.split("+")[0], cuda))
')"
    if [ "${TAG##*-}" != cpu ] && ! command -v nvcc >/dev/null; then
        log "CUDA device found but no nvcc: building CPU ops only"
        TAG="${TAG%-*}-cpu"
        export FORCE_CUDA=0
    fi
    CACHED="$WHEEL_CACHE/$TAG"
    WHL="$(ls "$CACHED"/mmcv_full-"$MMCV_VERSION"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$WHL" ]; then
        log "building mmcv-full $MMCV_VERSION for $TAG (several minutes, cached afterwards)"
        BUILD="$(mktemp -d)"
        make_build_venv "$BUILD/venv"
        BPIP=("$BUILD/venv/bin/python" -m pip --disable-pip-version-check -q)
        SDIST="$(ls "$WHEEL_CACHE"/sdist/mmcv-full-"$MMCV_VERSION".tar.gz 2>/dev/null || true)"
        if [ -z "$SDIST" ]; then
            mkdir -p "$WHEEL_CACHE/sdist"
            "${BPIP[@]}" download --no-deps --no-build-isolation --no-binary :all: \
                -d "$WHEEL_CACHE/sdist" "mmcv-full==$MMCV_VERSION"
            SDIST="$WHEEL_CACHE/sdist/mmcv-full-$MMCV_VERSION.tar.gz"
        fi
        tar -xzf "$SDIST" -C "$BUILD"
        SRC="$BUILD/mmcv-full-$MMCV_VERSION"
        # torch >= 2.10 headers use C++20 features; mmcv forces -std=c++17
        # (for the host compiler and for nvcc alike).
        sed -i 's/-std=c++17/-std=c++20/g' "$SRC/setup.py"
        grep -q -- '-std=c++20' "$SRC/setup.py"
        "${BPIP[@]}" wheel --no-deps --no-build-isolation -w "$BUILD/dist" "$SRC"
        mkdir -p "$CACHED"
        cp "$BUILD"/dist/mmcv_full-*.whl "$CACHED/"
        rm -rf "$BUILD"
        WHL="$(ls "$CACHED"/mmcv_full-"$MMCV_VERSION"-*.whl | head -n1)"
    fi
    mkdir -p "$LOCAL_CACHE/$TAG"
    cp -n "$WHL" "$LOCAL_CACHE/$TAG/" 2>/dev/null || true
    log "installing $(basename "$WHL")"
    "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" "$WHL"
fi

# 4. mmsegmentation, this package and the test tools.
if ! has -c "import mmseg, sys; sys.exit(mmseg.__version__ != '$MMSEG_VERSION')" \
   || ! has -c 'import sar, pytest, sklearn, matplotlib'; then
    log "installing mmsegmentation $MMSEG_VERSION, sar (editable) and test requirements"
    "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" \
        "mmsegmentation==$MMSEG_VERSION" -r "$ROOT/requirements/tests.txt"
    "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
fi
log "ready: $("$PY" -c 'import torch, mmcv, mmseg; print("torch", torch.__version__, "mmcv-full", mmcv.__version__, "mmseg", mmseg.__version__)')"
