"""Records llama.cpp's token ids for the GGUF vocabularies of tests/test_family_tokenizers.py and
tests/test_gemma_tokenizer.py on their texts, so that their comparisons with llama.cpp (check_as_llama_cpp in
tests/llama_cpp_tokens.py) run where llama.cpp is not installed (CI).

Run by hand where llama-cpp-python is installed, with llmrun built in place:

    PYTHONPATH=$PWD python tests/make_llama_cpp_tokens.py [CASE ...]

With names, only those cases are recorded again; without, all of them. Each case's GGUF is written by the test
module's own function, tokenized by llama.cpp (vocab only) with the test's add_bos and special flags, and stored
in tests/data/llama_cpp/tokens.json: llama-cpp-python's and tokenizers' versions (tokenizers trains the test
vocabularies), and per case the sha256 of the file's tokenizer.* and general.* metadata (vocab_sha256), of the
texts, add_bos, and the ids of every text for each special flag. llmrun's ids must also be the same when
recorded (the script refuses to record a difference: find out first which side is wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import test_family_tokenizers as fam  # noqa: E402
import test_gemma_tokenizer as gem  # noqa: E402

import llmrun  # noqa: E402
from llama_cpp_tokens import TOKENS, llama_cpp_ids, texts_sha256, vocab_sha256  # noqa: E402

GEMMA = {f"gemma-{pair}-{kind}": (pair, kind) for pair in gem.PAIRS for kind in ("converted", "gemma")}
# case -> (texts, add_bos, the special flags the test uses)
CASES: dict[str, tuple[list[str], bool, tuple[bool, ...]]] = {
    **{f"pre-{pre}": (fam.PRE_TEXTS, False, (False,)) for pre, _ in fam.PRE_TOKENIZERS},
    "phi3-chat": ([], True, (True,)),  # the text: the rendered chat (fam.phi3_files)
    **{case: (gem.LLAMA_CPP_TEXTS, False, (False, True)) for case in GEMMA},
}


def write_case(case: str, work: Path) -> tuple[Path, list[str]]:
    """The case's GGUF written into `work`, and its texts."""
    texts, _, _ = CASES[case]
    if case.startswith("pre-"):
        pre = case[len("pre-"):]
        style = dict(fam.PRE_TOKENIZERS)[pre]
        return fam.write_pre_tokenizer_gguf(work / f"{pre}.gguf", pre, style), texts
    if case == "phi3-chat":
        _, _, text, path = fam.phi3_files(work)
        return path, [text]
    pair, kind = GEMMA[case]
    _, ours = gem.make_pair(pair, work)
    write = gem.write_converted if kind == "converted" else gem.write_gemma_gguf
    return write(ours, work / f"{kind}.gguf"), texts


def record(case: str, work: Path) -> dict[str, Any]:
    path, texts = write_case(case, work)
    _, add_bos, specials = CASES[case]
    ids: dict[str, list[list[int]]] = {}
    with llmrun.load(path, n_threads=1) as model:
        for special in specials:
            theirs = llama_cpp_ids(path, texts, special, add_bos)
            ours = [model.tokenize(s, add_bos=add_bos, special=special) for s in texts]
            if bad := [i for i, (a, b) in enumerate(zip(theirs, ours, strict=True)) if a != b]:
                sys.exit(f"{case} (special={special}): llmrun differs from llama.cpp on {len(bad)} texts, e.g. "
                         f"{texts[bad[0]]!r}: llama.cpp {theirs[bad[0]]}, llmrun {ours[bad[0]]}; not recorded")
            ids[f"special={special}"] = theirs
    return {"vocab_sha256": vocab_sha256(path), "texts_sha256": texts_sha256(texts), "add_bos": add_bos,
            "ids": ids}


def _compact(golden: dict[str, Any]) -> Iterator[str]:
    """JSON with one line per text's ids (diffs stay readable, the file small)."""
    yield "{\n"
    head = {k: v for k, v in golden.items() if k != "cases"}
    for k, v in head.items():
        yield f" {json.dumps(k)}: {json.dumps(v)},\n"
    yield ' "cases": {\n'
    for n, (case, entry) in enumerate(golden["cases"].items()):
        yield f"  {json.dumps(case)}: {{\n"
        for k in ("vocab_sha256", "texts_sha256", "add_bos"):
            yield f"   {json.dumps(k)}: {json.dumps(entry[k])},\n"
        yield '   "ids": {\n'
        for m, (key, lists) in enumerate(entry["ids"].items()):
            rows = ",\n".join("     " + json.dumps(ids, separators=(",", ":")) for ids in lists)
            yield f"    {json.dumps(key)}: [\n{rows}\n    ]{',' if m < len(entry['ids']) - 1 else ''}\n"
        yield "   }\n"
        yield f"  }}{',' if n < len(golden['cases']) - 1 else ''}\n"
    yield " }\n}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("cases", nargs="*", metavar="CASE", help=f"cases (default: all): {', '.join(CASES)}")
    args = parser.parse_args()
    if unknown := [n for n in args.cases if n not in CASES]:
        parser.error(f"unknown cases {unknown}: choose from {', '.join(CASES)}")
    import llama_cpp
    import tokenizers

    cases = json.loads(TOKENS.read_text())["cases"] if TOKENS.is_file() and args.cases else {}
    for case in args.cases or CASES:
        with tempfile.TemporaryDirectory() as work:
            cases[case] = record(case, Path(work))
        print(f"{case}: {cases[case]['vocab_sha256']}, {sum(len(v) for v in cases[case]['ids'].values())} texts")
    golden = {"llama_cpp_python": llama_cpp.__version__, "tokenizers": tokenizers.__version__,
              "cases": {case: cases[case] for case in CASES if case in cases}}
    TOKENS.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(_compact(golden))
    assert json.loads(text) == golden
    TOKENS.write_text(text)


if __name__ == "__main__":
    main()
