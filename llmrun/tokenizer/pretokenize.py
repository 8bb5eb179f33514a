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

Regular expressions from a tokenizer.json are untrusted: a recursive one can allocate without bound and a
backtracking one take exponential time. Recursion is refused when the pattern is compiled; every other
pattern from a file matches against a deadline that `BPETokenizer.encode` sets for the whole text
(`match_deadline`), and running out of it is a TokenizerError. llmrun's own patterns (OWN_PATTERNS, which
real tokenizer.json files use) are linear-time and run without that bound, because regex's `timeout=`
makes matching about four times slower (benchmarks/bench_tokenizer.py measures it).
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
    "smollm": ((r"\p{N}", _GPT2_NO_TAIL), False),
    "deepseek-llm": (("[\r\n]", rf"\s?[{_DEEPSEEK_LETTERS}]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$",
                      "[一-龥ࠀ-一가-퟿]+", r"\p{N}+"), False),
}

# The patterns llmrun ships (all linear-time): the only ones that match without a time bound.
OWN_PATTERNS = frozenset({GPT2_PATTERN, *(p for patterns, _ in PRE_TOKENIZERS.values() for p in patterns)})

BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")

# What matching a file's own patterns may take for one encode() call: a fixed allowance plus an amount per
# character of the text. Real patterns need well under a microsecond a character even with the timeout on;
# a backtracking one needs seconds for a few dozen characters, so it ends in TokenizerError within a second.
MATCH_SECONDS = 0.5
MATCH_SECONDS_PER_CHAR = 20e-6
# A Replace normalizer may make a segment at most this many times longer (plus MAX_GROWTH_SLACK characters):
# real ones swap a character for another; an empty match replaced by a long string would grow the text
# without bound, step after step of a Sequence.
MAX_GROWTH = 8
MAX_GROWTH_SLACK = 1024

# (?R), (?0), (?1), (?+1), (?-1), (?&name), (?P>name): a call of a group or of the whole pattern, unescaped
_RECURSION = regex.compile(r"(?<!\\)(?:\\\\)*\(\?(?:R|[+-]?\d+|&\w+|P>\w+)\)")

Normalizer = Callable[[str, float], str]  # (text, deadline) -> text


def match_deadline(n_chars: int) -> float:
    """The time.monotonic() by which matching the patterns of a file for a text of `n_chars` must end."""
    return time.monotonic() + MATCH_SECONDS + n_chars * MATCH_SECONDS_PER_CHAR


class Pattern:
    """A compiled regular expression of a tokenizer; `timed`: it came from a file, so its matching is bounded
    by the caller's deadline."""

    def __init__(self, source: str, what: str, timed: bool) -> None:
        if timed and _RECURSION.search(source):
            raise TokenizerError(f"{what}: regular expression {source!r} is recursive ((?R), (?1), (?&name) ...): "
                                 "refused, since matching it can take unbounded memory")
        try:
            self.compiled = regex.compile(source)
        except (regex.error, TypeError, ValueError, OverflowError) as e:
            raise TokenizerError(f"{what}: bad regular expression {source!r}: {e}") from None
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
            raise TokenizerError(f"{self.what}: matching {self.source!r} against a text of {len(text)} characters "
                                 "ran out of the time allowed (the expression backtracks catastrophically)") from None


def compile_pattern(source: str, what: str) -> Pattern:
    """A pattern from a file (`what` names it in errors): refused if recursive, bounded in time unless it is
    one of llmrun's own."""
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
