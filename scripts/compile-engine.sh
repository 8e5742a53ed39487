# shellcheck shell=bash
# compile-engine.sh: sourced by the build scripts of the replay programs (build-aarch64, build-emulated).
#
#   compile_engine OBJ_PREFIX CXX FLAGS...
#
# Compiles every engine source (native/src) and replay program (native/tests) with CXX and FLAGS into
# OBJ_PREFIX-<name>.o, two compilers at a time, skipping an object newer than its source and every header. A caller
# may define `extra_flags FILE` to print more flags for one source. Leaves the engine's objects in the array `objs`.
compile_engine() {
    local prefix=$1 cxx=$2
    shift 2
    objs=()
    local running=()  # `wait PID` fails the caller (set -e) when that compile failed
    local f o
    for f in $(find native/src native/tests -name "*.cpp" | sort); do
        o="$prefix-$(basename "${f%.cpp}").o"
        if [ ! -f "$o" ] || [ "$f" -nt "$o" ] || [ -n "$(find native -name '*.h' -newer "$o" -print -quit)" ]; then
            rm -f "$o"
            # shellcheck disable=SC2046  # extra_flags prints words to split
            $cxx "$@" $(declare -F extra_flags >/dev/null && extra_flags "$f") -c "$f" -o "$o" &
            running+=($!)
            if [ ${#running[@]} -ge 2 ]; then wait "${running[0]}"; running=("${running[@]:1}"); fi
        fi
        case "$f" in native/tests/*) ;; *) objs+=("$o") ;; esac
    done
    for f in "${running[@]}"; do wait "$f"; done
}
