"""Shared test fixtures. tests/ is on sys.path, so tests import builders and reference directly; so is
bindings/, so the build tests read build_kernel (which sources are compiled with which flags) as setup.py does."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bindings"))

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"

# A run started in the background by a non-interactive shell (`.ci/run &`) inherits SIGINT ignored: Python then
# never raises KeyboardInterrupt, and the llmrun processes the tests start inherit the ignoring too, so the
# Ctrl-C tests would fail for the way the suite was started. Ctrl-C is part of what the suite tests: restore it
# (a handler, unlike "ignored", is reset to the default in the processes the tests exec).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def models_dir() -> Path:
    """../shared/models (stories260K, tok512, the Llama 2 tokenizer); tests skip where it is absent."""
    if not (MODELS / "stories260K.bin").is_file():
        pytest.skip(f"{MODELS} is not available")
    return MODELS
