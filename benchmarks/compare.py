"""Speed of llmrun against llama.cpp (through llama-cpp-python) and llama2.c on the same model files.

    python benchmarks/compare.py --shapes 110m,tinyllama-1.1b --types f32,f16,q8_0,q4_0 --threads 1,2 \\
        --tests pp128,pp512,tg64 --rounds 3 [--token-by-token] [--bandwidth] [--llama2c PATH/runomp] \\
        [--json results.json]

Models: random-weight GGUF files of real shapes (benchmarks/gguf_models.py, cached under
/tmp/llmrun-bench; speed does not depend on the weights' values), one per --shapes x --types, or any
GGUF files given with --models. Tests, in llama-bench's vocabulary (all ids are the same for every tool):
  - ppN (prompt processing): N token ids evaluated from an empty KV cache; tokens/s = N / seconds. The
    ids are drawn once with a fixed seed, uniformly from the model's vocabulary without its BOS, EOS,
    unknown and padding ids; ppN uses the first N of them.
      llama.cpp: `Llama(path, n_ctx, n_batch=B, n_ubatch=B, n_threads=t, n_threads_batch=t)`, `reset()`,
      then `llm.eval(ids)` is timed (one llama_decode per B tokens, logits of the last token only).
      llmrun: `llmrun.load(path, n_ctx, n_threads=t, n_batch=B)`, `model.reset()`, then
      `model.evaluate(ids)` is timed (batches of B tokens, logits of the last token only).
      llmrun-b1 (--token-by-token): llmrun loaded with n_batch=1, i.e. the prompt processed one token
      at a time, to show what batching gains.
  - tgN (generation): after a short prompt (BOS "Once upon a time" in the Llama 2 vocabulary, else BOS
    and 4 of the random ids), evaluated untimed, N timed greedy decode steps, each "argmax of the last
    logits, evaluate that one token" (llama.cpp: `llm.eval([token])`; llmrun: `model.evaluate(history)`,
    which computes only the new token: the KV cache holds the rest).
Each (tool, model, threads) is measured by a fresh subprocess that loads the model once and runs every
test on it: one untimed warm-up run of the test, then --reps timed runs (each from an empty cache).
Model loading is never timed. Within a round the tools run back to back on each configuration, in
alternating order from round to round (reversed on odd rounds), so that machine noise hits all alike.
Tables show, per test, the median of all timed runs over all rounds with their range (min-max), and
the ratio of medians llmrun / llama.cpp (and llmrun / llmrun-b1 for pp with --token-by-token). A tool
that fails on a configuration (say, a weight type without kernels) is shown as "n/a (reason)" and not
retried in later rounds; if llama_cpp is not importable that tool is skipped with a notice.

--bandwidth adds, to the tg tables, the fraction of the machine's read bandwidth each tool reaches: a
decode step must read every weight once (all matrices and norms; one row of token_embd unless it is also
the classifier; the KV cache is not counted), so "% of BW" = (weight bytes per token x tokens/s) /
(best measured read bandwidth with the same number of threads). The bandwidth is measured at the start
of every round (the machine may be shared): a small C program, compiled on the fly with
`gcc -O3 -march=native`, sums a 1 GiB buffer of uint64 words (pages touched beforehand) split across t
pthreads, --bw-reps passes; without gcc, numpy sums it from t Python threads (numpy releases the GIL).

--isa NAME runs llmrun with LLMRUN_ISA=NAME (its kernels of that level: what a CPU without the best level gets);
--llama-cpp-python DIR imports llama_cpp from DIR (another build, say AVX2 only, for the same comparison on
llama.cpp's side). A last table shows each tool's load time and resident memory after loading.

--llama2c PATH adds llama2.c (karpathy's run.c, e.g. its `runomp` build) against llmrun on a
random-weight stories15M-shape model in llama2.c's format (benchmarks/models.py; its greedy output never
ends early), f32, with the Llama 2 tokenizer.bin: run.c generates --llama2c-steps tokens greedily from
BOS (`-t 0 -n steps`, threads through OMP_NUM_THREADS) and reports its own "achieved tok/s" on stderr
(the steps after the first; sampling and printing included); llmrun runs the tgN test above with N =
steps - 1 from the prompt BOS. Each round runs one untimed run of llama2.c, then --reps timed ones.
--llama2c-only leaves out the GGUF models (only this table).

llmrun is imported from this source tree (its built `_kernel` included).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # llmrun from the source tree
sys.path.insert(0, str(ROOT / "tests"))  # builders (for models.py)
sys.path.insert(0, str(BENCH_DIR))  # gguf_models, models, machine

from machine import cpu_name  # noqa: E402

LLAMACPP, LLMRUN, LLMRUN_B1, LLAMA2C = "llama.cpp", "llmrun", "llmrun-b1", "llama2.c"
TOOLS = (LLAMACPP, LLMRUN)  # for --tools; llmrun-b1 and llama2.c come with --token-by-token / --llama2c
PROMPT_IDS = [1, 9038, 2501, 263, 931]  # BOS "Once upon a time" in the Llama 2 vocabulary
DEFAULT_TOKENIZER = ROOT.parent / "shared" / "models" / "tokenizer.bin"
LLAMA2C_SHAPE = "stories15M"

Result = dict[str, Any]  # what a worker reports (JSON)


class Test(NamedTuple):
    kind: str  # "pp" or "tg"
    n: int

    @property
    def name(self) -> str:
        return f"{self.kind}{self.n}"


def parse_tests(text: str) -> list[Test]:
    tests = []
    for part in text.split(","):
        m = re.fullmatch(r"(pp|tg)(\d+)", part.strip())
        if not m or int(m.group(2)) < 1:
            raise ValueError(f"bad test {part!r}: ppN or tgN with N >= 1")
        tests.append(Test(m.group(1), int(m.group(2))))
    return tests


# --------------------------------------------------------------------------------------------------
# workers: one (tool, model, threads) each, in a fresh process; a job (JSON) on stdin, one result line
# "RESULT {json}" on stdout


def greedy(step: Callable[[int], np.ndarray], logits: np.ndarray, n: int) -> tuple[float, list[int]]:
    """Times n steps of (argmax of the logits, evaluate that token); returns (seconds, the ids)."""
    ids: list[int] = []
    start = time.perf_counter()
    for _ in range(n):
        tok = int(np.argmax(logits))
        ids.append(tok)
        logits = step(tok)
    return time.perf_counter() - start, ids


class LlamaCppRunner:
    """The tests on llama.cpp, through llama-cpp-python."""

    def __init__(self, path: str, threads: int, n_ctx: int, batch: int) -> None:
        import llama_cpp

        self.llm = llama_cpp.Llama(model_path=path, n_ctx=n_ctx, n_batch=batch, n_ubatch=batch, n_threads=threads,
                                   n_threads_batch=threads, verbose=False)
        self.n_vocab = self.llm.n_vocab()
        self.info = dict(version=llama_cpp.__version__,
                         system_info=llama_cpp.llama_print_system_info().decode().strip())

    def _logits(self) -> np.ndarray:  # the last evaluated token's logits, in llama.cpp's buffer (no copy)
        return np.ctypeslib.as_array(self.llm._ctx.get_logits_ith(-1), shape=(self.n_vocab,))

    def pp(self, ids: list[int]) -> float:
        self.llm.reset()  # the next eval drops the KV cache from position 0
        start = time.perf_counter()
        self.llm.eval(ids)
        return time.perf_counter() - start

    def tg(self, prompt: list[int], n: int) -> tuple[float, list[int]]:
        self.llm.reset()
        self.llm.eval(prompt)

        def step(tok: int) -> np.ndarray:
            self.llm.eval([tok])  # one llama_decode of a one-token batch
            return self._logits()

        return greedy(step, self._logits(), n)


class LlmrunRunner:
    """The tests on llmrun's engine (the C forward pass and KV cache, without the generation loop), through
    Model's measurement API (evaluate, reset)."""

    def __init__(self, path: str, threads: int, n_ctx: int, batch: int) -> None:
        import llmrun

        kwargs: dict[str, int] = dict(n_ctx=n_ctx, n_threads=threads)
        if "n_batch" in inspect.signature(llmrun.load).parameters:
            kwargs["n_batch"] = batch
        elif batch == 1:
            raise RuntimeError("this llmrun.load has no n_batch argument")
        self.model = llmrun.load(path, **kwargs)
        self.info = dict(llmrun=llmrun.__file__, isa=self.model.info.isa, dtype=self.model.info.dtype,
                         n_batch=getattr(self.model.info, "n_batch", None))

    def pp(self, ids: list[int]) -> float:
        self.model.reset()
        start = time.perf_counter()
        self.model.evaluate(ids)
        return time.perf_counter() - start

    def tg(self, prompt: list[int], n: int) -> tuple[float, list[int]]:
        self.model.reset()
        history = list(prompt)
        logits = self.model.evaluate(history)

        def step(tok: int) -> np.ndarray:
            history.append(tok)
            return self.model.evaluate(history, out=logits)

        return greedy(step, logits, n)


def run_tests(runner: LlamaCppRunner | LlmrunRunner, job: dict) -> dict[str, Result]:
    """Each test of the job: one untimed warm-up run, then job["reps"] timed runs."""

    def run(t: dict) -> tuple[float, list[int]]:  # (seconds, greedy ids of tg)
        return (runner.pp(t["ids"]), []) if t["kind"] == "pp" else runner.tg(t["prompt"], t["n"])

    out: dict[str, Result] = {}
    for t in job["tests"]:
        try:
            run(t)  # warm-up: page faults, caches, thread start
            seconds: list[float] = []
            ids: list[int] = []
            for _ in range(job["reps"]):
                s, ids = run(t)
                seconds.append(s)
            out[t["name"]] = dict(ok=True, seconds=seconds, tps=[t["n"] / s for s in seconds], ids=ids)
        except Exception as e:  # reported, not raised: the parent puts it in the table
            out[t["name"]] = dict(ok=False, error=f"{type(e).__name__}: {e}")
    return out


def resident_mb() -> dict[str, float]:
    """This process's resident memory now (MB, from /proc/self/status): all of it, its anonymous part (what the
    process allocated: repacked weights, caches) and its file-backed part (the model file's mapped pages)."""
    out: dict[str, float] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    except OSError:  # not Linux
        pass
    return out


def worker_main() -> int:
    job = json.loads(sys.stdin.read())
    try:
        t0 = time.perf_counter()
        cls = LlamaCppRunner if job["tool"] == LLAMACPP else LlmrunRunner
        runner = cls(job["model"], job["threads"], job["n_ctx"], job["batch"])
        load_s = time.perf_counter() - t0
        rss = resident_mb()
        r: Result = dict(ok=True, load_s=load_s, rss_mb=rss, info=runner.info, tests=run_tests(runner, job))
    except Exception as e:
        r = dict(ok=False, error=f"{type(e).__name__}: {e}")
    print("RESULT " + json.dumps(r), flush=True)
    return 0


def run_worker(job: dict, timeout: float, env: dict[str, str] | None = None) -> Result:
    """Runs one job in a fresh subprocess (with `env`'s variables added to the environment)."""
    try:
        p = subprocess.run([sys.executable, __file__, "--worker"], input=json.dumps(job), capture_output=True,
                           text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return dict(ok=False, error=f"timed out after {timeout:g} s")
    for line in p.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return dict(ok=False, error=f"exit code {p.returncode}: {tail}")


def run_llama2c(binary: str, model: Path, tokenizer: Path, steps: int, threads: int, reps: int,
                timeout: float) -> Result:
    """One untimed run of llama2.c, then `reps` timed ones; its own "achieved tok/s" of each."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    cmd = [binary, str(model), "-z", str(tokenizer), "-t", "0", "-n", str(steps)]
    tps = []
    try:
        for i in range(reps + 1):
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
            m = re.search(r"achieved tok/s: ([\d.]+)", p.stderr)
            if p.returncode != 0 or not m:
                tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
                return dict(ok=False, error=f"exit code {p.returncode}: {tail}")
            if i > 0:
                tps.append(float(m.group(1)))
    except (OSError, subprocess.TimeoutExpired) as e:
        return dict(ok=False, error=f"{type(e).__name__}: {e}")
    return dict(ok=True, tests={f"tg{steps - 1}": dict(ok=True, tps=tps)})


# --------------------------------------------------------------------------------------------------
# read bandwidth (--bandwidth)

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
# models


@dataclass(frozen=True)
class ModelFile:
    """A model file and what the driver needs to know about it."""

    label: str  # the table's "model" column
    type: str  # the table's "type" column
    path: Path
    vocab: int
    bos: int | None
    avoid: tuple[int, ...]  # ids the random prompts leave out (BOS, EOS, unknown, padding)
    weight_bytes_per_token: int | None  # bytes a decode step reads (see the module docstring)


def describe_gguf(path: Path, label: str | None = None, type: str | None = None) -> ModelFile:
    """Reads what the driver needs from a GGUF file's header (the gguf package; no weights are read)."""
    import gguf

    r = gguf.GGUFReader(path)

    def field(key: str) -> Any:
        f = r.fields.get(key)
        return f.contents() if f is not None else None

    arch = field("general.architecture") or "llama"
    tokens = r.fields.get("tokenizer.ggml.tokens")
    embd = next(t for t in r.tensors if t.name == "token_embd.weight")
    vocab = len(tokens.data) if tokens is not None else int(field(f"{arch}.vocab_size") or embd.shape[-1])
    special = [field(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "unknown", "padding")]
    bos = special[0]
    if type is None:
        ft = field("general.file_type")
        try:
            type = gguf.LlamaFileType(ft).name.lower().removeprefix("mostly_").removeprefix("all_")
        except (TypeError, ValueError):
            type = "?"
    names = {t.name for t in r.tensors}
    wb = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            wb += int(t.n_bytes) // int(t.shape[-1])  # one row (token_embd is not the classifier)
        else:
            wb += int(t.n_bytes)
    return ModelFile(label=label or path.stem, type=type, path=path, vocab=vocab, bos=bos,
                     avoid=tuple(sorted({int(s) for s in special if s is not None})), weight_bytes_per_token=wb)


def random_ids(n: int, vocab: int, avoid: Sequence[int], seed: int) -> list[int]:
    """n ids drawn uniformly (with repetition, fixed seed) from [0, vocab) without `avoid`."""
    allowed = np.setdiff1d(np.arange(vocab), np.asarray(avoid, dtype=np.int64))
    return np.random.default_rng(seed).choice(allowed, size=n).tolist()


def tg_prompt(m: ModelFile, ids: list[int]) -> list[int]:
    if m.vocab == 32000 and m.bos == 1:
        return list(PROMPT_IDS)
    return ([m.bos] if m.bos is not None else []) + ids[:4]


# --------------------------------------------------------------------------------------------------
# report


def fmt_speed(xs: list[float]) -> str:
    med = statistics.median(xs)
    if len(xs) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(xs):.2f}-{max(xs):.2f})"


def na(err: str) -> str:
    err = err.replace("|", "/").replace("\n", " ")
    return f"n/a ({err[:100]}{'...' if len(err) > 100 else ''})"


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class Cell(NamedTuple):
    """One tool's measurements of one test on one configuration, over all rounds."""

    tps: list[float]
    error: str | None  # why there are none
    ids: list[int] | None  # a tg run's greedy ids


def cell(results: list[Result], test: str) -> Cell:
    tps: list[float] = []
    error, ids = None, None
    for r in results:
        t = r["tests"].get(test) if r.get("ok") else None
        if t is None:
            error = error or r.get("error", "not run")
        elif t["ok"]:
            tps += t["tps"]
            ids = ids or t.get("ids")
        else:
            error = error or t["error"]
    return Cell(tps, None if tps else (error or "not run"), ids)


def speed_text(c: Cell) -> str:
    return fmt_speed(c.tps) if c.tps else na(c.error or "not run")


def ratio_text(a: Cell, b: Cell) -> str:
    return f"{statistics.median(a.tps) / statistics.median(b.tps):.2f}" if a.tps and b.tps else "-"


def print_table(rows: list[list[str]], header: list[str]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()


# --------------------------------------------------------------------------------------------------
# driver


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--shapes", default="110m,tinyllama-1.1b", help="random GGUF model shapes (gguf_models.py)")
    ap.add_argument("--types", default="f32,f16,q8_0,q4_0", help="their weight types")
    ap.add_argument("--models", help="comma-separated GGUF files to use instead of --shapes/--types")
    ap.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    ap.add_argument("--tests", default="pp128,pp512,tg64", help="comma-separated ppN / tgN")
    ap.add_argument("--rounds", type=int, default=3, help="rounds, tool order alternating")
    ap.add_argument("--reps", type=int, default=1, help="timed runs of each test per worker (after a warm-up)")
    ap.add_argument("--tools", default="llmrun,llama.cpp", help=f"some of {','.join(TOOLS)}")
    ap.add_argument("--batch", type=int, default=512, help="n_batch (and llama.cpp's n_ubatch)")
    ap.add_argument("--token-by-token", action="store_true",
                    help="also llmrun with n_batch=1 (llmrun-b1) on the pp tests")
    ap.add_argument("--isa", help="force llmrun's kernels (LLMRUN_ISA): avx2, scalar ...; default: the best")
    ap.add_argument("--llama-cpp-python", type=Path, metavar="DIR",
                    help="a folder holding another build of the llama_cpp package (e.g. AVX2 only) to measure")
    ap.add_argument("--n-ctx", type=int, default=0, help="KV cache size; 0: max(512, what the tests need)")
    ap.add_argument("--seed", type=int, default=0, help="random weights' seed (--shapes)")
    ap.add_argument("--ids-seed", type=int, default=0, help="random prompt ids' seed")
    ap.add_argument("--llama2c", metavar="PATH", help="llama2.c run/runomp binary: add the llama2.c table")
    ap.add_argument("--llama2c-only", action="store_true", help="only the llama2.c table (no GGUF models)")
    ap.add_argument("--llama2c-steps", type=int, default=256, help="run.c -n (tg of steps - 1 tokens)")
    ap.add_argument("--llama2c-tokenizer", type=Path, default=DEFAULT_TOKENIZER, help="llama2.c tokenizer.bin")
    ap.add_argument("--bandwidth", action="store_true", help="measure read bandwidth; %% of BW in tg tables")
    ap.add_argument("--bw-bytes", type=int, default=1 << 30)
    ap.add_argument("--bw-reps", type=int, default=5)
    ap.add_argument("--bw-method", choices=("c", "numpy"), default="c")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per worker subprocess")
    ap.add_argument("--json", type=Path, help="also write all raw results here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return args
    try:
        args.test_list = parse_tests(args.tests)
        args.thread_list = [int(t) for t in args.threads.split(",")]
    except ValueError as e:
        ap.error(str(e))
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    for t in args.tool_list:
        if t not in TOOLS:
            ap.error(f"unknown tool {t!r}; some of {TOOLS}")
    if args.rounds < 1 or args.reps < 1 or args.batch < 1 or min(args.thread_list) < 1:
        ap.error("--rounds, --reps, --batch and --threads must be >= 1")
    if args.llama2c_only and not args.llama2c:
        ap.error("--llama2c-only needs --llama2c PATH")
    if args.llama2c and not os.access(args.llama2c, os.X_OK):
        ap.error(f"--llama2c {args.llama2c}: not an executable file")
    if args.llama2c and not args.llama2c_tokenizer.is_file():
        ap.error(f"--llama2c-tokenizer {args.llama2c_tokenizer}: no such file")
    if args.llama2c and not 2 <= args.llama2c_steps <= 256:
        ap.error("--llama2c-steps must be in [2, 256] (the stories15M context)")
    return args


def select_models(args: argparse.Namespace) -> list[ModelFile]:
    if args.llama2c_only:
        return []
    if args.models:
        return [describe_gguf(Path(p)) for p in args.models.split(",")]
    from gguf_models import SHAPES, TYPES, cached_gguf

    out = []
    for s in args.shapes.split(","):
        if s not in SHAPES:
            raise SystemExit(f"unknown shape {s!r}; one of {sorted(SHAPES)}")
        for t in args.types.split(","):
            if t not in TYPES:
                raise SystemExit(f"unknown type {t!r}; one of {sorted(TYPES)}")
            path = cached_gguf(s, t, args.seed)
            out.append(describe_gguf(path, label=s, type=t))
            log(f"model {path} ({path.stat().st_size / 1e6:.0f} MB)")
    return out


Key = tuple[str, int, str]  # (model key, threads, tool); the model key is "llama2c" for the llama2.c table


class Comparison:
    """Plans the measurements (the same ids for every tool, drawn here and handed to the workers), runs
    them round by round and prints the tables."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tests: list[Test] = args.test_list
        self.threads: list[int] = args.thread_list
        self.tools: list[str] = list(args.tool_list)
        # (a build given with --llama-cpp-python is imported only by the workers, from that folder)
        has_llama_cpp = ((args.llama_cpp_python / "llama_cpp").is_dir() if args.llama_cpp_python
                         else importlib.util.find_spec("llama_cpp") is not None)
        if LLAMACPP in self.tools and not has_llama_cpp:
            log("notice: llama_cpp (llama-cpp-python) is not importable: llama.cpp is skipped")
            self.tools.remove(LLAMACPP)
        if args.token_by_token and any(t.kind == "pp" for t in self.tests):
            self.tools.append(LLMRUN_B1)
        self.load_before = os.getloadavg()
        self.models = {f"{m.label}/{m.type}/{m.path}": m for m in select_models(args)}
        self.configs = [(key, th) for key in self.models for th in self.threads]
        need = max([t.n for t in self.tests if t.kind == "pp"]
                   + [len(PROMPT_IDS) + t.n for t in self.tests if t.kind == "tg"])
        self.n_ctx = args.n_ctx or max(512, need)
        if self.n_ctx < need:
            raise SystemExit(f"--n-ctx {self.n_ctx} is less than the {need} positions the tests need")
        self.jobs: dict[Key, dict] = {}
        for key, m in self.models.items():
            ids = random_ids(max(max(t.n for t in self.tests), 4), m.vocab, m.avoid, args.ids_seed)
            specs = [dict(name=t.name, kind=t.kind, n=t.n, ids=ids[:t.n]) if t.kind == "pp"
                     else dict(name=t.name, kind=t.kind, n=t.n, prompt=tg_prompt(m, ids)) for t in self.tests]
            for th in self.threads:
                for tool in self.tools:
                    b1 = tool == LLMRUN_B1
                    self.jobs[key, th, tool] = dict(
                        tool=tool, model=str(m.path), threads=th, n_ctx=self.n_ctx, reps=args.reps,
                        batch=1 if b1 else args.batch, tests=[s for s in specs if s["kind"] == "pp" or not b1])
        self.l2c_test = Test("tg", args.llama2c_steps - 1)
        self.tmp = tempfile.TemporaryDirectory()
        self.l2c_model = Path(self.tmp.name) / f"{LLAMA2C_SHAPE}.bin"
        if args.llama2c:
            from models import write_random_model

            write_random_model(self.l2c_model, LLAMA2C_SHAPE)
            for th in self.threads:
                self.jobs["llama2c", th, LLMRUN] = dict(
                    tool=LLMRUN, model=str(self.l2c_model), threads=th, n_ctx=args.llama2c_steps, reps=args.reps,
                    batch=args.batch, tests=[dict(name=self.l2c_test.name, kind="tg", n=self.l2c_test.n, prompt=[1])])
        self.results: dict[Key, list[Result]] = {}
        self.failed: set[Key] = set()
        self.bw_runs: dict[int, list[dict]] = {t: [] for t in self.threads}

    # ---- measuring

    def measure(self, key: Key, rnd: int) -> None:
        """One worker (or llama2.c's runs) for `key`, unless it failed in an earlier round."""
        if key in self.failed:
            return
        a = self.args
        what, th, tool = key
        if tool == LLAMA2C:
            r = run_llama2c(a.llama2c, self.l2c_model, a.llama2c_tokenizer, a.llama2c_steps, th, a.reps, a.timeout)
        else:
            r = run_worker(self.jobs[key], a.timeout, self.worker_env(tool))
        self.results.setdefault(key, []).append(r)
        name = f"{LLAMA2C_SHAPE} .bin" if what == "llama2c" else f"{self.models[what].label} {self.models[what].type}"
        prefix = f"round {rnd + 1}/{a.rounds} {name} t={th} {tool}:"
        if not r["ok"]:
            self.failed.add(key)
            log(f"{prefix} FAILED {r['error']}")
            return
        parts = [f"{n} {statistics.median(t['tps']):.2f}" if t["ok"] else f"{n} FAILED {t['error']}"
                 for n, t in r["tests"].items()]
        log(f"{prefix} " + ", ".join(parts) + " tok/s")

    def worker_env(self, tool: str) -> dict[str, str]:
        """--isa forces llmrun's kernels (LLMRUN_ISA); --llama-cpp-python puts another build of llama_cpp first on
        llama.cpp's import path (say one built for AVX2 only, to compare the AVX2 levels of both)."""
        a = self.args
        if tool in (LLMRUN, LLMRUN_B1) and a.isa:
            return {"LLMRUN_ISA": a.isa}
        if tool == LLAMACPP and a.llama_cpp_python:
            return {"PYTHONPATH": os.pathsep.join([str(a.llama_cpp_python), os.environ.get("PYTHONPATH", "")])}
        return {}

    def run(self) -> None:
        a = self.args
        for rnd in range(a.rounds):
            if a.bandwidth:
                for t in self.threads:
                    b = measure_bandwidth(t, a.bw_bytes, a.bw_reps, a.bw_method)
                    self.bw_runs[t].append(b)
                    log(f"read bandwidth, {t} thread(s): best {b['best']:.2f} GB/s, median {b['median']:.2f} "
                        f"({b['method']})")
            flip = rnd % 2 == 1  # tool order alternates from round to round
            for key, th in self.configs:
                for tool in (self.tools[::-1] if flip else self.tools):
                    self.measure((key, th, tool), rnd)
            if a.llama2c:
                for th in self.threads:
                    for tool in ((LLMRUN, LLAMA2C) if flip else (LLAMA2C, LLMRUN)):
                        self.measure(("llama2c", th, tool), rnd)
        self.tmp.cleanup()

    # ---- reporting

    def cell(self, key: Key, test: str) -> Cell:
        return cell(self.results.get(key, []), test)

    def report(self) -> None:
        a = self.args
        bw: dict[int, dict] = {}
        for t in self.threads:
            passes = [v for b in self.bw_runs[t] for v in b["all"]]
            if passes:
                bw[t] = dict(method=self.bw_runs[t][0]["method"], best=max(passes),
                             median=statistics.median(passes), min=min(passes), all=passes)
        info: dict[str, str] = {}
        for (_, _, tool), rs in self.results.items():
            for r in rs:
                if r.get("ok") and tool == LLAMACPP:
                    info.setdefault("llama-cpp-python", f"{r['info']['version']} ({r['info']['system_info']})")
                elif r.get("ok") and tool == LLMRUN:
                    info.setdefault("llmrun", f"{r['info']['llmrun']} ({r['info']['isa']} kernels)")
        if a.llama2c:
            info["llama2.c"] = a.llama2c
        others = ([LLAMACPP] if self.models and LLAMACPP in self.tools else []) + ([LLAMA2C] if a.llama2c else [])
        print("## llmrun" + (" vs " + ", ".join(others) if others else "") + "\n")
        print(f"- machine: {cpu_name()}, {os.cpu_count()} logical CPUs; {platform.platform()}; load average "
              f"{self.load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after (1 min)")
        for k, v in info.items():
            print(f"- {k}: {v}")
        print(f"- {a.rounds} round(s), tools alternating, {a.reps} timed run(s) per test per round after a "
              f"warm-up; tokens/s: median (min-max) of all timed runs; n_ctx {self.n_ctx}, n_batch {a.batch}")
        for t, b in bw.items():
            print(f"- read bandwidth, {t} thread(s): {b['best']:.2f} GB/s best, {b['median']:.2f} median, "
                  f"{b['min']:.2f} worst of {len(b['all'])} passes ({b['method']}: sum of a "
                  f"{a.bw_bytes / 2**30:.2f} GiB buffer)")
        print()
        raw: list[dict] = []
        if self.models:
            for test in self.tests:
                self.print_test(test, bw, raw)
        if self.models and any(t.kind == "tg" for t in self.tests):
            cmp = LLAMACPP in self.tools and LLMRUN in self.tools
            print("MB/token: weight bytes a decode step reads (all matrices and norms, one row of token_embd). "
                  + ("% of BW: MB/token x tokens/s over the best measured read bandwidth at that thread count. "
                     if bw else "")
                  + ("greedy ids agree: common prefix of the two tools' greedy ids (an f16 KV cache and quantized "
                     "activations in llama.cpp make them diverge eventually on random weights)." if cmp else "")
                  + "\n")
        if self.models:
            self.print_loading()
        if a.llama2c:
            self.print_llama2c(raw)
        if a.json:
            a.json.write_text(json.dumps(dict(
                args={k: str(v) for k, v in vars(a).items()}, info=info, bandwidth=bw, n_ctx=self.n_ctx, rows=raw,
                results=[dict(key=list(k), results=v) for k, v in self.results.items()]), indent=1))

    def print_test(self, test: Test, bw: dict[int, dict], raw: list[dict]) -> None:
        """The table of one test: llama.cpp, llmrun, their ratio, llmrun-b1 and batched / token-by-token
        (of those measured), % of BW and greedy agreement for tg."""
        pp = test.kind == "pp"
        what = (f"prompt processing: {test.n} random tokens from an empty cache" if pp else
                f"generation: {test.n} greedy single-token steps after a short prompt")
        print(f"### {test.name} ({what})\n")
        cols = [t for t in (LLAMACPP, LLMRUN, LLMRUN_B1) if t in self.tools and (t != LLMRUN_B1 or pp)]
        cmp = LLAMACPP in cols and LLMRUN in cols
        b1 = LLMRUN_B1 in cols and LLMRUN in cols
        with_bw = not pp and bool(bw)
        header = ["model", "type", "threads"] + ([] if pp else ["MB/token"])
        header += [f"{t} t/s" for t in cols if t != LLMRUN_B1] + (["llmrun / llama.cpp"] if cmp else [])
        header += ["llmrun-b1 t/s"] if LLMRUN_B1 in cols else []
        header += ["llmrun / llmrun-b1"] if b1 else []
        header += [f"{t} % of BW" for t in cols] if with_bw else []
        header += ["greedy ids agree"] if cmp and not pp else []
        rows = []
        for key, th in self.configs:
            m = self.models[key]
            cells = {tool: self.cell((key, th, tool), test.name) for tool in cols}
            wb = m.weight_bytes_per_token
            row = [m.label, m.type, str(th)] + ([] if pp else [f"{wb / 1e6:.3g}" if wb else "?"])
            row += [speed_text(cells[t]) for t in cols if t != LLMRUN_B1]
            row += [ratio_text(cells[LLMRUN], cells[LLAMACPP])] if cmp else []
            row += [speed_text(cells[LLMRUN_B1])] if LLMRUN_B1 in cols else []
            row += [ratio_text(cells[LLMRUN], cells[LLMRUN_B1])] if b1 else []
            if with_bw:
                row += [f"{100 * wb * statistics.median(cells[t].tps) / (bw[th]['best'] * 1e9):.0f}%"
                        if cells[t].tps and wb else "-" for t in cols]
            if cmp and not pp:
                x, y = cells[LLAMACPP].ids, cells[LLMRUN].ids
                row.append(f"{common_prefix(x, y)}/{min(len(x), len(y))}" if x and y else "-")
            rows.append(row)
            for t in cols:
                raw.append(dict(test=test.name, model=m.label, type=m.type, file=str(m.path), threads=th, tool=t,
                                weight_bytes_per_token=wb, tps=cells[t].tps, error=cells[t].error))
        print_table(rows, header)

    def print_loading(self) -> None:
        """Load time and resident memory after loading (median over rounds) of each tool and model: what
        repacking the weights at load time costs (anonymous memory instead of the file's shared pages)."""
        print("### loading (seconds to load, resident MB after loading: all / anonymous / file-backed)\n")
        rows = []
        for key, th in self.configs:
            m = self.models[key]
            for tool in (t for t in self.tools if t != LLMRUN_B1):
                rs = [r for r in self.results.get((key, th, tool), []) if r.get("ok")]
                if not rs:
                    continue
                mem = [r.get("rss_mb", {}) for r in rs]
                mb = ["/".join(f"{statistics.median(x.get(k, 0.0) for x in mem):.0f}" for k in
                               ("VmRSS", "RssAnon", "RssFile"))]
                rows.append([m.label, m.type, str(th), tool, f"{statistics.median(r['load_s'] for r in rs):.2f}"] + mb)
        print_table(rows, ["model", "type", "threads", "tool", "load s", "RSS MB all/anon/file"])

    def print_llama2c(self, raw: list[dict]) -> None:
        test = self.l2c_test.name
        print(f"### {test}, llama2.c vs llmrun ({LLAMA2C_SHAPE} shape, llama2.c .bin, f32; greedy from BOS; "
              f"llama2.c: its own achieved tok/s)\n")
        rows = []
        for th in self.threads:
            c2, c = self.cell(("llama2c", th, LLAMA2C), test), self.cell(("llama2c", th, LLMRUN), test)
            rows.append([str(th), speed_text(c2), speed_text(c), ratio_text(c, c2)])
            for tool, x in ((LLAMA2C, c2), (LLMRUN, c)):
                raw.append(dict(test=test, model=LLAMA2C_SHAPE, type="f32 (llama2.c .bin)", threads=th, tool=tool,
                                tps=x.tps, error=x.error))
        print_table(rows, ["threads", "llama2.c t/s", "llmrun t/s", "llmrun / llama2.c"])


def main() -> int:
    args = parse_args()
    if args.worker:
        return worker_main()
    comparison = Comparison(args)
    comparison.run()
    comparison.report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
