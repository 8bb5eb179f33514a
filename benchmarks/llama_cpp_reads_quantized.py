"""Files written by `llmrun quantize` load in llama.cpp and give the known greedy story there too.

    pip install llama-cpp-python          # builds llama.cpp: about 12 minutes on 2 cores
    python benchmarks/llama_cpp_reads_quantized.py [--models ../shared/models]

This used to be a test; it moved here because CI cannot afford building llama.cpp. The tests keep the
other half of the claim: tests/test_quantize.py checks every tensor's bytes against the `gguf` package's
reference quantizers (which are llama.cpp's) and the files' metadata key by key.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from llmrun.cli import main as llmrun_main

STORY_START = "Once upon a time, there was a little"
TYPES = ("f16", "bf16", "q8_0", "q4_0")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "models",
                        help="the folder with stories260K.bin and tok512.bin")
    args = parser.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("needs llama-cpp-python: pip install llama-cpp-python", file=sys.stderr)
        return 2
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for type in TYPES:
            path = Path(tmp) / f"stories260K-{type}.gguf"
            rc = llmrun_main(["quantize", str(args.models / "stories260K.bin"), str(path), "--type", type,
                              "-z", str(args.models / "tok512.bin")])
            if rc != 0:
                return rc
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=128, n_threads=1, verbose=False)
            text = "Once upon a time" + llm("Once upon a time", max_tokens=12, temperature=0.0, top_k=1)[
                "choices"][0]["text"]
            del llm
            ok = text.startswith(STORY_START)
            failures += not ok
            print(f"{type:5s} {'ok  ' if ok else 'FAIL'} {text!r}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
