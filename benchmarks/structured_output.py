"""Structured-output engines compared for llmrun: llguidance, xgrammar, outlines-core (issue 15, item 2).

Not part of the test suite and not a dependency of llmrun: run it from a throwaway venv that has the engines,
numpy, jsonschema, tokenizers and cffi, with an llmrun checkout whose C library is built on PYTHONPATH
(here /work/main, the editable install of /work/venv):

    python3 -m venv /tmp/sovenv
    /tmp/sovenv/bin/pip install llguidance xgrammar outlines-core numpy jsonschema tokenizers cffi
    PYTHONPATH=/work/main /tmp/sovenv/bin/python benchmarks/structured_output.py --out /tmp/so.jsonl
    PYTHONPATH=/work/main /tmp/sovenv/bin/python benchmarks/structured_output.py --report /tmp/so.jsonl --step-ms 22.1

Each engine and vocabulary runs in a child process (--timeout: a grammar still compiling or walking when it
runs out is recorded as a timeout and skipped on the retry). The trained vocabularies are cached in
$SOBENCH_CACHE (/tmp/sobench-vocab; about 20 s each to train on 2 cores).

The interface measured is the one llmrun will use:

1. the vocabulary comes from llmrun's own tokenizer (``llmrun.tokenizer``): each token's bytes are
   ``Tokenizer.piece_bytes(i)`` (SentencePiece byte-fallback tokens ``<0xNN>`` are already one byte, '▁' is
   already a space, byte-level BPE's GPT-2 alphabet is already undone), control tokens are ``is_control(i)``;
   so every engine gets a *raw bytes* vocabulary and needs no knowledge of the tokenizer's kind;
2. the engine's tokenizer info is built once per model (timed);
3. a JSON schema / Lark grammar / regular expression is compiled (timed; rejected ones recorded);
4. per step, the engine fills a 32-bit allowed-token bitmask (timed: "mask"), which is applied to a numpy
   float32 logits row (timed: "apply", the same numpy code for all engines), a token is sampled and the
   matcher advances with it (timed: "advance").

Vocabularies: 32k is Llama 2's SentencePiece byte-fallback vocabulary (llama2.c's tokenizer.bin in
../shared/models); 49k, 128k and 152k are byte-level BPE vocabularies trained here with the ``tokenizers``
library on Python source text (SmolLM, Llama 3 and Qwen2 pre-tokenizers, sizes and special-token layouts;
the 152k one padded to Qwen2's 151936 logits as the real models are). They are synthetic: their tokens are
code-flavoured, but the sizes, the byte-level alphabet and the byte/partial-UTF-8 tokens are those of the
real vocabularies.

Walks: the "model" is noise. Each step draws Gumbel noise plus a fixed per-token bias (tokens holding
'"', '}', ']', ',', ')' or '@' weighted 50x, EOS 1e6x when allowed) so that walks finish; the output of each
finished walk is validated (JSON: ``json.loads`` + ``jsonschema`` with format checks; regex: ``re.fullmatch``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("SOBENCH_CACHE", "/tmp/sobench-vocab"))
LLAMA2_TOKENIZER = ROOT.parent / "shared" / "models" / "tokenizer.bin"

# ----------------------------------------------------------------------------------------------- vocabularies

VOCABS = {
    # name: (kind, tokenizer vocabulary size, logits size)
    "32k": ("spm", 32000, 32000),
    "49k": ("smollm", 49152, 49152),
    "128k": ("llama3", 128256, 128256),
    "152k": ("qwen2", 151665, 151936),
}


def _corpus() -> list[str]:
    """Python source text (the standard library, then this venv's and /work/venv's packages): enough distinct
    words for 150k BPE merges."""
    roots = [Path(os.__file__).parent, Path(np.__file__).parent.parent, Path("/work/venv/lib")]
    lines: list[str] = []
    total = 0
    for root in roots:
        for path in sorted(root.rglob("*.py")):
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            lines.extend(text.splitlines())
            total += len(text)
            if total > 60_000_000:
                return lines
    return lines


def _train(kind: str, size: int) -> Path:
    """A trained byte-level BPE tokenizer.json of `size` tokens in the style of `kind` (cached)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from llmrun.formats.hf_tokenizer import LLAMA3_PATTERN, QWEN2_PATTERN

    path = CACHE / f"{kind}-{size}.json"
    if path.exists():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    if kind == "smollm":
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<reserved_{i}>" for i in range(14)]
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        n_specials_front, n_specials_back = len(specials), 0
    elif kind == "llama3":
        specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"] + [f"<|reserved_special_token_{i}|>"
                                                                             for i in range(253)]
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        n_specials_front, n_specials_back = 0, len(specials)
    else:  # qwen2
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|extra_{i}|>" for i in range(19)]
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated"),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        n_specials_front, n_specials_back = 0, len(specials)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=size - n_specials_back, show_progress=False,
                                  special_tokens=specials[:n_specials_front],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t0 = time.perf_counter()
    tok.train_from_iterator(_corpus(), trainer)
    learned = tok.get_vocab_size()
    if n_specials_back:
        tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(path))
    print(f"trained {kind} {size}: {learned} learned + {n_specials_back} specials in "
          f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def load_vocab(name: str):
    """llmrun's Tokenizer for vocabulary `name`, and the logits size."""
    kind, size, n_logits = VOCABS[name]
    if kind == "spm":
        from llmrun.formats.llama2c_tokenizer import load_llama2c_tokenizer
        return load_llama2c_tokenizer(LLAMA2_TOKENIZER, vocab_size=size), n_logits
    from llmrun.formats.hf_tokenizer import load_tokenizer_json
    tok = load_tokenizer_json(_train(kind, size))
    return tok, n_logits


class TokenView:
    """What an engine needs from llmrun's tokenizer, built once per model: each id's bytes (``piece_bytes``),
    the control / unknown ids (never text), the EOS id, the logits size (>= the tokenizer's: padded ids are
    never allowed); llguidance's own view of it is llmrun.structured's."""

    def __init__(self, tok, n_logits: int):
        t0 = time.perf_counter()
        self.tok = tok
        self.n_vocab = n_logits
        self.n_tok = tok.vocab_size
        self.token_bytes: list[bytes] = []
        self.special: list[int] = []
        unk = tok.unk_id
        for i in range(self.n_tok):
            if tok.is_control(i) or i == unk:
                self.special.append(i)
                self.token_bytes.append(b"")
            else:
                self.token_bytes.append(tok.piece_bytes(i))
        self.eos = tok.eos_id
        if self.eos is None:  # the trained byte-level vocabularies: their first special
            self.eos = self.special[0]
        self.kind = "byte-fallback" if getattr(tok, "byte_fallback", False) else "byte-level"
        self.n_partial_utf8 = sum(1 for b in self.token_bytes if b and not _valid_utf8(b))
        self.build_s = time.perf_counter() - t0

    def text(self, ids: list[int]) -> bytes:
        return b"".join(self.token_bytes[i] for i in ids if i < self.n_tok)


def _valid_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# ----------------------------------------------------------------------------------------------- engines

class Engine:
    """One engine behind llmrun's future interface: `tokenizer_info(view)` once per model, `compile(kind,
    source)` once per request (raises for a rejected grammar), `matcher(compiled)` per generation; a matcher
    has fill(mask_int32), advance(token) -> bool, done() -> bool."""
    name = ""
    kinds = ("json", "lark", "regex")


class LLGuidance(Engine):
    name = "llguidance"

    def tokenizer_info(self, view: TokenView) -> None:
        import llguidance

        from llmrun.structured import ll_tokenizer  # the view llmrun itself gives llguidance

        self.ll = llguidance
        self.tok = ll_tokenizer(view.tok, view.n_vocab)

    def compile(self, kind: str, source):
        M = self.ll.LLMatcher
        if kind == "json":
            grammar = M.grammar_from_json_schema(source, defaults={"whitespace_flexible": False})
        elif kind == "lark":
            grammar = M.grammar_from_lark(source)
        else:
            grammar = M.grammar_from_regex(source)
        err = M.validate_grammar(grammar, self.tok)
        if err and not err.startswith("WARNING"):
            raise ValueError(err)
        m = M(self.tok, grammar, log_level=0)
        if m.is_error():
            raise ValueError(m.get_error())
        return m

    def matcher(self, compiled):
        m = compiled.deep_copy()

        class _M:
            def fill(self, mask):
                m.unsafe_compute_mask_ptr(mask.ctypes.data, mask.nbytes)

            def advance(self, t):
                return m.consume_token(t) and not m.is_error()

            def done(self):
                return m.is_stopped()
        return _M()


class XGrammar(Engine):
    name = "xgrammar"

    def tokenizer_info(self, view: TokenView) -> None:
        import xgrammar
        self.xg = xgrammar
        # RAW: the bytes as they are; control tokens are empty (xgrammar treats them as special)
        info = xgrammar.TokenizerInfo(view.token_bytes, xgrammar.VocabType.RAW, vocab_size=view.n_vocab,
                                      stop_token_ids=[view.eos], add_prefix_space=False)
        self.compiler = xgrammar.GrammarCompiler(info, max_threads=1, cache_enabled=False)

    def compile(self, kind: str, source):
        if kind == "json":
            return self.compiler.compile_json_schema(json.dumps(source), any_whitespace=False, strict_mode=True)
        if kind == "lark":
            return self.compiler.compile_lark(source)
        return self.compiler.compile_regex(source)

    def matcher(self, compiled):
        m = self.xg.GrammarMatcher(compiled)

        class _M:
            def fill(self, mask):
                m.fill_next_token_bitmask(mask)

            def advance(self, t):
                return m.accept_token(t)

            def done(self):
                return m.is_terminated()
        return _M()


class OutlinesCore(Engine):
    name = "outlines-core"
    kinds = ("json", "regex")

    def tokenizer_info(self, view: TokenView) -> None:
        import outlines_core
        self.oc = outlines_core
        by_bytes: dict[bytes, list[int]] = {}
        for i, b in enumerate(view.token_bytes):
            if b and i != view.eos:  # the EOS id is given separately; control tokens are not text
                by_bytes.setdefault(b, []).append(i)
        self.vocab = outlines_core.Vocabulary(view.eos, by_bytes)
        self.n_vocab = view.n_vocab

    def compile(self, kind: str, source):
        if kind == "json":
            regex = self.oc.json_schema.build_regex_from_schema(json.dumps(source))
        elif kind == "regex":
            regex = source
        else:
            raise ValueError("outlines-core has no context-free grammars (regular expressions only)")
        return self.oc.Index(regex, self.vocab)

    def matcher(self, compiled):
        g = self.oc.Guide(compiled)

        class _M:
            def fill(self, mask):
                g.write_mask_into(mask.ctypes.data, mask.size, 4)

            def advance(self, t):
                try:
                    g.advance(t, return_tokens=False)
                    return True
                except Exception:
                    return False

            def done(self):
                return g.is_finished()
        return _M()


ENGINES = {e.name: e for e in (LLGuidance, XGrammar, OutlinesCore)}

# ----------------------------------------------------------------------------------------------- grammars

SCHEMAS: dict[str, dict] = {
    "nested_objects": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
            "address": {"type": "object", "properties": {
                "street": {"type": "string", "maxLength": 30}, "city": {"type": "string", "maxLength": 20},
                "geo": {"type": "object", "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                        "required": ["lat", "lon"]}},
                "required": ["city", "geo"]},
        },
        "required": ["name", "age", "address"],
    },
    "array_bounds": {
        "type": "object",
        "properties": {"ids": {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 5},
                       "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3}},
        "required": ["ids", "tags"],
    },
    "enum_const": {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green", "blue"]}, "size": {"enum": [1, 2, 3, None]},
                       "kind": {"const": "shirt"}},
        "required": ["color", "size", "kind"],
    },
    "anyof": {
        "type": "object",
        "properties": {"value": {"anyOf": [{"type": "string", "maxLength": 10}, {"type": "integer"},
                                           {"type": "object", "properties": {"x": {"type": "number"}},
                                            "required": ["x"], "additionalProperties": False}]},
                       "maybe": {"type": ["string", "null"], "maxLength": 10}},
        "required": ["value", "maybe"],
    },
    "formats": {
        "type": "object",
        "properties": {"when": {"type": "string", "format": "date-time"},
                       "email": {"type": "string", "format": "email"},
                       "id": {"type": "string", "format": "uuid"},
                       "day": {"type": "string", "format": "date"}},
        "required": ["when", "email", "id", "day"],
    },
    "optional_closed": {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "boolean"}, "c": {"type": "string", "maxLength": 10}},
        "required": ["a"],
        "additionalProperties": False,
    },
    "pattern_lengths": {
        "type": "object",
        "properties": {"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                       "word": {"type": "string", "minLength": 2, "maxLength": 6}},
        "required": ["code", "word"],
        "additionalProperties": False,
    },
    "number_bounds": {
        "type": "object",
        "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1},
                       "n": {"type": "integer", "exclusiveMinimum": 0, "maximum": 1000},
                       "m": {"type": "integer", "multipleOf": 5}},
        "required": ["p", "n", "m"],
    },
    "ref_recursive": {
        "$defs": {"node": {"type": "object", "properties": {
            "v": {"type": "integer"},
            "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}},
            "required": ["v", "kids"], "additionalProperties": False}},
        "$ref": "#/$defs/node",
    },
    "allof_oneof": {
        "type": "object",
        "properties": {"shape": {"oneOf": [
            {"type": "object", "properties": {"circle": {"type": "number"}}, "required": ["circle"],
             "additionalProperties": False},
            {"type": "object", "properties": {"square": {"type": "integer"}}, "required": ["square"],
             "additionalProperties": False}]},
            "meta": {"allOf": [{"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]},
                               {"type": "object", "properties": {"y": {"type": "integer"}}, "required": ["y"]}]}},
        "required": ["shape", "meta"],
    },
    "json_object": {"type": "object"},  # response_format {"type": "json_object"}: any object
    "tool_call": {  # the shape item 3's `required` tool choice will compile
        "type": "object",
        "properties": {"name": {"const": "get_weather"},
                       "arguments": {"type": "object", "properties": {
                           "city": {"type": "string", "maxLength": 20},
                           "unit": {"enum": ["celsius", "fahrenheit"]},
                           "days": {"type": "integer", "minimum": 1, "maximum": 7}},
                           "required": ["city"], "additionalProperties": False}},
        "required": ["name", "arguments"], "additionalProperties": False,
    },
}

LARK = {
    "lark_arith": """
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,4}/
""",
    "lark_kv": """
start: pair ("," pair)*
pair: KEY "=" VALUE
KEY: /[a-z]{1,8}/
VALUE: /[0-9]{1,3}/ | "\\"" /[a-z ]{0,10}/ "\\""
""",
}
_KV = r'[a-z]{1,8}=([0-9]{1,3}|"[a-z ]{0,10}")'
LARK_CHECK = {"lark_arith": re.compile(r"[0-9+\-*/()]+"), "lark_kv": re.compile(_KV + "(," + _KV + ")*")}

REGEX = {
    "regex_phone": r"(\+1 )?\([0-9]{3}\) [0-9]{3}-[0-9]{4}",
    "regex_date": r"[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])",
    "regex_ident": r"[a-zA-Z_][a-zA-Z0-9_]{0,15}(\.[a-zA-Z_][a-zA-Z0-9_]{0,15}){0,3}",
}


def grammars():
    for name, schema in SCHEMAS.items():
        yield name, "json", schema
    for name, src in LARK.items():
        yield name, "lark", src
    for name, src in REGEX.items():
        yield name, "regex", src


def _check_format(fmt: str, value: str) -> bool:
    if fmt == "date-time":
        try:
            # RFC 3339: 't'/'z' in either case, a leap second 60 (parsed as 59 here)
            m = re.fullmatch(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d):(\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", value, re.I)
            if m is None or int(m.group(3)) > 60:
                return False
            tz = "+00:00" if m.group(5).upper() == "Z" else m.group(5)
            datetime.datetime.fromisoformat(f"{m.group(1)}T{m.group(2)}:{min(int(m.group(3)), 59):02d}{tz}")
            return True
        except ValueError:
            return False
    if fmt == "date":
        try:
            datetime.date.fromisoformat(value)
            return re.fullmatch(r"\d{4}-\d\d-\d\d", value) is not None
        except ValueError:
            return False
    if fmt == "uuid":
        try:
            uuid.UUID(value)
            return re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", value) is not None
        except ValueError:
            return False
    if fmt == "email":  # RFC 5321 Mailbox: dot-atom or quoted local part; a domain (no dot needed) or literal
        local = r'([!#-\'*+/-9=?A-Z^-~-]+(\.[!#-\'*+/-9=?A-Z^-~-]+)*|"([^"\\\r\n]|\\.)*")'
        domain = r"([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*|\[[^\]\s]+\])"
        return re.fullmatch(local + "@" + domain, value) is not None
    return True


def validate(kind: str, name: str, source, out: bytes) -> str | None:
    """None when `out` is valid, else why not."""
    try:
        text = out.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not UTF-8: {e}"
    if kind == "json":
        import jsonschema
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            return f"not JSON: {e}"
        checker = jsonschema.FormatChecker()
        for fmt in ("date-time", "date", "uuid", "email"):
            checker.checks(fmt)(lambda v, f=fmt: not isinstance(v, str) or _check_format(f, v))
        try:
            jsonschema.validate(value, source, format_checker=checker)
        except jsonschema.ValidationError as e:
            return f"schema: {e.message[-300:]}"
        return None
    pattern = LARK_CHECK[name] if kind == "lark" else re.compile(source)
    return None if pattern.fullmatch(text) else "no full match"


# ----------------------------------------------------------------------------------------------- measuring

def apply_mask(logits: np.ndarray, mask: np.ndarray, n: int) -> None:
    """llmrun's future numpy step: disallowed logits -> -inf (bit i of 32-bit word i//32, little-endian)."""
    allowed = np.unpackbits(mask.view(np.uint8), bitorder="little", count=n).view(bool)
    logits[~allowed] = -np.inf


def bias_for(view: TokenView) -> np.ndarray:
    bias = np.zeros(view.n_vocab, np.float32)
    for i, b in enumerate(view.token_bytes):
        if any(c in b for c in b'"}],)@'):
            bias[i] = np.log(50.0)
    bias[view.eos] = np.log(1e6)
    return bias


def run_one(engine_name: str, vocab: str, out_path: str, walks: int, max_steps: int, skip: set[str], seed: int,
            only: set[str] = frozenset()):
    """Every grammar for one engine and one vocabulary; JSON lines appended to `out_path` as it goes."""
    out = open(out_path, "a")

    def emit(rec):
        out.write(json.dumps(rec) + "\n")
        out.flush()

    tok, n_logits = load_vocab(vocab)
    view = TokenView(tok, n_logits)
    engine = ENGINES[engine_name]()
    t0 = time.perf_counter()
    engine.tokenizer_info(view)
    emit({"type": "vocab", "engine": engine_name, "vocab": vocab, "kind": view.kind, "n_vocab": view.n_vocab,
          "n_tok": view.n_tok, "n_special": len(view.special), "n_partial_utf8": view.n_partial_utf8,
          "view_s": view.build_s, "info_s": time.perf_counter() - t0})
    bias = bias_for(view)
    rng = np.random.default_rng(seed)
    mask = np.zeros((view.n_vocab + 31) // 32, np.int32)
    for name, kind, source in grammars():
        if name in skip or (only and name not in only):
            continue
        base = {"type": "grammar", "engine": engine_name, "vocab": vocab, "name": name, "kind": kind}
        if kind not in engine.kinds:
            emit({**base, "status": "unsupported"})
            continue
        emit({**base, "type": "start"})
        t0 = time.perf_counter()
        try:
            compiled = engine.compile(kind, source)
        except Exception as e:  # noqa: BLE001 - a rejection is a result
            emit({**base, "status": "rejected", "error": f"{type(e).__name__}: {str(e)[:300]}",
                  "compile_s": time.perf_counter() - t0})
            continue
        compile_s = time.perf_counter() - t0
        mask_s, apply_s, adv_s, first_s = [], [], [], []
        results = []
        for _ in range(walks):
            m = engine.matcher(compiled)
            ids: list[int] = []
            status = "cap"
            for step in range(max_steps):
                if m.done():
                    status = "done"
                    break
                a = time.perf_counter()
                m.fill(mask)
                b = time.perf_counter()
                logits = rng.gumbel(size=view.n_vocab).astype(np.float32) + bias
                c = time.perf_counter()
                apply_mask(logits, mask, view.n_vocab)
                d = time.perf_counter()
                (first_s if step == 0 else mask_s).append(b - a)
                apply_s.append(d - c)
                t = int(np.argmax(logits))
                if not np.isfinite(logits[t]):
                    status = "empty mask"
                    break
                e = time.perf_counter()
                ok = m.advance(t)
                adv_s.append(time.perf_counter() - e)
                if not ok:
                    tb = view.token_bytes[t] if t < view.n_tok else b""
                    status = f"advance refused: token {t} {tb!r} after {view.text(ids)[-40:]!r}"
                    break
                if t == view.eos:
                    status = "done"
                    break
                ids.append(t)
            else:
                if m.done():
                    status = "done"
            text = view.text(ids)
            why = validate(kind, name, source, text) if status == "done" else status
            results.append({"steps": len(ids), "valid": why is None, "why": why,
                            "text": text.decode("utf-8", "replace")[:2000]})
        emit({**base, "status": "ok", "compile_s": compile_s, "mask_s": mask_s, "first_mask_s": first_s,
              "apply_s": apply_s, "advance_s": adv_s, "walks": results})
    out.close()


def run_all(args):
    for vocab in args.vocabs.split(","):
        for engine in args.engines.split(","):
            skip: set[str] = set()
            while True:
                cmd = [sys.executable, __file__, "--one", engine, vocab, "--out", args.out, "--walks", str(args.walks),
                       "--max-steps", str(args.max_steps), "--skip", ",".join(sorted(skip)),
                       "--grammars", args.grammars]
                start = time.time()
                try:
                    subprocess.run(cmd, timeout=args.timeout, check=False)
                    break
                except subprocess.TimeoutExpired:
                    # the grammar being compiled or walked when the time ran out: recorded, skipped on the retry
                    recs = [json.loads(x) for x in open(args.out) if x.strip()]
                    mine = [r for r in recs if r.get("engine") == engine and r.get("vocab") == vocab]
                    done = {r["name"] for r in mine if r["type"] == "grammar"}
                    started = [r["name"] for r in mine if r["type"] == "start" and r["name"] not in done]
                    if not started:
                        break
                    with open(args.out, "a") as f:
                        f.write(json.dumps({"type": "grammar", "engine": engine, "vocab": vocab, "name": started[-1],
                                            "status": "timeout", "timeout_s": time.time() - start}) + "\n")
                    skip |= done | {started[-1]}
            print(f"{engine} {vocab} finished {time.strftime('%H:%M:%S')}", file=sys.stderr, flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="/tmp/structured_output.jsonl")
    p.add_argument("--vocabs", default="32k,49k,128k,152k")
    p.add_argument("--engines", default="llguidance,xgrammar,outlines-core")
    p.add_argument("--walks", type=int, default=4)
    p.add_argument("--max-steps", type=int, default=160)
    p.add_argument("--timeout", type=float, default=180, help="seconds per engine and vocabulary process")
    p.add_argument("--one", nargs=2, metavar=("ENGINE", "VOCAB"))
    p.add_argument("--skip", default="")
    p.add_argument("--grammars", default="", help="only these grammars (comma-separated names)")
    p.add_argument("--report", metavar="JSONL")
    p.add_argument("--step-ms", type=float, help="decode step in ms, for the ratio column of --report")
    args = p.parse_args()
    if args.report:
        report(args.report, args.step_ms)
    elif args.one:
        run_one(args.one[0], args.one[1], args.out, args.walks, args.max_steps,
                set(filter(None, args.skip.split(","))), seed=0, only=set(filter(None, args.grammars.split(","))))
    else:
        run_all(args)


def _pct(xs, q):
    return float(np.percentile(np.asarray(xs), q)) if xs else float("nan")


def report(path: str, step_ms: float | None = None):
    """Markdown tables from the JSON lines of a run."""
    recs = [json.loads(x) for p in path.split(",") for x in open(p) if x.strip()]  # later files override
    engines = [e for e in ENGINES if any(r.get("engine") == e for r in recs)]
    vocabs = [v for v in VOCABS if any(r.get("vocab") == v for r in recs)]
    names = [n for n, _, _ in grammars()]
    res = {(r["engine"], r["vocab"], r["name"]): r for r in recs if r["type"] == "grammar"}
    info = {(r["engine"], r["vocab"]): r for r in recs if r["type"] == "vocab"}

    print("### Per-step cost (all grammars' steps together; mask = the engine's bitmask fill, apply = numpy "
          "-inf on a float32 row, advance = the engine's token commit)\n")
    hdr = "| engine | vocab | tokenizer info s | steps | mask median µs | mask p99 µs | worst grammar's mask p99 µs " \
          "| mask max µs | first mask median µs | apply median µs | advance median µs " \
          "| p99 mask (incl. first) + p99 apply + p99 advance µs |"
    if step_ms:
        hdr += f" that / decode step ({step_ms:.1f} ms) |"
    print(hdr)
    print("|" + "|".join(["---"] * (hdr.count("|") - 1)) + "|")
    for e in engines:
        for v in vocabs:
            mask, first, apply, adv = [], [], [], []
            worst = (0.0, "")
            for n in names:
                r = res.get((e, v, n))
                if r and r.get("status") == "ok":
                    mask += r["mask_s"]
                    first += r["first_mask_s"]
                    apply += r["apply_s"]
                    adv += r["advance_s"]
                    if r["mask_s"]:
                        worst = max(worst, (_pct(r["mask_s"], 99), n))
            if not mask:
                continue
            # the three lists are not step-aligned (first masks are apart): a sum of p99s, an upper bound
            bound = _pct(mask + first, 99) + _pct(apply, 99) + _pct(adv, 99)
            row = (f"| {e} | {v} | {info[(e, v)]['info_s']:.2f} | {len(mask)} | {_pct(mask, 50) * 1e6:.0f} | "
                   f"{_pct(mask, 99) * 1e6:.0f} | {worst[0] * 1e6:.0f} ({worst[1]}) | {max(mask) * 1e6:.0f} | "
                   f"{_pct(first, 50) * 1e6:.0f} | "
                   f"{_pct(apply, 50) * 1e6:.0f} | {_pct(adv, 50) * 1e6:.0f} | {bound * 1e6:.0f} |")
            if step_ms:
                row += f" {bound * 1e3 / step_ms * 100:.1f}% |"
            print(row)

    for v in vocabs:
        print(f"\n### Coverage and compile time, {v} vocabulary (compile ms; walks valid/finished of "
              "those that ended before the step cap; p99 mask µs)\n")
        print("| grammar | kind | " + " | ".join(engines) + " |")
        print("|---|---|" + "---|" * len(engines))
        for n, kind, _ in grammars():
            cells = []
            for e in engines:
                r = res.get((e, v, n))
                if r is None:
                    cells.append("–")
                elif r["status"] == "ok":
                    w = r["walks"]
                    fin = [x for x in w if x["why"] not in ("cap",)]
                    ok = sum(x["valid"] for x in w)
                    bad = [x["why"] for x in fin if not x["valid"]]
                    cell = f"{r['compile_s'] * 1e3:.0f} ms; {ok}/{len(fin)} valid"
                    if len(fin) < len(w):
                        cell += f" ({len(w) - len(fin)} capped)"
                    if r["mask_s"]:
                        cell += f"; p99 {_pct(r['mask_s'], 99) * 1e6:.0f} µs"
                    if bad:
                        cell += f"; INVALID: {bad[0][:60]}"
                    cells.append(cell.replace("|", "/"))
                elif r["status"] == "rejected":
                    cells.append(f"rejected: {r['error'][:90]}".replace("|", "/").replace("\n", " "))
                elif r["status"] == "timeout":
                    cells.append(f"timeout (> {r.get('timeout_s', 0):.0f} s incl. others)")
                else:
                    cells.append(r["status"])
            print(f"| {n} | {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
