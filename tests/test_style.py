"""The code stays as clean as the quality bar says: C11 with -Wall -Wextra and no warnings; ruff clean."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


@pytest.mark.skipif(shutil.which("gcc") is None or not CSRC.is_dir(), reason="needs gcc and the sources")
def test_c_compiles_without_warnings() -> None:
    for source in sorted(CSRC.glob("*.c")):
        r = subprocess.run(["gcc", "-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", "-fsyntax-only",
                            f"-I{CSRC}", str(source)], capture_output=True, text=True)
        assert r.returncode == 0, f"{source.name}:\n{r.stderr}"


def test_python_is_ruff_clean() -> None:
    if subprocess.run([sys.executable, "-m", "ruff", "--version"], capture_output=True).returncode != 0:
        pytest.skip("ruff is not installed")
    r = subprocess.run([sys.executable, "-m", "ruff", "check", "llmrun", "tests", "benchmarks", "bindings",
                        "setup.py"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
