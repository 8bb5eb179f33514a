"""SentencePiece-compatible tokenization: `Tokenizer`, `StreamDecoder` and the llama2.c loader."""

from __future__ import annotations

from typing import Any

from llmrun.tokenizer.spm import Tokenizer, TokenType
from llmrun.tokenizer.stream import StreamDecoder

__all__ = ["Tokenizer", "TokenType", "StreamDecoder", "load_llama2c_tokenizer"]


def __getattr__(name: str) -> Any:
    # The loader lives in llmrun.formats and itself imports llmrun.tokenizer.spm; importing it
    # lazily keeps `import llmrun.formats.llama2c_tokenizer` (first) free of an import cycle.
    if name == "load_llama2c_tokenizer":
        from llmrun.formats.llama2c_tokenizer import load_llama2c_tokenizer

        return load_llama2c_tokenizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
