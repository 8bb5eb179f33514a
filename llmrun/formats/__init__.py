"""Model file formats. Each reader returns a ModelSpec; `read_model` picks the reader from the file's first
bytes, and `read_tokenizer` reads a tokenizer file given on its own. These two are the formats' entry
points: nothing above this package imports a format module."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ..errors import ModelFormatError, TokenizerError
from ..spec import ModelSpec
from ..tokenizer import Tokenizer
from .gguf_model import load_gguf
from .hf import Progress, load_hf
from .llama2c import load_llama2c
from .llama2c_tokenizer import load_llama2c_tokenizer

__all__ = ["Progress", "read_model", "read_tokenizer"]

# llama.cpp's formats before GGUF (ggml, ggmf, ggjt), uint32 magic numbers
OLD_GGML_MAGICS = (0x67676D6C, 0x67676D66, 0x67676A74)


def read_model(path: str | os.PathLike, quantize: str | None = None, progress: Progress | None = None) -> ModelSpec:
    """Reads the model at `path`, choosing the format from its contents: a folder is a Hugging Face model
    (whose weights `quantize` converts at load time, reporting each tensor to `progress`), a file starting
    with "GGUF" a GGUF file, one with llama2.c's magic number a llama2.c checkpoint, and any other file a
    legacy llama2.c checkpoint (which has no magic number), or of no known format when its header cannot
    be one. A file beside its tokenizer.bin (llama2.c keeps it apart) gets it as its tokenizer."""
    path = Path(path)
    if path.is_dir():
        return load_hf(path, quantize=quantize, progress=progress)
    if quantize is not None:
        raise ModelFormatError(f"{path}: quantize= applies to Hugging Face folders only (use `llmrun quantize` "
                               "to convert a model file)", param="quantize")
    if not path.exists():
        raise ModelFormatError(f"{path}: no such model file")
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read model file: {e.strerror or e}") from None
    if head[:4] == b"GGUF":
        return load_gguf(path)
    magic = struct.unpack_from("<I", head)[0] if len(head) >= 4 else None
    if magic in OLD_GGML_MAGICS:
        raise ModelFormatError(f"{path}: a GGML/GGJT file (llama.cpp's format before GGUF) is not supported: "
                               "convert it to GGUF with llama.cpp's conversion scripts")
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack_from("<Q", head)[0] < path.stat().st_size:
        raise ModelFormatError(f"{path}: a safetensors file: load the folder that holds it with its config.json "
                               "(a Hugging Face model folder)")
    return load_llama2c(path)  # with llama2.c's magic number, or without any: a legacy checkpoint has none


def read_tokenizer(path: str | os.PathLike, vocab_size: int) -> Tokenizer:
    """A tokenizer file given on its own (llama2.c's tokenizer.bin) for a model of `vocab_size` tokens;
    TokenizerError (param "tokenizer") naming the file and what is wrong with it."""
    try:
        return load_llama2c_tokenizer(path, vocab_size=vocab_size)
    except TokenizerError as e:
        raise TokenizerError(str(e), param="tokenizer") from None


def beside_tokenizer(spec: ModelSpec) -> tuple[Tokenizer | None, str]:
    """A llama2.c checkpoint's tokenizer: the tokenizer.bin beside it if its vocabulary fits the model, else
    None and why not (the hint a caller who needs one gets)."""
    beside = Path(spec.path).with_name("tokenizer.bin")
    hint = f"{spec.path}: no tokenizer; pass tokenizer= (llama2.c models keep it in a separate .bin file)"
    if not beside.is_file():
        return None, hint
    try:
        return load_llama2c_tokenizer(beside, vocab_size=spec.config.vocab_size), ""
    except TokenizerError as e:
        return None, f"{hint}; {beside} does not fit this model: {e}"
