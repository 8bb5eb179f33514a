"""How the package is built and shipped: the x86 kernels only where the compiler targets x86-64, a build without
them runs the portable kernels and says so, MSVC is refused with a reason, one abi3 wheel per platform, the
licence and the typing marker ship."""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import pytest
from setuptools._distutils.ccompiler import new_compiler
from setuptools._distutils.sysconfig import customize_compiler

import build_kernel
import llmrun

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def c_compiler():
    cc = new_compiler()
    customize_compiler(cc)
    return cc


def test_x86_kernels_are_built_for_x86_64_only() -> None:
    cc = c_compiler()
    assert build_kernel.targets_x86_64(cc) == (platform.machine() in ("x86_64", "AMD64"))
    cc.compiler_so = [*cc.compiler_so, "-m32"]  # 32-bit x86 has AVX2 CPUs too, but not these kernels
    assert not build_kernel.targets_x86_64(cc)


def test_a_level_whose_flags_the_compiler_refuses_is_left_out() -> None:
    """The arm64 levels are built only where the compiler knows their -march flags (gcc < 10 has no +i8mm): the
    probe passes the flags, so an unknown one makes it answer no instead of failing the whole build later."""
    cc = c_compiler()
    here = "__x86_64__" if build_kernel.targets_x86_64(cc) else "__aarch64__"
    assert build_kernel._compiles_with(cc, here)
    assert not build_kernel._compiles_with(cc, here, ["-march=no-such-architecture+i8mm"])


def test_a_build_without_x86_kernels_runs_the_portable_ones(tmp_path: Path) -> None:
    """cpu.c compiled as for a 32-bit x86 or ARM target (no LLM_X86_LEVELS): only the scalar level is
    supported and best, whatever the CPU has (it once reported avx2 on i386 while running scalar code)."""
    gcc = shutil.which("gcc")
    assert gcc, "the build needs gcc"
    main = tmp_path / "main.c"
    main.write_text('#include <stdio.h>\n#include "llmrun.h"\nint main(void) {\n'
                    '    printf("%d %d %d %d %d\\n", llm_isa_best(), llm_isa_supported(LLM_ISA_SCALAR),\n'
                    '           llm_isa_supported(LLM_ISA_AVX2), llm_isa_supported(LLM_ISA_AVX512VNNI),\n'
                    '           llm_isa_supported(LLM_ISA_AVX512BF16));\n}\n')
    exe = tmp_path / "isa"
    subprocess.run([gcc, "-std=c11", f"-I{CSRC}", str(main), str(CSRC / "cpu.c"), str(CSRC / "kernels_scalar.c"),
                    "-lm", "-o", str(exe)], check=True)
    answer = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout.split()
    assert answer == ["0", "1", "0", "0", "0"]


def test_msvc_is_refused_with_a_reason() -> None:
    command = build_kernel.BuildKernel.__new__(build_kernel.BuildKernel)
    command.compiler = SimpleNamespace(compiler_type="msvc")
    with pytest.raises(Exception, match="gcc or clang"):
        command.build_extension(SimpleNamespace(extra_objects=[], define_macros=[]))


def test_one_abi3_wheel_per_platform() -> None:
    """The extension uses the stable ABI (cffi names it _kernel.abi3.so), and the wheel is tagged so."""
    assert Path(llmrun._kernel.__file__).name.startswith("_kernel.abi3.")
    assert '"py_limited_api": "cp310"' in (ROOT / "setup.py").read_text()
    assert 'requires-python = ">=3.10"' in (ROOT / "pyproject.toml").read_text()


def test_licence_and_typing_marker_ship() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text().splitlines()
    assert 'license = "MIT"' in pyproject and 'license-files = ["LICENSE"]' in pyproject
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "stories260K" in licence
    assert resources.files("llmrun").joinpath("py.typed").is_file()
