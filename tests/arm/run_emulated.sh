#!/bin/sh
# tests/arm/run_emulated.sh: build the library's C sources and tests/arm/driver.c for arm64 with a cross
# compiler, and run the driver under qemu's user-mode emulation with CPU models of each ARM level:
#   cortex-a53   ARMv8.0 (Raspberry Pi 3):                    levels neon
#   neoverse-n1  ARMv8.2 + dotprod (Graviton 2, like M1):     levels neon, dotprod
#   max          every feature qemu knows (i8mm included):    levels neon, dotprod, i8mm
# The driver checks every kernel of every level the model reports against the scalar reference, and a
# forward pass of a tiny random model (its header states the tolerances); this script also checks that each
# model gets the level it should (so a broken feature detection fails too).
#
# Needs (Debian/Ubuntu): apt-get install gcc-aarch64-linux-gnu qemu-user-static   (or qemu-user)
# and a Python with cffi and setuptools (the project's build requirements): the sources and each level's
# flags are read from bindings/build_kernel.py, so that this build is the one `pip install .` makes on arm64.
# Environment: LLMRUN_ARM_CC (default aarch64-linux-gnu-gcc; e.g. "clang --target=aarch64-linux-gnu"),
# LLMRUN_ARM_QEMU (default qemu-aarch64-static, else qemu-aarch64),
# PYTHON (default python3), LLMRUN_ARM_BUILD (the build directory, default build/arm under the project).
# Usage: tests/arm/run_emulated.sh        exit status 0 when every model passes
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CC=${LLMRUN_ARM_CC:-aarch64-linux-gnu-gcc}
PYTHON=${PYTHON:-python3}
OUT=${LLMRUN_ARM_BUILD:-$ROOT/build/arm}
QEMU=${LLMRUN_ARM_QEMU:-}
if [ -z "$QEMU" ]; then
    QEMU=$(command -v qemu-aarch64-static || command -v qemu-aarch64 || true)
fi
command -v "${CC%% *}" >/dev/null 2>&1 || { echo "run_emulated.sh: no cross compiler $CC (apt-get install gcc-aarch64-linux-gnu)" >&2; exit 2; }
[ -n "$QEMU" ] || { echo "run_emulated.sh: no qemu-aarch64(-static) (apt-get install qemu-user-static)" >&2; exit 2; }

# The build's own lists, one shell word per item: portable flags, portable sources, then "level flags..." lines.
CONFIG=$(cd "$ROOT" && "$PYTHON" -c '
import sys
sys.path.insert(0, "bindings")
import build_kernel as b
print(" ".join(b.portable_compile_args()))
print(" ".join(b.portable_sources()))
print(" ".join(b.ARM_SOURCES))
for level, flags in b.ARM_LEVELS.items():
    print(level, " ".join(flags))
')
PORTABLE_FLAGS=$(echo "$CONFIG" | sed -n 1p)
PORTABLE_SOURCES=$(echo "$CONFIG" | sed -n 2p)
ARM_SOURCES=$(echo "$CONFIG" | sed -n 3p)
LEVELS=$(echo "$CONFIG" | sed -n '4,$p')

mkdir -p "$OUT"
OBJS=""
for src in $PORTABLE_SOURCES; do
    obj="$OUT/$(basename "$src" .c).o"
    $CC $PORTABLE_FLAGS -Werror -DLLM_ARM_LEVELS=1 -DLLM_ARM_DOTPROD=1 -DLLM_ARM_I8MM=1 -I"$ROOT/csrc" -c "$ROOT/$src" -o "$obj"
    OBJS="$OBJS $obj"
done
echo "$LEVELS" | while read -r level flags; do
    mkdir -p "$OUT/$level"
    for src in $ARM_SOURCES; do
        $CC $PORTABLE_FLAGS $flags -Werror -DLLM_ARM_LEVEL="$level" -I"$ROOT/csrc" -c "$ROOT/csrc/$src" \
            -o "$OUT/$level/$(basename "$src" .c).o"
    done
done
for level in $(echo "$LEVELS" | cut -d' ' -f1); do
    for src in $ARM_SOURCES; do OBJS="$OBJS $OUT/$level/$(basename "$src" .c).o"; done
done
# static: qemu then needs no arm64 sysroot to find the C library
$CC $PORTABLE_FLAGS -Werror -I"$ROOT/csrc" "$ROOT/tests/arm/driver.c" $OBJS -static -pthread -lm -o "$OUT/driver"
echo "built $OUT/driver with $CC; emulating with $QEMU"

STATUS=0
for spec in cortex-a53:neon neoverse-n1:dotprod max:i8mm; do
    cpu=${spec%%:*}
    best=${spec#*:}
    echo "== qemu -cpu $cpu (expected best level: $best)"
    if "$QEMU" -cpu "$cpu" "$OUT/driver" "$best"; then
        echo "== -cpu $cpu: passed"
    else
        echo "== -cpu $cpu: FAILED"
        STATUS=1
    fi
done
exit $STATUS
