#!/usr/bin/env bash
# Build the SAR development environment: a virtualenv with torch, mmcv-full
# 1.7.2 (built from its sdist, patched for torch 2.x), mmsegmentation 0.30.0 and
# this package in editable mode. The mmseg 1.x environment (.venv-mmseg1) is
# tools/setup_env_mmseg1.sh's.
#
# The environment is exactly requirements/lock/mmseg0.txt (what `make lock`
# resolved), the mmcv-full wheel built here and sar: a second run, or one
# after the lock changed, brings it back to that in seconds (uv pip sync),
# so two machines get the same packages whatever the index serves that day.
# Idempotent: every step first checks whether its result is already there. The built mmcv-full wheel is kept in a cache
# outside the clone (WHEEL_CACHE, default ~/.cache/sar/wheels) so fresh clones
# on the same machine reuse it, and copied into the clone's git-ignored
# .cache/wheels.
#
# Environment knobs:
#   VENV            virtualenv to create/use (default: .venv in the project root)
#   PYTHON          interpreter for a new virtualenv (default: python3.11, else python3)
#   SAR_SYSTEM_SITE 1: create the virtualenv with --system-site-packages, so an
#                   already-installed torch (e.g. a CUDA build) is reused;
#                   the environment is then the user's, and the loose ranges
#                   of requirements/ apply instead of the lock
#   TORCH_SPEC      what to pip-install when torch is missing (SAR_SYSTEM_SITE=1)
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

# shellcheck source=tools/_env_common.sh
source "$ROOT/tools/_env_common.sh"
open_venv "$VENV"

LOCK="$ROOT/requirements/lock/mmseg0.txt"

# shellcheck source=tools/_mmcv_wheel.sh
source "$ROOT/tools/_mmcv_wheel.sh"
mmcv_ok() {
    has -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '$MMCV_VERSION')"
}

if [ "${SAR_SYSTEM_SITE:-0}" = 1 ]; then
    # The user's own packages (a CUDA torch, say) stay: the loose ranges of
    # requirements/ apply, not the lock.
    # 1. torch + torchvision (mmcv.runner imports torchvision).
    ensure_torch
    # 2. The runtime venv keeps the setuptools its packages ask for (torch
    #    2.14 requires >= 77). An environment made by an older version of
    #    this script holds the build tools' setuptools<70: put it right.
    CONFLICTS="$("$PY" -m pip check 2>&1 || true)"
    if grep -q 'requirement setuptools' <<<"$CONFLICTS"; then
        log "upgrading setuptools in $VENV to what its packages require"
        "${PIP[@]}" install --upgrade setuptools
    fi
    # 3. mmcv-full with compiled ops, from the wheel cache or built from its
    #    sdist (tools/_mmcv_wheel.sh).
    if ! mmcv_ok; then
        install_mmcv_wheel "$PY" mmcv-full "$MMCV_VERSION" \
            -c "$ROOT/requirements/constraints.txt"
    fi
    # 4. mmsegmentation, this package and the test tools.
    if ! has -c "import mmseg, sys; sys.exit(mmseg.__version__ != '$MMSEG_VERSION')" \
       || ! has -c 'import sar, sklearn, matplotlib' || ! test_tools_ok; then
        log "installing mmsegmentation $MMSEG_VERSION, sar (editable) and test requirements"
        "${PIP[@]}" install -c "$ROOT/requirements/constraints.txt" \
            "mmsegmentation==$MMSEG_VERSION" -r "$ROOT/requirements/tests.txt"
        "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
    fi
else
    # The project's environment: exactly the lock, the mmcv-full wheel built
    # here and sar (see _env_common.sh: install_locked).
    install_locked "$LOCK" mmcv-full "$MMCV_VERSION" mmcv_ok
fi
log "ready: $("$PY" -c 'import torch, mmcv, mmseg; print("torch", torch.__version__, "mmcv-full", mmcv.__version__, "mmseg", mmseg.__version__)')"
