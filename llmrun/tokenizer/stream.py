"""Streaming detokenization: token ids in, text out, never half a UTF-8 character.

Byte-fallback tokens split one character (an emoji, a CJK ideograph) over several ids, and a
generation loop wants to print text after every token.  Decoding each token on its own would print
U+FFFD garbage; `StreamDecoder` keeps the incomplete tail of a character back until its last byte
arrives.  The joined output of `feed` + `flush` equals `Tokenizer.decode` of the same ids, for
every tokenizer (both decode through the same `Tokenizer.surface`).
"""

from __future__ import annotations

import codecs

from llmrun.errors import InvalidArgumentError
from llmrun.tokenizer.base import DECODE_ERRORS, Tokenizer

__all__ = ["StreamDecoder"]


class StreamDecoder:
    """Turns a stream of token ids into text pieces; never emits a partial UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, *, strip_leading_space: bool = True) -> None:
        """Start a stream.

        With ``strip_leading_space`` (the default) the stream is treated as the start of a sequence,
        like `Tokenizer.decode`: the dummy-prefix space of the first non-control token is dropped.
        Pass False when continuing text that was already shown, so that its spaces are kept.
        """
        if not isinstance(tokenizer, Tokenizer):
            raise InvalidArgumentError(f"tokenizer must be a Tokenizer, got {type(tokenizer).__name__}",
                                       param="tokenizer")
        self._tokenizer = tokenizer
        self._strip_leading_space = strip_leading_space and tokenizer.add_dummy_prefix
        self._at_start = self._strip_leading_space
        # Invalid bytes become one U+FFFD each, as in `Tokenizer.decode` (sentencepiece's rule),
        # so the stream and the full decode agree even on malformed byte sequences.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors=DECODE_ERRORS)

    def feed(self, token_id: int) -> str:
        """Add one token; return the text it completes (possibly "", e.g. mid-character or BOS)."""
        chunk, self._at_start = self._tokenizer.surface(token_id, self._at_start)
        if not chunk:
            return ""
        return self._decoder.decode(chunk)

    def flush(self) -> str:
        """End the stream: return any held-back bytes (an unfinished character becomes U+FFFD).

        The decoder is then reset, so it can be reused for a new stream.
        """
        text = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        self._at_start = self._strip_leading_space
        return text

    @property
    def pending(self) -> bool:
        """True while bytes of an unfinished character are held back."""
        return bool(self._decoder.getstate()[0])
