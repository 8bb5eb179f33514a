"""BPE tokenizers from tokenizer.json against the `tokenizers` library itself (the oracle), on a corpus of
320 varied strings: byte-level (Llama 3, Qwen2, SmolLM and GPT-2 pre-tokenizers) and SentencePiece-style
with byte fallback (Llama 2's normalizer, Mistral's Metaspace). Encoding with and without special-token
parsing, BOS from the post-processor, decoding, streaming; GGUF "gpt2" vocabularies by pre-tokenizer name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import pytest
import regex

pytest.importorskip("tokenizers")

import hf_tokenizers  # noqa: E402
from llmrun.errors import TokenizerError  # noqa: E402
from llmrun.formats.hf_tokenizer import PRE_TOKENIZERS, gguf_bpe_tokenizer, load_tokenizer_json  # noqa: E402
from llmrun.tokenizer import StreamDecoder  # noqa: E402

CORPUS = hf_tokenizers.corpus(320)
STYLES = ["llama3", "qwen2", "smollm", "gpt2", "spm", "spm-metaspace"]


def build(style: str):  # noqa: ANN201 - a tokenizers.Tokenizer
    if style == "spm":
        return hf_tokenizers.sentencepiece_style(metaspace=False)
    if style == "spm-metaspace":
        return hf_tokenizers.sentencepiece_style(metaspace=True)
    return hf_tokenizers.byte_level(style)


@pytest.fixture(scope="module", params=STYLES)
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    ref = build(request.param)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    ref.save(str(path))
    return request.param, ref, load_tokenizer_json(path)


def test_corpus_is_varied() -> None:
    assert len(CORPUS) >= 300 and len(set(CORPUS)) >= 300
    joined = "".join(CORPUS)
    for needle in ("😀", "日本", "\n\n", "   ", "I'm", "2024", "def", "é"):
        assert needle in joined


@pytest.mark.parametrize("special", [False, True])
def test_encode_parity(pair, special: bool) -> None:  # noqa: ANN001
    style, ref, ours = pair
    ref.encode_special_tokens = not special
    mismatches = [s for s in CORPUS if ref.encode(s, add_special_tokens=False).ids != ours.encode(
        s, add_bos=False, special=special)]
    ref.encode_special_tokens = False
    assert not mismatches, f"{style}: {len(mismatches)} of {len(CORPUS)} differ, e.g. {mismatches[0]!r}"


def test_decode_and_stream_parity(pair) -> None:  # noqa: ANN001
    style, ref, ours = pair
    for s in CORPUS:
        ids = ref.encode(s, add_special_tokens=True).ids
        want = ref.decode(ids, skip_special_tokens=True)
        assert ours.decode(ids) == want, (style, s)
        stream = StreamDecoder(ours)
        assert "".join(stream.feed(i) for i in ids) + stream.flush() == want


def test_bos_from_post_processor(pair) -> None:  # noqa: ANN001
    style, ref, ours = pair
    for s in CORPUS[:40]:
        assert ref.encode(s, add_special_tokens=True).ids == ours.encode(
            s, add_bos=ours.add_bos_default, add_eos=ours.add_eos_default, special=True)
    assert ours.add_bos_default == (style in ("llama3", "spm", "spm-metaspace"))


def test_special_tokens_need_permission() -> None:
    ref = hf_tokenizers.byte_level("llama3")
    ours_path = Path(tempfile.mkdtemp()) / "tokenizer.json"
    ref.save(str(ours_path))
    tok = load_tokenizer_json(ours_path)
    eot = tok.piece_to_id("<|eot_id|>")
    assert tok.is_control(eot) and tok.decode([eot]) == ""
    assert eot not in tok.encode("<|eot_id|>", add_bos=False)
    assert tok.encode("<|eot_id|>", add_bos=False, special=True) == [eot]
    tool = tok.piece_to_id("<tool>")  # a non-special added token: always matched, decoded as its text
    assert tok.encode("x<tool>y", add_bos=False)[1] == tool and not tok.is_control(tool)
    assert tok.decode(tok.encode("x<tool>y", add_bos=False)) == "x<tool>y"
    assert tok.piece_to_id("no such piece") is None
    with pytest.raises(TokenizerError, match="out of range"):
        tok.id_to_piece(tok.vocab_size)


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2", "smollm", "gpt-2"])
def test_gguf_gpt2_vocabulary(name: str) -> None:
    """A GGUF-style vocabulary (tokens, "a b" merges, token types, pre-tokenizer name) encodes like the
    tokenizer.json it came from."""
    style = {"llama-bpe": "llama3", "qwen2": "qwen2", "smollm": "smollm", "gpt-2": "gpt2"}[name]
    ref = hf_tokenizers.byte_level(style)
    vocab = ref.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    added = {t.content: t.special for t in ref.get_added_tokens_decoder().values()}
    types = [3 if added.get(t) else 4 if t in added else 1 for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(ref.to_str())["model"]["merges"]]
    tok = gguf_bpe_tokenizer(tokens, merges, types, name, bos_id=None, eos_id=None, unk_id=None)
    ref.encode_special_tokens = True  # as our default, special=False
    texts = CORPUS if style != "gpt2" else [" " + s if not s.startswith(" ") else s for s in CORPUS]
    bad = [s for s in texts if ref.encode(s, add_special_tokens=False).ids != tok.encode(s, add_bos=False)]
    # qwen2 normalizes to NFC in tokenizer.json; GGUF has no normalizer (llama.cpp skips it too)
    bad = [s for s in bad if not (style == "qwen2" and unicodedata.normalize("NFC", s) != s)]
    assert not bad, f"{name}: {len(bad)} differ, e.g. {bad[0]!r}"


def test_gguf_unknown_pre_tokenizer() -> None:
    with pytest.raises(TokenizerError, match="tokenizer.ggml.pre = 'mystery' is not a pre-tokenizer llmrun knows"):
        gguf_bpe_tokenizer(["a", "b", "ab"], ["a b"], None, "mystery", None, None, None)
    assert {"default", "gpt-2", "llama-bpe", "qwen2", "deepseek-llm", "smollm"} <= set(PRE_TOKENIZERS)


def test_deepseek_and_default_split() -> None:
    tok = gguf_bpe_tokenizer([chr(c) for c in range(33, 127)] + ["Ġ"], [], None, "deepseek-llm", None, None, None)
    assert tok.decode(tok.encode("Hello, 123!", add_bos=False)) == "Hello, 123!"
    tok = gguf_bpe_tokenizer([chr(c) for c in range(33, 127)] + ["Ġ"], [], None, "default", None, None, None)
    assert tok.decode(tok.encode("a+b = 1234", add_bos=False)) == "a+b = 1234"


@pytest.mark.parametrize("broken,match", [
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b c"]}}, "is not two tokens"),
    ({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}}, "not in the vocabulary"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": {"type": "BertPreTokenizer"}},
     "pre-tokenizer 'BertPreTokenizer' is not supported"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "BertNormalizer"}},
     "normalizer 'BertNormalizer' is not supported"),
    ({"model": {"type": "WordLevel", "vocab": {"a": 0}}}, "model type 'WordLevel' is not supported"),
    ({"nothing": 1}, "not a tokenizer.json"),
    # fields of the wrong shape or range: a TokenizerError naming the file, never a TypeError or a silent overwrite
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "pre_tokenizer": {"type": "Sequence", "pretokenizers": 5}}, "malformed tokenizer.json"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "normalizer": {"type": "Sequence", "normalizers": 5}}, "malformed tokenizer.json"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "post_processor": {"type": "TemplateProcessing", "single": ["SpecialToken"]}}, "malformed tokenizer.json"),
    ({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}}, "bad id 'zero'"),
    ({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
      "added_tokens": [{"id": -1, "content": "<evil>"}]}, "bad id -1"),
    ({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
      "added_tokens": [{"id": 10**12, "content": "<big>"}]}, "bad id"),
])
def test_bad_tokenizer_json(tmp_path: Path, broken: dict, match: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(TokenizerError, match=match):
        load_tokenizer_json(path)
    path.write_text("{not json")
    with pytest.raises(TokenizerError, match="cannot read JSON"):
        load_tokenizer_json(path)


# --- hostile tokenizer.json: regular expressions, nesting, unencodable text ----------------------------------

MINIMAL = {"model": {"type": "BPE", "vocab": {c: i for i, c in enumerate("abhi")}, "merges": []}}
REFUSAL = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a runaway allocation fails here, not the machine
from llmrun.formats.hf_tokenizer import load_tokenizer_json
try:
    tokenizer = load_tokenizer_json(sys.argv[1])
    with open(sys.argv[2], encoding="utf-8") as f:
        tokenizer.encode(f.read())
    print("encoded")
except Exception as e:
    print(type(e).__name__, e)
"""


def _encode_elsewhere(tmp_path: Path, data: dict, text: str) -> str:
    """Loads `data` as a tokenizer.json and encodes `text` in a child process with 4 GiB of address space and
    30 s (a limit that only catches hangs): returns the exception it ended with, or "encoded"."""
    path, text_path = tmp_path / "tokenizer.json", tmp_path / "text.txt"
    path.write_text(json.dumps(data))
    text_path.write_text(text, encoding="utf-8")
    # cwd: the installed llmrun, not a source folder that `python -c` would put first on the path
    result = subprocess.run([sys.executable, "-c", REFUSAL, str(path), str(text_path)], capture_output=True, text=True,
                            timeout=30, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"}, cwd=tmp_path)
    return result.stdout.strip() or result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("pattern", ["(?R)|h", "h(?R)?", "(?1)(a)", "(?P<x>a)(?&x)", "(?P<x>a)(?P>x)", "(?+1)(a)"])
def test_recursive_patterns_are_refused_at_load(tmp_path: Path, pattern: str) -> None:
    for field, node in (("pre_tokenizer", {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"}),
                        ("normalizer", {"type": "Replace", "pattern": {"Regex": pattern}, "content": "x"})):
        path = tmp_path / "tokenizer.json"
        path.write_text(json.dumps({**MINIMAL, field: node}))
        with pytest.raises(TokenizerError, match="recursi"):
            load_tokenizer_json(path)


def test_a_left_recursive_split_ends_in_tokenizer_error(tmp_path: Path) -> None:
    """`(?R)` used to make tokenize("hi") allocate until the process died."""
    split = {"type": "Split", "pattern": {"Regex": "(?R)|h"}, "behavior": "Isolated"}
    assert _encode_elsewhere(tmp_path, {**MINIMAL, "pre_tokenizer": split}, "hi").startswith("TokenizerError")


@pytest.mark.parametrize("field", ["pre_tokenizer", "normalizer"])
def test_catastrophic_backtracking_ends_in_tokenizer_error(tmp_path: Path, field: str) -> None:
    """(a|aa)+$ is exponential: 32 characters took seconds, 40 take hours; matching time is bounded."""
    node = ({"type": "Split", "pattern": {"Regex": "(a|aa)+$"}, "behavior": "Isolated"} if field == "pre_tokenizer"
            else {"type": "Replace", "pattern": {"Regex": "(a|aa)+$"}, "content": "b"})
    outcome = _encode_elsewhere(tmp_path, {**MINIMAL, field: node}, "a" * 40 + "b")
    assert outcome.startswith("TokenizerError") and "time" in outcome


def test_a_catastrophic_pattern_on_a_long_text_ends_in_tokenizer_error(tmp_path: Path) -> None:
    """The time allowed for a file's patterns used to grow with the text (20 us a character): 2 million
    characters gave (a|aa)+$ 40 s. It is a fixed allowance per encode() now, whatever the length."""
    split = {"type": "Split", "pattern": {"Regex": "(a|aa)+$"}, "behavior": "Isolated"}
    outcome = _encode_elsewhere(tmp_path, {**MINIMAL, "pre_tokenizer": split}, "a" * 2_000_000 + "b")
    assert outcome.startswith("TokenizerError") and "time" in outcome


@pytest.mark.parametrize("pattern", [
    "a{10000000}",  # took 3.2 s and 2.6 GB to compile
    "(?:ab){100000000}",  # the process was killed for memory
    "a{1000000000}",  # a bare MemoryError under an address-space limit
])
@pytest.mark.parametrize("field", ["pre_tokenizer", "normalizer"])
def test_huge_counted_repeats_are_refused_at_load(tmp_path: Path, field: str, pattern: str) -> None:
    """regex writes out counted repeats when it compiles a pattern: a{n} takes memory for n copies of a."""
    node = ({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"} if field == "pre_tokenizer"
            else {"type": "Replace", "pattern": {"Regex": pattern}, "content": "b"})
    outcome = _encode_elsewhere(tmp_path, {**MINIMAL, field: node}, "hi")
    assert outcome.startswith("TokenizerError") and "repeat" in outcome and pattern in outcome, outcome


@pytest.mark.parametrize("pattern", [
    "b{1,5000}",  # a bound above the limit, even where regex would not write it out
    "(?:a{1000}){1000}",  # bounds within the limit that nest to a million copies (274 MB) ...
    "(?:(?:a{50}b){50}c){50}|h",
    "x" + "a{900}" * 200,  # ... or follow each other to 180,000
    "(?:[)]a{1000}){1000}", r"(?:\)a{1000}){1000}",  # a parenthesis in a set or escaped closes no group
    "(?x)a{1 000 000}", "(?V1)(?:[[)]]a{1000}){1000}",  # flags that change where repeats and sets are
])
def test_counted_repeats_that_multiply_are_refused_at_load(tmp_path: Path, pattern: str) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({**MINIMAL, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": pattern}}}))
    with pytest.raises(TokenizerError, match="repeat") as info:
        load_tokenizer_json(path)
    assert repr(pattern[:40])[1:-1] in str(info.value)  # the message shows the pattern's repr


@pytest.mark.parametrize("pattern", [
    r"\p{N}{1,3}", "a{1000}", "(?:ab){3}(?:a{2}){3}", "[{5000}]", r"a\{5000}", "(?#{5000})h", r"\N{DIGIT ONE}{3}",
])
def test_small_counted_repeats_load(tmp_path: Path, pattern: str) -> None:
    """Real tokenizers count to three (Llama 3's \\p{N}{1,3}); braces that are no repeat count for nothing."""
    path = tmp_path / "tokenizer.json"
    split = {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated"}
    path.write_text(json.dumps({**MINIMAL, "pre_tokenizer": split}))
    assert load_tokenizer_json(path).encode("hi", add_bos=False) == [2, 3]


def test_failures_to_compile_a_files_pattern_are_tokenizer_errors(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Nesting 1000 groups deep exhausted regex's recursion (RecursionError); a MemoryError while compiling
    became a bare MemoryError too."""
    path = tmp_path / "tokenizer.json"
    for pattern in ("(" * 1000 + "h" + ")" * 1000, "(?:" * 1000 + "h" + ")" * 1000):
        path.write_text(json.dumps({**MINIMAL, "normalizer": {"type": "Replace", "pattern": {"Regex": pattern},
                                                              "content": "x"}}))
        with pytest.raises(TokenizerError, match="Replace normalizer"):
            load_tokenizer_json(path)
    compile_pattern = regex.compile

    def out_of_memory(source: str, *args: object, **kwargs: object) -> regex.Pattern:
        if source == "h+":
            raise MemoryError
        return compile_pattern(source, *args, **kwargs)
    monkeypatch.setattr(regex, "compile", out_of_memory)
    path.write_text(json.dumps({**MINIMAL, "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "h+"}}}))
    with pytest.raises(TokenizerError, match="'h\\+'.*MemoryError"):
        load_tokenizer_json(path)


def test_a_replace_that_multiplies_the_text_is_stopped(tmp_path: Path) -> None:
    """An empty match at every position replaced by a long string, ten times over: the text would grow 1000-fold
    per step; the growth is refused before it eats memory."""
    replace = {"type": "Replace", "pattern": {"Regex": ""}, "content": "a" * 1000}
    nested = {"type": "Sequence", "normalizers": [replace] * 10}
    outcome = _encode_elsewhere(tmp_path, {**MINIMAL, "normalizer": nested}, "hi" * 100)
    assert outcome.startswith("TokenizerError") and "longer" in outcome


def test_real_patterns_are_not_slowed_by_the_time_limit() -> None:
    """llmrun's own patterns (the ones real tokenizer.json files use) run without regex's timeout, which makes
    matching about four times slower (benchmarks/bench_tokenizer.py measures it)."""
    from llmrun.formats.hf_tokenizer import LLAMA3_PATTERN, QWEN2_PATTERN
    from llmrun.tokenizer.pretokenize import GPT2_PATTERN, compile_pattern
    for pattern in (LLAMA3_PATTERN, QWEN2_PATTERN, GPT2_PATTERN):
        assert compile_pattern(pattern, "test").timed is False
    assert compile_pattern(r"[a-z]+(?=x)", "test").timed is True


def _with_nested(field: str, key: str, leaf: str, depth: int) -> str:
    """A tokenizer.json (as text: json.dumps itself recurses) whose `field` is `leaf` inside `depth` Sequences."""
    opening = '{"type": "Sequence", "' + key + '": ['
    component = opening * depth + leaf + "]}" * depth
    return '{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "' + field + '": ' + component + "}"


@pytest.mark.parametrize("field, key, leaf", [
    ("pre_tokenizer", "pretokenizers", '{"type": "Digits"}'), ("normalizer", "normalizers", '{"type": "NFC"}'),
    ("decoder", "decoders", '{"type": "Fuse"}'), ("post_processor", "processors", '{"type": "ByteLevel"}'),
])
def test_deeply_nested_components_are_refused(tmp_path: Path, field: str, key: str, leaf: str) -> None:
    """Components a few hundred Sequences deep used to raise RecursionError (at load or at the first encode)."""
    path = tmp_path / "tokenizer.json"
    path.write_text(_with_nested(field, key, leaf, 400))
    with pytest.raises(TokenizerError, match="nested more than"):
        load_tokenizer_json(path).encode("a")
    path.write_text(_with_nested(field, key, leaf, 3))
    assert load_tokenizer_json(path).encode("a", add_bos=False) == [0]


@pytest.mark.parametrize("node", [
    {"type": "Prepend", "prepend": "\ud800"}, {"type": "Replace", "pattern": {"String": "a"}, "content": "\udfff"},
    {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "x\udc80"}]},
])
def test_unencodable_normalizer_text_is_refused_at_load(tmp_path: Path, node: dict) -> None:
    """A lone surrogate in a normalizer used to make every tokenize() raise UnicodeEncodeError."""
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({**MINIMAL, "normalizer": node}))
    with pytest.raises(TokenizerError, match="surrogate"):
        load_tokenizer_json(path)


def test_unencodable_metaspace_replacement_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({**MINIMAL, "pre_tokenizer": {"type": "Metaspace", "replacement": "\ud800"}}))
    with pytest.raises(TokenizerError, match="surrogate"):
        load_tokenizer_json(path)
