"""cffi builder (API mode, out-of-line): compiles csrc/ into the extension module `llmrun._kernel`.

setup.py names this file in `cffi_modules` and uses its `BuildKernel` command, so `pip install .` runs both.
The portable sources are compiled for the baseline of the target; on x86-64 the kernels in X86_SOURCES, on
arm64 (Linux, macOS) those in ARM_SOURCES, are compiled once more per instruction-set level with that level's
flags (csrc/kernels_x86.h, csrc/kernels_arm.h explain why), and the library picks a level at run time from the
CPU's features. Any other target gets the portable scalar kernels alone. Build switches (environment):
- LLMRUN_NATIVE=1   add -march=native (local experiments only: the result runs on this CPU alone)
- LLMRUN_SANITIZE=1 build with -fsanitize=address,undefined,float-cast-overflow (for the sanitizer test run)
The portable sources are compiled with -ffp-contract=off: csrc/quantize.c reproduces ggml's quantizers bit for
bit only if every a * b + c is rounded twice, as written, never fused into one FMA (which -march=native, or a
compiler's default contraction, would otherwise allow).
gcc and clang are supported; MSVC is refused with a message.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from cffi import FFI
from setuptools.command.build_ext import build_ext
from setuptools.errors import PlatformError

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"

# The x86-64 kernels and each level's flags; a level's name is its llm_isa_name (csrc/cpu.c).
X86_SOURCES = ["kernels_x86.c", "kernels_x86_attention.c", "kernels_x86_bf16.c", "kernels_x86_float.c",
               "kernels_x86_float_r8.c", "kernels_x86_int8.c", "kernels_x86_kquants.c", "kernels_x86_kquants_low.c",
               "kernels_x86_repacked.c"]
X86_LEVELS = {
    "avx2": ["-mavx2", "-mfma", "-mf16c"],
    "avx512vnni": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni"],
    "avx512bf16": ["-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512vnni",
                   "-mavx512bf16"],
}

# The arm64 kernels and each level's flags (gcc and clang spell them alike). -ffp-contract=off: the 8-bit
# kernels repeat the scalar reference's multiply-then-add bit for bit (csrc/kernels_arm_int8.c), and clang
# would otherwise fuse them. tests/arm/run_emulated.sh reads these to cross-compile the same objects.
ARM_SOURCES = ["kernels_arm.c", "kernels_arm_float.c", "kernels_arm_int8.c", "kernels_arm_kquants.c"]
ARM_LEVELS = {
    "neon": ["-march=armv8-a", "-ffp-contract=off"],
    "dotprod": ["-march=armv8.2-a+dotprod", "-ffp-contract=off"],
    "i8mm": ["-march=armv8.2-a+dotprod+i8mm", "-ffp-contract=off"],
}


def header_declarations(path: Path) -> str:
    """The C API as cffi's cdef wants it: the header without preprocessor lines."""
    text = path.read_text()
    return "\n".join(line for line in text.splitlines() if not re.match(r"\s*#", line))


def compile_args() -> tuple[list[str], list[str]]:
    cflags = ["-O3", "-std=c11", "-Wall", "-Wextra", "-pthread", "-fno-math-errno"]
    ldflags = ["-pthread", "-lm"]
    if os.environ.get("LLMRUN_NATIVE") == "1":
        cflags.append("-march=native")
    if os.environ.get("LLMRUN_SANITIZE") == "1":
        cflags = [f for f in cflags if f != "-O3"] + ["-O1", "-g", "-fno-omit-frame-pointer",
                                                     "-fsanitize=address,undefined,float-cast-overflow",
                                                     "-fno-sanitize-recover=all"]
        ldflags.append("-fsanitize=address,undefined,float-cast-overflow")
    return cflags, ldflags


def portable_compile_args() -> list[str]:
    """The portable sources' flags: compile_args() and no FMA contraction (csrc/quantize.c's arithmetic)."""
    return compile_args()[0] + ["-ffp-contract=off"]


def portable_sources() -> list[str]:
    """Every csrc/*.c but the per-level x86 and arm64 kernels, as paths relative to the project root."""
    per_level = set(X86_SOURCES) | set(ARM_SOURCES)
    return sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.c") if p.name not in per_level)


def targets_x86_64(compiler) -> bool:  # noqa: ANN001 (a distutils CCompiler)
    """Whether `compiler` builds for x86-64 (not 32-bit x86, not ARM): one tiny test compile."""
    return _compiles_with(compiler, "__x86_64__")


def targets_aarch64(compiler) -> bool:  # noqa: ANN001 (a distutils CCompiler)
    """Whether `compiler` builds for arm64 (AArch64, not 32-bit ARM): one tiny test compile."""
    return _compiles_with(compiler, "__aarch64__")


def _compiles_with(compiler, macro: str, flags: list[str] | None = None) -> bool:  # noqa: ANN001 (a CCompiler)
    """Whether `compiler` (given `flags`) defines the predefined `macro` (its target's architecture): also whether
    it knows those flags at all (an older gcc refuses -march=...+i8mm)."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.c"
        probe.write_text(f"#if !defined({macro})\n#error not {macro}\n#endif\nint llm_probe;\n")
        try:
            compiler.compile([str(probe)], output_dir=tmp, extra_postargs=flags or [])
        except Exception:  # CompileError, whose class differs between setuptools versions: any failure is a no
            return False
    return True


class BuildKernel(build_ext):
    """build_ext that also compiles the x86 or arm64 kernels once per level, when the compiler targets them."""

    def build_extension(self, ext) -> None:  # noqa: ANN001 (setuptools' Extension)
        if self.compiler.compiler_type == "msvc":
            raise PlatformError("llmrun's C library builds with gcc or clang (MinGW-w64 on Windows), not MSVC: "
                                "its kernels are compiled with GCC-style instruction-set flags")
        if targets_x86_64(self.compiler):
            cflags, _ = compile_args()
            # avx512bf16 only where the compiler knows -mavx512bf16 (gcc >= 10, clang >= 9): otherwise it stays out
            # of the library, and cpu.c never offers it (LLM_X86_AVX512BF16)
            levels = {level: flags for level, flags in X86_LEVELS.items()
                      if level != "avx512bf16" or _compiles_with(self.compiler, "__AVX512BF16__", flags)}
            for level, flags in levels.items():
                ext.extra_objects += self.compiler.compile(
                    [str(CSRC / s) for s in X86_SOURCES], output_dir=os.path.join(self.build_temp, level),
                    macros=[("LLM_X86_LEVEL", level)], include_dirs=[str(CSRC)], extra_postargs=cflags + flags)
            ext.define_macros += [("LLM_X86_LEVELS", "1")] + [("LLM_X86_AVX512BF16", "1")] * ("avx512bf16" in levels)
        elif targets_aarch64(self.compiler):
            cflags, _ = compile_args()
            # the levels this compiler can build (gcc < 10 has no +i8mm, gcc < 8 no +dotprod): the others stay
            # out of the library, and cpu.c never offers them (LLM_ARM_<LEVEL>)
            levels = {level: flags for level, flags in ARM_LEVELS.items()
                      if level == "neon" or _compiles_with(self.compiler, "__aarch64__", flags)}
            for level, flags in levels.items():
                ext.extra_objects += self.compiler.compile(
                    [str(CSRC / s) for s in ARM_SOURCES], output_dir=os.path.join(self.build_temp, level),
                    macros=[("LLM_ARM_LEVEL", level)], include_dirs=[str(CSRC)], extra_postargs=cflags + flags)
            ext.define_macros += [("LLM_ARM_LEVELS", "1")] + [(f"LLM_ARM_{level.upper()}", "1") for level in levels]
        super().build_extension(ext)


ffibuilder = FFI()
ffibuilder.cdef(header_declarations(CSRC / "llmrun.h"))
_ldflags = compile_args()[1]
ffibuilder.set_source(
    "llmrun._kernel",
    '#include "llmrun.h"',
    sources=portable_sources(),
    # build_ext rebuilds only when a file it knows of is newer than the library: the per-level kernels it does not
    # compile itself, and the headers, are named here so that a change to them is never left out of the build
    depends=sorted(str(p.relative_to(ROOT)) for p in [*CSRC.glob("*.h"),
                                                      *(CSRC / s for s in [*X86_SOURCES, *ARM_SOURCES])]),
    include_dirs=[str(CSRC.relative_to(ROOT))],
    extra_compile_args=portable_compile_args(),
    extra_link_args=_ldflags,
)
