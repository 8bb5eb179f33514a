"""`Tokenizer`: the interface every tokenizer implements and every caller annotates with.

Two implementations: `SentencePieceTokenizer` (spm.py: Llama 2 family, llama2.c, GGUF "llama") and
`BPETokenizer` (bpe.py: merge-rank BPE from tokenizer.json and GGUF "gpt2"). Decoding is shared here: each
token's bytes come from `surface`, which `StreamDecoder` uses too, so a full decode and a stream can never
disagree.
"""

from __future__ import annotations

import abc
import codecs
from collections.abc import Iterable

import numpy as np

from llmrun.errors import InvalidArgumentError, TokenizerError

__all__ = ["DECODE_ERRORS", "Tokenizer", "check_text"]

DECODE_ERRORS = "llmrun.replace_each_byte"
"""Codec error handler that replaces each undecodable byte by one U+FFFD (see below)."""


def _replace_each_byte(err: UnicodeError) -> tuple[str, int]:
    """One U+FFFD per invalid byte, as sentencepiece's decoder does.

    Python's own ``errors="replace"`` emits one U+FFFD per *maximal invalid subpart* (b"\\xe4\\xb8A" ->
    "\\ufffdA"), sentencepiece one per byte ("\\ufffd\\ufffdA").  CPython's UTF-8 decoder reports
    exactly the bytes of the maximal subpart, none of which can start a valid character, so replacing
    each of them reproduces sentencepiece's output byte for byte.
    """
    if not isinstance(err, UnicodeDecodeError):
        raise err
    return "\ufffd" * (err.end - err.start), err.end


codecs.register_error(DECODE_ERRORS, _replace_each_byte)


class Tokenizer(abc.ABC):
    """Text <-> token ids for one vocabulary of `vocab_size` ids.

    Token ids must be ints (numpy integers too; bools are not ids): anything else is an InvalidArgumentError,
    an id outside [0, vocab_size) a TokenizerError."""

    # ------------------------------------------------------------------ the vocabulary

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (0 .. vocab_size-1)."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int | None:
        """The beginning-of-sequence token, if the vocabulary has one."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int | None:
        """The end-of-sequence token, if the vocabulary has one."""

    @property
    @abc.abstractmethod
    def unk_id(self) -> int | None:
        """The unknown token, if the vocabulary has one."""

    @property
    @abc.abstractmethod
    def add_dummy_prefix(self) -> bool:
        """Whether decoding drops the first token's leading space (the prefix encoding added)."""

    @abc.abstractmethod
    def is_control(self, token_id: int) -> bool:
        """Whether the token is a control token (BOS, EOS, <|im_end|> ...): it decodes to nothing."""

    @abc.abstractmethod
    def id_to_piece(self, token_id: int) -> str:
        """The token as the vocabulary spells it ("▁the", "<|eot_id|>", "<0x0A>"), for display."""

    @abc.abstractmethod
    def piece_to_id(self, piece: str) -> int | None:
        """The id of the token spelled `piece` as `id_to_piece` spells it, or None."""

    @abc.abstractmethod
    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes the token contributes to decoded text (before the first-token space strip)."""

    # ------------------------------------------------------------------ text <-> ids

    @abc.abstractmethod
    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False, special: bool = False) -> list[int]:
        """Token ids of `text`, with BOS/EOS when asked and the vocabulary has them. With `special` the text of
        control tokens ("</s>", "<|im_end|>") becomes those tokens; without it (the default) it is plain text,
        so text from users cannot forge control tokens."""

    @abc.abstractmethod
    def surface(self, token_id: int, at_start: bool) -> tuple[bytes, bool]:
        """Bytes of one token in decoded text, and whether the *next* token is still "at start" (control
        tokens are invisible and keep it; with `add_dummy_prefix` the first other token loses its leading
        space). Shared by `decode` and `StreamDecoder` so the two can never disagree."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: control tokens produce nothing, invalid UTF-8 one U+FFFD per byte (as
        ``sentencepiece``'s ``decode``)."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise InvalidArgumentError(f"ids must be a sequence of token ids, got {type(ids).__name__}", param="ids")
        out = bytearray()
        at_start = self.add_dummy_prefix
        for token_id in ids:
            chunk, at_start = self.surface(token_id, at_start)
            out += chunk
        return out.decode("utf-8", errors=DECODE_ERRORS)

    def _check_token(self, token_id: int) -> int:
        """`token_id` as an int in the vocabulary: InvalidArgumentError for a non-integer (a bool included),
        TokenizerError for an id out of range."""
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
            raise InvalidArgumentError(f"token id must be an int, got {type(token_id).__name__}", param="ids")
        i = int(token_id)
        if not 0 <= i < self.vocab_size:
            raise TokenizerError(f"token id {i} out of range: valid ids are 0..{self.vocab_size - 1}")
        return i


def check_text(text: object) -> str:
    """`text` if it is a str that has a UTF-8 form: InvalidArgumentError for anything but a str, TokenizerError
    naming the lone surrogate that makes a str unencodable."""
    if not isinstance(text, str):
        raise InvalidArgumentError(f"text must be a str, got {type(text).__name__}", param="text")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(f"text cannot be encoded as UTF-8: lone surrogate U+{ord(text[e.start]):04X} at "
                             f"index {e.start}") from None
    return text
