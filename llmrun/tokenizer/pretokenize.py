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
reads them). Normalizers (`Replace`, `Prepend`, Unicode normal forms, `Lowercase`, `Sequence`) are plain
str -> str functions applied to each segment before pre-tokenization.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

import regex

from ..errors import TokenizerError

# GPT-2's split pattern, as `tokenizers`' ByteLevel pre-tokenizer uses it.
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

BEHAVIORS = ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")

Normalizer = Callable[[str], str]


def compile_pattern(pattern: str, what: str) -> regex.Pattern:
    """A `regex` pattern, or TokenizerError naming what it is for."""
    try:
        return regex.compile(pattern)
    except (regex.error, TypeError) as e:
        raise TokenizerError(f"{what}: bad regular expression {pattern!r}: {e}") from None


class PreTokenizer:
    """Cuts words into smaller words. `first`: the segment starts the text (offset 0)."""

    def __call__(self, words: list[str], first: bool) -> list[str]:
        raise NotImplementedError


class Split(PreTokenizer):
    """`tokenizers.pre_tokenizers.Split`."""

    def __init__(self, pattern: regex.Pattern, behavior: str = "Isolated", invert: bool = False) -> None:
        if behavior not in BEHAVIORS:
            raise TokenizerError(f"Split behavior {behavior!r} is not one of {', '.join(BEHAVIORS)}")
        self.pattern = pattern
        self.behavior = behavior
        self.invert = invert

    def __call__(self, words: list[str], first: bool) -> list[str]:
        out: list[str] = []
        for word in words:
            out.extend(self.split(word))
        return out

    def split(self, text: str) -> list[str]:
        """The pieces of one word, by the behaviour."""
        parts: list[tuple[str, bool]] = []  # (text, is a "delimiter")
        pos = 0
        for m in self.pattern.finditer(text):
            start, end = m.span()
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
        self.split = Split(regex.compile(GPT2_PATTERN)) if use_regex else None

    def __call__(self, words: list[str], first: bool) -> list[str]:
        if self.add_prefix_space:
            words = [w if w.startswith(" ") else " " + w for w in words]
        return self.split(words, first) if self.split is not None else words


class Digits(PreTokenizer):
    """`tokenizers.pre_tokenizers.Digits`: each digit alone, or runs of digits."""

    def __init__(self, individual_digits: bool = False) -> None:
        self.split = Split(regex.compile(r"\p{N}"), "Isolated" if individual_digits else "Contiguous")

    def __call__(self, words: list[str], first: bool) -> list[str]:
        return self.split(words, first)


class Metaspace(PreTokenizer):
    """`tokenizers.pre_tokenizers.Metaspace`: spaces -> replacement, prefix, optional split."""

    def __init__(self, replacement: str = "\u2581", prepend_scheme: str = "always", split: bool = True) -> None:
        if prepend_scheme not in ("always", "first", "never"):
            raise TokenizerError(f"Metaspace prepend_scheme {prepend_scheme!r} is not always/first/never")
        if len(replacement) != 1:
            raise TokenizerError(f"Metaspace replacement must be one character, got {replacement!r}")
        self.replacement = replacement
        self.prepend_scheme = prepend_scheme
        self.split = Split(regex.compile(regex.escape(replacement)), "MergedWithNext") if split else None

    def __call__(self, words: list[str], first: bool) -> list[str]:
        out = []
        for word in words:
            word = word.replace(" ", self.replacement)
            if (self.prepend_scheme == "always" or (self.prepend_scheme == "first" and first)) \
                    and not word.startswith(self.replacement):
                word = self.replacement + word
            out.append(word)
        return self.split(out, first) if self.split is not None else out


class Chain(PreTokenizer):
    """`tokenizers.pre_tokenizers.Sequence`."""

    def __init__(self, steps: Sequence[PreTokenizer]) -> None:
        self.steps = list(steps)

    def __call__(self, words: list[str], first: bool) -> list[str]:
        for step in self.steps:
            words = step(words, first)
        return words


class Identity(PreTokenizer):
    """No pre-tokenizer: the whole segment is one word."""

    def __call__(self, words: list[str], first: bool) -> list[str]:
        return words


# --- normalizers ------------------------------------------------------------------------------------------

def replace_normalizer(pattern: regex.Pattern, content: str) -> Normalizer:
    return lambda text: pattern.sub(lambda _: content, text)


def prepend_normalizer(prefix: str) -> Normalizer:
    return lambda text: prefix + text if text else text


def unicode_normalizer(form: str) -> Normalizer:
    return lambda text: unicodedata.normalize(form, text)


def sequence_normalizer(steps: Sequence[Normalizer]) -> Normalizer:
    def run(text: str) -> str:
        for step in steps:
            text = step(text)
        return text
    return run
