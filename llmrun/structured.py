"""Structured output: constrain a generation to a JSON schema, a Lark grammar or a regular expression.

The constraint masks the logits at every step (disallowed tokens get -inf before the sampler sees them), so
the output matches whatever the model: greedy or sampled, with penalties. The engine is llguidance
(github.com/microsoft/llguidance; chosen in benchmarks/results/structured-output-2026-11-30.md), imported on
the first constrained request. Its view of llmrun's tokenizer (each id's bytes) is built once per tokenizer
and logits size and cached.

How a request names its constraint (Model.generate/stream/chat/chat_stream and the server):

    response_format={"type": "json_object"}                                  # any JSON object
    response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {...}, "strict": True}}
    grammar=Grammar.json_schema({...}) | Grammar.lark("start: ...") | Grammar.regex(r"\\d+")
    grammar="start: ..."                                                     # a str is a Lark grammar

The generation ends with finish_reason "stop" when the grammar is complete (an end-of-generation token is only
allowed where the grammar accepts, and the generation stops by itself where nothing else could follow). A
`max_tokens` cut ("length") or a stop string can leave the output incomplete: it is then a prefix of a valid
output, not a valid one.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidArgumentError
from .tokenizer import Tokenizer

# llguidance's JSON options: compact JSON (no free whitespace between tokens: fewer tokens, no runs of spaces)
JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass(frozen=True)
class Grammar:
    """A constraint for `grammar=`: `kind` is "json_schema", "lark" or "regex"; `source` the schema (a dict
    or its JSON text) or the grammar / expression text."""

    kind: str
    source: Any

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any] | str) -> Grammar:
        return cls("json_schema", schema)

    @classmethod
    def lark(cls, source: str) -> Grammar:
        """A Lark grammar (llguidance's dialect: `start` is the top rule; `%json {...}` embeds a schema)."""
        return cls("lark", source)

    @classmethod
    def regex(cls, pattern: str) -> Grammar:
        """A regular expression the whole output must match (Rust regex syntax, implicitly anchored)."""
        return cls("regex", pattern)


def from_request(response_format: object = None, grammar: object = None) -> Grammar | None:
    """The constraint a request asks for, or None. InvalidArgumentError (param "response_format" or "grammar")
    for a malformed one; the grammar itself is checked when it is compiled (`compile_constraint`)."""
    if response_format is not None and grammar is not None:
        raise InvalidArgumentError("give response_format or grammar, not both", param="grammar")
    if grammar is not None:
        if isinstance(grammar, str):
            return Grammar.lark(grammar)
        if isinstance(grammar, Grammar) and grammar.kind in ("json_schema", "lark", "regex"):
            if grammar.kind != "json_schema" and not isinstance(grammar.source, str):
                raise InvalidArgumentError(f"a {grammar.kind} grammar must be a str", param="grammar")
            return grammar
        raise InvalidArgumentError(f"grammar must be a str (Lark) or a llmrun.Grammar, got {type(grammar).__name__}",
                                   param="grammar")
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise InvalidArgumentError(f"response_format must be an object, got {type(response_format).__name__}",
                                   param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return Grammar.json_schema({"type": "object"})
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        if not isinstance(spec, Mapping):
            raise InvalidArgumentError("response_format.json_schema must be an object with a schema",
                                       param="response_format")
        schema = spec.get("schema", {})  # OpenAI: no schema means any JSON
        if not isinstance(schema, (Mapping, bool)):
            raise InvalidArgumentError("response_format.json_schema.schema must be an object",
                                       param="response_format")
        return Grammar.json_schema(schema)
    raise InvalidArgumentError(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                               param="response_format")


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError as e:
        raise InvalidArgumentError(f"structured output needs the llguidance package (pip install llguidance): {e}",
                                   param="response_format") from None
    return llguidance


class _TokenView:
    """What llguidance reads from a tokenizer (llguidance.TokenizerWrapper's fields): each id's raw bytes,
    control / unknown ids as b"\\xff" + name in `special_token_ids`, the list padded with b"" to the logits
    size, and a callable that tokenizes bytes into ids whose bytes are exactly the input."""

    def __init__(self, tok: Tokenizer, n_logits: int) -> None:
        self.tok = tok
        n = min(tok.vocab_size, n_logits)
        unk = tok.unk_id
        self.special_token_ids: list[int] = []
        self.tokens: list[bytes] = []
        self.text_bytes: list[bytes] = []
        for i in range(n):
            if tok.is_control(i) or i == unk:
                self.special_token_ids.append(i)
                self.tokens.append(b"\xff" + (tok.id_to_piece(i).encode("utf-8", "replace") or b"special"))
                self.text_bytes.append(b"")
            else:
                b = tok.piece_bytes(i)
                self.tokens.append(b)
                self.text_bytes.append(b)
        self.tokens += [b""] * (n_logits - n)  # ids past the tokenizer's (padded logits): never allowed
        self.eos_token_id = tok.eos_id if tok.eos_id is not None else (self.special_token_ids or [0])[0]
        self.bos_token_id = tok.bos_id
        self._by_bytes: dict[bytes, int] | None = None
        self._max_len = 1

    def __call__(self, data: bytes | str) -> list[int]:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not self.tok.add_dummy_prefix:  # llmrun's encoder where it round-trips exactly
            try:
                ids = self.tok.encode(data.decode("utf-8"), add_bos=False)
                if b"".join(self.text_bytes[i] for i in ids if i < len(self.text_bytes)) == data:
                    return ids
            except (UnicodeDecodeError, ValueError):
                pass
        return self._greedy(data)

    def _greedy(self, data: bytes) -> list[int]:
        """A greedy longest match over the tokens' bytes (no SentencePiece dummy prefix: forced text must come
        back byte for byte)."""
        if self._by_bytes is None:
            by: dict[bytes, int] = {}
            for i, b in enumerate(self.text_bytes):
                if b:
                    by.setdefault(b, i)
            self._by_bytes, self._max_len = by, max((len(b) for b in by), default=1)
        ids, pos = [], 0
        while pos < len(data):
            for n in range(min(self._max_len, len(data) - pos), 0, -1):
                i = self._by_bytes.get(data[pos:pos + n])
                if i is not None:
                    ids.append(i)
                    pos += n
                    break
            else:  # a byte no token holds: llguidance treats the text as untokenizable
                return ids
        return ids


_cache: weakref.WeakKeyDictionary[Tokenizer, dict[int, Any]] = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


def ll_tokenizer(tok: Tokenizer, n_logits: int) -> Any:
    """llguidance's LLTokenizer for `tok` with `n_logits` logits, built once and cached (0.1-0.4 s)."""
    with _cache_lock:
        per = _cache.setdefault(tok, {})
        if n_logits not in per:
            ll = _llguidance()
            view = _TokenView(tok, n_logits)
            per[n_logits] = ll.LLTokenizer(ll.TokenizerWrapper(view), n_vocab=n_logits)
        return per[n_logits]


class Constraint:
    """One generation's matcher: `apply(logits, eog_ids)` returns the logits with every disallowed id at -inf
    (end-of-generation ids allowed only where the grammar accepts); `consume(token)` advances it; `done` is
    True when nothing but the end could follow."""

    def __init__(self, matcher: Any, n_logits: int) -> None:
        self.matcher = matcher
        self.n_logits = n_logits
        self._mask = np.zeros((n_logits + 31) // 32, dtype=np.int32)

    def apply(self, logits: np.ndarray, eog_ids: Iterable[int]) -> np.ndarray:
        m = self.matcher
        m.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        if m.is_error():
            raise InvalidArgumentError(f"structured output: {m.get_error()}", param="grammar")
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little", count=self.n_logits).view(bool)
        accepting = m.is_accepting()
        for t in eog_ids:
            if t < self.n_logits:
                allowed[t] = accepting
        out = np.where(allowed[:logits.size], logits, np.float32(-np.inf)).astype(logits.dtype, copy=False)
        return out

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token) or self.matcher.is_error():
            raise InvalidArgumentError(f"structured output: token {token} refused: {self.matcher.get_error()}",
                                       param="grammar")

    @property
    def done(self) -> bool:
        return self.matcher.is_stopped()


def compile_constraint(grammar: Grammar, tok: Tokenizer, n_logits: int) -> Constraint:
    """A fresh Constraint for `grammar` on this tokenizer; InvalidArgumentError (param "response_format" for
    a JSON schema, "grammar" otherwise) when llguidance rejects it."""
    param = "response_format" if grammar.kind == "json_schema" else "grammar"
    ll = _llguidance()
    M = ll.LLMatcher
    try:
        if grammar.kind == "json_schema":
            source = grammar.source
            if isinstance(source, str):
                source = json.loads(source)
            text = M.grammar_from_json_schema(source, defaults=JSON_OPTIONS)
        elif grammar.kind == "lark":
            text = M.grammar_from_lark(grammar.source)
        else:
            text = M.grammar_from_regex(grammar.source)
    except (ValueError, TypeError, RuntimeError) as e:
        raise InvalidArgumentError(f"invalid {grammar.kind.replace('_', ' ')}: {e}", param=param) from None
    lt = ll_tokenizer(tok, n_logits)
    error = M.validate_grammar(text, lt)
    if error and not error.startswith("WARNING"):
        raise InvalidArgumentError(f"invalid {grammar.kind.replace('_', ' ')}: {error}", param=param)
    matcher = M(lt, text, log_level=0)
    if matcher.is_error():
        raise InvalidArgumentError(f"invalid {grammar.kind.replace('_', ' ')}: {matcher.get_error()}", param=param)
    return Constraint(matcher, n_logits)
