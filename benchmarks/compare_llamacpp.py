"""Generation speed of llmrun against llama.cpp (through llama-cpp-python) on the same GGUF files.

    python benchmarks/compare_llamacpp.py --shapes 110m,tinyllama-1.1b --types f32,f16,q8_0,q4_0 \\
        --threads 1,2 --rounds 3 --tokens 64 [--json results.json]

What is measured (tg, as llama-bench's "tg" test): after a short prompt (BOS + "Once upon a time", the
same 5 token ids for both), `--warmup` untimed single-token steps, then `--tokens` timed single-token
decode steps, each "argmax of the last logits, evaluate that one token". Only that loop is timed: model
loading, the prompt and the warm-up steps are not.
  - llama.cpp: `Llama(model_path, n_ctx, n_threads=t, n_threads_batch=t)`, then `llm.eval([token])` per
    step (one llama_decode of a one-token batch) and the argmax of the logits it stores in `llm.scores`.
  - llmrun: `llmrun.load(path, n_threads=t, n_ctx)`, then `model._engine.evaluate(history)` per step
    (the KV cache holds the history, so one forward step of the new token) and the argmax of its logits.
    `--llmrun-mode stream` instead reports `Generation.stats.decode_tokens_per_second` of
    `model.stream(prompt_ids, max_tokens=warmup + tokens, temperature=0)` (sampler, detokenizer and
    streaming included; no untimed warm-up steps).
Each measurement runs in a fresh subprocess per (tool, file, threads); within a round the two tools run
back to back on each configuration, in alternating order from round to round, so that machine noise hits
both alike. The table shows medians over rounds with the range (min-max) in brackets.

Memory-bandwidth limit: a decode step must read every weight once (all matrices and norms; of
token_embd one row; the KV cache is not counted: it is under 1% of the weights at these lengths). The
"% of BW" columns are (weight bytes per token x tokens/s) / (measured read bandwidth with the same number
of threads). The read bandwidth is measured at the start of every round (the machine is shared, so it
varies): a small C program, compiled on the fly with `gcc -O3 -march=native`, sums a 1 GiB buffer of
uint64 words (pages touched beforehand) split across t pthreads, --bw-reps passes; the best pass over
all rounds is the limit (the median of all passes is shown too). Without gcc, numpy sums the buffer
instead (np.add.reduce on t slices from t Python threads; numpy releases the GIL).

llmrun is imported from this source tree (its built `_kernel` included). A llmrun failure (say, a weight
type without kernels yet) is shown in the table as "n/a (error)" instead of stopping the run; it is
not retried in later rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

PROMPT_IDS = [1, 9038, 2501, 263, 931]  # BOS "Once upon a time" in the Llama 2 vocabulary
TOOLS = ("llama.cpp", "llmrun")


# --------------------------------------------------------------------------------------------------
# workers: one measurement each, in a fresh process; print one JSON line on stdout


def _greedy_loop(step, logits, warmup: int, tokens: int) -> tuple[float, list[int]]:
    """Runs warmup untimed and `tokens` timed steps of (argmax, evaluate); returns (seconds, all ids)."""
    import numpy as np

    out: list[int] = []
    for _ in range(warmup):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = step(tok)
    start = time.perf_counter()
    for _ in range(tokens):
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = step(tok)
    return time.perf_counter() - start, out


def worker_llamacpp(model: str, threads: int, n_ctx: int, warmup: int, tokens: int) -> dict:
    import llama_cpp
    import numpy as np

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=model, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          verbose=False)
    load_s = time.perf_counter() - t0
    n_vocab = llm.n_vocab()

    def logits():  # the last evaluated token's logits, in llama.cpp's buffer (no copy)
        return np.ctypeslib.as_array(llm._ctx.get_logits_ith(-1), shape=(n_vocab,))

    def step(tok: int):
        llm.eval([tok])  # one llama_decode of a one-token batch (llm.scores stays unused)
        return logits()

    llm.eval(PROMPT_IDS)
    seconds, ids = _greedy_loop(step, logits(), warmup, tokens)
    return dict(ok=True, seconds=seconds, tokens=tokens, tps=tokens / seconds, ids=ids, load_s=load_s,
                version=llama_cpp.__version__, system_info=llama_cpp.llama_print_system_info().decode().strip())


def worker_llmrun(model: str, threads: int, n_ctx: int, warmup: int, tokens: int, mode: str) -> dict:
    sys.path.insert(0, str(ROOT))
    import llmrun

    t0 = time.perf_counter()
    m = llmrun.load(model, n_threads=threads, n_ctx=n_ctx)
    load_s = time.perf_counter() - t0
    info = dict(isa=m.info.isa, dtype=m.info.dtype, llmrun=llmrun.__file__)
    if mode == "stream":
        g = m.stream(PROMPT_IDS, max_tokens=warmup + tokens, temperature=0)
        g.text()
        st = g.stats
        return dict(ok=True, seconds=st.decode_seconds, tokens=st.generated_tokens,
                    tps=st.decode_tokens_per_second, ids=list(g.tokens), load_s=load_s, **info)
    engine = m._engine
    history = list(PROMPT_IDS)

    def step(tok: int):
        history.append(tok)
        return engine.evaluate(history)

    seconds, ids = _greedy_loop(step, engine.evaluate(history), warmup, tokens)
    m.close()
    return dict(ok=True, seconds=seconds, tokens=tokens, tps=tokens / seconds, ids=ids, load_s=load_s, **info)


def worker_main(args: argparse.Namespace) -> int:
    try:
        if args.worker == "llama.cpp":
            r = worker_llamacpp(args.model, args.one_thread_count, args.n_ctx, args.warmup, args.tokens)
        else:
            r = worker_llmrun(args.model, args.one_thread_count, args.n_ctx, args.warmup, args.tokens,
                              args.llmrun_mode)
    except Exception as e:  # reported, not raised: the parent puts it in the table
        r = dict(ok=False, error=f"{type(e).__name__}: {e}")
    print("RESULT " + json.dumps(r), flush=True)
    return 0


def run_worker(tool: str, model: Path, threads: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", tool, "--model", str(model), "--one-thread-count",
           str(threads), "--n-ctx", str(args.n_ctx), "--warmup", str(args.warmup), "--tokens",
           str(args.tokens), "--llmrun-mode", args.llmrun_mode]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return dict(ok=False, error=f"timed out after {args.timeout} s")
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(ok=False, error=f"exit code {p.returncode}: {tail}")


# --------------------------------------------------------------------------------------------------
# read bandwidth

BW_C = r"""
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct { const uint64_t *p; size_t n; uint64_t sum; } part;

static void *sum_part(void *arg) {
    part *w = arg;
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    size_t i = 0;
    for (; i + 4 <= w->n; i += 4) { a0 += w->p[i]; a1 += w->p[i + 1]; a2 += w->p[i + 2]; a3 += w->p[i + 3]; }
    for (; i < w->n; i++) a0 += w->p[i];
    w->sum = a0 + a1 + a2 + a3;
    return NULL;
}

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

int main(int argc, char **argv) {
    size_t bytes = (size_t)atoll(argv[1]);
    int threads = atoi(argv[2]), reps = atoi(argv[3]);
    size_t n = bytes / 8;
    uint64_t *buf = aligned_alloc(4096, n * 8);
    if (!buf) return 1;
    for (size_t i = 0; i < n; i++) buf[i] = i;  /* touch every page */
    pthread_t tid[256];
    part parts[256];
    uint64_t check = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = now();
        for (int k = 0; k < threads; k++) {
            size_t lo = n * k / threads, hi = n * (k + 1) / threads;
            parts[k] = (part){buf + lo, hi - lo, 0};
            pthread_create(&tid[k], NULL, sum_part, &parts[k]);
        }
        for (int k = 0; k < threads; k++) { pthread_join(tid[k], NULL); check += parts[k].sum; }
        printf("%.6f\n", bytes / (now() - t0) / 1e9);
    }
    fprintf(stderr, "checksum %llu\n", (unsigned long long)check);
    free(buf);
    return 0;
}
"""


def bandwidth_c(threads: int, nbytes: int, reps: int) -> list[float] | None:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "bw.c", Path(tmp) / "bw"
        src.write_text(BW_C)
        r = subprocess.run([cc, "-O3", "-march=native", "-pthread", str(src), "-o", str(exe)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return None
        out = subprocess.run([str(exe), str(nbytes), str(threads), str(reps)], capture_output=True,
                             text=True, check=True).stdout
    return [float(x) for x in out.split()]


def bandwidth_numpy(threads: int, nbytes: int, reps: int) -> list[float]:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    a = np.arange(nbytes // 8, dtype=np.uint64)
    parts = np.array_split(a, threads)
    res = []
    with ThreadPoolExecutor(threads) as ex:
        for _ in range(reps):
            t0 = time.perf_counter()
            list(ex.map(np.add.reduce, parts))
            res.append(a.nbytes / (time.perf_counter() - t0) / 1e9)
    return res


def measure_bandwidth(threads: int, nbytes: int, reps: int, method: str) -> dict:
    vals = bandwidth_c(threads, nbytes, reps) if method == "c" else None
    used = "c"
    if vals is None:
        vals, used = bandwidth_numpy(threads, nbytes, reps), "numpy"
    return dict(method=used, best=max(vals), median=statistics.median(vals), all=vals)


# --------------------------------------------------------------------------------------------------
# driver


def fmt_speed(xs: list[float]) -> str:
    if not xs:
        return "-"
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(xs):.2f}-{max(xs):.2f})"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def na(err: str) -> str:
    err = err.replace("|", "/").replace("\n", " ")
    return f"n/a ({err[:100]}{'...' if len(err) > 100 else ''})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="110m,tinyllama-1.1b")
    ap.add_argument("--types", default="f32,f16,q8_0,q4_0")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64, help="timed decode steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed decode steps before the timed ones")
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed")
    ap.add_argument("--tools", default="llama.cpp,llmrun")
    ap.add_argument("--llmrun-mode", choices=("engine", "stream"), default="engine")
    ap.add_argument("--bw-bytes", type=int, default=1 << 30)
    ap.add_argument("--bw-reps", type=int, default=5)
    ap.add_argument("--bw-method", choices=("c", "numpy"), default="c")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per measurement subprocess")
    ap.add_argument("--json", type=Path, help="also write all raw results here")
    # worker mode (internal)
    ap.add_argument("--worker", choices=TOOLS, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--one-thread-count", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker_main(args)

    from gguf_models import SHAPES, TYPES, cached_gguf, weight_bytes_per_token

    shapes = args.shapes.split(",")
    types = args.types.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    tools = args.tools.split(",")
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}; one of {sorted(SHAPES)}")
    for t in types:
        if t not in TYPES:
            ap.error(f"unknown type {t!r}; one of {sorted(TYPES)}")
    for t in tools:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}; one of {TOOLS}")
    if len(PROMPT_IDS) + args.warmup + args.tokens > args.n_ctx:
        ap.error("prompt + warmup + tokens do not fit in --n-ctx")

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    files: dict[tuple[str, str], Path] = {}
    for s in shapes:
        for t in types:
            t0 = time.perf_counter()
            files[s, t] = cached_gguf(s, t, args.seed)
            log(f"model {files[s, t]} ({files[s, t].stat().st_size / 1e6:.0f} MB, "
                f"{time.perf_counter() - t0:.0f} s)")

    bw_runs: dict[int, list[dict]] = {t: [] for t in threads}

    def measure_all_bandwidths() -> None:
        for t in threads:
            m = measure_bandwidth(t, args.bw_bytes, args.bw_reps, args.bw_method)
            bw_runs[t].append(m)
            log(f"read bandwidth, {t} thread(s): best {m['best']:.2f} GB/s, median {m['median']:.2f} "
                f"({m['method']})")

    configs = [(s, ty, th) for s in shapes for ty in types for th in threads]
    results: dict[tuple, list[dict]] = {(c, tool): [] for c in configs for tool in tools}
    failed: dict[tuple, dict] = {}
    for rnd in range(args.rounds):
        measure_all_bandwidths()
        order = tools if rnd % 2 == 0 else tools[::-1]
        for c in configs:
            for tool in order:
                if (c, tool) in failed:
                    continue
                r = run_worker(tool, files[c[0], c[1]], c[2], args)
                results[c, tool].append(r)
                if not r["ok"]:
                    failed[c, tool] = r
                    log(f"round {rnd + 1} {c} {tool}: FAILED {r['error']}")
                else:
                    log(f"round {rnd + 1} {c} {tool}: {r['tps']:.2f} tok/s")

    # report
    bw = {}
    for t in threads:
        passes = [v for m in bw_runs[t] for v in m["all"]]
        bw[t] = dict(method=bw_runs[t][0]["method"], best=max(passes), median=statistics.median(passes),
                     min=min(passes), all=passes)
    info = {}
    for (_c, tool), rs in results.items():
        for r in rs:
            if r.get("ok"):
                if tool == "llama.cpp":
                    info.setdefault("llama-cpp-python", f"{r['version']} ({r['system_info']})")
                else:
                    info.setdefault("llmrun", f"{r['llmrun']} ({r['isa']} kernels)")
    cpu = platform.processor() or "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    print(f"## Generation speed (tg{args.tokens}), llmrun vs llama.cpp\n")
    print(f"- machine: {cpu}, {os.cpu_count()} logical CPUs; {platform.platform()}; load average "
          f"{load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)")
    for k, v in info.items():
        print(f"- {k}: {v}")
    print(f"- {args.tokens} timed greedy single-token steps after a {len(PROMPT_IDS)}-token prompt and "
          f"{args.warmup} untimed steps; n_ctx {args.n_ctx}; llmrun mode: {args.llmrun_mode}; "
          f"{args.rounds} round(s), tools alternating; median (min-max) tokens/s")
    for t in threads:
        print(f"- read bandwidth, {t} thread(s): {bw[t]['best']:.2f} GB/s best, {bw[t]['median']:.2f} median, "
              f"{bw[t]['min']:.2f} worst of {len(bw[t]['all'])} passes ({bw[t]['method']}: sum of a "
              f"{args.bw_bytes / 2**30:.2f} GiB buffer, {args.bw_reps} passes per round)")
    print()
    hdr = ["shape", "type", "threads", "MB/token"] + [f"{t} tok/s" for t in tools]
    if tools == list(TOOLS):
        hdr += ["llmrun / llama.cpp"]
    hdr += [f"{t} % of BW" for t in tools]
    if tools == list(TOOLS):
        hdr += ["greedy ids agree"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    raw = []
    for c in configs:
        s, ty, th = c
        wb = weight_bytes_per_token(s, ty)
        row = [s, ty, str(th), f"{wb / 1e6:.0f}"]
        speeds, pct = {}, []
        for tool in tools:
            rs = results[c, tool]
            ok = [r["tps"] for r in rs if r.get("ok")]
            speeds[tool] = ok
            raw.append(dict(shape=s, type=ty, threads=th, tool=tool, weight_bytes_per_token=wb,
                            file=str(files[s, ty]), results=rs))
            if (c, tool) in failed and not ok:
                row.append(na(failed[c, tool]["error"]))
                pct.append("-")
            else:
                row.append(fmt_speed(ok))
                pct.append(f"{100 * wb * statistics.median(ok) / (bw[th]['best'] * 1e9):.0f}%" if ok else "-")
        if tools == list(TOOLS):
            a, b = speeds["llama.cpp"], speeds["llmrun"]
            row.append(f"{statistics.median(b) / statistics.median(a):.2f}" if a and b else "-")
        row += pct
        if tools == list(TOOLS):
            ra = next((r for r in results[c, "llama.cpp"] if r.get("ok")), None)
            rb = next((r for r in results[c, "llmrun"] if r.get("ok")), None)
            if ra and rb:
                n = min(len(ra["ids"]), len(rb["ids"]))
                row.append(f"{common_prefix(ra['ids'], rb['ids'])}/{n}")
            else:
                row.append("-")
        print("| " + " | ".join(row) + " |")
    print("\nMB/token: weight bytes a decode step reads (all matrices and norms, one row of token_embd). "
          "% of BW: MB/token x tokens/s over the best measured read bandwidth at that thread count. "
          "greedy ids agree: length of the common prefix of the two tools' greedy token ids "
          "(warm-up steps included; f16 KV cache and quantized activations in llama.cpp make them diverge "
          "eventually on random weights).")
    if args.json:
        args.json.write_text(json.dumps(dict(bandwidth=bw, args={k: str(v) for k, v in vars(args).items()},
                                             info=info, rows=raw), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
