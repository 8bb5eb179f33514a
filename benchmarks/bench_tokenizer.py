"""pytest-benchmark suite: tokenizer speed (the claims tests/test_tokenizer.py used to time itself) and the
cost of bounding the matching time of regular expressions from tokenizer.json files.

    pytest benchmarks/bench_tokenizer.py --benchmark-only

- encode of a 4000-character prompt with the Llama 2 vocabulary (SentencePiece BPE): about 5 ms
  (the budget the old test held it to was 100 ms);
- encode with a hostile vocabulary of 200,000 user-defined pieces sharing a first character: matching costs
  one lookup per distinct piece length, so this stays in the milliseconds (it took seconds when every
  piece was tried);
- a tokenizer.json pre-tokenizer pattern matched without and with regex's `timeout=` (`timed`), alone and
  inside a whole encode of the Llama 3-style test tokenizer: measured 0.05 vs 0.16 us a character for the
  pattern alone, 1.0 vs 2.0 ms for a 10,000-character encode (one core of an AMD EPYC). That is why
  llmrun's own patterns, the ones real files use, match without it (llmrun/tokenizer/pretokenize.py) and
  only other patterns pay it. Setting the deadline costs an encode call one clock read (~0.1 us).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from llmrun.formats.hf_tokenizer import load_tokenizer_json
from llmrun.formats.llama2c_tokenizer import load_llama2c_tokenizer
from llmrun.tokenizer import SentencePieceTokenizer, pretokenize
from llmrun.tokenizer.pretokenize import LLAMA3_PATTERN, Pattern, match_deadline

ROOT = Path(__file__).resolve().parents[1]
LLAMA_BIN = ROOT.parent / "shared" / "models" / "tokenizer.bin"
STORY = (ROOT / "tests" / "data" / "stories.txt").read_text()
WORDS = ("the", "a", "little", "girl", "named", "Lily", "went", "to", "park", "and", "saw", "big", "dog", "happy")


def prompt_of(n_chars: int, seed: int = 3) -> str:
    rng = random.Random(seed)
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < n_chars:
        words.append(rng.choice(WORDS) + rng.choice(["", "", "", ",", "."]))
    return " ".join(words)[:n_chars]


def test_encode_4000_chars_llama2(benchmark) -> None:
    if not LLAMA_BIN.is_file():
        pytest.skip(f"{LLAMA_BIN} is not available")
    tok = load_llama2c_tokenizer(LLAMA_BIN, 32000)
    prompt = prompt_of(4000)
    benchmark(tok.encode, prompt)
    benchmark.extra_info["chars_per_second"] = len(prompt) / benchmark.stats.stats.mean


def test_encode_with_200000_user_defined_pieces(benchmark) -> None:
    pieces = [b"<unk>", b"<s>", b"</s>"] + [b"a" + str(i).encode() for i in range(200_000)] + [b"a", b" "]
    types = [2, 3, 3] + [4] * 200_000 + [1, 1]
    tok = SentencePieceTokenizer(pieces, [0.0] * len(pieces), token_types=types)
    benchmark(tok.encode, "a" * 500 + "a17", add_bos=False)


@pytest.mark.parametrize("timed", [False, True], ids=["own pattern", "with timeout"])
def test_pre_tokenizer_pattern(benchmark, timed: bool) -> None:
    """Llama 3's split pattern over 40,000 characters of stories, as llmrun's own pattern (no timeout) and as a
    pattern from a file would run (timeout=)."""
    pattern = Pattern(LLAMA3_PATTERN, "benchmark", timed=timed)
    text = STORY * 10
    benchmark(lambda: pattern.spans(text, time.monotonic() + 60.0))
    benchmark.extra_info["us_per_char"] = benchmark.stats.stats.mean / len(text) * 1e6


@pytest.mark.parametrize("timed", [False, True], ids=["own pattern", "with timeout"])
def test_encode_10000_chars_llama3_style(benchmark, monkeypatch: pytest.MonkeyPatch, timed: bool) -> None:
    """A whole encode with the Llama 3-style test tokenizer (tests/data/hf/llama3-gqa), its Split pattern
    untimed (llmrun's own, as loaded) or timed (as an unknown pattern would be)."""
    if timed:
        monkeypatch.setattr(pretokenize, "OWN_PATTERNS", frozenset())
    tok = load_tokenizer_json(ROOT / "tests" / "data" / "hf" / "llama3-gqa" / "tokenizer.json")
    text = STORY * 3
    tok.encode(text)  # fill the word cache, as a long-running server's would be
    benchmark(tok.encode, text)
    benchmark.extra_info["chars_per_second"] = len(text) / benchmark.stats.stats.mean


def test_match_deadline_cost(benchmark) -> None:
    """What setting the deadline costs an encode call: one clock read."""
    benchmark(match_deadline)
