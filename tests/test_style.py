"""The code stays as clean as the quality bar says: C11 with -Wall -Wextra and no warnings, under gcc and clang;
ruff clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import build_kernel

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
COMPILERS = [c for c in ("gcc", "clang") if shutil.which(c)]


def compile_units() -> list[tuple[str, list[str]]]:
    """Every C file as the build compiles it: (file, extra flags), the x86 kernels once per level."""
    units = [(Path(s).name, ["-DLLM_X86_LEVELS"]) for s in build_kernel.portable_sources()]
    for level, flags in build_kernel.X86_LEVELS.items():
        units += [(s, [*flags, f"-DLLM_X86_LEVEL={level}"]) for s in build_kernel.X86_SOURCES]
    return units


@pytest.mark.parametrize("compiler", COMPILERS)
def test_c_compiles_without_warnings(compiler: str) -> None:
    for source, flags in compile_units():
        r = subprocess.run([compiler, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-fsyntax-only",
                            *flags, f"-I{CSRC}", str(CSRC / source)], capture_output=True, text=True)
        assert r.returncode == 0, f"{compiler} {source} {flags}:\n{r.stderr}"


def test_every_c_file_is_built() -> None:
    """A new csrc/*.c is either portable or listed as an x86 or arm64 kernel source (the build takes the lists;
    test_arm_emulated.py compiles the arm64 ones, which need an aarch64 compiler and C library)."""
    assert {s for s, _ in compile_units()} | set(build_kernel.ARM_SOURCES) == {p.name for p in CSRC.glob("*.c")}


def test_python_is_ruff_clean() -> None:
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "llmrun", "tests", "benchmarks", "bindings",
                        "setup.py"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
