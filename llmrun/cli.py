"""The `llmrun` command: generate, chat and info, all on the library's one generation loop; quantize, which
writes a model as GGUF with its weights in another type."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import __version__
from .bench import perplexity, run_bench
from .chat import FORMATS
from .engine import DEFAULT_BATCH
from .errors import InvalidArgumentError, LLMError
from .formats import read_model
from .formats.gguf_writer import TensorPlan, write_model
from .generate import Generation
from .model import Model, load, resolve_tokenizer
from .repl import Repl, enable_line_editing

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
QUANT_TYPES = ("f16", "bf16", "q8_0", "q4_0")  # what `llmrun quantize --type` writes


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. `llmrun generate ... | head`: the reader has gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except (LLMError, ValueError, TypeError, OSError) as e:
        print(f"llmrun: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llmrun", description="Run Llama-family language models locally, offline, on the CPU.")
    parser.add_argument("--version", action="version", version=f"llmrun {__version__}")
    sub = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="continue a prompt, streaming the text to stdout",
                         description="Continue a prompt, streaming the text to stdout (the prompt is echoed "
                                     "first, as llama2.c and llama.cpp do).")
    add_model_args(gen)
    gen.add_argument("-p", "--prompt", default="", help="the text to continue (default: empty, start from BOS)")
    add_sampling_args(gen, max_tokens_default=-1)
    gen.add_argument("--no-echo", action="store_true", help="print only the generated text, not the prompt")
    gen.add_argument("--stats", action="store_true",
                     help="print token counts and prefill/decode speed to stderr at the end")
    gen.set_defaults(run=run_generate)

    chat = sub.add_parser("chat", help="an interactive chat in the terminal",
                          description="An interactive chat: the conversation is rendered with the model's own "
                                      "chat template (or --chat-format) and each reply is streamed. Type /help "
                                      "for commands; a line ending in \\ continues on the next line; Ctrl-C "
                                      "stops a reply; Ctrl-D (or /exit) quits.")
    add_model_args(chat)
    chat.add_argument("--system", default=None, metavar="TEXT", help="the system prompt")
    add_chat_format_arg(chat)
    add_sampling_args(chat, max_tokens_default=-1)
    chat.set_defaults(run=run_chat)

    bench = sub.add_parser("bench", help="measure prompt processing and generation speed, as llama-bench",
                           description="Prompt processing (ppN: N tokens from an empty cache) and generation "
                                       "(tgN: N tokens one at a time) in tokens/s, mean and standard deviation "
                                       "over repetitions, after an untimed warm-up.")
    bench.add_argument("model", help="model file: GGUF (llama architecture) or llama2.c .bin")
    bench.add_argument("-z", "--tokenizer", help="tokenizer file, for llama2.c models")
    bench.add_argument("-p", "--n-prompt", default="128", help="prompt lengths, comma-separated (default: 128)")
    bench.add_argument("-n", "--n-gen", default="64", help="generation lengths, comma-separated (default: 64)")
    bench.add_argument("-t", "--threads", default=None, help="thread counts, comma-separated (default: physical cores)")
    bench.add_argument("-b", "--batch-size", type=int, default=DEFAULT_BATCH,
                       help=f"prompt tokens processed together; 1 = token by token (default: {DEFAULT_BATCH})")
    bench.add_argument("-r", "--repetitions", type=int, default=5, help="timed runs per test (default: 5)")
    bench.add_argument("--json", action="store_true", help="print JSON lines instead of a markdown table")
    bench.set_defaults(run=run_bench_command)

    ppl = sub.add_parser("perplexity", help="perplexity of a model on a text file",
                         description="Cuts the text's tokens into chunks of --ctx tokens (each starting with "
                                     "BOS) and scores every token from the ones before it in its chunk.")
    add_model_args(ppl)
    ppl.add_argument("textfile", help="UTF-8 text")
    ppl.add_argument("--ctx", type=int, default=256, help="tokens per chunk (default: 256)")
    ppl.set_defaults(run=run_perplexity)

    serve = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (needs: pip install 'llmrun[server]')",
                           description="Serve the model over HTTP with the OpenAI API: GET /v1/models, POST "
                                       "/v1/completions, POST /v1/chat/completions (streaming or not), GET "
                                       "/health. Requests take turns on the one model; the KV cache carries a "
                                       "shared prefix from one request to the next.")
    add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes "
                            "the model to the network: use --api-key then)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument("--api-key", default=os.environ.get("LLMRUN_API_KEY") or None, metavar="KEY",
                       help="require 'Authorization: Bearer KEY' on every endpoint but /health (default: the "
                            "LLMRUN_API_KEY environment variable, which keeps the key out of the process list)")
    serve.add_argument("--model-name", default=None, metavar="NAME",
                       help="the model's id in the API (default: the file or folder name without extension)")
    add_chat_format_arg(serve)
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20,
                       help="larger request bodies get 413 (default: 1 MiB)")
    serve.add_argument("--max-queue", type=int, default=64,
                       help="requests that may wait for the model; more get 503 (default: 64)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="server log level (default: info)")
    serve.set_defaults(run=run_serve)

    info = sub.add_parser("info", help="show a model's shape, parameters, type and size")
    add_model_args(info)
    info.set_defaults(run=run_info)

    quant = sub.add_parser("quantize", help="write a model as GGUF with its weights in another type",
                           description="Write a model (llama2.c .bin or GGUF) as a GGUF file with its weight "
                                       "matrices in TYPE. Norms stay f32; a matrix whose rows are not whole "
                                       "32-value blocks falls back to f16 for q8_0 and q4_0, as llama.cpp's "
                                       "quantizer does. A GGUF input keeps its metadata and vocabulary; "
                                       "otherwise the tokenizer (the model's own, -z, or tokenizer.bin beside "
                                       "the model) is written into the file.")
    quant.add_argument("input", help="model file to read (llama2.c .bin or .gguf)")
    quant.add_argument("output", help="GGUF file to write")
    quant.add_argument("--type", required=True, choices=QUANT_TYPES, help="type of the weight matrices")
    quant.add_argument("-z", "--tokenizer", help="tokenizer file to embed (llama2.c tokenizer.bin); default: the "
                                                 "model's own, else tokenizer.bin beside the model")
    quant.set_defaults(run=run_quantize)
    return parser


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="model file: GGUF (llama architecture) or llama2.c .bin")
    p.add_argument("-z", "--tokenizer", help="tokenizer file (llama2.c tokenizer.bin); default: the model's "
                                             "own, else tokenizer.bin beside the model")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("-c", "--ctx-size", type=int, default=None,
                   help="context size in tokens (default: the model's, at most 4096)")
    p.add_argument("-b", "--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"prompt tokens processed together; 1 = token by token (default: {DEFAULT_BATCH})")


def add_chat_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-format", default=None, choices=list(FORMATS),
                   help="a built-in chat format instead of the model's template (default: the model's own "
                        "template, else plain)")


def add_sampling_args(p: argparse.ArgumentParser, max_tokens_default: int) -> None:
    p.add_argument("-n", "--max-tokens", type=int, default=max_tokens_default,
                   help=f"tokens to generate; -1 = until the end of text or a full context "
                        f"(default: {max_tokens_default})")
    p.add_argument("--temperature", "--temp", type=float, default=0.8,
                   help="0 = greedy (default: 0.8, as llama.cpp)")
    p.add_argument("--top-k", type=int, default=40, help="0 = off (default: 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="1.0 = off (default: 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="0.0 = off (default: 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=1.0, help="1.0 = off (default: 1.0)")
    p.add_argument("--repeat-last-n", type=int, default=64,
                   help="how many recent tokens the penalty looks at; -1 = all (default: 64)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="subtracted from the logits of tokens already generated, in [-2, 2] (default: 0.0)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="subtracted once per earlier occurrence in the generated text, in [-2, 2] (default: 0.0)")
    p.add_argument("-s", "--seed", type=int, default=None, help="random seed, for reproducible runs")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable)")


def open_model(args: argparse.Namespace) -> Model:
    return load(args.model, tokenizer=args.tokenizer, n_ctx=args.ctx_size, n_threads=args.threads,
                n_batch=args.batch_size)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    if args.max_tokens < -1:
        raise ValueError(f"--max-tokens must be -1 (no limit) or >= 0, got {args.max_tokens}")
    return dict(max_tokens=None if args.max_tokens == -1 else args.max_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, min_p=args.min_p, repeat_penalty=args.repeat_penalty,
                seed=args.seed, stop=args.stop or None, repeat_last_n=args.repeat_last_n,
                presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty)


def print_stream(generation: Generation) -> None:
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()


# --- commands -------------------------------------------------------------------------------------------

def run_generate(args: argparse.Namespace) -> int:
    with open_model(args) as model:
        generation = model.stream(args.prompt, **sampling_kwargs(args))
        if not args.no_echo:
            sys.stdout.write(args.prompt)
        try:
            print_stream(generation)
        finally:
            sys.stdout.write("\n")
            sys.stdout.flush()
            if args.stats:
                print_stats(generation)
    return 0


def print_stats(generation: Generation) -> None:
    s = generation.stats
    print(f"prompt tokens: {s.prompt_tokens} ({s.reused_tokens} reused from the cache), "
          f"generated tokens: {s.generated_tokens}, finish: {generation.finish_reason}\n"
          f"prefill: {s.prefill_tokens_per_second:.1f} tokens/s, "
          f"decode: {s.decode_tokens_per_second:.1f} tokens/s", file=sys.stderr)


def run_chat(args: argparse.Namespace) -> int:
    kwargs = sampling_kwargs(args)
    with load(args.model, tokenizer=args.tokenizer, n_ctx=args.ctx_size, n_threads=args.threads,
              n_batch=args.batch_size, chat_format=args.chat_format) as model:
        if sys.stdin.isatty():
            enable_line_editing()
        return Repl(model, chat_format=args.chat_format, system=args.system, sampling=kwargs).run()


def run_serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerConfig, serve
    except ImportError as e:
        print(f"llmrun: error: the server needs Starlette and uvicorn ({e}); install them with: "
              f"pip install 'llmrun[server]'", file=sys.stderr)
        return EXIT_ERROR
    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_body_bytes < 1 or args.max_queue < 1:
        raise InvalidArgumentError("--max-body-bytes and --max-queue must be >= 1")
    if args.api_key is not None and not args.api_key.isprintable():
        raise InvalidArgumentError("the API key must be printable text")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    name = args.model_name or Path(args.model).name.rsplit(".", 1)[0]
    config = ServerConfig(model_name=name, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                          max_queue=args.max_queue)
    with load(args.model, tokenizer=args.tokenizer, n_ctx=args.ctx_size, n_threads=args.threads,
              n_batch=args.batch_size, chat_format=args.chat_format) as model:
        serve(model, config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def status(message: str) -> None:
    """A progress line on stderr: rewritten in place on a terminal, one line each elsewhere (logs)."""
    if sys.stderr.isatty():
        print(f"\r\x1b[K{message}", end="", file=sys.stderr, flush=True)
    elif message:
        print(message, file=sys.stderr)


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise InvalidArgumentError(f"{option} takes comma-separated integers, got {text!r}") from None
    if any(v < 1 for v in values):
        raise InvalidArgumentError(f"{option} values must be >= 1, got {text!r}")
    return values


def run_bench_command(args: argparse.Namespace) -> int:
    prompts, gens = int_list(args.n_prompt, "-p"), int_list(args.n_gen, "-n")
    threads = int_list(args.threads, "-t") if args.threads else [None]
    n_ctx = max(prompts + [n + 1 for n in gens])
    rows = []
    for t in threads:
        with load(args.model, tokenizer=args.tokenizer, n_ctx=n_ctx, n_threads=t, n_batch=args.batch_size) as model:
            for result in run_bench(model, prompts, gens, args.repetitions, progress=status):
                i = model.info
                row = {"model": Path(i.path).name, "size_bytes": i.weight_bytes, "params": i.n_params,
                       "type": i.dtype, "threads": result.threads, "test": result.test,
                       "tokens_per_second": round(result.mean, 2), "stdev": round(result.stdev, 2)}
                if args.json:
                    print(json.dumps(row), flush=True)
                rows.append(row)
    status("")
    if not args.json:
        print("| model | size | params | type | threads | test | t/s |")
        print("|---|---:|---:|---|---:|---|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['size_bytes'] / 2**20:.2f} MiB | {r['params'] / 1e6:.2f} M | {r['type']} "
                  f"| {r['threads']} | {r['test']} | {r['tokens_per_second']:.2f} ± {r['stdev']:.2f} |")
    return 0


def run_perplexity(args: argparse.Namespace) -> int:
    text = Path(args.textfile).read_text(encoding="utf-8")
    with load(args.model, tokenizer=args.tokenizer, n_ctx=args.ctx, n_threads=args.threads,
              n_batch=args.batch_size) as model:
        def progress(chunk: int, n_chunks: int, ppl: float) -> None:
            status(f"chunk {chunk}/{n_chunks}: perplexity {ppl:.4f}")

        result = perplexity(model, text, args.ctx, progress)
    status("")
    print(f"perplexity {result.value:.4f} over {result.tokens} tokens ({result.chunks} chunks of {args.ctx})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    with open_model(args) as model:
        i = model.info
        rows = [
            ("file", f"{i.path} ({i.file_size:,} bytes)"),
            ("format", i.format),
            ("parameters", f"{i.n_params:,} ({i.n_params / 1e6:.2f}M)"),
            ("type", f"{i.dtype} ({i.weight_bytes:,} bytes of weights)"),
            ("shape", f"dim {i.dim}, hidden {i.hidden_dim}, layers {i.n_layers}, heads {i.n_heads}, "
                      f"kv heads {i.n_kv_heads}, head dim {i.head_dim}"),
            ("vocabulary", str(i.vocab_size)),
            ("context", f"{i.context_length} trained, {i.n_ctx} allocated"),
            ("runtime", f"{i.n_threads} threads, {i.isa} kernels"),
        ]
        try:
            tok = model.tokenizer
            rows.append(("tokenizer", f"{tok.vocab_size} tokens, bos {tok.bos_id}, eos {tok.eos_id}"))
        except LLMError as e:
            rows.append(("tokenizer", f"none ({e})"))
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    return 0


def run_quantize(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    spec = read_model(args.input)
    tokenizer = None  # a GGUF input keeps its own vocabulary metadata as it is
    if args.tokenizer or "tokenizer.ggml.model" not in spec.extra.get("metadata", {}):
        tokenizer, problem = resolve_tokenizer(spec, args.tokenizer)
        if tokenizer is None:  # still a valid GGUF (our reader takes -z), but llama.cpp needs a vocabulary
            print(f"llmrun: warning: the output will have no vocabulary; pass -z TOKENIZER to embed one "
                  f"({problem})", file=sys.stderr)
    n_tensors = len(spec.tensors())
    n_width = len(str(n_tensors))

    def progress(i: int, plan: TensorPlan) -> None:
        shape = f"{plan.rows} x {plan.cols}" if not plan.is_vector else f"{plan.cols}"
        print(f"[{i + 1:>{n_width}}/{n_tensors}] {plan.name:<28} {shape:>13}  {plan.source.type:>4} -> "
              f"{plan.type:<4} {plan.nbytes:>12,} bytes", file=sys.stderr)

    block_types = ("q8_0", "q4_0")
    requantized = sorted({t.type for t in spec.tensors() if t.type in block_types and t.type != args.type})
    if requantized and args.type in block_types:  # llama.cpp refuses this without --allow-requantize
        print(f"llmrun: warning: the input is already {'/'.join(requantized)}; quantizing it again adds the "
              f"errors of both steps (start from an f32, f16 or bf16 file if you can)", file=sys.stderr)

    plans = write_model(args.output, spec, args.type, tokenizer=tokenizer, on_tensor=progress)
    in_bytes = sum(p.source.data.nbytes for p in plans)
    out_bytes = sum(p.nbytes for p in plans)
    ratio = in_bytes / out_bytes if in_bytes >= out_bytes else out_bytes / in_bytes
    print(f"wrote {args.output}: {len(plans)} tensors, weights {in_bytes / 2**20:.2f} MiB -> "
          f"{out_bytes / 2**20:.2f} MiB ({ratio:.2f}x {'smaller' if in_bytes >= out_bytes else 'larger'}), "
          f"file {os.path.getsize(args.output):,} bytes, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
