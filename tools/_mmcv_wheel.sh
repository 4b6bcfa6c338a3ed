# Sourced by tools/setup_env.sh, tools/setup_env_mmseg1.sh and
# tools/build_device_wheels.sh: builds an mmcv wheel from its sdist against
# the torch of a given interpreter.
#
#   build_mmcv_wheel RUNTIME_PY DEST [PACKAGE [VERSION]]
#
# Leaves PACKAGE-VERSION-*.whl (with _ for -: mmcv_full-1.7.2-*.whl,
# mmcv-2.1.0-*.whl, onedl_mmcv-2.3.6-*.whl) in DEST. PACKAGE defaults to
# mmcv-full (mmseg 0.x) and VERSION to $MMCV_VERSION; mmcv 2.x (mmseg 1.x)
# is the package "mmcv", OneDL's fork of it "onedl-mmcv".
# Needs ROOT (the clone), WHEEL_CACHE (the sdist is kept in $WHEEL_CACHE/sdist) and a `log`
# function. Compiles the CPU ops unless the interpreter's torch sees a GPU and
# nvcc is on the PATH (FORCE_CUDA=0 forces CPU ops); MAX_JOBS sets the
# parallelism.

# The build tools live in a throwaway venv of their own: the setup.py of
# mmcv-full 1.7.2 and of mmcv 2.1.0 imports pkg_resources (setuptools<70),
# which torch forbids in the runtime venv, and pip's resolver would print an
# ERROR there about it. The build venv sees the runtime's torch through a .pth
# file, after its own site-packages, so its setuptools<70 wins there and only
# there. (The same setup.py is why `pip download` of the sdist runs in the
# build venv with --no-build-isolation: pip prepares the sdist's metadata
# even to download it, and an isolated build gets a setuptools without
# pkg_resources.)
#
# onedl-mmcv 2.3.6 is the other way round: its pyproject.toml asks for
# setuptools>=80 and its setup.py does not import pkg_resources; its tools
# are requirements/lock/build-onedl.txt.
_build_lock() {
    case "$1" in
        onedl-mmcv) echo "$ROOT/requirements/lock/build-onedl.txt" ;;
        *) echo "$ROOT/requirements/lock/build.txt" ;;
    esac
}

_make_build_venv() {
    local runtime_py="$1" dir="$2" lock="$3" base purelib
    base="$("$runtime_py" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    "$base" -m venv "$dir"
    purelib="$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$runtime_py" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
        > "$purelib/sar_runtime.pth"
    # requirements/lock/build*.txt: setuptools, wheel and ninja.
    "$dir/bin/python" -m pip --disable-pip-version-check -q install \
        --no-warn-conflicts --require-hashes --no-deps -r "$lock"
}

build_mmcv_wheel() {
    local runtime_py="$1" dest="$2" pkg="${3:-mmcv-full}" version="${4:-${MMCV_VERSION:-}}"
    local build sdist src
    [ -n "$version" ] || { echo "build_mmcv_wheel: no version for $pkg" >&2; return 2; }
    build="$(mktemp -d)"
    _make_build_venv "$runtime_py" "$build/venv" "$(_build_lock "$pkg")"
    local bpip=("$build/venv/bin/python" -m pip --disable-pip-version-check -q)
    # Older sdists keep the distribution's name (mmcv-full-1.7.2.tar.gz),
    # newer ones normalise it (onedl_mmcv-2.3.6.tar.gz), and the folder
    # inside is named as the file.
    sdist="$(ls "$WHEEL_CACHE/sdist/$pkg-$version.tar.gz" \
        "$WHEEL_CACHE/sdist/${pkg//-/_}-$version.tar.gz" 2>/dev/null | head -n1 || true)"
    if [ -z "$sdist" ]; then
        mkdir -p "$WHEEL_CACHE/sdist"
        "${bpip[@]}" download --no-deps --no-build-isolation --no-binary :all: \
            -d "$WHEEL_CACHE/sdist" "$pkg==$version"
        sdist="$(ls "$WHEEL_CACHE/sdist/$pkg-$version.tar.gz" \
            "$WHEEL_CACHE/sdist/${pkg//-/_}-$version.tar.gz" 2>/dev/null | head -n1 || true)"
        [ -n "$sdist" ] || { echo "build_mmcv_wheel: no sdist of $pkg $version downloaded" >&2; return 1; }
    fi
    # The sdist's hash is kept beside the locks (the index's, in sha256sum's
    # format); `make lock` does not write it: a new mmcv version adds its line.
    local sums="$ROOT/requirements/lock/mmcv-sdists.sha256" line
    line="$(awk -v f="$(basename "$sdist")" '$2 == f' "$sums")"
    if [ -z "$line" ]; then
        echo "build_mmcv_wheel: no hash for $(basename "$sdist") in $sums" >&2
        return 2
    fi
    if ! (cd "$(dirname "$sdist")" && sha256sum --quiet -c - <<<"$line"); then
        echo "build_mmcv_wheel: $sdist does not match $sums; removed it" >&2
        rm -f "$sdist"
        return 1
    fi
    tar -xzf "$sdist" -C "$build"
    src="$build/$(basename "$sdist" .tar.gz)"
    # torch >= 2.10 headers use C++20 features; mmcv forces -std=c++17
    # (mmcv-full 1.7.2, for the host compiler and for nvcc alike) or
    # -std=c++14 (mmcv 2.1.0's CUDA flags and the old-torch branches): raise
    # every one of them.
    sed -i 's/-std=c++1[47]/-std=c++20/g' "$src/setup.py"
    grep -q -- '-std=c++20' "$src/setup.py"
    if grep -q -- '-std=c++1[47]' "$src/setup.py"; then
        echo "build_mmcv_wheel: $src/setup.py still asks for C++14/17" >&2
        return 1
    fi
    if [ "${FORCE_CUDA:-}" = 0 ]; then
        # mmcv's setup.py compiles CUDA ops whenever torch sees a GPU,
        # whatever FORCE_CUDA says: hide the GPUs from the build.
        CUDA_VISIBLE_DEVICES='' "${bpip[@]}" wheel --no-deps --no-build-isolation \
            -w "$build/dist" "$src"
    else
        "${bpip[@]}" wheel --no-deps --no-build-isolation -w "$build/dist" "$src"
    fi
    mkdir -p "$dest"
    cp "$build/dist/${pkg//-/_}-$version"-*.whl "$dest/"
    rm -rf "$build"
}

# The cache folder name of a wheel for this interpreter: it depends on the
# Python ABI, the torch build and CUDA presence (py311-torch2.14.1-cpu).
mmcv_wheel_tag() {
    "$1" -c '
import sys, torch
cuda = "cu" + torch.version.cuda.replace(".", "") if torch.version.cuda and torch.cuda.is_available() else "cpu"
print("py%d%d-torch%s-%s" % (sys.version_info[0], sys.version_info[1], torch.__version__.split("+")[0], cuda))
'
}

# Installs mmcv with its compiled ops into the virtualenv of RUNTIME_PY, from
# the wheel cache (WHEEL_CACHE/<tag>) or built from its sdist; the wheel is
# also copied into LOCAL_CACHE/<tag> (the clone's git-ignored .cache/wheels).
# Extra arguments go to `pip install` (constraints).
#
#   install_mmcv_wheel RUNTIME_PY PACKAGE VERSION [PIP_INSTALL_ARGS...]
install_mmcv_wheel() {
    local py="$1" pkg="$2" version="$3" tag cached whl
    shift 3
    # The wheel depends on the Python ABI, the torch build and CUDA presence.
    tag="$(mmcv_wheel_tag "$py")"
    if [ "${tag##*-}" != cpu ] && ! command -v nvcc >/dev/null; then
        log "CUDA device found but no nvcc: building CPU ops only"
        export FORCE_CUDA=0
    fi
    if [ "${FORCE_CUDA:-}" = 0 ]; then
        tag="${tag%-*}-cpu"  # CPU ops only, whatever device is present
    fi
    cached="$WHEEL_CACHE/$tag"
    whl="$(ls "$cached/${pkg//-/_}-$version"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$whl" ]; then
        log "building $pkg $version for $tag (15 minutes or more on 2 cores, cached afterwards)"
        build_mmcv_wheel "$py" "$cached" "$pkg" "$version"
        whl="$(ls "$cached/${pkg//-/_}-$version"-*.whl | head -n1)"
    fi
    mkdir -p "$LOCAL_CACHE/$tag"
    cp -n "$whl" "$LOCAL_CACHE/$tag/" 2>/dev/null || true
    log "installing $(basename "$whl")"
    "$py" -m pip --disable-pip-version-check -q install "$@" "$whl"
}
