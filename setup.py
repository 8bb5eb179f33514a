"""setuptools needs this one line to run the cffi builder; everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["bindings/build_kernel.py:ffibuilder"])
