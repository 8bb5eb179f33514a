"""`llmrun perplexity --llama-cpp-compatible` against llama.cpp's own `llama-perplexity`, on the same GGUF files
and text. For a model with f32 weights the two forward passes compute the same values up to f32 rounding, so the
figures must agree to 3 decimals (exit status 1 otherwise): that checks the scoring. With quantized weights they
differ by llama.cpp's lower-precision activations (it rounds the scale of each 32-value block of a Q8_0 product's
input to fp16, and an f16 product's input to f16; llmrun keeps them f32), about 0.1% on stories260K q8_0; the
script prints the difference. llmrun's default scoring (every token of the text) is printed beside them for
reference; llama.cpp has no such mode.

    python benchmarks/perplexity_vs_llama_cpp.py /path/to/llama-perplexity
    python benchmarks/perplexity_vs_llama_cpp.py /path/to/llama-perplexity --model m.gguf --text wiki.test.raw -c 512

llama-perplexity runs twice: with its defaults (an f16 KV cache, flash attention where it applies) and with
`-fa off -ctk f32 -ctv f32`, which computes attention in f32 as llmrun does; the second is the one compared.
Without --text the text is the first model's own stories (sampled with fixed seeds, about 4,000 tokens), so that
every token is in its vocabulary. Building llama-perplexity: the llama-cpp-python sdist vendors llama.cpp
(`pip download --no-binary :all: --no-deps llama-cpp-python`); build its `llama-perplexity` target with cmake
and explicit ISA flags (`-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON`), outside this repository.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py: this script's folder

import llmrun

MODELS = Path(__file__).resolve().parents[2] / "shared" / "models"
DEFAULT_MODELS = [MODELS / "stories260K-f32.gguf", MODELS / "stories260K-q8_0.gguf"]
LLAMA_CPP_RUNS = {"llama.cpp defaults": [], "llama.cpp f32 attention": ["-fa", "off", "-ctk", "f32", "-ctv", "f32"]}
TEXT_TOKENS = 4000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("llama_perplexity", type=Path, help="the llama-perplexity executable")
    ap.add_argument("--model", type=Path, action="append", help="GGUF file (repeatable; default: stories260K "
                                                                "f32 and q8_0 from ../shared/models)")
    ap.add_argument("--text", type=Path, help="UTF-8 text (default: stories the first model writes)")
    ap.add_argument("-c", "--ctx", type=int, default=128, help="chunk size, both tools' -c (default: 128)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads for both tools (default: 2)")
    args = ap.parse_args()
    models = args.model or DEFAULT_MODELS
    with tempfile.TemporaryDirectory() as tmp:
        text = args.text or write_stories(models[0], Path(tmp) / "stories.txt")
        with llmrun.load(models[0]) as m:
            n_tokens = len(m.tokenize(text.read_text(encoding="utf-8").removesuffix("\n")))
        print(f"text: {text} ({n_tokens} tokens), -c {args.ctx}, {args.threads} threads, {cpu_name()}")
        print(f"| model | weights | llmrun (every token) | llmrun --llama-cpp-compatible | "
              f"{' | '.join(LLAMA_CPP_RUNS)} | difference |\n|---|---|---:|---:|" + "---:|" * (len(LLAMA_CPP_RUNS) + 1))
        failed = []
        for model in models:
            with llmrun.load(model) as m:
                dtype = m.info.dtype
            ours = llmrun_perplexity(model, text, args.ctx, args.threads, [])
            compatible = llmrun_perplexity(model, text, args.ctx, args.threads, ["--llama-cpp-compatible"])
            theirs = [llama_perplexity(args.llama_perplexity, model, text, args.ctx, args.threads, extra)
                      for extra in LLAMA_CPP_RUNS.values()]
            if dtype == "f32" and round(compatible, 3) != round(theirs[-1], 3):
                failed.append(model.name)
            print(f"| {model.name} | {dtype} | {ours:.4f} | {compatible:.4f} | "
                  f"{' | '.join(f'{t:.4f}' for t in theirs)} | {100 * (compatible / theirs[-1] - 1):+.3f}% |")
    print(f"DISAGREE at 3 decimals: {', '.join(failed)}" if failed else
          "f32 models: llmrun --llama-cpp-compatible and llama-perplexity (f32 attention) agree to 3 decimals")
    return 1 if failed else 0


def write_stories(model_path: Path, path: Path) -> Path:
    """Stories the model writes from BOS (temperature 0.8, seeds 0, 1, ...) until the text has TEXT_TOKENS."""
    stories: list[str] = []
    with llmrun.load(model_path, n_threads=1) as model:
        while len(model.tokenize("\n".join(stories))) < TEXT_TOKENS:
            stories.append(model.generate("", max_tokens=400, temperature=0.8, seed=len(stories)).strip())
    path.write_text("\n".join(stories) + "\n", encoding="utf-8")
    return path


def llmrun_perplexity(model: Path, text: Path, ctx: int, threads: int, extra: list[str]) -> float:
    out = run([sys.executable, "-m", "llmrun.cli", "perplexity", str(model), str(text), "-c", str(ctx),
               "-t", str(threads), *extra])
    return float(re.search(r"^perplexity (\d+\.\d+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]


def llama_perplexity(tool: Path, model: Path, text: Path, ctx: int, threads: int, extra: list[str]) -> float:
    out = run([str(tool), "-m", str(model), "-f", str(text), "-c", str(ctx), "-b", str(ctx), "-t", str(threads),
               *extra])
    return float(re.search(r"Final estimate: PPL = (\d+\.\d+)", out).group(1))  # type: ignore[union-attr]


def run(cmd: list[str]) -> str:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-2000:]}")
    return r.stdout + r.stderr


if __name__ == "__main__":
    sys.exit(main())
