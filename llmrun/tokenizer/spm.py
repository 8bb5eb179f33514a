"""SentencePiece-compatible BPE tokenizer with byte fallback (the Llama / llama2.c family).

Encoding reproduces the `sentencepiece` library's BPE model (``bpe_model.cc``) exactly, so that the
ids fed to a model are the ids it was trained on:

* normalization is the identity, except that every space becomes the meta symbol '▁' (here kept as
  a plain b' ', the llama2.c convention) and, with ``add_dummy_prefix``, one space is prepended to
  non-empty text;
* the text is split into Unicode characters (user-defined pieces are matched whole and never merged);
* adjacent symbols are merged greedily: always the pair whose merged piece has the highest score,
  the leftmost pair on ties; only normal, user-defined and unused pieces can be produced by a merge;
* unused pieces are split back into the two symbols they were merged from;
* a final symbol that is not in the vocabulary falls back to one ``<0xNN>`` piece per UTF-8 byte.

Decoding mirrors ``SentencePieceProcessor::Decode``: control tokens vanish, byte tokens become their
byte, ``<unk>`` becomes " ⁇ ", the first non-control token loses the dummy-prefix space, and every
byte that is not part of a valid UTF-8 character becomes one U+FFFD.
"""

from __future__ import annotations

import enum
import heapq
import math
import operator
import re
from collections.abc import Sequence

import numpy as np

from llmrun.errors import TokenizerError
from llmrun.tokenizer.base import Tokenizer

__all__ = ["SentencePieceTokenizer", "TokenType", "SPM_SPACE", "UNK_SURFACE"]

SPM_SPACE = "\u2581"
"""SentencePiece's whitespace meta symbol '▁'; stored as a plain space in our pieces."""

UNK_SURFACE = " \u2047 ".encode()
"""What sentencepiece's decoder prints for ``<unk>`` (its default ``unk_surface``, " ⁇ ")."""

class TokenType(enum.IntEnum):
    """Token types, numbered as in sentencepiece's ModelProto and GGUF's ``tokenizer.ggml.token_type``."""

    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = (int(t) for t in TokenType)
# Pieces that live in sentencepiece's `pieces_` map: only these can be the result of a merge.
_MERGEABLE_TYPES = frozenset({_NORMAL, _USER_DEFINED, _UNUSED})
# sentencepiece writes byte pieces with upper-case hex ("<0x0A>"); only that spelling is a byte piece.
_BYTE_PIECE = re.compile(rb"<0x([0-9A-F]{2})>\Z")
# GGUF files may carry type 0 ("undefined"); llama.cpp treats it as normal, and so do we.
_GGUF_UNDEFINED = 0


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece BPE tokenizer over a vocabulary of byte-string pieces (spaces as b' ')."""

    def __init__(
        self,
        pieces: Sequence[bytes],
        scores: Sequence[float] | np.ndarray,
        *,
        bos_id: int | None = 1,
        eos_id: int | None = 2,
        unk_id: int = 0,
        byte_fallback: bool = True,
        add_dummy_prefix: bool = True,
        token_types: Sequence[int] | None = None,
        rstrip_ids: Sequence[int] = (),
    ) -> None:
        """Build a tokenizer.

        ``pieces[i]`` is the UTF-8 text of token ``i`` with '▁' already replaced by b' ' (llama2.c
        convention; use `from_sentencepiece_pieces` for the '▁' form).  ``scores`` are the merge
        priorities (higher merges first).  ``token_types`` uses `TokenType` numbers; when it is None
        (llama2.c files carry no types) they are inferred: ``unk_id`` is unknown, BOS/EOS are control,
        pieces spelled exactly ``<0xNN>`` are bytes, everything else is normal. ``rstrip_ids``: control
        tokens that swallow the whitespace after them when `encode(special=True)` finds them (llama.cpp's
        rule for Phi-3 files, which GGUF has no field for).
        """
        self._pieces = _check_pieces(pieces)
        n = len(self._pieces)
        super().__init__(n, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id, add_dummy_prefix=add_dummy_prefix,
                         byte_fallback=byte_fallback)
        if self._unk_id is None:
            raise TokenizerError("a SentencePiece vocabulary needs an unknown token (unk_id)")
        self._scores = _check_scores(scores, n)
        if token_types is None:
            self._types = self._infer_types()
        else:
            self._types = _check_types(token_types, n)
        self._byte_ids = self._build_byte_table()
        self._surfaces = self._build_surfaces()
        self._build_encoder_tables()
        self._build_special_tables()
        self._piece_ids: dict[str, int] | None = None  # id_to_piece's spelling -> id, built on first use
        self._strips = {self._check_token(i): (False, True) for i in rstrip_ids}

    @classmethod
    def from_sentencepiece_pieces(
        cls,
        pieces: Sequence[str],
        scores: Sequence[float] | np.ndarray,
        token_types: Sequence[int] | None = None,
        **kwargs: object,
    ) -> SentencePieceTokenizer:
        """Build from pieces in SentencePiece's own spelling ('▁' for spaces), e.g. a GGUF vocabulary."""
        converted = []
        for i, piece in enumerate(pieces):
            if not isinstance(piece, str):
                raise TypeError(f"piece {i} must be str, got {type(piece).__name__}")
            try:
                converted.append(piece.replace(SPM_SPACE, " ").encode("utf-8"))
            except UnicodeEncodeError as exc:
                raise TokenizerError(f"piece {i} is not valid Unicode: {piece!r} ({exc.reason})") from None
        return cls(converted, scores, token_types=token_types, **kwargs)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ properties

    @property
    def pieces(self) -> tuple[bytes, ...]:
        """The raw pieces as given (spaces as b' ')."""
        return self._pieces

    @property
    def scores(self) -> np.ndarray:
        """Merge scores as a read-only float32 array."""
        return self._scores

    @property
    def token_types(self) -> tuple[int, ...]:
        """`TokenType` number of every id (given or inferred)."""
        return tuple(self._types)

    # ------------------------------------------------------------------ per-token queries

    def token_type(self, token_id: int) -> TokenType:
        return TokenType(self._types[self._check_token(token_id)])

    def is_byte(self, token_id: int) -> bool:
        return self._types[self._check_token(token_id)] == _BYTE

    def _is_control(self, i: int) -> bool:
        return self._types[i] == _CONTROL

    def _id_to_piece(self, i: int) -> str:
        """The piece as sentencepiece spells it ('▁' for spaces, "<s>", "<0x0A>"), for display."""
        text = self._pieces[i].decode("utf-8", errors="replace")
        if self._types[i] == _CONTROL:
            # llama2.c stores BOS/EOS as "\n<s>\n" / "\n</s>\n"; show the bare name.
            text = text.strip()
        return text.replace(" ", SPM_SPACE)

    # ------------------------------------------------------------------ encode

    def _encode(self, text: str, special: bool) -> list[int]:
        """Token ids of ``text``, identical to ``sentencepiece``'s ``encode``.

        With ``special`` the text of a control token (``<s>``, ``</s>``, ``<|im_end|>`` ...) becomes that
        token, and each run of text between them is encoded on its own (with the dummy-prefix space, as
        llama.cpp does); without it such text is ordinary text.  User-defined pieces are matched either
        way (sentencepiece's rule).
        """
        if not (special and self._special_pattern is not None):
            return self._encode_text(text)
        ids: list[int] = []
        strip = False  # the previous control token swallows the whitespace after it
        for i, fragment in enumerate(self._special_pattern.split(text)):
            if i % 2:
                ids.append(self._special_ids[fragment])
                strip = self._strips.get(ids[-1], (False, False))[1]
            else:
                ids.extend(self._encode_text(fragment.lstrip() if strip else fragment))
        return ids

    def _encode_text(self, text: str) -> list[int]:
        if not text:  # sentencepiece encodes "" as [] -- no dummy prefix either
            return []
        normalized = text.replace(SPM_SPACE, " ")  # a literal '▁' *is* a space to sentencepiece
        if self._add_dummy_prefix:
            normalized = " " + normalized
        return self._encode_normalized(normalized)

    def _user_defined_tokens(self) -> dict[str, int]:
        return {p: self._piece_id[p] for by_length in self._user_defined.values() for _, pieces in by_length
                for p in pieces}

    def _piece_to_id(self, piece: str) -> int | None:
        """The token whose piece is exactly ``piece`` as `id_to_piece` spells it ("<|im_end|>", "</s>",
        "▁the", "<0x0A>"; a plain space is taken as '▁'), or None. The lowest id wins on duplicates."""
        if self._piece_ids is None:
            table: dict[str, int] = {}
            for i in range(len(self._pieces)):
                table.setdefault(self._id_to_piece(i), i)
            self._piece_ids = table
        return self._piece_ids.get(piece.replace(" ", SPM_SPACE))

    def _encode_normalized(self, text: str) -> list[int]:
        symbols, frozen = self._split(text)
        final_symbols = self._merge(symbols, frozen)
        return self._symbols_to_ids(final_symbols)

    def _split(self, text: str) -> tuple[list[str], list[bool] | None]:
        """Split into initial symbols: one per character, user-defined pieces whole (and frozen)."""
        if not self._user_defined:
            return list(text), None
        symbols: list[str] = []
        frozen: list[bool] = []
        i, n = 0, len(text)
        while i < n:
            match = self._match_user_defined(text, i)
            if match is None:
                symbols.append(text[i])
                frozen.append(False)
                i += 1
            else:
                symbols.append(match)
                frozen.append(True)
                i += len(match)
        return symbols, frozen

    def _match_user_defined(self, text: str, start: int) -> str | None:
        """Longest user-defined piece starting at ``text[start]`` (sentencepiece's PrefixMatcher).

        One set lookup per distinct piece length, longest first: the cost is bounded by the longest
        piece, not by how many pieces a (possibly hostile) vocabulary defines."""
        for length, pieces in self._user_defined.get(text[start], ()):
            candidate = text[start:start + length]
            if candidate in pieces:
                return candidate
        return None

    def _merge(self, symbols: list[str], frozen: list[bool] | None) -> list[str]:
        """Run the BPE merges; return the final symbols in order, unused pieces resegmented.

        Symbols form a doubly linked list over the original character positions; candidate pairs
        sit in a heap keyed by (-score, left position), so the best pair and, on ties, the leftmost
        one comes first -- sentencepiece's `SymbolPairComparator`.  A merge leaves stale heap
        entries behind; rather than deleting them we skip them when popped (lazy invalidation):
        an entry is stale iff one side was emptied or their total length no longer matches, because
        symbols only ever grow by absorbing their right neighbour.
        """
        n = len(symbols)
        if n == 0:
            return []
        ranks = self._merge_rank
        unused = self._unused
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        # merged piece -> the two symbols it was made of; only needed for unused pieces, which
        # sentencepiece splits back after merging (the last recorded split wins, as there).
        rev_merge: dict[str, tuple[str, str]] = {}
        heap: list[tuple[float, int, int, int]] = []

        def add_pair(left: int, right: int) -> None:
            if frozen is not None and (frozen[left] or frozen[right]):
                return
            merged = symbols[left] + symbols[right]
            rank = ranks.get(merged)
            if rank is None:
                return
            heapq.heappush(heap, (rank, left, right, len(merged)))
            if merged in unused:
                rev_merge[merged] = (symbols[left], symbols[right])

        for i in range(n - 1):
            add_pair(i, i + 1)

        pop = heapq.heappop
        while heap:
            _, left, right, size = pop(heap)
            lsym, rsym = symbols[left], symbols[right]
            if not lsym or not rsym or len(lsym) + len(rsym) != size:
                continue  # stale: a side was merged away or has grown since this pair was queued
            symbols[left] = lsym + rsym
            symbols[right] = ""
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            # Same order as sentencepiece (matters only for which split of an unused piece is kept).
            before = prv[left]
            if before >= 0:
                add_pair(before, left)
            if after >= 0:
                add_pair(left, after)

        out: list[str] = []
        i = 0  # position 0 is never merged away: a symbol only absorbs its right neighbour
        while i >= 0:
            self._resegment(symbols[i], rev_merge, out)
            i = nxt[i]
        return out

    def _resegment(self, piece: str, rev_merge: dict[str, tuple[str, str]], out: list[str]) -> None:
        """Append ``piece``, splitting unused pieces back into their halves (iteratively)."""
        stack = [piece]
        while stack:
            w = stack.pop()
            pid = self._piece_id.get(w)
            halves = rev_merge.get(w) if pid is not None and self._types[pid] == _UNUSED else None
            if halves is None:
                out.append(w)
            else:
                stack.append(halves[1])
                stack.append(halves[0])

    def _symbols_to_ids(self, symbols: list[str]) -> list[int]:
        """Map final symbols to ids; out-of-vocabulary symbols fall back to byte pieces or <unk>."""
        piece_id = self._piece_id
        ids: list[int] = []
        prev_unk = False
        for w in symbols:
            pid = piece_id.get(w)
            is_unk = pid is None
            if pid is not None:
                ids.append(pid)
            elif self._byte_fallback:
                byte_ids = self._byte_ids
                ids.extend(byte_ids[b] for b in w.encode("utf-8"))
            elif not prev_unk:
                # Without byte fallback sentencepiece merges a run of unknown symbols into one <unk>.
                ids.append(self._unk_id)
            prev_unk = is_unk
        return ids

    # ------------------------------------------------------------------ decode

    def _drops_prefix_space(self, i: int) -> bool:
        """sentencepiece drops the leading space (the dummy prefix) of the first non-control token only when
        it is an ordinary piece; a byte token or <unk> keeps it."""
        return self._types[i] in _MERGEABLE_TYPES

    # ------------------------------------------------------------------ construction helpers

    def _infer_types(self) -> list[int]:
        types = [_NORMAL] * len(self._pieces)
        for i, piece in enumerate(self._pieces):
            if _BYTE_PIECE.match(piece):
                types[i] = _BYTE
        for special in (self._bos_id, self._eos_id):
            if special is not None:
                types[special] = _CONTROL
        types[self._unk_id] = _UNKNOWN
        return types

    def _build_byte_table(self) -> list[int]:
        """byte value -> id of its ``<0xNN>`` piece (``unk_id`` where the vocabulary lacks one)."""
        table = [-1] * 256
        for i, kind in enumerate(self._types):
            if kind != _BYTE:
                continue
            match = _BYTE_PIECE.match(self._pieces[i])
            if match is None:
                raise TokenizerError(
                    f"token {i} has type BYTE but its piece {self._pieces[i]!r} is not of the form <0xNN>"
                )
            value = int(match.group(1), 16)
            if table[value] < 0:
                table[value] = i
        return [self._unk_id if t < 0 else t for t in table]

    def _build_surfaces(self) -> list[bytes]:
        """Each token's bytes in decoded text: a byte token its one byte, a control token nothing, the unknown
        token " ⁇ " (as sentencepiece's decoder), every other token its piece text."""
        surfaces = []
        for piece, kind in zip(self._pieces, self._types, strict=True):
            if kind == _CONTROL:
                surfaces.append(b"")
            elif kind == _UNKNOWN:
                surfaces.append(UNK_SURFACE)
            elif kind == _BYTE:
                surfaces.append(bytes([int(piece[3:5], 16)]))
            else:
                surfaces.append(piece)
        return surfaces

    def _build_encoder_tables(self) -> None:
        """Lookup tables for encoding, keyed by piece text (str: the input is str).

        Only normal, user-defined and unused pieces take part in encoding: merges can only create
        them, and a final symbol that matches nothing else -- even if it is spelled like a control
        or byte piece -- falls back to bytes (checked against sentencepiece 0.2.x).  Duplicate
        pieces (sentencepiece refuses them) keep their first id.
        """
        merge_rank: dict[str, float] = {}
        regular: dict[str, int] = {}
        unused: set[str] = set()
        user_defined: dict[str, list[str]] = {}
        scores = self._scores.tolist()
        for i, (piece, kind) in enumerate(zip(self._pieces, self._types, strict=True)):
            try:
                text = piece.decode("utf-8")
            except UnicodeDecodeError:
                continue  # can never match (valid) input text
            if not text:
                continue  # likewise: symbols are never empty
            if kind not in _MERGEABLE_TYPES:
                continue
            if text in regular:
                continue
            regular[text] = i
            score = scores[i]
            # heapq is a min-heap: store -score.  NaN would make the heap order undefined; rank it last.
            merge_rank[text] = math.inf if math.isnan(score) else -score
            if kind == _UNUSED:
                unused.add(text)
            elif kind == _USER_DEFINED:
                user_defined.setdefault(text[0], []).append(text)
        self._merge_rank = merge_rank
        self._piece_id = regular
        self._unused = frozenset(unused)
        # first character -> ((length, pieces of that length), ...), longest first
        self._user_defined = {
            c: tuple((n, frozenset(p for p in v if len(p) == n)) for n in sorted({len(p) for p in v}, reverse=True))
            for c, v in user_defined.items()}

    def _build_special_tables(self) -> None:
        """Control-token text -> id (the text as `id_to_piece` shows it, llama2.c's "\\n<s>\\n" as "<s>"), and
        a regex that splits text at them, longest first, for ``encode(special=True)``."""
        specials: dict[str, int] = {}
        for i, kind in enumerate(self._types):
            if kind == _CONTROL:
                text = self._pieces[i].decode("utf-8", errors="replace").strip()
                if text:
                    specials.setdefault(text, i)
        self._special_ids = specials
        self._special_pattern = (re.compile("(" + "|".join(map(re.escape, sorted(specials, key=len, reverse=True)))
                                            + ")") if specials else None)

    # ------------------------------------------------------------------ validation helpers

    def __repr__(self) -> str:
        return (
            f"SentencePieceTokenizer(vocab_size={self.vocab_size}, bos_id={self._bos_id}, "
            f"eos_id={self._eos_id}, unk_id={self._unk_id}, byte_fallback={self._byte_fallback})"
        )


def _check_pieces(pieces: Sequence[bytes]) -> tuple[bytes, ...]:
    if isinstance(pieces, (str, bytes)):
        raise TypeError("pieces must be a sequence of bytes objects, not a single string")
    out = []
    for i, piece in enumerate(pieces):
        if type(piece) is not bytes:
            if not isinstance(piece, (bytes, bytearray, memoryview)):
                raise TypeError(f"piece {i} must be bytes, got {type(piece).__name__}")
            piece = bytes(piece)
        out.append(piece)
    if not out:
        raise TokenizerError("vocabulary is empty")
    return tuple(out)


def _check_scores(scores: Sequence[float] | np.ndarray, n: int) -> np.ndarray:
    # float32 like sentencepiece, so ties and orderings are decided exactly as there.
    try:
        arr = np.array(scores, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise TokenizerError(f"scores must be numbers: {exc}") from None
    if arr.shape != (n,):
        raise TokenizerError(f"expected {n} scores (one per piece), got shape {arr.shape}")
    arr.setflags(write=False)
    return arr


def _check_types(token_types: Sequence[int], n: int) -> list[int]:
    types = []
    for i, value in enumerate(token_types):
        try:
            t = operator.index(value)
        except TypeError:
            raise TypeError(f"token_types[{i}] must be an integer, got {type(value).__name__}") from None
        if t == _GGUF_UNDEFINED:
            t = _NORMAL
        if not _NORMAL <= t <= _BYTE:
            raise TokenizerError(f"token_types[{i}]={t} is not a known token type (1..6)")
        types.append(t)
    if len(types) != n:
        raise TokenizerError(f"expected {n} token types (one per piece), got {len(types)}")
    return types
