"""Reader for llama2.c's ``tokenizer.bin``.

Layout (little-endian)::

    uint32 max_token_length
    vocab_size x { float32 score; int32 length; length bytes of UTF-8 piece text }

The piece text uses a plain space where SentencePiece writes '▁'; BOS and EOS are stored as
"\\n<s>\\n" and "\\n</s>\\n".  The file does not record ``vocab_size``; the model header does, so the
caller passes it (or None to read entries until the end of the file).  Every field is checked
before it is trusted, so a corrupt or hostile file raises `TokenizerError` naming the file, the
entry and the offending value instead of crashing or allocating absurd amounts of memory.
"""

from __future__ import annotations

import operator
import os
import struct

from llmrun.errors import TokenizerError
from llmrun.tokenizer.spm import SentencePieceTokenizer

__all__ = ["load_llama2c_tokenizer", "parse_llama2c_tokenizer", "MAX_VOCAB_SIZE", "MAX_FILE_BYTES"]

_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<fi")  # score, byte length

MAX_FILE_BYTES = 64 << 20
"""Refuse larger files: even a 256k-token vocabulary is only a few MB in this format."""

MAX_VOCAB_SIZE = 1 << 20
"""Refuse more entries (the largest real vocabularies have ~256k): bounds memory on hostile files."""

MAX_TOKEN_LENGTH = 1 << 16
"""Upper bound for the header's ``max_token_length`` (real vocabularies stay below ~100 bytes)."""

MIN_VOCAB_SIZE = 3
"""<unk>, <s>, </s> sit at ids 0, 1, 2 in every llama2.c vocabulary."""


def load_llama2c_tokenizer(path: str | os.PathLike[str], vocab_size: int | None = None) -> SentencePieceTokenizer:
    """Load a llama2.c ``tokenizer.bin`` as a `SentencePieceTokenizer` (unk 0, BOS 1, EOS 2, byte fallback).

    ``vocab_size`` comes from the model header; the file must hold exactly that many entries.
    With None, entries are read until the end of the file.
    """
    name = os.fspath(path)
    expected = _check_vocab_size(name, vocab_size)
    data = _read_limited(name)
    pieces, scores = parse_llama2c_tokenizer(data, name, expected)
    try:
        return SentencePieceTokenizer(pieces, scores, bos_id=1, eos_id=2, unk_id=0)
    except TokenizerError as exc:
        raise TokenizerError(f"{name}: {exc}") from None


def parse_llama2c_tokenizer(
    data: bytes, name: str = "<bytes>", vocab_size: int | None = None
) -> tuple[list[bytes], list[float]]:
    """Parse the file's bytes into (pieces, scores), validating every field; ``name`` is for errors."""
    if len(data) < _HEADER.size:
        raise TokenizerError(
            f"{name}: too short for a llama2.c tokenizer: {len(data)} bytes, the header alone needs 4"
        )
    (max_len,) = _HEADER.unpack_from(data, 0)
    if max_len > MAX_TOKEN_LENGTH:
        raise TokenizerError(
            f"{name}: field max_token_length={max_len} is implausible (limit {MAX_TOKEN_LENGTH}); "
            "not a llama2.c tokenizer file?"
        )
    pieces: list[bytes] = []
    scores: list[float] = []
    offset = _HEADER.size
    end = len(data)
    while (vocab_size is None and offset < end) or (vocab_size is not None and len(pieces) < vocab_size):
        if len(pieces) == MAX_VOCAB_SIZE:
            raise TokenizerError(
                f"{name}: more than {MAX_VOCAB_SIZE} entries before the end of the file "
                f"({end - offset} bytes left); not a llama2.c tokenizer file?"
            )
        offset = _read_entry(data, offset, max_len, len(pieces), name, vocab_size, pieces, scores)
    if offset != end:
        extra = _count_entries(data, offset, max_len)
        raise TokenizerError(
            f"{name}: {end - offset} bytes remain after entry {len(pieces) - 1}: expected vocab_size="
            f"{vocab_size} entries, but the file holds at least {len(pieces) + extra}"
            + ("" if extra else " (the trailing bytes are not a valid entry)")
        )
    if len(pieces) < MIN_VOCAB_SIZE:
        raise TokenizerError(
            f"{name}: holds {len(pieces)} entries; a llama2.c vocabulary has at least {MIN_VOCAB_SIZE} "
            "(<unk>, <s>, </s>)"
        )
    return pieces, scores


def _read_entry(
    data: bytes,
    offset: int,
    max_len: int,
    index: int,
    name: str,
    vocab_size: int | None,
    pieces: list[bytes],
    scores: list[float],
) -> int:
    """Validate and append entry ``index`` starting at ``offset``; return the next offset."""
    end = len(data)
    expected = "until end of file" if vocab_size is None else f"of {vocab_size} expected"
    if offset + _ENTRY.size > end:
        raise TokenizerError(
            f"{name}: truncated at entry {index} ({expected}): needs {_ENTRY.size} bytes for score and "
            f"length at offset {offset}, only {end - offset} left; the file holds {index} complete entries"
        )
    score, length = _ENTRY.unpack_from(data, offset)
    offset += _ENTRY.size
    if not 0 <= length <= max_len:
        raise TokenizerError(
            f"{name}: entry {index} ({expected}) at offset {offset - 4}: field length={length} is "
            f"invalid (must be 0..max_token_length={max_len})"
        )
    if offset + length > end:
        raise TokenizerError(
            f"{name}: truncated at entry {index} ({expected}): piece of length {length} at offset "
            f"{offset} runs past the end of the file ({end} bytes)"
        )
    pieces.append(data[offset : offset + length])
    scores.append(score)
    return offset + length


def _count_entries(data: bytes, offset: int, max_len: int) -> int:
    """How many well-formed entries follow ``offset`` (for error messages only)."""
    count = 0
    end = len(data)
    while offset + _ENTRY.size <= end:
        _, length = _ENTRY.unpack_from(data, offset)
        if not 0 <= length <= max_len or offset + _ENTRY.size + length > end:
            break
        offset += _ENTRY.size + length
        count += 1
    return count


def _check_vocab_size(name: str, vocab_size: int | None) -> int | None:
    if vocab_size is None:
        return None
    if isinstance(vocab_size, bool):
        raise TypeError(f"vocab_size must be an integer or None, got {vocab_size!r}")
    try:
        value = operator.index(vocab_size)
    except TypeError:
        raise TypeError(f"vocab_size must be an integer or None, got {type(vocab_size).__name__}") from None
    if not MIN_VOCAB_SIZE <= value <= MAX_VOCAB_SIZE:
        raise TokenizerError(
            f"{name}: vocab_size={value} is out of range ({MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE})"
        )
    return value


def _read_limited(name: str) -> bytes:
    """Read the whole file, refusing anything over MAX_FILE_BYTES (works for pipes/devices too)."""
    try:
        with open(name, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise TokenizerError(f"{name}: cannot read tokenizer file: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise TokenizerError(f"{name}: larger than {MAX_FILE_BYTES} bytes; not a llama2.c tokenizer file")
    return data
