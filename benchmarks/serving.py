"""Serving speed under load: `llmrun serve` against llama.cpp's `llama-server`, side by side, driven by the same
client (llmrun/loadtest.py).

    python benchmarks/serving.py [--models 110m:q8_0,tinyllama-1.1b:q4_0] [--concurrency 1,2,4,8] [--threads 2] \\
        [--rounds 3] [--requests 4] [--max-tokens 64] [--llama-server PATH] [--tools llmrun,llama-server] \\
        [--json results.json]

Models: random-weight GGUF files of real shapes (benchmarks/gguf_models.py, cached under /tmp/llmrun-bench):
by default the TinyLlama-1.1B shape in Q4_0 and the 110M shape in Q8_0 (SHAPE:TYPE pairs of gguf_models), or
any GGUF files given with --files. Their greedy output never ends early (EOS's classifier row is zero).

For each model and each concurrency N, both servers run at once on free loopback ports (each idle while the
other is measured):
  llama-server -m FILE -np N -c N*NEED -kvu -t THREADS --no-webui   (continuous batching is its default; one
      KV pool of N*NEED positions shared by the slots)
  llmrun serve FILE --parallel N -c N*NEED -t THREADS   (--parallel and --kv-size N*NEED where this llmrun has
      them; without --parallel it answers one request at a time, and the table says so)
NEED = what one request can use: its prompt (at most 4 tokens a word of the longest prompt, and BOS) and
--max-tokens, in blocks of 32. Then, for each round, the tools in alternating order (reversed on odd rounds), the
load generator runs N streaming clients against each: client i sends --requests completions of prompt i
(llmrun.loadtest.client_prompts: the same words for both tools and every N), temperature 0, max_tokens M,
stream_options.include_usage; one untimed warm-up request first.

Reported per (model, N): medians over the rounds of the aggregate generated tokens/s (completion tokens, from
the servers' usage chunks, over the run's wall time), of p50 and p95 time to first token; the ratio llmrun /
llama-server; each tool's gain over its own 1-client rate; the completion tokens counted (so that a tool whose
output ended early cannot look fast: both decode greedily from the same prompts); errors; and the largest
number of CPUs that other processes kept busy during a run of the row ("others"). Before each run the script
waits (at most --max-wait s) until other processes keep at most --quiet CPUs busy (/proc/stat, less this
process and the servers): on a shared machine, llama.cpp's spinning worker threads slow down many times over
when they must share their cores.

llmrun runs from this source tree (its built `_kernel` included) as `python -m llmrun.cli serve`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))  # llmrun from the source tree
sys.path.insert(0, str(BENCH_DIR))  # gguf_models, machine

from machine import cpu_name  # noqa: E402

from llmrun.loadtest import (  # noqa: E402
    DEFAULT_PROMPT_WORDS,
    LoadConfig,
    free_port,
    run_load,
    wait_until_healthy,
)

LLMRUN, LLAMA_SERVER = "llmrun", "llama-server"
TOOLS = (LLMRUN, LLAMA_SERVER)
DEFAULT_MODELS = "tinyllama-1.1b:q4_0,110m:q8_0"
DEFAULT_LLAMA_SERVER = os.environ.get("LLAMA_SERVER", "/tmp/llamacpp/build/bin/llama-server")
BLOCK = 32
START_TIMEOUT_S = 300


@dataclass(frozen=True)
class ModelFile:
    label: str  # "110m q8_0" or the file's name
    path: Path


@dataclass
class Server:
    tool: str
    proc: subprocess.Popen[bytes]
    url: str
    log: Path
    command: list[str]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def request_need(max_tokens: int, prompt_words: tuple[int, int] = DEFAULT_PROMPT_WORDS) -> int:
    """KV positions one request can use, in whole blocks: its prompt (at most 4 tokens a word, BOS, a few
    more) and its completion."""
    need = 4 * prompt_words[1] + 16 + max_tokens
    return -(-need // BLOCK) * BLOCK


def llmrun_options() -> set[str]:
    """The options `llmrun serve` has here (--parallel and --kv-size come with continuous batching)."""
    out = subprocess.run([sys.executable, "-m", "llmrun.cli", "serve", "--help"], capture_output=True, text=True,
                         env=llmrun_env(), check=True).stdout
    return {word.strip(",[]") for word in out.split() if word.startswith("--")}


def llmrun_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def server_command(tool: str, args: argparse.Namespace, model: ModelFile, n: int, port: int) -> list[str]:
    ctx = n * request_need(args.max_tokens)
    if tool == LLAMA_SERVER:
        return [args.llama_server, "-m", str(model.path), "-np", str(n), "-c", str(ctx), "-kvu",
                "-t", str(args.threads), "--host", "127.0.0.1", "--port", str(port), "--no-webui",
                *args.llama_server_args.split()]
    cmd = [sys.executable, "-m", "llmrun.cli", "serve", str(model.path), "-t", str(args.threads), "-c", str(ctx),
           "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    if "--parallel" in args.llmrun_options:
        cmd += ["--parallel", str(n)]
    if "--kv-size" in args.llmrun_options:
        cmd += ["--kv-size", str(ctx)]
    return cmd + args.llmrun_args.split()


def start(tool: str, args: argparse.Namespace, model: ModelFile, n: int, logs: Path) -> Server:
    port = free_port()
    cmd = server_command(tool, args, model, n, port)
    path = logs / f"{tool}-{model.path.stem}-np{n}.log"
    with open(path, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=llmrun_env() if tool == LLMRUN else None)
    server = Server(tool, proc, f"http://127.0.0.1:{port}", path, cmd)
    try:
        wait_until_healthy(server.url, START_TIMEOUT_S, alive=lambda: proc.poll() is None)
    except (TimeoutError, ConnectionError) as e:
        stop(server)
        tail = path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{tool} did not start ({e}): {' '.join(cmd)}\n{tail}") from None
    return server


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.terminate()
        try:
            server.proc.wait(20)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)


@contextlib.contextmanager
def servers(args: argparse.Namespace, model: ModelFile, n: int, logs: Path) -> Iterator[dict[str, Server]]:
    running: dict[str, Server] = {}
    try:
        for tool in args.tool_list:
            log(f"  starting {tool} for {n} clients")
            running[tool] = start(tool, args, model, n, logs)
        yield running
    finally:
        for server in running.values():
            stop(server)


def machine_busy() -> tuple[float, int]:
    """(CPU seconds spent busy by all CPUs together since boot, number of CPUs), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields[:8]) - idle) / tick, os.cpu_count() or 1


def process_cpu(pid: int) -> float:
    """CPU seconds a process (all its threads) has used, from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def others_busy(seconds: float, pids: list[int]) -> float:
    """CPUs kept busy, over `seconds`, by processes other than this one and `pids` (idle servers)."""
    busy0, _ = machine_busy()
    mine0 = sum(process_cpu(p) for p in pids) + sum(os.times()[:2])
    time.sleep(seconds)
    busy1, _ = machine_busy()
    mine1 = sum(process_cpu(p) for p in pids) + sum(os.times()[:2])
    return max(0.0, (busy1 - busy0 - (mine1 - mine0)) / seconds)


def wait_until_quiet(args: argparse.Namespace, pids: list[int]) -> float:
    """Waits (at most --max-wait seconds) until other processes keep fewer than --quiet CPUs busy; returns what
    they kept busy over the last second."""
    start = time.monotonic()
    said = -math.inf
    while True:
        others = others_busy(1.0, pids)
        waited = time.monotonic() - start
        if others <= args.quiet or waited >= args.max_wait:
            if others > args.quiet:
                log(f"    other processes keep {others:.1f} CPUs busy; measuring anyway (--max-wait passed)")
            return others
        if waited - said >= 15:
            log(f"    other processes keep {others:.1f} CPUs busy: waiting until at most {args.quiet}")
            said = waited


def measure(server: Server, args: argparse.Namespace, n: int, pids: list[int]) -> dict[str, Any]:
    """One load run against `server`; also how busy the rest of the machine was just before and during it
    (CPUs, not counting this process and the servers): other work on the machine shows there."""
    quiet = wait_until_quiet(args, pids)
    busy0, n_cpus = machine_busy()
    mine0 = sum(process_cpu(p) for p in pids) + sum(os.times()[:2])
    server0 = process_cpu(server.proc.pid)
    start = time.monotonic()
    result = run_load(LoadConfig(server.url, concurrency=n, requests_per_client=args.requests,
                                 max_tokens=args.max_tokens, model="bench", seed=args.seed, warmup_requests=1,
                                 timeout_s=args.timeout))
    seconds = time.monotonic() - start
    busy1, _ = machine_busy()
    mine1 = sum(process_cpu(p) for p in pids) + sum(os.times()[:2])
    summary = result.summary()
    summary["cpus"] = n_cpus
    summary["others_busy_cpus_before"] = round(quiet, 2)
    summary["others_busy_cpus_during"] = round(max(0.0, (busy1 - busy0 - (mine1 - mine0)) / seconds), 2)
    summary["server_cpus"] = round((process_cpu(server.proc.pid) - server0) / seconds, 2)  # CPUs it kept busy
    summary["prompt_tokens"] = sorted({r.prompt_tokens for r in result.ok if r.prompt_tokens is not None})
    summary["first_errors"] = result.error_messages[:3]
    return summary


def med(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def max_or_none(*xs: float | None) -> float | None:
    present = [x for x in xs if x is not None]
    return max(present) if present else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1000:.0f}"


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    mode = "continuous batching (--parallel N)" if "--parallel" in args.llmrun_options else \
        "one request at a time (this llmrun has no --parallel)"
    print(f"CPU: {cpu_name()}; {args.threads} threads; llmrun {git_commit()}: {mode}; "
          f"{args.requests} requests per client, max_tokens {args.max_tokens}, {args.rounds} round(s), medians")
    print()
    header = ["model", "clients", "llmrun t/s", "llama-server t/s", "llmrun / llama-server", "llmrun x vs 1",
              "llama-server x vs 1", "llmrun TTFT p50 / p95 ms", "llama-server TTFT p50 / p95 ms",
              "tokens llmrun / llama-server", "errors llmrun / llama-server", "others"]
    print("| " + " | ".join(header) + " |")
    print("|---|" + "---:|" * (len(header) - 1))
    for model in dict.fromkeys(r["model"] for r in results):
        base: dict[str, float | None] = {}
        for n in args.concurrency_list:
            cells: dict[str, dict[str, Any]] = {}
            for tool in TOOLS:
                rows = [r for r in results if r["model"] == model and r["concurrency"] == n and r["tool"] == tool]
                tps = med(rows, "tokens_per_second")
                if n == 1:
                    base[tool] = tps
                b = base.get(tool)
                cells[tool] = {
                    "tps": tps, "gain": tps / b if tps is not None and b else None,
                    "ttft": f"{ms(med(rows, 'ttft_p50_s'))} / {ms(med(rows, 'ttft_p95_s'))}" if rows else "-",
                    "tokens": "/".join(str(r["completion_tokens"]) for r in rows) or "-",
                    "errors": str(sum(r["errors"] for r in rows)) if rows else "-",
                    "others": max((r["others_busy_cpus_during"] for r in rows), default=None)}
            a, b = cells[LLMRUN], cells[LLAMA_SERVER]
            ratio = a["tps"] / b["tps"] if a["tps"] is not None and b["tps"] else None
            print(f"| {model} | {n} | {fmt(a['tps'])} | {fmt(b['tps'])} | {fmt(ratio)} | {fmt(a['gain'])} | "
                  f"{fmt(b['gain'])} | {a['ttft']} | {b['ttft']} | {a['tokens']} / {b['tokens']} | "
                  f"{a['errors']} / {b['errors']} | {fmt(max_or_none(a['others'], b['others']), 1)} |")
    sources = sorted({r["count_source"] for r in results})
    print(f"\ntokens: completion tokens counted per round (from {' and '.join(sources)}); t/s: all of them over "
          f"the run's wall time; x vs 1: the tool's t/s with N clients over its own with 1; others: the most CPUs "
          f"other processes kept busy during a run of the row")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--models", default=DEFAULT_MODELS, help="SHAPE:TYPE pairs of benchmarks/gguf_models.py")
    ap.add_argument("--files", default=None, help="comma-separated GGUF files instead of --models")
    ap.add_argument("--concurrency", default="1,2,4,8", help="concurrent clients, comma-separated")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3, help="rounds, tool order alternating; medians")
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0, help="the clients' prompts (llmrun.loadtest.client_prompts)")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"some of {','.join(TOOLS)}")
    ap.add_argument("--llama-server", default=DEFAULT_LLAMA_SERVER, help="the llama-server binary ($LLAMA_SERVER)")
    ap.add_argument("--llama-server-args", default="", help="more llama-server options, space-separated")
    ap.add_argument("--llmrun-args", default="", help="more `llmrun serve` options, space-separated")
    ap.add_argument("--timeout", type=float, default=900, help="seconds a request may take")
    ap.add_argument("--quiet", type=float, default=0.3,
                    help="before each run, wait until other processes keep at most this many CPUs busy")
    ap.add_argument("--max-wait", type=float, default=120, help="seconds to wait for --quiet before each run")
    ap.add_argument("--json", type=Path, help="also write every run's results here")
    ap.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their folder is printed)")
    args = ap.parse_args()
    try:
        args.concurrency_list = [int(c) for c in args.concurrency.split(",")]
    except ValueError as e:
        ap.error(str(e))
    args.tool_list = [t.strip() for t in args.tools.split(",") if t.strip()]
    if any(t not in TOOLS for t in args.tool_list) or not args.tool_list:
        ap.error(f"--tools: some of {TOOLS}")
    if min(args.concurrency_list) < 1 or args.rounds < 1 or args.requests < 1 or args.max_tokens < 1 \
            or args.threads < 1:
        ap.error("--concurrency, --rounds, --requests, --max-tokens and --threads must be >= 1")
    if LLAMA_SERVER in args.tool_list and not (shutil.which(args.llama_server) or os.access(args.llama_server,
                                                                                            os.X_OK)):
        ap.error(f"no llama-server at {args.llama_server} (--llama-server PATH, or --tools llmrun)")
    return args


def select_models(args: argparse.Namespace) -> list[ModelFile]:
    if args.files:
        return [ModelFile(Path(p).name, Path(p)) for p in args.files.split(",")]
    from gguf_models import SHAPES, TYPES, cached_gguf

    out = []
    for pair in args.models.split(","):
        shape, _, type = pair.partition(":")
        if shape not in SHAPES or type not in TYPES:
            raise SystemExit(f"--models: {pair!r} is not SHAPE:TYPE with a shape of {sorted(SHAPES)} and a type of "
                             f"{sorted(TYPES)}")
        path = cached_gguf(shape, type)
        log(f"model {path} ({path.stat().st_size / 1e6:.0f} MB)")
        out.append(ModelFile(f"{shape} {type}", path))
    return out


def main() -> int:
    args = parse_args()
    args.llmrun_options = llmrun_options()
    models = select_models(args)
    results: list[dict[str, Any]] = []
    logs = Path(tempfile.mkdtemp(prefix="llmrun-serving-"))
    started = time.time()
    try:
        for model in models:
            for n in args.concurrency_list:
                log(f"{model.label}: {n} clients")
                with servers(args, model, n, logs) as running:
                    for rnd in range(args.rounds):
                        order = args.tool_list if rnd % 2 == 0 else args.tool_list[::-1]
                        for tool in order:
                            pids = [s.proc.pid for s in running.values()]
                            summary = measure(running[tool], args, n, pids)
                            results.append({"model": model.label, "file": str(model.path), "tool": tool,
                                            "round": rnd, "command": running[tool].command, **summary})
                            log(f"    round {rnd + 1} {tool}: {summary['tokens_per_second']} t/s, "
                                f"{summary['completion_tokens']} tokens, TTFT p50 {summary['ttft_p50_s']} s, "
                                f"{summary['errors']} errors (other processes: "
                                f"{summary['others_busy_cpus_during']} CPUs busy)")
                            for message in summary["first_errors"]:
                                log(f"      error: {message}")
    finally:
        if args.keep_logs:
            log(f"server logs: {logs}")
        else:
            shutil.rmtree(logs, ignore_errors=True)
    report(results, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        meta = {"cpu": cpu_name(), "threads": args.threads, "llmrun_commit": git_commit(),
                "llmrun_parallel": "--parallel" in args.llmrun_options, "requests_per_client": args.requests,
                "max_tokens": args.max_tokens, "rounds": args.rounds, "seed": args.seed,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
                "seconds": round(time.time() - started, 1)}
        args.json.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
        log(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
