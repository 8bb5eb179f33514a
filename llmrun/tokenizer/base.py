"""`Tokenizer`: the interface every tokenizer implements and every caller annotates with.

Two implementations: `SentencePieceTokenizer` (spm.py: Llama 2 family, llama2.c, GGUF "llama") and
`BPETokenizer` (bpe.py: merge-rank BPE from tokenizer.json and GGUF "gpt2"). What they share is here: the
special ids and flags every vocabulary has, the public methods with their argument checks (so both take
the same arguments and raise the same errors), BOS/EOS around an encoding, and decoding: each token's bytes
come from `surface`, which `StreamDecoder` uses too, so a full decode and a stream can never disagree. An
implementation supplies the underscore methods, called with valid arguments only.
"""

from __future__ import annotations

import abc
import codecs
from collections.abc import Iterable

import numpy as np

from llmrun.errors import InvalidArgumentError, TokenizerError

__all__ = ["DECODE_ERRORS", "END_OF_TURN_TEXTS", "Tokenizer", "check_text"]

END_OF_TURN_TEXTS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>",
                     "<|endoftext|>", "<|end_of_text|>", "<|END_OF_TURN_TOKEN|>")
"""Tokens that end a turn in the chat formats llmrun knows. A GGUF vocabulary that types one of them
user-defined (older Gemma conversions: <end_of_turn>) has it read as a control token, as llama.cpp does."""

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

    The public methods live here: they check their arguments (InvalidArgumentError naming the one at fault;
    token ids must be ints, numpy integers too, bools not) and leave the vocabulary's own work to the
    implementation's underscore methods, which get only valid arguments. A token id outside [0, vocab_size)
    is a TokenizerError."""

    def __init__(self, vocab_size: int, *, bos_id: int | None, eos_id: int | None, unk_id: int | None,
                 add_dummy_prefix: bool, byte_fallback: bool) -> None:
        """What every vocabulary has; an implementation calls this once it knows its size. A special id that
        is not one of the vocabulary's is a TokenizerError."""
        if vocab_size < 1:
            raise TokenizerError("vocabulary is empty")
        self._vocab_size = vocab_size
        self._bos_id = self._special_id("bos_id", bos_id)
        self._eos_id = self._special_id("eos_id", eos_id)
        self._unk_id = self._special_id("unk_id", unk_id)
        self._add_dummy_prefix = bool(add_dummy_prefix)
        self._byte_fallback = bool(byte_fallback)

    # ------------------------------------------------------------------ the vocabulary

    @property
    def vocab_size(self) -> int:
        """Number of ids (0 .. vocab_size-1)."""
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        """The beginning-of-sequence token, if the vocabulary has one."""
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        """The end-of-sequence token, if the vocabulary has one."""
        return self._eos_id

    @property
    def unk_id(self) -> int | None:
        """The unknown token, if the vocabulary has one."""
        return self._unk_id

    @property
    def add_dummy_prefix(self) -> bool:
        """Whether decoding drops the first token's leading space (the prefix encoding added)."""
        return self._add_dummy_prefix

    @property
    def byte_fallback(self) -> bool:
        """Whether a character missing from the vocabulary is encoded as its UTF-8 bytes' <0xNN> tokens."""
        return self._byte_fallback

    def is_control(self, token_id: int) -> bool:
        """Whether the token is a control token (BOS, EOS, <|im_end|> ...): it decodes to nothing."""
        return self._is_control(self._check_token(token_id))

    def id_to_piece(self, token_id: int) -> str:
        """The token as the vocabulary spells it ("▁the", "<|eot_id|>", "<0x0A>"), for display."""
        return self._id_to_piece(self._check_token(token_id))

    def piece_to_id(self, piece: str) -> int | None:
        """The id of the token spelled `piece` as `id_to_piece` spells it, or None."""
        if not isinstance(piece, str):
            raise InvalidArgumentError(f"piece must be a str, got {type(piece).__name__}", param="piece")
        return self._piece_to_id(piece)

    def strips(self, token_id: int) -> tuple[bool, bool]:
        """Whether the token, matched in text, swallows the whitespace before it and after it (tokenizer.json
        added tokens' lstrip / rstrip: Phi-3's <|end|>, <|user|> ... take the newline after them)."""
        return self._strips.get(self._check_token(token_id), (False, False))

    _strips: dict[int, tuple[bool, bool]]  # token id -> (lstrip, rstrip) where either is set; by the implementation

    @property
    def user_defined_tokens(self) -> dict[str, int]:
        """Tokens that encoding matches whole wherever their text appears, `special` or not: SentencePiece's
        user-defined pieces (GGUF token type 4; llama.cpp matches them the same way) and tokenizer.json's
        non-special added tokens. Text -> id."""
        return dict(self._user_defined_tokens())

    def piece_bytes(self, token_id: int) -> bytes:
        """The bytes the token contributes to decoded text (before the first-token space strip)."""
        return self._surfaces[self._check_token(token_id)]

    # ------------------------------------------------------------------ text <-> ids

    def encode(self, text: str, add_bos: bool = True, add_eos: bool = False, special: bool = False) -> list[int]:
        """Token ids of `text`, with BOS/EOS when asked and the vocabulary has them. With `special` the text of
        control tokens ("</s>", "<|im_end|>") becomes those tokens; without it (the default) it is plain text,
        so text from users cannot forge control tokens. InvalidArgumentError for anything but a str or a
        flag that is not a bool; TokenizerError for a str with no UTF-8 form."""
        check_text(text)
        for name, flag in (("add_bos", add_bos), ("add_eos", add_eos), ("special", special)):
            _check_flag(name, flag)
        ids = self._encode(text, bool(special))
        if add_bos and self._bos_id is not None:
            ids.insert(0, self._bos_id)
        if add_eos and self._eos_id is not None:
            ids.append(self._eos_id)
        return ids

    def surface(self, token_id: int, at_start: bool) -> tuple[bytes, bool]:
        """Bytes of one token in decoded text, and whether the *next* token is still "at start" (control
        tokens are invisible and keep it; with `add_dummy_prefix` the first other token loses its leading
        space). Shared by `decode` and `StreamDecoder` so the two can never disagree."""
        _check_flag("at_start", at_start)
        return self._surface(self._check_token(token_id), bool(at_start))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`: control tokens produce nothing, invalid UTF-8 one U+FFFD per byte (as
        ``sentencepiece``'s ``decode``)."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise InvalidArgumentError(f"ids must be a sequence of token ids, got {type(ids).__name__}", param="ids")
        out = bytearray()
        at_start = self._add_dummy_prefix
        for token_id in ids:
            chunk, at_start = self._surface(self._check_token(token_id, param="ids"), at_start)
            out += chunk
        return out.decode("utf-8", errors=DECODE_ERRORS)

    def _surface(self, i: int, at_start: bool) -> tuple[bytes, bool]:
        """`surface` of a valid id."""
        if self._is_control(i):
            return b"", at_start
        chunk = self._surfaces[i]
        if at_start and self._add_dummy_prefix and self._drops_prefix_space(i) and chunk.startswith(b" "):
            chunk = chunk[1:]
        return chunk, False

    # ------------------------------------------------------------------ what each implementation does

    _surfaces: list[bytes]  # each token's bytes in decoded text (piece_bytes), set by the implementation

    @abc.abstractmethod
    def _encode(self, text: str, special: bool) -> list[int]:
        """Token ids of a valid `text`, without BOS/EOS."""

    @abc.abstractmethod
    def _is_control(self, i: int) -> bool:
        """Whether token `i` (in range) is a control token."""

    @abc.abstractmethod
    def _id_to_piece(self, i: int) -> str:
        """Token `i` (in range) as the vocabulary spells it."""

    @abc.abstractmethod
    def _piece_to_id(self, piece: str) -> int | None:
        """The id of the token spelled `piece`, or None."""

    @abc.abstractmethod
    def _user_defined_tokens(self) -> dict[str, int]:
        """`user_defined_tokens`: text -> id of the tokens matched whole in any text."""

    @abc.abstractmethod
    def _drops_prefix_space(self, i: int) -> bool:
        """Whether token `i` (not a control token), first in a text, loses its leading space in decoding."""

    # ------------------------------------------------------------------ checks

    def _check_token(self, token_id: int, param: str = "token_id") -> int:
        """`token_id` as an int in the vocabulary: InvalidArgumentError (`param`) for a non-integer (a bool
        included), TokenizerError for an id out of range."""
        if isinstance(token_id, (bool, np.bool_)) or not isinstance(token_id, (int, np.integer)):
            raise InvalidArgumentError(f"token id must be an int, got {type(token_id).__name__}", param=param)
        i = int(token_id)
        if not 0 <= i < self._vocab_size:
            raise TokenizerError(f"token id {i} out of range: valid ids are 0..{self._vocab_size - 1}")
        return i

    def _special_id(self, name: str, value: int | None) -> int | None:
        """A special token's id (None: the vocabulary has none), checked against the vocabulary."""
        if value is None:
            return None
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TokenizerError(f"{name} must be an int, got {value!r}")
        if not 0 <= value < self._vocab_size:
            raise TokenizerError(f"{name}={value} out of range for a vocabulary of {self._vocab_size} tokens")
        return int(value)


def _check_flag(name: str, value: object) -> None:
    """InvalidArgumentError unless `value` is a bool (a numpy bool too): "no" or None is not False."""
    if not isinstance(value, (bool, np.bool_)):
        raise InvalidArgumentError(f"{name} must be a bool, got {value!r}", param=name)


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
