#!/usr/bin/env bash
# Build the mmseg 1.x environment of SAR's 1.x glue: a virtualenv (default
# .venv-mmseg1) with torch, mmcv 2.1.0 (built from its sdist, patched for
# torch 2.x), mmengine 0.10.7, mmsegmentation 1.2.2 and this package in
# editable mode. The 0.x environment is tools/setup_env.sh's; both share the
# wheel builder of tools/_mmcv_wheel.sh and its cache.
#
# The environment is exactly requirements/lock/mmseg1.txt (what `make lock`
# resolved), the mmcv wheel built here and sar: a second run, or one after
# the lock changed, brings it back to that in seconds (uv pip sync).
# Idempotent: every step first checks whether its result is already there. The built mmcv wheel is kept in a cache outside
# the clone (WHEEL_CACHE, default ~/.cache/sar/wheels/<tag>) so fresh clones
# on the same machine reuse it, and copied into the clone's git-ignored
# .cache/wheels.
#
# Environment knobs:
#   VENV_MMSEG1     virtualenv to create/use (default: .venv-mmseg1 in the
#                   project root)
#   PYTHON          interpreter for a new virtualenv (default: python3.11, else python3)
#   SAR_SYSTEM_SITE 1: create the virtualenv with --system-site-packages, so an
#                   already-installed torch (e.g. a CUDA build) is reused;
#                   the environment is then the user's, and the loose ranges
#                   of requirements/ apply instead of the lock
#   TORCH_SPEC      what to pip-install when torch is missing (SAR_SYSTEM_SITE=1)
#   MAX_JOBS        parallel compile jobs for mmcv (default: nproc)
#   WHEEL_CACHE     where built wheels are kept
#   SAR_MMSEG1_STACK
#                   upstream (default) or onedl: OneDL's fork into
#                   .venv-onedl (VENV_ONEDL), `make install-onedl`
#
# Traps met on the way (torch 2.14.1, Python 3.11, CPU):
# - mmcv 2.1.0 has no wheel for this torch: it is built from its sdist, whose
#   setup.py asks for -std=c++14 or -std=c++17 where torch 2.14's headers
#   need C++20 (_mmcv_wheel.sh raises them), and imports pkg_resources, so it
#   builds in _mmcv_wheel.sh's throwaway venv with setuptools<70 (the runtime
#   venv keeps the setuptools>=77 torch asks for).
# - Never check `import mmcv` from inside the unpacked sdist folder: its
#   mmcv/ (without the compiled _ext) shadows the installed package. An mmcv
#   without ops is not enough anyway: mmseg 1.2.2's mmseg.utils imports
#   mmcv.ops (mmseg/utils/mask_classification.py).
# - mmsegmentation 1.2.2 imports ftfy and regex (mmseg/utils/tokenizer.py,
#   imported by mmseg.utils itself) without declaring them: requirements/mmseg1.txt
#   lists them.
# - mmengine 0.10.7 resolves `mmseg::` config inheritance
#   (`_base_ = ['mmseg::_base_/default_runtime.py']`) with pkg_resources:
#   "ModuleNotFoundError: No module named 'pkg_resources'" under the
#   setuptools 84 that torch's `setuptools>=77.0.3` pulls in (setuptools 82
#   dropped it). requirements/mmseg1.txt keeps setuptools below 82 (81 warns
#   that pkg_resources is deprecated, and works).
# - sar is installed with --no-deps, so that the resolver leaves the
#   stack above alone. Its presence is checked with find_spec, not
#   `import sar`: a sar without the 1.x glue refuses to import next to
#   mmseg 1.x (_env_common.sh: sar_is_this_clone).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# SAR_MMSEG1_STACK=onedl (`make install-onedl`): OneDL's maintained fork of
# the same modules, onedl-mmcv 2.3.6 / onedl-mmengine / onedl-mmsegmentation
# (requirements/onedl.txt), in .venv-onedl (VENV_ONEDL).
case "${SAR_MMSEG1_STACK:-upstream}" in
    upstream)
        VENV="${VENV_MMSEG1:-$ROOT/.venv-mmseg1}"
        DIST_PREFIX=; MMCV_VERSION=2.1.0; NAME=mmseg1
        # mmengine 0.10.7 needs pkg_resources (below); onedl-mmengine not.
        EXTRA_IMPORTS=', pkg_resources' ;;
    onedl)
        VENV="${VENV_ONEDL:-$ROOT/.venv-onedl}"
        DIST_PREFIX=onedl-; MMCV_VERSION=2.3.6; NAME=onedl; EXTRA_IMPORTS= ;;
    *)
        echo "setup_env_mmseg1: SAR_MMSEG1_STACK is upstream or onedl, not '$SAR_MMSEG1_STACK'" >&2
        exit 2 ;;
esac
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}"
MMCV_PACKAGE="${DIST_PREFIX}mmcv"
REQUIREMENTS="$ROOT/requirements/$NAME.txt"
MMENGINE_VERSION="$(sed -n "s/^${DIST_PREFIX}mmengine==//p" "$REQUIREMENTS")"
MMSEG_VERSION="$(sed -n "s/^${DIST_PREFIX}mmsegmentation==//p" "$REQUIREMENTS")"
WHEEL_CACHE="${WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/sar/wheels}"
LOCAL_CACHE="$ROOT/.cache/wheels"
export MAX_JOBS="${MAX_JOBS:-$(nproc)}"

log() { printf '[setup_env_mmseg1] %s\n' "$*"; }

# shellcheck source=tools/_env_common.sh
source "$ROOT/tools/_env_common.sh"
open_venv "$VENV"

LOCK="$ROOT/requirements/lock/$NAME.txt"

# shellcheck source=tools/_mmcv_wheel.sh
source "$ROOT/tools/_mmcv_wheel.sh"
mmcv_ok() {
    has -c "import mmcv, sys; from mmcv.ops import nms; sys.exit(mmcv.__version__ != '$MMCV_VERSION')"
}

if [ "${SAR_SYSTEM_SITE:-0}" = 1 ]; then
    # The user's own packages (a CUDA torch, say) stay: the loose ranges of
    # requirements/ apply, not the lock.
    # 1. torch + torchvision.
    ensure_torch
    # 2. mmcv with compiled ops, from the wheel cache or built from its sdist.
    if ! mmcv_ok; then
        install_mmcv_wheel "$PY" "$MMCV_PACKAGE" "$MMCV_VERSION"
    fi
    # 3. mmengine, mmsegmentation, this package and the test tools.
    if ! has -c "import mmengine, mmseg, sys; sys.exit((mmengine.__version__, mmseg.__version__) != ('$MMENGINE_VERSION', '$MMSEG_VERSION'))" \
       || ! has -c "import sklearn, matplotlib, ftfy, regex$EXTRA_IMPORTS" \
       || ! test_tools_ok || ! sar_is_this_clone; then
        log "installing ${DIST_PREFIX}mmengine $MMENGINE_VERSION, ${DIST_PREFIX}mmsegmentation $MMSEG_VERSION, sar (editable) and the test and demo requirements"
        "${PIP[@]}" install -r "$REQUIREMENTS" \
            -r "$ROOT/requirements/test-tools.txt" -r "$ROOT/requirements/demo.txt"
        "${PIP[@]}" install --no-deps --no-build-isolation -e "$ROOT"
    fi
else
    # The project's environment: exactly the lock, the mmcv wheel built
    # here and sar (see _env_common.sh: install_locked).
    install_locked "$LOCK" "$MMCV_PACKAGE" "$MMCV_VERSION" mmcv_ok
fi

# 4. The check of the whole stack, which also says what is there (its last
# line: OneDL's mmseg prints "Could not import OneDL" on import).
if ! READY="$(cd "$EMPTY" && "$PY" -c '
import torch, mmcv, mmcv.ops, mmengine, mmseg
from mmseg.utils import register_all_modules
register_all_modules()
print("torch", torch.__version__, "mmcv", mmcv.__version__, "mmengine", mmengine.__version__, "mmseg", mmseg.__version__)
' 2>"$EMPTY/err" | tail -n 1)"; then
    tail -n 20 "$EMPTY/err" >&2
    echo "setup_env_mmseg1: mmseg 1.x does not import in $VENV" >&2
    exit 1
fi
log "ready: $READY"
