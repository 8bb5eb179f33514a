"""Records llama.cpp's embeddings (llama-cpp-python's `Llama(..., embedding=True).embed`) of the GGUF files llmrun
writes of a few model-family fixtures, so that tests/test_embeddings.py::test_llama_cpp_embeddings checks llmrun
against llama.cpp where llama.cpp is not installed (CI).

Run by hand where llama-cpp-python is installed, with llmrun built in place:

    PYTHONPATH=$PWD python tests/make_llama_cpp_embeddings.py

For each of FIXTURES the file is the one tests/make_llama_cpp_golden.py records logits for (test_families.
write_for_llama_cpp: f32, as llama.cpp can compute the model; its sha256 is recorded), opened by llama.cpp with
the settings of test_families.LLAMA_CPP_SETTINGS (F32 KV cache, no flash attention, full SWA cache) plus
embedding=True and each pooling_type (mean, cls, last), and the texts of tests/data/embeddings (tokenized by
llama.cpp) embedded one at a time, not normalized. Stored in tests/data/llama_cpp/: embeddings.npz
(`<fixture>_<pooling>`: (n_texts, dim) float32) and embeddings.json (versions, the texts' ids, each file's
sha256 and llmrun's max abs difference when recorded).
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

from test_families import GOLDEN, LLAMA_CPP_SETTINGS, write_for_llama_cpp  # noqa: E402

import llmrun  # noqa: E402

FIXTURES = ("qwen3", "smollm3", "gemma3")
POOLINGS = ("mean", "cls", "last")
TEXTS = json.loads((Path(__file__).resolve().parent / "data" / "embeddings" / "llama3-gqa.json").read_text())["texts"]


def llama_cpp_embeddings(path: Path, pooling: str, texts: list[str]) -> tuple[list[list[int]], np.ndarray]:
    """llama.cpp's ids and raw embeddings of `texts`, one text per call."""
    import llama_cpp

    code = {"mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN, "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
            "last": llama_cpp.LLAMA_POOLING_TYPE_LAST}[pooling]
    settings = {k: v for k, v in LLAMA_CPP_SETTINGS.items() if k != "logits_all"}
    llm = llama_cpp.Llama(str(path), **settings, embedding=True, pooling_type=code, verbose=False)
    ids = [llm.tokenize(t.encode("utf-8")) for t in texts]
    vectors = np.array([llm.embed(t) for t in texts], dtype=np.float32)
    llm.close()
    return ids, vectors


def main() -> None:
    import llama_cpp

    arrays: dict[str, np.ndarray] = {}
    record: dict[str, object] = {"llama_cpp_python": llama_cpp.__version__, "texts": TEXTS, "fixtures": {}}
    with tempfile.TemporaryDirectory() as work:
        for name in FIXTURES:
            out = Path(work) / f"{name}.gguf"
            write_for_llama_cpp(name, out)
            entry: dict[str, object] = {"gguf_sha256": hashlib.sha256(out.read_bytes()).hexdigest()}
            diffs = {}
            with llmrun.load(out, n_threads=1, n_ctx=256) as model:
                for pooling in POOLINGS:
                    ids, vectors = llama_cpp_embeddings(out, pooling, TEXTS)
                    entry["ids"] = ids
                    arrays[f"{name}_{pooling}"] = vectors
                    diff = np.max(np.abs(model.embed(ids, pooling, normalize=False) - vectors))
                    diffs[pooling] = float(f"{diff:.3g}")
            entry["llmrun_max_abs_diff"] = diffs
            record["fixtures"][name] = entry  # type: ignore[index]
            print(f"{name}: {diffs}")
    np.savez_compressed(GOLDEN / "embeddings.npz", **arrays)
    (GOLDEN / "embeddings.json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
