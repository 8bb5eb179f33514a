"""Speed of two llmrun source trees (say, before and after a change) on the same model files, interleaved.

    python benchmarks/ab_trees.py OLD_TREE NEW_TREE MODEL.gguf [MODEL.gguf ...] --threads 1,2 \\
        --prompt 512 --gen 64 --rounds 3 --reps 2 [--json out.json]

Each tree must be built in place (`python setup.py build_ext --inplace`). For every (model, threads) and
round, `llmrun bench --json` runs once from each tree in a fresh process (PYTHONPATH=TREE), the order
alternating from round to round (A B, B A, A B ...) so that machine noise hits both alike. Each process
does llmrun bench's untimed warm-up and --reps timed runs per test. The table gives, per test, the median
tokens/s of each tree over all timed runs of all rounds, their range, and the ratio of medians new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py: this script's folder


def bench_once(tree: Path, model: Path, threads: int, prompt: int, gen: int, reps: int) -> dict[str, list[float]]:
    """tokens/s of each timed run per test, from one `llmrun bench --json` process of `tree`."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    code = "import sys; from llmrun.cli import main; sys.exit(main(sys.argv[1:]))"
    cmd = [sys.executable, "-c", code, "bench", str(model), "-t", str(threads), "-p", str(prompt), "-n", str(gen),
           "-r", str(reps), "--json"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tree)
    if p.returncode != 0:
        raise RuntimeError(f"{tree}: {p.stderr.strip()[-500:]}")
    out: dict[str, list[float]] = {}
    for line in p.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            # llmrun bench reports a mean and stdev; with reps runs the mean is what we get per process
            out.setdefault(r["test"], []).append(r["tokens_per_second"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("models", type=Path, nargs="+")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    res: dict[tuple[str, int, str, str], list[float]] = {}
    for rnd in range(a.rounds):
        for model in a.models:
            for t in threads:
                order = [("old", a.old), ("new", a.new)]
                if rnd % 2:
                    order.reverse()
                for name, tree in order:
                    r = bench_once(tree, model, t, a.prompt, a.gen, a.reps)
                    for test, v in r.items():
                        res.setdefault((model.name, t, test, name), []).extend(v)
                    print(f"round {rnd + 1} {model.name} t={t} {name}: "
                          + ", ".join(f"{k} {v[0]:.2f}" for k, v in r.items()), file=sys.stderr, flush=True)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs; {a.rounds} rounds, interleaved; "
          f"each value a process's mean of {a.reps} timed runs")
    print("| model | threads | test | old median (range) | new median (range) | new / old |")
    print("|---|---|---|---|---|---|")
    rows = []
    for (m, t, test, name) in sorted(res):
        if name != "old":
            continue
        o, n = res[(m, t, test, "old")], res.get((m, t, test, "new"), [])
        if not n:
            continue
        mo, mn = statistics.median(o), statistics.median(n)
        rows.append(dict(model=m, threads=t, test=test, old=o, new=n, ratio=mn / mo))
        print(f"| {m} | {t} | {test} | {mo:.2f} ({min(o):.2f}-{max(o):.2f}) | {mn:.2f} ({min(n):.2f}-{max(n):.2f}) "
              f"| {mn / mo:.3f} |")
    if a.json:
        a.json.write_text(json.dumps(dict(cpu=cpu_name(), rows=rows), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
