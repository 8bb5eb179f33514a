"""setuptools needs this file for what pyproject.toml cannot say: the cffi builder, and the build command that
compiles the x86 kernels once per instruction-set level (bindings/build_kernel.py)."""

import sys
from pathlib import Path

from setuptools import setup

sys.path.insert(0, str(Path(__file__).resolve().parent / "bindings"))
from build_kernel import BuildKernel  # noqa: E402

setup(
    cffi_modules=["bindings/build_kernel.py:ffibuilder"],
    cmdclass={"build_ext": BuildKernel},
    # the extension uses only Python's stable ABI (cffi builds it as _kernel.abi3.so): one wheel per platform
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
