# Sourced by tools/setup_env.sh and tools/build_device_wheels.sh: builds an
# mmcv-full wheel from its sdist against the torch of a given interpreter.
#
#   build_mmcv_wheel RUNTIME_PY DEST
#
# Leaves mmcv_full-$MMCV_VERSION-*.whl in DEST. Needs MMCV_VERSION and
# WHEEL_CACHE (the sdist is kept in $WHEEL_CACHE/sdist) and a `log` function.
# Compiles the CPU ops unless the interpreter's torch sees a GPU and nvcc is
# on the PATH (FORCE_CUDA=0 forces CPU ops); MAX_JOBS sets the parallelism.

# The build tools live in a throwaway venv of their own: mmcv-full 1.7.2's
# setup.py imports pkg_resources (setuptools<70), which torch forbids in the
# runtime venv, and pip's resolver would print an ERROR there about it. The
# build venv sees the runtime's torch through a .pth file, after its own
# site-packages, so its setuptools<70 wins there and only there.
_make_build_venv() {
    local runtime_py="$1" dir="$2" base purelib
    base="$("$runtime_py" -c 'import sys; print(getattr(sys, "_base_executable", sys.executable))')"
    "$base" -m venv "$dir"
    purelib="$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$runtime_py" -c 'import sys; print("\n".join(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))))' \
        > "$purelib/sar_runtime.pth"
    "$dir/bin/python" -m pip --disable-pip-version-check -q install \
        --no-warn-conflicts 'setuptools<70' wheel ninja
}

build_mmcv_wheel() {
    local runtime_py="$1" dest="$2" build sdist src
    build="$(mktemp -d)"
    _make_build_venv "$runtime_py" "$build/venv"
    local bpip=("$build/venv/bin/python" -m pip --disable-pip-version-check -q)
    sdist="$WHEEL_CACHE/sdist/mmcv-full-$MMCV_VERSION.tar.gz"
    if [ ! -f "$sdist" ]; then
        mkdir -p "$WHEEL_CACHE/sdist"
        "${bpip[@]}" download --no-deps --no-build-isolation --no-binary :all: \
            -d "$WHEEL_CACHE/sdist" "mmcv-full==$MMCV_VERSION"
    fi
    tar -xzf "$sdist" -C "$build"
    src="$build/mmcv-full-$MMCV_VERSION"
    # torch >= 2.10 headers use C++20 features; mmcv forces -std=c++17
    # (for the host compiler and for nvcc alike).
    sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
    grep -q -- '-std=c++20' "$src/setup.py"
    if [ "${FORCE_CUDA:-}" = 0 ]; then
        # mmcv's setup.py compiles CUDA ops whenever torch sees a GPU,
        # whatever FORCE_CUDA says: hide the GPUs from the build.
        CUDA_VISIBLE_DEVICES='' "${bpip[@]}" wheel --no-deps --no-build-isolation \
            -w "$build/dist" "$src"
    else
        "${bpip[@]}" wheel --no-deps --no-build-isolation -w "$build/dist" "$src"
    fi
    mkdir -p "$dest"
    cp "$build"/dist/mmcv_full-*.whl "$dest/"
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
