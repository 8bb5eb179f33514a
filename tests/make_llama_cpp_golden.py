"""Records llama.cpp's logits for the GGUF files llmrun writes of the model-family fixtures (tests/data/hf), so
that tests/test_families.py::test_llama_cpp_golden checks llmrun against llama.cpp where llama.cpp is not
installed (CI).

Run by hand where llama-cpp-python is installed, with llmrun built in place:

    PYTHONPATH=$PWD python tests/make_llama_cpp_golden.py [NAME ...]

With names, only those fixtures are recorded again; without, all of them. For each fixture the model as
llama.cpp can compute it (test_families._as_llama_cpp_computes: Gemma's query scale from the head size, no
windows on llama and phi3 files) is written as f32 GGUF by llmrun (test_families.write_for_llama_cpp), run by
llama.cpp with test_families.LLAMA_CPP_SETTINGS (F32 KV cache, no flash attention, full SWA cache, the whole
prompt in one batch of a 256-token context), and stored in tests/data/llama_cpp/:

- <name>.npz: for each recorded prompt i, `ids_<i>` and `logits_<i>` (llama.cpp's float32 logits, every
  position, the vocabulary ids 0, VOCAB_STRIDE, 2 VOCAB_STRIDE ...), compressed;
- golden.json: llama-cpp-python's version, the settings, the stride, and per fixture the GGUF's sha256, the
  recorded prompts and the max abs difference of llmrun's logits from llama.cpp's (all ids) when recorded.

To keep the data under 1 MB (float32 logits hardly compress: 7%), only the long prompt is recorded (the last:
longer than every window and than the LongRoPE / YaRN original context; it begins with prompt 0's sentence),
and every VOCAB_STRIDE-th logit of each position: each position's hidden state still meets a few hundred rows
of the output matrix, so a forward pass that differs anywhere shows. The live test
(test_llama_cpp_golden's live part) compares all prompts and ids where llama.cpp is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from test_families import (  # noqa: E402
    FAMILIES,
    GOLDEN,
    LLAMA_CPP_SETTINGS,
    VOCAB_STRIDE,
    llama_cpp_logits,
    llmrun_logits,
    prompts,
    write_for_llama_cpp,
)


def record(name: str, work: Path) -> dict[str, object]:
    """Writes GOLDEN/<name>.npz and returns the fixture's entry of golden.json."""
    out = work / f"{name}.gguf"
    back = write_for_llama_cpp(name, out)
    recorded = [len(prompts(name)) - 1]
    all_ids = [prompts(name)[i]["ids"] for i in recorded]
    theirs = llama_cpp_logits(out, all_ids)
    arrays: dict[str, np.ndarray] = {}
    worst = 0.0
    for i, ids, logits in zip(recorded, all_ids, theirs, strict=True):
        arrays[f"ids_{i}"] = np.asarray(ids, dtype=np.int32)
        arrays[f"logits_{i}"] = np.ascontiguousarray(logits[:, ::VOCAB_STRIDE])
        worst = max(worst, float(np.max(np.abs(logits - llmrun_logits(back, ids)))))
    np.savez_compressed(GOLDEN / f"{name}.npz", **arrays)
    return {"gguf_sha256": hashlib.sha256(out.read_bytes()).hexdigest(), "prompts": recorded,
            "llmrun_max_abs_diff": float(f"{worst:.3g}")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"fixtures (default: all): {', '.join(FAMILIES)}")
    args = parser.parse_args()
    if unknown := [n for n in args.names if n not in FAMILIES]:
        parser.error(f"unknown fixtures {unknown}: choose from {', '.join(FAMILIES)}")
    import llama_cpp

    GOLDEN.mkdir(parents=True, exist_ok=True)
    path = GOLDEN / "golden.json"
    fixtures = json.loads(path.read_text())["fixtures"] if path.is_file() and args.names else {}
    with tempfile.TemporaryDirectory() as work:
        for name in args.names or FAMILIES:
            fixtures[name] = record(name, Path(work))
            print(f"{name}: {fixtures[name]}")
    golden = {"llama_cpp_python": llama_cpp.__version__, "settings": {**LLAMA_CPP_SETTINGS, "gguf": "f32"},
              "vocab_stride": VOCAB_STRIDE,
              "fixtures": {name: fixtures[name] for name in FAMILIES if name in fixtures}}
    path.write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
