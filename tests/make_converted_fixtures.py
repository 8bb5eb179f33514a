"""Converts family fixtures (tests/data/hf/<name>) with llama.cpp's OWN converter, convert_hf_to_gguf.py, into
tests/data/converted/<name>.gguf, so that tests/test_converted.py checks that llmrun reads GGUF files as
llama.cpp's converter writes them (its key names, its norm +1, its fused Phi-3 tensors, its q/k permutation,
its RoPE keys), not only as llmrun's own writer does.

Run by hand, with a Python that has torch and transformers (the converter imports them) and the llama.cpp tree
that llama-cpp-python 0.3.36 vendors (vendor/llama.cpp at commit 0c1e57098bba43ac29e6e3b677cdceebdd22334f,
"webgpu: fix SSM_SCAN binding aliasing (#29750)", 2026-10-01; its own gguf-py is used, not an installed gguf):

    /work/tvenv/bin/python tests/make_converted_fixtures.py \\
        --llama-cpp /tmp/llamacpp/llama_cpp_python-0.3.36/vendor/llama.cpp [NAME ...]

(recorded with torch 2.13.0+cpu, transformers 5.24.0). Each fixture is converted in its own process as

    convert_hf_to_gguf.py tests/data/hf/<name> --outtype f32 --outfile tests/data/converted/<name>.gguf

run through this file (`--one`), which changes the converter in memory only as follows, and nothing else:

1. `TextModel.get_vocab_base_pre` returns PRE_NAMES[name] instead of looking up the hash of the fixture
   tokenizer's encoding of a test text: the fixtures' tiny (500-766 token) vocabularies encode it differently
   from any real model, so no hash matches and the converter would stop. PRE_NAMES gives each the name the
   converter's table gives the real tokenizer with the fixture's split rules (Qwen3 -> "qwen2", SmolLM3 ->
   "llama-bpe", Granite 3 -> "refact"; the phi4-mini fixture splits with Qwen2's regex, so "qwen2"), or
   "default" where the fixture's tokenizer is not byte-level (Gemma, phi3-longrope: see 3.).
2. `TextModel._create_vocab_sentencepiece` raises FileNotFoundError at once: what it raises itself for a
   folder without tokenizer.model (none of the fixtures has one), here without importing sentencepiece
   (not installed). The Llama (SmolLM3, Granite), Qwen2/3 and Gemma 3 paths catch it (or check the file
   first) and go on to the byte-level BPE path, as they do for such a folder.
3. `Gemma2Model.set_vocab` and `Phi3MiniModel.set_vocab` call `_set_vocab_gpt2()` (tokenizer.json, byte-level
   BPE): unpatched they require tokenizer.model (SentencePiece), which the fixtures lack, and stop. This is the
   converter's own fallback for Gemma 3 without tokenizer.model and its own branch for a Phi-3 folder whose
   tokenizer_class is GPT2Tokenizer (Phi-4-mini). The model tensors and hyperparameter keys (the point of
   these files) are written by the unpatched code.

So the converter cannot write the SentencePiece-style tokenizers of the gemma2, gemma3 and phi3-longrope
fixtures (tokenizer.json with a Metaspace-like normalizer and byte fallback, no tokenizer.model): what it
writes for them is a "gpt2" (byte-level) vocabulary of the same pieces, which does not encode as the fixture
does; tests/test_converted.py checks the tokenizer of the other files only.

The conversion is deterministic: run again, the files have the sha256s in tests/data/converted/converted.json,
which also records the provenance above and each file's source fixture (with the sha256 of its
model.safetensors and config.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HF = ROOT / "tests" / "data" / "hf"
OUT = ROOT / "tests" / "data" / "converted"
LLAMA_CPP_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

# fixture -> tokenizer.ggml.pre written for it (see 1. above)
PRE_NAMES = {
    "gemma2": "default",  # SentencePiece-style tokenizer.json: no byte-level split to name
    "gemma3": "default",
    "phi3-longrope": "default",
    "phi4-mini": "qwen2",  # the fixture's Split regex is Qwen2's (the real Phi-4-mini: "gpt-4o")
    "smollm3": "llama-bpe",  # Llama 3's regex
    "granite": "refact",  # Digits(individual) + ByteLevel: what the converter names Granite 3's
    "qwen3": "qwen2",
}
NAMES = tuple(PRE_NAMES)


def convert_one(llama_cpp: Path, name: str, out: Path) -> None:
    """In this process: the converter, patched as the module docstring says, on tests/data/hf/<name>."""
    import runpy

    sys.path[:0] = [str(llama_cpp), str(llama_cpp / "gguf-py")]
    import conversion.base as base
    import conversion.gemma as gemma
    import conversion.phi as phi

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: PRE_NAMES[name]

    def no_tokenizer_model(self):  # noqa: ANN001, ANN202
        raise FileNotFoundError(f"File not found: {self.dir_model / 'tokenizer.model'}")

    base.TextModel._create_vocab_sentencepiece = no_tokenizer_model
    gemma.Gemma2Model.set_vocab = lambda self: self._set_vocab_gpt2()
    phi.Phi3MiniModel.set_vocab = lambda self: self._set_vocab_gpt2()
    script = llama_cpp / "convert_hf_to_gguf.py"
    sys.argv = [str(script), str(HF / name), "--outtype", "f32", "--outfile", str(out)]
    runpy.run_path(str(script), run_name="__main__")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--llama-cpp", type=Path, required=True, help="llama.cpp source tree (vendored)")
    parser.add_argument("--one", nargs=2, metavar=("NAME", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"fixtures (default: all): {', '.join(NAMES)}")
    args = parser.parse_args()
    if args.one:
        convert_one(args.llama_cpp, args.one[0], Path(args.one[1]))
        return
    if unknown := [n for n in args.names if n not in NAMES]:
        parser.error(f"unknown fixtures {unknown}: choose from {', '.join(NAMES)}")
    commit = subprocess.run(["git", "-C", str(args.llama_cpp), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    if commit != LLAMA_CPP_COMMIT:
        print(f"note: llama.cpp at {commit}, the recorded files were converted at {LLAMA_CPP_COMMIT}")
    import torch
    import transformers

    OUT.mkdir(parents=True, exist_ok=True)
    record = OUT / "converted.json"
    files = json.loads(record.read_text())["files"] if record.is_file() and args.names else {}
    for name in args.names or NAMES:
        out = OUT / f"{name}.gguf"
        subprocess.run([sys.executable, __file__, "--llama-cpp", str(args.llama_cpp), "--one", name, str(out)],
                       check=True)
        files[name] = {"source": f"tests/data/hf/{name}", "sha256": sha256(out), "bytes": out.stat().st_size,
                       "tokenizer_ggml_pre": PRE_NAMES[name],
                       "source_sha256": {f: sha256(HF / name / f) for f in ("config.json", "model.safetensors",
                                                                            "tokenizer.json")}}
        print(f"{name}: {files[name]['bytes']} bytes, sha256 {files[name]['sha256']}")
    converter = {"script": "convert_hf_to_gguf.py", "llama_cpp_commit": commit,
                 "llama_cpp_python": "0.3.36 (vendor/llama.cpp)", "torch": torch.__version__,
                 "transformers": transformers.__version__,
                 "command": "convert_hf_to_gguf.py tests/data/hf/<name> --outtype f32 --outfile "
                            "tests/data/converted/<name>.gguf",
                 "patches": "tests/make_converted_fixtures.py's docstring: tokenizer.ggml.pre from PRE_NAMES "
                            "(no hash lookup); no tokenizer.model read (no sentencepiece import); Gemma 2 and "
                            "Phi-3 vocabularies by the byte-level (gpt2) path"}
    record.write_text(json.dumps({"converter": converter, "files": {n: files[n] for n in NAMES if n in files}},
                                 indent=1) + "\n")


if __name__ == "__main__":
    main()
