"""Decode speed of llmrun against karpathy's llama2.c run.c, side by side on the same model file.

    python benchmarks/compare_llama2c.py --run /path/to/llama2.c/runomp [--threads 1,2] [--rounds 5]

Both programs generate --steps tokens greedily from BOS on a random-weight stories15M-shape model
(written once, in llama2.c's format, whose greedy output never ends early) with the Llama 2 tokenizer.
The two are run alternately, round after round, so machine noise hits both alike. Speeds are what each
program reports for its decode loop: run.c's "achieved tok/s" (all tokens after the first, sampling and
printing included) and llmrun's --stats decode tokens/s (the same loop in Python). For OpenMP builds the
thread count is given to run.c through OMP_NUM_THREADS.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.append(str(ROOT))  # llmrun from the source tree where it is not installed

from models import write_random_model  # noqa: E402

DEFAULT_TOKENIZER = ROOT.parent / "shared" / "models" / "tokenizer.bin"


def run_llama2c(binary: str, model: Path, tokenizer: Path, steps: int, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([binary, str(model), "-z", str(tokenizer), "-t", "0", "-n", str(steps)],
                       capture_output=True, text=True, env=env, check=True)
    return float(re.search(r"achieved tok/s: ([\d.]+)", r.stderr).group(1))


def run_llmrun(model: Path, tokenizer: Path, steps: int, threads: int) -> float:
    r = subprocess.run([sys.executable, "-m", "llmrun.cli", "generate", str(model), "-z", str(tokenizer),
                        "--temperature", "0", "-n", str(steps - 1), "-t", str(threads), "--stats"],
                       capture_output=True, text=True, check=True, cwd=ROOT)
    return float(re.search(r"decode: ([\d.]+) tokens/s", r.stderr).group(1))


def summary(xs: list[float]) -> str:
    return f"{statistics.mean(xs):8.1f} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:6.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="llama2.c run binary (e.g. built with `make runomp`)")
    ap.add_argument("--tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="llama2.c tokenizer.bin")
    ap.add_argument("--shape", default="stories15M")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=256)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model = write_random_model(Path(tmp) / f"{args.shape}.bin", args.shape)
        results = {(t, who): [] for t in threads for who in ("llama2c", "llmrun")}
        for r in range(args.rounds):
            for t in threads:
                results[t, "llama2c"].append(run_llama2c(args.run, model, args.tokenizer, args.steps, t))
                results[t, "llmrun"].append(run_llmrun(model, args.tokenizer, args.steps, t))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"decode tokens/s, {args.shape} f32, {args.steps} steps, {args.rounds} rounds alternating")
    print("| threads | llama2.c | llmrun | llmrun / llama2.c |")
    print("|---|---|---|---|")
    for t in threads:
        a, b = results[t, "llama2c"], results[t, "llmrun"]
        print(f"| {t} | {summary(a)} | {summary(b)} | {statistics.mean(b) / statistics.mean(a):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
