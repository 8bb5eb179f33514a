"""Builds small tokenizer.json files with the `tokenizers` library itself (the oracle), for the parity tests
and for the Hugging Face model fixtures (tests/make_hf_fixtures.py): byte-level BPEs with the
pre-tokenizers of Llama 3, Qwen2, SmolLM and GPT-2, and SentencePiece-style BPEs with byte fallback.

Also the corpus of varied strings the parity tests encode (unicode, emoji, digits, whitespace runs, code,
contractions, CJK)."""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from llmrun.formats.hf_tokenizer import LLAMA3_PATTERN, QWEN2_PATTERN

DATA = Path(__file__).resolve().parent / "data"

SAMPLES = [
    "", " ", "  ", "\n", "\n\n", "\t", " \n ", "a", "Hello", "Hello world", " Hello world", "Hello  world   ",
    "Hello\nworld", "I'm here, you're there, we've been, they'll go, she'd say, it's, don't", "I'M SHOUTING, DON'T",
    "3.14159 and 1234567890 and 1,000,000", "x = 42; y = x ** 2 + 1", "def f(a, b):\n    return a + b\n",
    "if (x != 0) { printf(\"%d\\n\", x); }", "café naïve résumé", "Grüße aus Köln", "日本語のテキスト",
    "中文测试，你好！", "한국어 텍스트", "Привет, мир!", "مرحبا بالعالم", "שלום עולם", "emoji 😀🎉👍🏽",
    "family 👨‍👩‍👧‍👦 flag 🇫🇷", "tabs\tand\ttabs", "trailing spaces   ", "   leading spaces", "mixed\r\nline endings",
    "ｆｕｌｌｗｉｄｔｈ", "ﬁ ligature", "e\u0301 combining", "zero\u200bwidth", "<s> not special </s>",
    "<|eot_id|> looks special", "a<|eot_id|>b", "user: hi<|im_end|>\n<|im_start|>assistant", "▁already▁metaspace",
    "ÿþ binary-ish", "\x00\x01 control chars", "$100 & 50% off #sale @home", "https://example.com/a?b=c&d=e",
    "2024-01-02T03:04:05Z", "12345678901234567890", "a1b2c3", "ALLCAPS lowercase MiXeD", "...!!!???",
    "—–‐ dashes “quotes” ‘single’", "math ∑∫√∞≈≠", "• bullet\n• list", "Once upon a time, there was a little girl.",
]

_POOLS = [
    "the quick brown fox jumps over the lazy dog".split(),
    ["I'm", "you're", "we've", "they'll", "she'd", "it's", "can't", "won't", "O'Neil"],
    ["0", "7", "42", "123", "2024", "3.5", "1e10", "0x1F", "99%", "1,234"],
    ["😀", "🎉", "👍🏽", "❤️", "🇯🇵", "👨‍💻", "🤖"],
    ["日本", "中文", "한국어", "漢字", "カタカナ", "ひらがな", "你好"],
    ["def", "return", "(", ")", "{", "}", "[]", "->", "==", "!=", "//", "/*", "*/", "::", "=>", "_x", "__init__"],
    ["é", "ñ", "ü", "ß", "ø", "Ω", "Ж", "λ", "ع", "ש"],
    [" ", "  ", "   ", "\t", "\n", "\n\n", " \n", "\r\n"],
]


def corpus(n: int = 320, seed: int = 0) -> list[str]:
    """SAMPLES plus random mixtures from every pool: at least `n` strings."""
    rng = random.Random(seed)
    out = list(SAMPLES)
    while len(out) < n:
        parts = []
        for _ in range(rng.randint(1, 12)):
            pool = rng.choice(_POOLS)
            parts.append(rng.choice(pool))
            parts.append(rng.choice(["", " ", " ", " ", "\n", "  "]))
        out.append("".join(parts))
    return out


def training_text() -> list[str]:
    return (DATA / "stories.txt").read_text().splitlines() + corpus(200, seed=1)


def byte_level(style: str, vocab_size: int = 500, specials: Sequence[str] | None = None) -> Tokenizer:
    """A trained byte-level BPE: style "llama3" (Split + ByteLevel, ignore_merges, BOS template), "qwen2"
    (NFC, Split + ByteLevel, no BOS), "smollm" (Digits + ByteLevel regex) or "gpt2" (ByteLevel regex with a
    prefix space). `specials` replaces the style's special tokens (ids 0, 1, ...: a model family's own; the
    "llama3" style's must include <|begin_of_text|>)."""
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))
    if style == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        style_specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"]
    elif style == "qwen2":
        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        style_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    elif style == "smollm":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        style_specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    elif style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
        style_specials = ["<|endoftext|>"]
    else:
        raise ValueError(style)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=style_specials if specials is None else list(specials),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(training_text(), trainer)
    tok.add_tokens([AddedToken("<tool>", special=False, normalized=False)])  # a non-special added token
    if style == "llama3":
        tok.post_processor = processors.TemplateProcessing(
            single="<|begin_of_text|> $A", special_tokens=[("<|begin_of_text|>", tok.token_to_id("<|begin_of_text|>"))])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def sentencepiece_style(metaspace: bool = False, vocab_size: int = 500) -> Tokenizer:
    """A Llama-2-style BPE: <unk> <s> </s>, then the 256 byte tokens <0x00>..<0xFF>, then pieces learned by
    a BPE trainer ('▁' for spaces); byte fallback, and either the Prepend + Replace normalizer (Llama 2's
    tokenizer.json) or the Metaspace pre-tokenizer (prepend_scheme "first", no split: Mistral's); the
    decoder is Llama 2's (Replace, ByteFallback, Fuse, Strip)."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False)
    base.train_from_iterator(training_text(), trainer)
    state = json.loads(base.to_str())["model"]  # the learned vocab and merges
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = 3 + b
    for piece in sorted(state["vocab"], key=state["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in ("<unk>", "<s>", "</s>")])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


GEMMA_SPECIALS = ("<pad>", "<eos>", "<bos>", "<unk>", "<mask>")
GEMMA_TURNS = ("<start_of_turn>", "<end_of_turn>")
GEMMA_USER_DEFINED = ("<unused0>", "<unused1>", "\n\n", "\n\n\n", "\t\t")


def gemma_style(vocab_size: int = 400) -> Tokenizer:
    """A Gemma-2/3-style BPE laid out as their tokenizer.json is: <pad>=0 <eos>=1 <bos>=2 <unk>=3 <mask>=4,
    user-defined tokens (<unused0>, <unused1>, newline and tab runs: added, not special, matched in the raw
    text), <start_of_turn> <end_of_turn> (special), the 256 byte tokens <0x00>..<0xFF>, then about
    `vocab_size` pieces learned by a BPE trainer (runs of '▁' among them). Byte fallback; the normalizer only
    replaces " " with "▁" (no Prepend: Gemma's SentencePiece model has add_dummy_prefix false, so a leading
    word has no '▁'); the pre-tokenizer is Gemma's Split on " " merged with the previous piece (after the
    normalizer it finds no space: a no-op kept for the file's shape); the decoder is Replace, ByteFallback,
    Fuse without Strip (no dummy space to remove); <bos> is prepended. The trainer keeps only the 100
    commonest characters, so that rarer ones (most CJK, emoji) go through byte fallback: chosen here, ties by
    code point (the trainer's own limit_alphabet breaks ties in hash order, a different vocabulary each run)."""
    base = Tokenizer(models.BPE())
    base.normalizer = normalizers.Replace(" ", "▁")
    text = training_text()
    counts = Counter("".join(text).replace(" ", "▁"))
    alphabet = sorted(counts, key=lambda c: (-counts[c], c))[:100]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, limit_alphabet=100, initial_alphabet=alphabet,
                                  show_progress=False)
    base.train_from_iterator(text, trainer)
    state = json.loads(base.to_str())["model"]
    fixed = [*GEMMA_SPECIALS, *GEMMA_USER_DEFINED[:2], *GEMMA_TURNS, *GEMMA_USER_DEFINED[2:]]
    vocab = {t: i for i, t in enumerate(fixed)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for piece in sorted(state["vocab"], key=state["vocab"].get):
        vocab.setdefault(piece, len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in GEMMA_USER_DEFINED])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in (*GEMMA_SPECIALS, *GEMMA_TURNS)])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return tok
