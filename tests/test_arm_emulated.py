"""The arm64 kernels, cross-compiled and run under qemu user-mode emulation (tests/arm/run_emulated.sh).

The emulated run needs a cross compiler and qemu (Debian: gcc-aarch64-linux-gnu, qemu-user-static). Where they
are missing the test is skipped with the reason, unless LLMRUN_ARM_TESTS=1 asks for it (CI sets it after
installing them): then their absence is a failure that says what to install. The tolerances are stated in
tests/arm/driver.c (bit-identical for the block types, 2e-5 of the sum of |w x| for the float types).
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "arm" / "run_emulated.sh"
sys.path.insert(0, str(ROOT / "bindings"))
import build_kernel  # noqa: E402 (bindings/ is not a package)


def _tools() -> list[str]:
    """What the emulated run lacks on this machine."""
    missing = []
    if not shutil.which(os.environ.get("LLMRUN_ARM_CC", "aarch64-linux-gnu-gcc").split()[0]):
        missing.append("the cross compiler aarch64-linux-gnu-gcc (apt-get install gcc-aarch64-linux-gnu)")
    if not (shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64") or os.environ.get("LLMRUN_ARM_QEMU")):
        missing.append("qemu-aarch64 (apt-get install qemu-user-static)")
    return missing


def test_arm_kernels_under_emulation(tmp_path: Path) -> None:
    """Every ARM level's kernels against the scalar level, and a tiny model's forward pass, under qemu's
    cortex-a53 (neon), neoverse-n1 (dotprod) and max (i8mm) CPU models."""
    _require(_tools())
    env = {**os.environ, "LLMRUN_ARM_BUILD": str(tmp_path / "arm"), "PYTHON": sys.executable}
    run = subprocess.run(["sh", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=1800)
    print(run.stdout[-6000:], run.stderr[-6000:])
    assert run.returncode == 0, f"run_emulated.sh failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    for cpu in ("cortex-a53", "neoverse-n1", "max"):
        assert f"== -cpu {cpu}: passed" in run.stdout


def _require(missing: list[str]) -> None:
    """Skip (with the reason) or, where LLMRUN_ARM_TESTS=1 asks for the ARM tests, fail when tools are missing."""
    if missing:
        message = "the arm64 tests need " + " and ".join(missing)
        if os.environ.get("LLMRUN_ARM_TESTS") == "1":
            pytest.fail(message + " (LLMRUN_ARM_TESTS=1 asks for them)")
        pytest.skip(message + "; set LLMRUN_ARM_TESTS=1 to make their absence a failure")


@pytest.mark.parametrize("compiler", ["aarch64-linux-gnu-gcc", "clang"])
def test_arm_c_compiles_without_warnings(compiler: str) -> None:
    """The arm64 kernels and cpu.c's arm64 part, as the build compiles them, are -Wall -Wextra -pedantic clean
    under gcc and clang (Apple's compiler is a clang) at every level."""
    cross = shutil.which("aarch64-linux-gnu-gcc")
    _require([] if shutil.which(compiler) and cross else
             [f"{compiler} and the cross compiler's aarch64 C library (apt-get install gcc-aarch64-linux-gnu)"])
    cmd = [compiler] if compiler != "clang" else ["clang", "--target=aarch64-linux-gnu"]
    csrc = ROOT / "csrc"
    units = [(s, [*flags, f"-DLLM_ARM_LEVEL={level}"]) for level, flags in build_kernel.ARM_LEVELS.items()
             for s in build_kernel.ARM_SOURCES]
    units += [(Path(s).name, ["-DLLM_ARM_LEVELS"]) for s in build_kernel.portable_sources()]
    for source, flags in units:
        r = subprocess.run([*cmd, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-fsyntax-only",
                            *flags, f"-I{csrc}", str(csrc / source)], capture_output=True, text=True)
        assert r.returncode == 0, f"{compiler} {source} {flags}:\n{r.stderr}"


def test_arm_kernels_are_built_for_aarch64_only() -> None:
    cc = new_compiler()
    customize_compiler(cc)
    assert build_kernel.targets_aarch64(cc) == (platform.machine() in ("aarch64", "arm64"))
    assert not set(build_kernel.ARM_SOURCES) & {Path(s).name for s in build_kernel.portable_sources()}


def test_a_build_without_arm_kernels_has_no_arm_level(tmp_path: Path) -> None:
    """cpu.c compiled without LLM_ARM_LEVELS (any x86 or generic build) supports none of the ARM levels."""
    gcc = shutil.which("gcc")
    assert gcc, "the build needs gcc"
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "llmrun.h"\nint main(void) {\n'
                    '    printf("%d %d %d\\n", llm_isa_supported(LLM_ISA_NEON), llm_isa_supported(LLM_ISA_DOTPROD),\n'
                    '           llm_isa_supported(LLM_ISA_I8MM));\n}\n')
    exe = tmp_path / "isa"
    csrc = ROOT / "csrc"
    subprocess.run([gcc, "-std=c11", f"-I{csrc}", str(main), str(csrc / "cpu.c"), str(csrc / "kernels_scalar.c"),
                    "-lm", "-o", str(exe)], check=True)
    assert subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split() == ["0", "0", "0"]
