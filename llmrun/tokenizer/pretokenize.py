"""Normalizers and pre-tokenizers of Hugging Face `tokenizers`, the subset Llama-family models use.

A pre-tokenizer cuts a text segment (the text between added tokens) into words; BPE merges never cross a
word boundary. Each class reproduces the `tokenizers` component of the same name:

- `Split`: a regex (or literal) with one of the split behaviours (Isolated, Removed, MergedWithPrevious,
  MergedWithNext, Contiguous) and optional inversion. Llama 3, Qwen2 and most byte-level models cut their
  text with one Split.
- `ByteLevel`: optional prefix space, then (when `use_regex`) GPT-2's split pattern.
- `Digits`: digits isolated, one by one or as runs.
- `Metaspace`: spaces become '▁', a '▁' is prepended (always, or only to the text's first segment), and
  optionally the text is cut before each '▁' (SentencePiece-style BPE models).

Patterns use the `regex` package (needed for \\p{L} classes and possessive-free lookaheads as Oniguruma
reads them). Normalizers (`Replace`, `Prepend`, Unicode normal forms, `Lowercase`, `Sequence`) are
str -> str functions applied to each segment before pre-tokenization.

Regular expressions from a tokenizer.json are untrusted: a recursive one can allocate without bound, a
counted repeat (a{n}) is written out n times when regex compiles it, and a backtracking one takes
exponential time. Recursion and large counted repeats are refused before the pattern is compiled (anything
else compiling raises becomes a TokenizerError too); every pattern from a file matches against a deadline
that `BPETokenizer.encode` sets for the whole text (`match_deadline`: a fixed allowance, whatever the text's
length), and running out of it is a TokenizerError. llmrun's own patterns (OWN_PATTERNS, which real
tokenizer.json files use) are linear-time and run without that bound, because regex's `timeout=` makes
matching about four times slower (benchmarks/bench_tokenizer.py measures it).
"""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Callable, Sequence

import regex

from ..errors import TokenizerError

# GPT-2's split pattern, as `tokenizers`' ByteLevel pre-tokenizer uses it.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# o200k (GPT-4o; Phi-4-mini's tokenizer.json): upper-then-lower letter runs, contractions, 3-digit numbers.
O200K_PATTERN = (r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                 r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                 r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
                 r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# The same as llama.cpp runs it for GGUF "gpt-4o" (what that name means in a GGUF file): letter classes by
# case written with lookaheads, contractions by letter pairs.
_LLAMA_CPP_O200K = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
                    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
                    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
                    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?"
                    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA_CPP_LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                     r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_GPT2_NO_TAIL = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_DEEPSEEK_LETTERS = (  # escapes where a literal would be changed by Unicode normalization of this source
    "A-Za-zµÀ-ÖØ-öø-ƺƼ-ƿǄ-ʓʕ-ʯͰ-ͳͶͷͻ-ͽͿΆΈ-ΊΌΎ-ΡΣ-ϵϷ-ҁҊ-ԯԱ-ՖႠ-ჅᎠ-Ᏽᏸ-ᏽᲐ-ᲺᲽ-Ჿᴀ-ᴫᵫ-ᵷᵹ-ᶚḀ-ἕἘ-Ἕἠ-ὅὈ-Ὅὐ-ὗὙὛὝ"
    "\u1f5f-\u1f7dᾀ-ᾴᾶ-ᾼ\u1fbeῂ-ῄῆ-ῌ\u1fd0-\u1fd3\u1fd6-\u1fdbῠ-Ῥῲ-ῴῶ-ῼℂℇℊ-ℓℕℙ-ℝℤ\u2126ℨ\u212a-ℭℯ-ℴℹℼ-ℿⅅ-ⅉⅎↃↄ"
    "Ⰰ-ⱻⱾ-ⳤⳫ-ⳮⳲⳳꙀ-ꙭꚀ-ꚛꜢ-ꝯꝱ-ꞇꞋ-ꞎꭰ-ꮿﬀ-ﬆﬓ-ﬗＡ-Ｚａ-ｚ𐐀-𐑏𐒰-𐓓𐓘-𐓻𐲀-𐲲𐳀-𐳲𑢠-𑣟𞤀-𞥃")

# GGUF tokenizer.ggml.pre name -> the regexes llama.cpp splits with, in order (each cuts the pieces the
# previous ones left, keeping matches and the text between them), and whether whole words in the
# vocabulary skip the merges (Llama 3's `ignore_merges`).
PRE_TOKENIZERS: dict[str, tuple[tuple[str, ...], bool]] = {
    "default": ((r"[\p{P}\$\+<=>\^~\|]+", _GPT2_NO_TAIL, r"\p{N}+", "[0-9][0-9][0-9]"), False),
    "gpt-2": ((GPT2_PATTERN,), False),
    "llama-bpe": ((LLAMA3_PATTERN,), True),
    "llama3": ((LLAMA3_PATTERN,), True),
    "llama-v3": ((LLAMA3_PATTERN,), True),
    "qwen2": ((QWEN2_PATTERN,), False),
    "deepseek-r1-qwen": ((QWEN2_PATTERN,), False),  # DeepSeek-R1's Qwen distills: Qwen2's tokenizer
    "smollm": ((r"\p{N}", _GPT2_NO_TAIL), False),
    "refact": ((r"\p{N}", _GPT2_NO_TAIL), False),  # Granite 3 (as llama.cpp's converter names it)
    "starcoder": ((r"\p{N}", _GPT2_NO_TAIL), False),
    "smaug-bpe": ((_LLAMA_CPP_LLAMA3,), False),  # Llama 3's split without ignore_merges
    "gpt-4o": ((_LLAMA_CPP_O200K,), False),  # Phi-4-mini
    "deepseek-llm": (("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$",
                      "[一-龥ࠀ-一가-퟿]+", r"\p{N}+"), False),
}

# The patterns llmrun ships (all linear-time): the only ones that match without a time bound.
OWN_PATTERNS = frozenset({GPT2_PATTERN, O200K_PATTERN,
                          *(p for patterns, _ in PRE_TOKENIZERS.values() for p in patterns)})

BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")

# What matching a file's own patterns may take for one encode() call, whatever the text's length: a
# backtracking pattern ends in TokenizerError within it, and a server request cannot buy more CPU time with a
# longer text. (A linear-time pattern of a file, under regex's timeout, matches a few MB of text in that time.)
MATCH_SECONDS = 1.0
# regex writes a counted repeat out when it compiles: a{n} becomes n copies of a, (?:a{m}){n} m * n. Real
# tokenizers count to three (\p{N}{1,3}); a bound above MAX_REPEAT, or a pattern that regex would write out
# to more than MAX_COMPILED_ITEMS items (about 270 bytes each: a{1000000} took 274 MB), is refused before
# regex compiles it.
MAX_REPEAT = 1000
MAX_COMPILED_ITEMS = 100_000
# A Replace normalizer may make a segment at most this many times longer (plus MAX_GROWTH_SLACK characters):
# real ones swap a character for another; an empty match replaced by a long string would grow the text
# without bound, step after step of a Sequence.
MAX_GROWTH = 8
MAX_GROWTH_SLACK = 1024

# (?R), (?0), (?1), (?+1), (?-1), (?&name), (?P>name): a call of a group or of the whole pattern, unescaped
_RECURSION = regex.compile(r"(?<!\\)(?:\\\\)*\(\?(?:R|[+-]?\d+|&\w+|P>\w+)\)")
# The pieces of a pattern that decide what a counted repeat applies to, as regex (version 0) reads them.
_SYNTAX = regex.compile(r"""
    (?P<escape> \\ (?: [pPN]\{[^}]*\} | . ) )                # \p{L}, \N{DIGIT ONE}, \( ...: one item
  | (?P<set> \[ \^? \]? (?: \\. | \[:\^?\w*:\] | [^]\\] )*+ \] )  # [...]: one item, whatever it holds
  | (?P<comment> \(\?\# [^)]* \) )
  | (?P<open> \( )
  | (?P<close> \) )
  | (?P<repeat> \{ (?P<low>\d*) (?P<comma>,?) (?P<high>\d*) \} )
  | (?P<item> . )
""", regex.VERBOSE | regex.DOTALL)
# Flags that change how the rest is read: verbose mode (x) lets a{1 000 000} count a million; version 1 nests
# sets. Real tokenizer patterns use neither.
_SYNTAX_FLAGS = regex.compile(r"\?[A-Za-z0-9]*(?:x|V1)")

Normalizer = Callable[[str, float], str]  # (text, deadline) -> text


def match_deadline() -> float:
    """The time.monotonic() by which matching the patterns of a file for one encode() call must end."""
    return time.monotonic() + MATCH_SECONDS


class Pattern:
    """A compiled regular expression of a tokenizer; `timed`: it came from a file, so its matching is bounded
    by the caller's deadline."""

    def __init__(self, source: str, what: str, timed: bool) -> None:
        if timed:
            _refuse_unbounded(source, what)
        try:
            self.compiled = regex.compile(source)
        except (regex.error, TypeError, ValueError, OverflowError, MemoryError, RecursionError) as e:
            raise TokenizerError(f"{what}: bad regular expression {_shown(source)}: {type(e).__name__}: {e}") from None
        self.source = source
        self.what = what
        self.timed = timed

    def spans(self, text: str, deadline: float) -> list[tuple[int, int]]:
        """(start, end) of every match in `text`, as finditer finds them."""
        if not self.timed:
            return [m.span() for m in self.compiled.finditer(text)]
        try:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            return [m.span() for m in self.compiled.finditer(text, timeout=left)]
        except TimeoutError:
            raise TokenizerError(f"{self.what}: matching {_shown(self.source)} against a text of {len(text)} "
                                 "characters ran out of the time allowed (the expression backtracks "
                                 "catastrophically)") from None


def _shown(source: str, limit: int = 200) -> str:
    """`source` for an error message: its first `limit` characters."""
    return repr(source) if len(source) <= limit else repr(source[:limit]) + f" ... ({len(source)} characters)"


def _refuse_unbounded(source: str, what: str) -> None:
    """TokenizerError for a pattern of a file whose compiling or matching could take unbounded memory: a
    recursive one, or one regex would write out to more than MAX_COMPILED_ITEMS items (_repeat_problem)."""
    if _RECURSION.search(source):
        raise TokenizerError(f"{what}: regular expression {_shown(source)} is recursive ((?R), (?1), (?&name) "
                             "...): refused, since matching it can take unbounded memory")
    problem = _repeat_problem(source)
    if problem is not None:
        raise TokenizerError(f"{what}: regular expression {_shown(source)}: {problem}: refused, since regex "
                             "takes memory for every copy of a counted repeat when it compiles it")


def _repeat_problem(source: str) -> str | None:
    """What makes the counted repeats of `source` too large, or None. Items are counted as regex writes them
    out: a group's items times the repeat's lower bound (its copies), nested repeats multiplying."""
    outer: list[int] = []  # items of each enclosing group before the open one
    items = last = 0  # items of the open group so far; items of its last element (what a repeat applies to)
    total = 0  # items of the whole pattern so far
    for m in _SYNTAX.finditer(source):
        kind = m.lastgroup
        if kind == "comment":
            continue
        if kind == "open":
            flags = _SYNTAX_FLAGS.match(source, m.end())
            if flags:
                return (f"its flags ({flags[0]}...) turn on verbose mode or version 1, which change where counted "
                        "repeats and sets are: not accepted")
            outer.append(items)
            items = last = 0
            continue
        if kind == "close" and outer:
            last = items
            items = outer.pop() + last
            continue
        if kind == "repeat" and (m["low"] or m["comma"] or m["high"]):
            low = _count(m["low"])
            if max(low, _count(m["high"])) > MAX_REPEAT:
                return f"the counted repeat {_shown(m[0], 40)} is above {MAX_REPEAT}"
            added = last * (max(low, 1) - 1)
            last += added
        else:
            added = last = 1
        items += added
        total += added
        if total > MAX_COMPILED_ITEMS:
            return f"it compiles to more than {MAX_COMPILED_ITEMS} items, each copy of a counted repeat's included"
    return None


def _count(digits: str) -> int:
    """A repeat bound as written ("" for none); a number too long to convert is above any limit."""
    digits = digits.lstrip("0")
    return int(digits or "0") if len(digits) <= 18 else 10**18


def compile_pattern(source: str, what: str) -> Pattern:
    """A pattern from a file (`what` names it in errors): unless it is one of llmrun's own, refused if
    recursive or too large once regex writes its counted repeats out, and bounded in time."""
    if not isinstance(source, str):
        raise TokenizerError(f"{what}: a regular expression must be a string, got {source!r}")
    return Pattern(source, what, timed=source not in OWN_PATTERNS)


def literal_pattern(text: str) -> Pattern:
    """A pattern matching `text` literally (linear-time: no time bound)."""
    return Pattern(regex.escape(text), "literal", timed=False)


class PreTokenizer:
    """Cuts words into smaller words. `first`: the segment starts the text (offset 0); `deadline`: when
    matching a file's patterns must end (match_deadline)."""

    def __call__(self, words: list[str], first: bool, deadline: float) -> list[str]:
        raise NotImplementedError


class Split(PreTokenizer):
    """`tokenizers.pre_tokenizers.Split`."""

    def __init__(self, pattern: Pattern, behavior: str = "Isolated", invert: bool = False) -> None:
        if behavior not in BEHAVIORS:
            raise TokenizerError(f"Split behavior {behavior!r} is not one of {', '.join(BEHAVIORS)}")
        self.pattern = pattern
        self.behavior = behavior
        self.invert = invert

    def __call__(self, words: list[str], first: bool, deadline: float) -> list[str]:
        out: list[str] = []
        for word in words:
            out.extend(self.split(word, deadline))
        return out

    def split(self, text: str, deadline: float) -> list[str]:
        """The pieces of one word, by the behaviour."""
        parts: list[tuple[str, bool]] = []  # (text, is a "delimiter")
        pos = 0
        for start, end in self.pattern.spans(text, deadline):
            if start == end:
                continue
            if start > pos:
                parts.append((text[pos:start], self.invert))
            parts.append((text[start:end], not self.invert))
            pos = end
        if pos < len(text):
            parts.append((text[pos:], self.invert))
        b = self.behavior
        if b == "Isolated":
            return [t for t, _ in parts]
        if b == "Removed":
            return [t for t, delim in parts if not delim]
        out: list[str] = []
        if b == "MergedWithPrevious":
            for t, delim in parts:
                if delim and out:
                    out[-1] += t
                else:
                    out.append(t)
            return out
        if b == "MergedWithNext":
            pending = ""
            for t, delim in parts:
                if delim:
                    if pending:
                        out.append(pending)
                    pending = t
                else:
                    out.append(pending + t)
                    pending = ""
            if pending:
                out.append(pending)
            return out
        last_delim = False  # Contiguous
        for t, delim in parts:
            if delim and last_delim:
                out[-1] += t
            else:
                out.append(t)
            last_delim = delim
        return out


class ByteLevel(PreTokenizer):
    """`tokenizers.pre_tokenizers.ByteLevel`: the byte-to-unicode mapping itself is done by the model."""

    def __init__(self, add_prefix_space: bool = False, use_regex: bool = True) -> None:
        self.add_prefix_space = add_prefix_space
        self.split = Split(compile_pattern(GPT2_PATTERN, "ByteLevel")) if use_regex else None

    def __call__(self, words: list[str], first: bool, deadline: float) -> list[str]:
        if self.add_prefix_space:
            words = [w if w.startswith(" ") else " " + w for w in words]
        return self.split(words, first, deadline) if self.split is not None else words


class Digits(PreTokenizer):
    """`tokenizers.pre_tokenizers.Digits`: each digit alone, or runs of digits."""

    def __init__(self, individual_digits: bool = False) -> None:
        digit = Pattern(r"\p{N}", "Digits", timed=False)
        self.split = Split(digit, "Isolated" if individual_digits else "Contiguous")

    def __call__(self, words: list[str], first: bool, deadline: float) -> list[str]:
        return self.split(words, first, deadline)


class Metaspace(PreTokenizer):
    """`tokenizers.pre_tokenizers.Metaspace`: spaces -> replacement, prefix, optional split."""

    def __init__(self, replacement: str = "\u2581", prepend_scheme: str = "always", split: bool = True) -> None:
        if prepend_scheme not in ("always", "first", "never"):
            raise TokenizerError(f"Metaspace prepend_scheme {prepend_scheme!r} is not always/first/never")
        if len(replacement) != 1:
            raise TokenizerError(f"Metaspace replacement must be one character, got {replacement!r}")
        self.replacement = check_encodable(replacement, "Metaspace replacement")
        self.prepend_scheme = prepend_scheme
        self.split = Split(literal_pattern(replacement), "MergedWithNext") if split else None

    def __call__(self, words: list[str], first: bool, deadline: float) -> list[str]:
        out = []
        for word in words:
            word = word.replace(" ", self.replacement)
            if (self.prepend_scheme == "always" or (self.prepend_scheme == "first" and first)) \
                    and not word.startswith(self.replacement):
                word = self.replacement + word
            out.append(word)
        return self.split(out, first, deadline) if self.split is not None else out


class Chain(PreTokenizer):
    """`tokenizers.pre_tokenizers.Sequence`."""

    def __init__(self, steps: Sequence[PreTokenizer]) -> None:
        self.steps = list(steps)

    def __call__(self, words: list[str], first: bool, deadline: float) -> list[str]:
        for step in self.steps:
            words = step(words, first, deadline)
        return words


class Identity(PreTokenizer):
    """No pre-tokenizer: the whole segment is one word."""

    def __call__(self, words: list[str], first: bool, deadline: float) -> list[str]:
        return words


# --- normalizers ------------------------------------------------------------------------------------------

def check_encodable(text: str, what: str) -> str:
    """`text` if it has a UTF-8 form: a lone surrogate in a normalizer's text would make every tokenize()
    fail later, so it is refused when the tokenizer is built."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise TokenizerError(f"{what} {text!r} has a lone surrogate U+{ord(text[e.start]):04X}: not valid "
                             "Unicode") from None
    return text


def replace_normalizer(pattern: Pattern, content: str) -> Normalizer:
    """`tokenizers.normalizers.Replace`: every match of `pattern` becomes `content`."""
    check_encodable(content, "Replace content")

    def run(text: str, deadline: float) -> str:
        spans = pattern.spans(text, deadline)
        grown = len(text) + sum(len(content) - (end - start) for start, end in spans)
        if grown > MAX_GROWTH * len(text) + MAX_GROWTH_SLACK:
            raise TokenizerError(f"Replace normalizer {pattern.source!r} -> {content!r} would make a text of "
                                 f"{len(text)} characters {grown} characters long: longer than a normalizer may "
                                 f"make it ({MAX_GROWTH} times)")
        out, pos = [], 0
        for start, end in spans:
            out += (text[pos:start], content)
            pos = end
        out.append(text[pos:])
        return "".join(out)
    return run


def prepend_normalizer(prefix: str) -> Normalizer:
    check_encodable(prefix, "Prepend text")
    return lambda text, deadline: prefix + text if text else text


def unicode_normalizer(form: str) -> Normalizer:
    return lambda text, deadline: unicodedata.normalize(form, text)


def lowercase_normalizer(text: str, deadline: float) -> str:
    return text.lower()


def sequence_normalizer(steps: Sequence[Normalizer]) -> Normalizer:
    def run(text: str, deadline: float) -> str:
        for step in steps:
            text = step(text, deadline)
        return text
    return run
