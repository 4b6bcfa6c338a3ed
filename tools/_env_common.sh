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
#   ensure_uv        uv, the installer of the locked environments, at the
#                    version and hashes of requirements/lock/uv.txt, in a
#                    virtualenv of its own (.cache/uv in the clone); sets UV
#   sync_locked LOCK EXTRA...
#                    make the virtualenv of $PY exactly LOCK (a file of
#                    requirements/lock/) plus the named extras, with
#                    `uv pip sync`: what the lock does not name goes, what it
#                    names is installed at its version and checked against
#                    its hashes. Seconds when nothing differs
#   install_locked LOCK MMCV_PACKAGE MMCV_VERSION MMCV_OK
#                    the project's environment: LOCK, the mmcv wheel
#                    (built here; MMCV_OK is the function that says it is
#                    installed) and sar editable from this clone, then
#                    checked to be exactly that
#   sar_is_this_clone
#                    the sar that $PY imports is this clone's

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

# The interpreter the locks of .venv and .venv-mmseg1 resolve for
# (tools/lock.sh): wheels and markers differ between Python versions.
LOCKED_PYTHON=3.11

ensure_uv() {
    local home="$ROOT/.cache/uv" want
    want="$(sed -n 's/^uv==\([^ ]*\).*/\1/p' "$ROOT/requirements/lock/uv.txt")"
    UV="$home/bin/uv"
    if [ "$("$UV" --version 2>/dev/null | cut -d' ' -f2)" != "$want" ]; then
        log "installing uv $want (requirements/lock/uv.txt) into $home"
        rm -rf "$home"
        "$PYTHON" -m venv "$home"
        "$home/bin/python" -m pip --disable-pip-version-check -q install \
            --require-hashes --no-deps -r "$ROOT/requirements/lock/uv.txt"
    fi
}

sync_locked() {
    local lock="$1" name
    shift
    local extras=()
    for name in "$@"; do extras+=(--extra "$name"); done
    if ! (cd "$EMPTY" && "$PY" "$ROOT/tools/locks.py" check "$lock" "${extras[@]}") \
            >"$EMPTY/lock.diff" 2>&1; then
        log "bringing $VENV to $lock ($(($(wc -l <"$EMPTY/lock.diff") - 1)) differences)"
        sed -n '2,6p' "$EMPTY/lock.diff"
        "$UV" pip sync -q --no-config --python "$PY" "$lock"
    fi
}

sar_is_this_clone() {
    # find_spec, not `import sar`: a sar without this generation's glue
    # refuses to import.
    has -c "import importlib.util as u, os, sys; s = u.find_spec('sar'); sys.exit(s is None or os.path.dirname(os.path.dirname(os.path.realpath(s.origin))) != os.path.realpath('$ROOT'))"
}

install_locked() {
    local lock="$1" pkg="$2" version="$3" ok="$4"
    if ! has -c "import platform, sys; sys.exit((sys.implementation.name, '%d.%d' % sys.version_info[:2], sys.platform, platform.machine()) != ('cpython', '$LOCKED_PYTHON', 'linux', 'x86_64'))"; then
        echo "$(basename "$0"): $lock is for CPython $LOCKED_PYTHON on x86-64 Linux," \
             "and $VENV runs $("$PY" -c 'import platform; print(platform.python_implementation(), platform.python_version(), platform.system(), platform.machine())')." \
             "Remove $VENV and set PYTHON=/path/to/python$LOCKED_PYTHON, or install" \
             "into an environment of your own with SAR_SYSTEM_SITE=1 (the loose ranges of requirements/)." >&2
        exit 2
    fi
    ensure_uv
    sync_locked "$lock" "$pkg" sar
    if ! "$ok"; then
        install_mmcv_wheel "$PY" "$pkg" "$version" --no-deps
    fi
    if ! sar_is_this_clone; then
        log "installing sar (editable, $ROOT)"
        "$UV" pip install -q --no-config --python "$PY" --no-deps \
            --no-build-isolation -e "$ROOT"
    fi
    if ! (cd "$EMPTY" && "$PY" "$ROOT/tools/locks.py" check "$lock" \
            --extra "$pkg" --extra sar); then
        echo "$(basename "$0"): $VENV is not $lock after installing it" >&2
        exit 1
    fi
}
