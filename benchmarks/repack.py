"""What repacking the weights at load time costs and gains (llmrun.load(repack=...)).

For each model, loads it with repack=False and repack=True, each in a fresh subprocess (so that neither
finds the other's memory), alternating the order over --rounds, and reports per setting (medians):
  load s      seconds of llmrun.load (reading the file's index, repacking, creating the context);
  RSS MiB     the process's resident memory after a first prompt (/proc/self/status: VmRSS, of it RssAnon,
              anonymous memory: the repacked copy, the KV cache, buffers, and RssFile, the file's mapped pages);
  ppN, tgN    prompt processing of N tokens and greedy generation of N tokens after a short prompt, tok/s
              (Model.evaluate, as benchmarks/compare.py measures llmrun).
Run from the worktree whose llmrun you measure:
  PYTHONPATH=. python benchmarks/repack.py --shapes 110m --types q4_0,q8_0 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
ROOT = Path(__file__).resolve().parent.parent


def status_kib(*keys: str) -> dict[str, int]:
    """Fields of /proc/self/status in KiB (Linux)."""
    out: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            out[key] = int(value.split()[0])
    return out


def worker(job: dict) -> dict:
    """One process: load with job's repack, then the tests; returns the measurements."""
    import llmrun

    start = time.perf_counter()
    model = llmrun.load(job["path"], n_ctx=job["n_ctx"], n_threads=job["threads"], repack=job["repack"])
    result: dict = {"load_s": time.perf_counter() - start, "repacked": model.info.repacked}
    rng = np.random.default_rng(0)
    vocab = model.info.vocab_size
    for test in job["tests"]:
        n = int(test[2:])
        ids = [int(i) for i in rng.integers(3, vocab, size=n if test.startswith("pp") else 8)]
        model.reset()
        model.evaluate(ids[:8])  # warm-up: pages touched, threads started
        model.reset()
        if test.startswith("pp"):
            t0 = time.perf_counter()
            model.evaluate(ids)
            result[test] = n / (time.perf_counter() - t0)
        else:
            history = list(ids)
            logits = model.evaluate(history)
            t0 = time.perf_counter()
            for _ in range(n):
                history.append(int(np.argmax(logits)))
                logits = model.evaluate(history, out=logits)
            result[test] = n / (time.perf_counter() - t0)
        if "rss" not in result:  # after the first test: every weight page has been read once
            kib = status_kib("VmRSS", "RssAnon", "RssFile")
            result["rss"] = {k: v / 1024 for k, v in kib.items()}
    model.close()
    return result


def run_one(job: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True,
                          env=env, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--shapes", default="110m", help="random GGUF shapes (gguf_models.py)")
    ap.add_argument("--types", default="q4_0,q8_0")
    ap.add_argument("--models", help="comma-separated GGUF files instead of --shapes/--types")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tests", default="pp64,pp512,tg64")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=1024)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.models:
        paths = [Path(p) for p in args.models.split(",")]
    else:
        from gguf_models import cached_gguf
        paths = [cached_gguf(s, t) for s in args.shapes.split(",") for t in args.types.split(",")]
    tests = args.tests.split(",")
    header = ["model", "repack", "matrices", "load s", "VmRSS", "RssAnon", "RssFile", *tests]
    rows = []
    for path in paths:
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(args.rounds):
            for repack in ((False, True) if r % 2 == 0 else (True, False)):
                job = dict(path=str(path), n_ctx=args.n_ctx, threads=args.threads, repack=repack, tests=tests)
                runs[repack].append(run_one(job))
        med = {}
        for repack, rs in runs.items():
            m = {k: statistics.median(x[k] for x in rs) for k in ("load_s", *tests)}
            m.update({k: statistics.median(x["rss"][k] for x in rs) for k in ("VmRSS", "RssAnon", "RssFile")})
            med[repack] = m
            rows.append([path.stem, str(repack), str(rs[0]["repacked"]), f"{m['load_s']:.2f}",
                         *(f"{m[k]:.0f} MiB" for k in ("VmRSS", "RssAnon", "RssFile")),
                         *(f"{m[t]:.1f}" for t in tests)])
        rows.append([path.stem, "ratio", "", f"{med[True]['load_s'] / med[False]['load_s']:.2f}", "", "", "",
                     *(f"{med[True][t] / med[False][t]:.2f}x" for t in tests)])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(r, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
