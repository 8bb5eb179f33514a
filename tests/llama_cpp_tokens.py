"""llama.cpp's tokenizations of the test GGUF vocabularies (tests/test_family_tokenizers.py,
tests/test_gemma_tokenizer.py), recorded in tests/data/llama_cpp/tokens.json by tests/make_llama_cpp_tokens.py so
that every comparison with llama.cpp runs in CI, where llama-cpp-python is not installed (too heavy to build).

check_as_llama_cpp() is the comparison each test makes: llmrun's ids for every text against the recorded ones
(always; the vocabulary and the texts must be the recorded ones), and, where llama-cpp-python imports, against
llama.cpp's live."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gguf

try:
    import llama_cpp
except ImportError:  # CI: the recorded ids stand in for it
    llama_cpp = None

TOKENS = Path(__file__).resolve().parent / "data" / "llama_cpp" / "tokens.json"


def vocab_sha256(path: Path) -> str:
    """sha256 of the metadata a GGUF's tokenization depends on: every tokenizer.* and general.* key, as
    encoded in the file (name, type and value bytes), in file order. The weights (random here) are left out."""
    h = hashlib.sha256()
    for field in gguf.GGUFReader(str(path)).fields.values():
        if field.name.startswith(("tokenizer.", "general.")):
            for part in field.parts:
                h.update(part.tobytes())
    return h.hexdigest()


def texts_sha256(texts: Sequence[str]) -> str:
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def llama_cpp_ids(path: Path, texts: Sequence[str], special: bool, add_bos: bool) -> list[list[int]]:
    """llama.cpp's ids for each text (vocab only)."""
    cpp = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [cpp.tokenize(s.encode(), add_bos=add_bos, special=special) for s in texts]


def recorded() -> dict[str, Any]:
    return json.loads(TOKENS.read_text())


def _first_bad(texts: Sequence[str], want: Sequence[list[int]], got: Sequence[list[int]], what: str) -> str:
    bad = [i for i, (w, g) in enumerate(zip(want, got, strict=True)) if w != g]
    if not bad:
        return ""
    i = bad[0]
    return f"{len(bad)} of {len(texts)} differ from {what}, e.g. {texts[i]!r}: llmrun {got[i]}, {what} {want[i]}"


def check_as_llama_cpp(case: str, path: Path, texts: Sequence[str], ours: Callable[[str], list[int]],
                       special: bool, add_bos: bool = False) -> None:
    """Asserts that llmrun's ids for `texts` (ours(text)) are llama.cpp's, tokenizing with `special` and
    `add_bos`, for the GGUF at `path`: those recorded as `case` (the file's vocabulary and the texts must be the
    recorded ones), and llama.cpp's live where llama-cpp-python is installed."""
    got = [ours(s) for s in texts]
    record = recorded()
    rerecord = (f"find out why, and if rightly, run `PYTHONPATH=$PWD python tests/make_llama_cpp_tokens.py {case}` "
                f"where llama-cpp-python is installed")
    assert case in record["cases"], f"no llama.cpp tokens recorded for {case} in {TOKENS}: {rerecord}"
    entry = record["cases"][case]
    digest = vocab_sha256(path)
    assert digest == entry["vocab_sha256"], (
        f"{case}: the vocabulary of {path.name} has sha256 {digest}, llama.cpp's tokens in {TOKENS} were recorded "
        f"for {entry['vocab_sha256']} (with tokenizers {record['tokenizers']}, which trains the test vocabularies: "
        f"a new version may train others): {rerecord}")
    assert texts_sha256(texts) == entry["texts_sha256"], f"{case}: the texts are not the recorded ones: {rerecord}"
    assert entry["add_bos"] == add_bos, f"{case}: recorded with add_bos={entry['add_bos']}"
    key = f"special={special}"
    assert key in entry["ids"], f"{case}: nothing recorded with {key}: {rerecord}"
    assert not (msg := _first_bad(texts, entry["ids"][key], got, f"llama.cpp {record['llama_cpp_python']} "
                                  f"(recorded, {key})")), f"{case}: {msg} (if llama.cpp is the one wrong: {rerecord})"
    if llama_cpp is not None:
        live = llama_cpp_ids(path, texts, special, add_bos)
        assert not (msg := _first_bad(texts, live, got, f"llama.cpp {llama_cpp.__version__} ({key})")), \
            f"{case}: {msg}"
