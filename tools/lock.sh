#!/usr/bin/env bash
# `make lock`: resolve every lock of requirements/lock/ from its loose
# requirements (the *.in beside it, which name requirements/*.txt), with
# uv's resolver (`uv pip compile`). An existing lock is the starting point:
# a pin moves only where its requirements no longer allow it, or where it
# follows from one that moved. To bump a dependency: edit requirements/,
# `make lock`, `make test`, commit both.
#
#   bash tools/lock.sh [LOCK ...]    LOCK: mmseg0 mmseg1 onedl build build-onedl uv
#                                    device-twin device device-mmseg1
#                                    (default: all, in that order)
#   UPGRADE=1 bash tools/lock.sh     every pin to the newest its requirements allow
#
# Each lock is for one interpreter and platform, the one its environment is
# made with: .venv, .venv-mmseg1 and .venv-onedl CPython 3.11 on x86-64
# Linux, the GPU machine's twin and carried set CPython 3.12 there; the
# build tools and uv resolve for any platform (--universal).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
log() { printf '[lock] %s\n' "$*"; }
# shellcheck source=tools/_env_common.sh
source "$ROOT/tools/_env_common.sh"
ensure_uv

LOCKS=("$@")
[ ${#LOCKS[@]} -gt 0 ] || LOCKS=(mmseg0 mmseg1 onedl build build-onedl uv device-twin device device-mmseg1)
cd "$ROOT/requirements/lock"
for lock in "${LOCKS[@]}"; do
    case "$lock" in
        mmseg0|mmseg1|onedl) target=(--python-version 3.11 --python-platform x86_64-manylinux_2_28) ;;
        device-twin|device|device-mmseg1) target=(--python-version 3.12 --python-platform x86_64-manylinux_2_28) ;;
        build|uv) target=(--universal --python-version 3.8) ;;
        build-onedl) target=(--universal --python-version 3.10) ;;  # onedl-mmcv's floor
        *) echo "lock.sh: no lock named $lock (mmseg0 mmseg1 onedl build build-onedl uv device-twin device device-mmseg1)" >&2; exit 2 ;;
    esac
    upgrade=()
    [ "${UPGRADE:-0}" = 1 ] && upgrade=(--upgrade)
    log "requirements/lock/$lock.txt"
    # Relative paths, so the lock's comments read the same on every machine.
    "$UV" pip compile -q --no-config --generate-hashes --no-strip-markers \
        --custom-compile-command 'make lock' "${target[@]}" "${upgrade[@]}" \
        -o "$lock.txt" "$lock.in"
done
