"""Model file formats. Each reader returns a ModelSpec; `read_model` picks the reader from the file."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFormatError
from ..spec import ModelSpec
from .gguf import load_gguf
from .llama2c import load_llama2c


def read_model(path: str | os.PathLike) -> ModelSpec:
    """Reads the model at `path`, choosing the format from its contents."""
    path = Path(path)
    if path.is_dir():
        raise ModelFormatError(f"{path}: is a folder; Hugging Face model folders are not supported yet")
    if not path.exists():
        raise ModelFormatError(f"{path}: no such model file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read model file: {e.strerror or e}") from None
    if magic == b"GGUF":
        return load_gguf(path)
    return load_llama2c(path)
