# Sourced by tools/setup_env.sh (.venv, mmseg 0.x) and
# tools/setup_env_mmseg1.sh (.venv-mmseg1, mmseg 1.x): the steps both
# environments take the same way. Needs PYTHON, TORCH_SPEC and a `log`
# function; sets PY, PIP and EMPTY.
#
#   open_venv VENV   create VENV (once) with $PYTHON; --system-site-packages
#                    when SAR_SYSTEM_SITE=1, so an installed (CUDA) torch is
#                    reused
#   has ARGS...      `$PY ARGS...` succeeds, run from an empty folder:
#                    `python -c` puts the working directory first on
#                    sys.path, where an unpacked mmcv sdist or the project's
#                    own sar/ would shadow what is installed
#   ensure_torch     install $TORCH_SPEC unless torch and torchvision import
#                    (an existing torch is kept whatever its version: sar
#                    checks the supported range on import)
#   test_tools_ok    pytest and pytest-xdist >= 3.8 are there (the
#                    Makefile's --no-loadscope-reorder; an older xdist
#                    imports as well, so its version is read)

open_venv() {
    local venv="$1"
    if [ ! -x "$venv/bin/python" ]; then
        log "creating virtualenv $venv with $PYTHON"
        if [ "${SAR_SYSTEM_SITE:-0}" = 1 ]; then
            "$PYTHON" -m venv --system-site-packages "$venv"
        else
            "$PYTHON" -m venv "$venv"
        fi
    fi
    PY="$venv/bin/python"
    PIP=("$PY" -m pip --disable-pip-version-check -q)
    EMPTY="$(mktemp -d)"
    # shellcheck disable=SC2064
    trap "rm -rf '$EMPTY'" EXIT
}

has() { (cd "$EMPTY" && "$PY" "$@") >/dev/null 2>&1; }

test_tools_ok() {
    has -c 'import sys, pytest, xdist
sys.exit(tuple(map(int, xdist.__version__.split(".")[:2])) < (3, 8))'
}

ensure_torch() {
    if ! has -c 'import torch, torchvision'; then
        log "installing $TORCH_SPEC"
        # shellcheck disable=SC2086
        "${PIP[@]}" install $TORCH_SPEC
    fi
}
