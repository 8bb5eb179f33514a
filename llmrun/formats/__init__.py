"""Model file formats. Each reader returns a ModelSpec; `read_model` picks the reader from the file."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ModelFormatError
from ..spec import ModelSpec
from .gguf import load_gguf
from .hf import Progress, load_hf
from .llama2c import load_llama2c


def read_model(path: str | os.PathLike, quantize: str | None = None, progress: Progress | None = None) -> ModelSpec:
    """Reads the model at `path`, choosing the format from its contents: a folder is a Hugging Face model
    (whose weights `quantize` converts at load time, reporting each tensor to `progress`), a file starting
    with "GGUF" a GGUF file, anything else a llama2.c checkpoint."""
    path = Path(path)
    if path.is_dir():
        return load_hf(path, quantize=quantize, progress=progress)
    if quantize is not None:
        raise ModelFormatError(f"{path}: quantize= applies to Hugging Face folders only (use `llmrun quantize` "
                               "to convert a model file)")
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
