# Sourced by tools/build_device_wheels.sh: puts a built wheel set into the
# folder the user named, touching nothing else there.
#
#   place_device_set SET OUT TWIN
#
# SET holds *.whl and SHA256SUMS. OUT may be a folder of the user's (the
# DEVICE_OUT knob): only what an earlier run wrote there is replaced, i.e.
# the files its SHA256SUMS lists, the sums themselves and the `twin` file
# (the path of the twin virtualenv, read by `gpu_check.sh --cpu`). Whatever
# else lies in OUT stays; gpu_check.sh installs only the listed wheels.
place_device_set() {
    local set="$1" out="$2" twin="$3" name
    if [ -f "$out/SHA256SUMS" ]; then
        while read -r _ name; do
            # A listed name is a file name of the set, never a path.
            case "$name" in */*|''|.|..) continue ;; esac
            rm -f -- "$out/$name"
        done < "$out/SHA256SUMS"
        rm -f -- "$out/SHA256SUMS"
    fi
    rm -f -- "$out/twin"
    mkdir -p "$out"
    cp "$set"/*.whl "$set/SHA256SUMS" "$out/"
    (cd "$out" && sha256sum --quiet -c SHA256SUMS)
    echo "$twin" > "$out/twin"
}
