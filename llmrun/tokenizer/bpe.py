"""BPE with merge ranks, as Hugging Face `tokenizers` runs it: byte-level (GPT-2, Llama 3, Qwen2, SmolLM)
and SentencePiece-style with byte fallback (Llama 2, TinyLlama, Mistral as tokenizer.json).

Encoding (`BPETokenizer.encode`), step by step as `tokenizers` does it:

1. added tokens are cut out of the text first (leftmost, longest match): non-special ones always, special
   ones only with `special=True`, so text from a user cannot produce control tokens unless the caller
   allows it;
2. each remaining segment is normalized, then cut into words by the pre-tokenizer (see pretokenize.py);
3. each word becomes symbols: byte-level models map its UTF-8 bytes to GPT-2's printable characters, one
   symbol per byte; other models take one symbol per character, and a character missing from the
   vocabulary becomes its `<0xNN>` byte tokens (byte fallback) or the unknown token;
4. adjacent symbols are merged, lowest merge rank first (leftmost on ties), until no pair has a merge;
   with `ignore_merges` a word that is a vocabulary entry as a whole is taken as is (Llama 3).

Word encodings are cached (LRU), since text repeats words a lot.

Decoding gives each id its bytes (`surface`): byte-level tokens map back through the byte table,
SentencePiece-style tokens turn '▁' into spaces and `<0xNN>` into their byte, special tokens vanish, and
with `add_dummy_prefix` the first token's leading space is dropped. It implements the `Tokenizer` interface
(base.py), as `SentencePieceTokenizer` does, so `StreamDecoder` and the generation loop take either.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Sequence
from dataclasses import dataclass

import regex

from ..errors import TokenizerError
from .base import Tokenizer
from .pretokenize import Identity, Normalizer, PreTokenizer, match_deadline

__all__ = ["AddedToken", "BPETokenizer", "bytes_to_unicode"]

WORD_CACHE_SIZE = 1 << 16
MAX_VOCAB = 1 << 22  # token ids beyond this are a corrupt file, not a model (the largest real ones are ~2.6e5)
_BYTE_TOKEN = regex.compile(r"<0x([0-9A-Fa-f]{2})>\Z")
SPM_SPACE = "\u2581"


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map: printable Latin-1 bytes stand for themselves, the
    other 68 bytes are shifted to U+0100 and up (so a space is 'Ġ', a newline 'Ċ')."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + n)
            n += 1
    return table


@dataclass(frozen=True)
class AddedToken:
    """A token matched whole in the input text before anything else (tokenizer.json `added_tokens`)."""

    id: int
    content: str
    special: bool = True  # special tokens are control tokens: matched only on request, decoded to nothing
    lstrip: bool = False  # swallow whitespace to the left / right of the match
    rstrip: bool = False


class BPETokenizer(Tokenizer):
    """A merge-rank BPE tokenizer (byte-level or SentencePiece-style), with added/special tokens."""

    def __init__(
        self,
        vocab: dict[str, int],
        merges: Sequence[tuple[str, str]],
        *,
        byte_level: bool,
        pre_tokenizer: PreTokenizer | None = None,
        normalizer: Normalizer | None = None,
        added_tokens: Sequence[AddedToken] = (),
        bos_id: int | None = None,
        eos_id: int | None = None,
        unk_id: int | None = None,
        byte_fallback: bool = False,
        fuse_unk: bool = False,
        ignore_merges: bool = False,
        add_dummy_prefix: bool = False,
        vocab_size: int | None = None,
    ) -> None:
        """`vocab` maps each token's text (in the model's spelling: GPT-2 characters for byte-level models,
        '▁' for spaces otherwise) to its id; `merges` are the merge pairs, best first. `vocab_size` pads the
        vocabulary with ids that decode to nothing (models often have more embedding rows than tokens).
        `add_dummy_prefix`: decoding drops the leading space of the first token (SentencePiece style)."""
        self._byte_level = byte_level
        self._pre_tokenizer = pre_tokenizer or Identity()
        self._normalizer = normalizer
        self._fuse_unk = fuse_unk
        self._ignore_merges = ignore_merges

        for text, i in vocab.items():
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < MAX_VOCAB:
                raise TokenizerError(f"vocabulary entry {text!r} has a bad id {i!r}")
        for t in added_tokens:
            if not isinstance(t.id, int) or isinstance(t.id, bool) or not 0 <= t.id < MAX_VOCAB:
                raise TokenizerError(f"added token {t.content!r} has a bad id {t.id!r}")
        n = max([*vocab.values(), *(t.id for t in added_tokens), -1]) + 1
        if vocab_size is not None:
            if vocab_size < n:
                raise TokenizerError(f"the tokenizer has ids up to {n - 1}, more than the model's vocabulary of "
                                     f"{vocab_size}")
            n = vocab_size
        super().__init__(n, bos_id=bos_id, eos_id=eos_id, unk_id=unk_id, add_dummy_prefix=add_dummy_prefix,
                         byte_fallback=byte_fallback)
        pieces: list[str | None] = [None] * n
        for text, i in vocab.items():
            pieces[i] = text
        self._vocab = dict(vocab)
        self._special: set[int] = set()
        self._added: dict[str, int] = {}
        for t in added_tokens:
            if not t.content:
                raise TokenizerError(f"added token {t.id} is empty")
            pieces[t.id] = t.content
            self._added[t.content] = t.id
            if t.special:
                self._special.add(t.id)
        self._pieces = pieces
        self._strips = {t.id: (t.lstrip, t.rstrip) for t in added_tokens if t.lstrip or t.rstrip}

        self._ranks: dict[tuple[str, str], int] = {}
        for rank, (left, right) in enumerate(merges):
            if left + right not in vocab:
                raise TokenizerError(f"merge {rank} ({left!r} {right!r}) makes {left + right!r}, which is not in "
                                     "the vocabulary")
            self._ranks.setdefault((left, right), rank)
        self._byte_tokens = self._find_byte_tokens() if byte_fallback else {}
        self._surfaces = self._build_surfaces(added_tokens)
        self._added_all = self._added_pattern([t for t in added_tokens])
        self._added_plain = self._added_pattern([t for t in added_tokens if not t.special])
        self._word_ids = functools.lru_cache(maxsize=WORD_CACHE_SIZE)(self._encode_word)
        # Set by the readers: what the file says about adding BOS/EOS, and the GGUF pre-tokenizer name.
        self.add_bos_default = self._bos_id is not None
        self.add_eos_default = False
        self.pre_name: str | None = None

    # ------------------------------------------------------------------ properties

    @property
    def byte_level(self) -> bool:
        """Whether tokens spell bytes in GPT-2's printable characters (Llama 3, Qwen2) rather than text."""
        return self._byte_level

    @property
    def vocab(self) -> dict[str, int]:
        """The model's vocabulary (added tokens not included): token text -> id."""
        return dict(self._vocab)

    @property
    def merges(self) -> list[tuple[str, str]]:
        """The merge pairs, best first."""
        return sorted(self._ranks, key=self._ranks.__getitem__)

    @property
    def special_ids(self) -> frozenset[int]:
        """Ids of the special (control) added tokens."""
        return frozenset(self._special)

    # ------------------------------------------------------------------ per-token queries

    def _id_to_piece(self, i: int) -> str:
        """The token as the vocabulary spells it (e.g. 'Ġhello', '▁hello', '<|eot_id|>'); "" for padding."""
        piece = self._pieces[i]
        return "" if piece is None else piece

    def _piece_to_id(self, piece: str) -> int | None:
        """The id of a vocabulary entry or added token spelled `piece`, or None."""
        if piece in self._added:
            return self._added[piece]
        return self._vocab.get(piece)

    def _user_defined_tokens(self) -> dict[str, int]:
        return {text: i for text, i in self._added.items() if i not in self._special}

    def _is_control(self, i: int) -> bool:
        """Special added tokens (BOS, EOS, <|im_end|> ...) and padding ids: they decode to nothing."""
        return i in self._special or self._pieces[i] is None

    def _drops_prefix_space(self, i: int) -> bool:
        return True  # with add_dummy_prefix, whatever the first token is (the Strip decoder of tokenizer.json)

    # ------------------------------------------------------------------ encode

    def _encode(self, text: str, special: bool) -> list[int]:
        """Token ids of `text`, as `tokenizers` gives them. Special-token text (e.g. "<|eot_id|>") becomes its
        token only with `special`."""
        deadline = match_deadline()  # what matching the file's own regular expressions may take
        ids: list[int] = []
        pattern = self._added_all if special else self._added_plain
        pos = 0
        if pattern is not None:
            for m in pattern.finditer(text):
                if m.start() > pos:
                    self._encode_segment(text[pos:m.start()], pos == 0, ids, deadline)
                ids.append(self._added[m.group("t")])
                pos = m.end()
        if pos < len(text):
            self._encode_segment(text[pos:], pos == 0, ids, deadline)
        return ids

    def _encode_segment(self, segment: str, first: bool, out: list[int], deadline: float) -> None:
        if self._normalizer is not None:
            segment = self._normalizer(segment, deadline)
        if not segment:
            return
        for word in self._pre_tokenizer([segment], first, deadline):
            if word:
                out.extend(self._word_ids(word))

    def _encode_word(self, word: str) -> tuple[int, ...]:
        if self._byte_level:
            table = bytes_to_unicode()
            word = "".join(table[b] for b in word.encode("utf-8"))
        vocab = self._vocab
        if self._ignore_merges and word in vocab:
            return (vocab[word],)
        symbols: list[str] = []
        unknown: list[bool] = []
        for ch in word:
            if ch in vocab:
                symbols.append(ch)
                unknown.append(False)
            elif self._byte_fallback and all(b in self._byte_tokens for b in ch.encode("utf-8")):
                for b in ch.encode("utf-8"):
                    symbols.append(self._byte_tokens[b])
                    unknown.append(False)
            elif self._unk_id is not None:
                if self._fuse_unk and unknown and unknown[-1]:
                    continue
                symbols.append("")
                unknown.append(True)
            # else: no unknown token, the character is dropped (as `tokenizers` does)
        merged = self._merge(symbols, unknown)
        return tuple(self._unk_id if s is None else vocab[s] for s in merged)  # type: ignore[misc]

    def _merge(self, symbols: list[str], unknown: list[bool]) -> list[str | None]:
        """Applies merges, lowest rank first and leftmost on ties, over a linked list of symbols; heap
        entries are checked when popped (a merge may have changed either side since)."""
        n = len(symbols)
        ranks = self._ranks
        nxt = list(range(1, n + 1))
        prv = list(range(-1, n - 1))
        alive = [True] * n
        heap: list[tuple[int, int, int, str, str]] = []

        def push(left: int, right: int) -> None:
            if unknown[left] or unknown[right]:
                return
            rank = ranks.get((symbols[left], symbols[right]))
            if rank is not None:
                heap.append((rank, left, right, symbols[left], symbols[right]))

        for i in range(n - 1):
            push(i, i + 1)
        heapq.heapify(heap)
        while heap:
            _, left, right, lsym, rsym = heapq.heappop(heap)
            if not (alive[left] and alive[right] and nxt[left] == right and symbols[left] == lsym
                    and symbols[right] == rsym):
                continue
            symbols[left] = lsym + rsym
            alive[right] = False
            after = nxt[right]
            nxt[left] = after
            if after < n:
                prv[after] = left
            before = prv[left]
            if before >= 0:
                rank = ranks.get((symbols[before], symbols[left]))
                if rank is not None and not unknown[before]:
                    heapq.heappush(heap, (rank, before, left, symbols[before], symbols[left]))
            if after < n:
                rank = ranks.get((symbols[left], symbols[after]))
                if rank is not None and not unknown[after]:
                    heapq.heappush(heap, (rank, left, after, symbols[left], symbols[after]))
        return [None if unknown[i] else symbols[i] for i in range(n) if alive[i]]

    # ------------------------------------------------------------------ construction helpers

    def _find_byte_tokens(self) -> dict[int, str]:
        """byte -> its `<0xNN>` token, spelled as `tokenizers` looks it up (upper-case hex)."""
        return {b: f"<0x{b:02X}>" for b in range(256) if f"<0x{b:02X}>" in self._vocab}

    def _build_surfaces(self, added_tokens: Sequence[AddedToken]) -> list[bytes]:
        decode_byte = {c: b for b, c in bytes_to_unicode().items()}
        added = {t.id for t in added_tokens}
        surfaces = []
        for i, piece in enumerate(self._pieces):
            if piece is None:
                surfaces.append(b"")
            elif i in added:
                surfaces.append(piece.encode("utf-8"))
            elif self._byte_level:
                surfaces.append(b"".join(bytes([decode_byte[c]]) if c in decode_byte else c.encode("utf-8")
                                         for c in piece))
            elif self._byte_fallback and _BYTE_TOKEN.match(piece):
                surfaces.append(bytes([int(piece[3:5], 16)]))
            else:
                surfaces.append(piece.replace(SPM_SPACE, " ").encode("utf-8"))
        return surfaces

    @staticmethod
    def _added_pattern(tokens: Sequence[AddedToken]) -> regex.Pattern | None:
        """One alternation matching any of `tokens`, longest first (leftmost-longest, as `tokenizers`)."""
        if not tokens:
            return None
        parts = []
        for t in sorted(tokens, key=lambda t: len(t.content), reverse=True):
            parts.append((r"\s*" if t.lstrip else "") + "(?P<t>" + regex.escape(t.content) + ")"
                         + (r"\s*" if t.rstrip else ""))
        return regex.compile("|".join(f"(?:{p})" for p in parts))

    def __repr__(self) -> str:
        kind = "byte-level" if self._byte_level else "sentencepiece-style"
        return (f"BPETokenizer({kind}, vocab_size={self._vocab_size}, merges={len(self._ranks)}, "
                f"bos_id={self._bos_id}, eos_id={self._eos_id})")
