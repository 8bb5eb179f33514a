"""The `llmrun` command: generate, chat and info, all on the library's one generation loop; quantize, which
writes a model as GGUF with its weights in another type; pull, list and rm, which manage the models of the
Hugging Face Hub in its cache (llmrun/hub.py). Every MODEL argument may be omitted (the built-in demo model
runs, with a line on stderr saying so), or name a Hub model as OWNER/REPO[:QUANT]."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import os
import sys
import time
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

from . import __version__
from .bench import perplexity, run_bench
from .chat import FORMATS
from .engine import DEFAULT_BATCH
from .errors import InvalidArgumentError, LLMError
from .formats import read_model
from .formats.gguf_writer import TensorPlan, write_model
from .generate import Generation
from .hub import DEMO_NAME, cache_dir, cached_models, describe, find_model, parse_reference, pull, remove
from .loadtest import CHUNKS, DEFAULT_PROMPT_WORDS, USAGE, LoadConfig, LoadResult, run_load
from .model import Model, load, resolve_tokenizer
from .presets import PRESETS, find_preset
from .repl import Repl, enable_line_editing
from .sampling import SamplingParams
from .spec import TENSOR_TYPES, ModelSpec

EXIT_ERROR = 1
EXIT_INTERRUPTED = 130
MODEL_HELP = ("model: a GGUF file (a split model by any part), a llama2.c checkpoint (.bin), a Hugging Face "
              "model folder (Llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3/4-mini, SmolLM3, Granite) or a model of the "
              "Hugging Face Hub, OWNER/REPO[:QUANT] (downloaded the first time); default: the built-in demo model, a "
              "tiny story writer")
REFERENCE_HELP = ("a model of the Hugging Face Hub: OWNER/REPO[:QUANT] (QUANT, e.g. Q4_K_M, picks the GGUF file whose "
                  "name carries it, case-insensitive; default: the only one, else Q4_K_M, else Q8_0), or "
                  "OWNER/REPO:FILE.gguf for one exact file; an hf.co/ prefix is accepted")
RANDOM_SEED = -1  # -s -1: a fresh random seed, as llama.cpp
MODEL_SUFFIXES = (".gguf", ".bin")  # what the server's default model name drops from a file's name
# Where llama.cpp spells a sampling option differently, its spelling is accepted too.
SAMPLING_ALIASES = {"temperature": ["--temp"], "seed": ["-s"]}
SAMPLING_FIELDS = dataclasses.fields(SamplingParams)
# The option that sets each API argument, so that an error speaks of what the user typed (LLMError.for_flags).
FLAGS = {"n_ctx": "-c", "ctx": "-c", "tokenizer": "-z/--tokenizer", "n_threads": "-t", "n_batch": "-b",
         "max_tokens": "-n", "repetitions": "-r", "chat_format": "--chat-format",
         **{f.name: "--" + f.name.replace("_", "-") for f in SAMPLING_FIELDS}}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # e.g. `llmrun generate ... | head`: the reader has gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except LLMError as e:
        print(f"llmrun: error: {e.for_flags(FLAGS)}", file=sys.stderr)
        return EXIT_ERROR
    except (ValueError, TypeError, OSError) as e:
        print(f"llmrun: error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED


class CommandParser(argparse.ArgumentParser):
    """A command's parser: its words may come before, between or after its options (`perplexity MODEL -c 128
    TEXTFILE`) now that MODEL may be left out. Plain argparse binds an optional positional to the first word
    it meets, before the options; intermixed parsing reads the options first, then the words in order."""

    _intermixing = False

    def parse_known_args(self, args: Sequence[str] | None = None,  # type: ignore[override]
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        # Python before 3.12 implements intermixed parsing with parse_known_args; and after "--" every word is
        # a word (`-- -odd-name.gguf`), which intermixed parsing gets wrong: plain parsing there
        if self._intermixing or (args is not None and "--" in args):
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: an option is spelled in full (`--ctx` is not --ctx-size), so that no spelling that
    # works today breaks when an option is added
    parser = argparse.ArgumentParser(
        prog="llmrun", description="Run Llama-family language models locally, offline, on the CPU.",
        allow_abbrev=False)
    parser.add_argument("--version", action="version", version=f"llmrun {__version__}")
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND", parser_class=CommandParser)

    def command(name: str, **kwargs: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, allow_abbrev=False, **kwargs)

    gen = command("generate", help="continue a prompt, streaming the text to stdout",
                  description="Continue a prompt, streaming the text to stdout (the prompt is echoed first, as "
                              "llama2.c and llama.cpp do). The prompt is -p TEXT or the file -f FILE (-f - or "
                              "-f /dev/stdin: standard input); standard input is not read otherwise, as with "
                              "llama.cpp's llama-cli, so that a shell loop keeps its lines.")
    add_model_args(gen)
    gen.add_argument("-p", "--prompt", default=None, help="the text to continue (default: -f, else empty: start "
                                                          "from BOS)")
    gen.add_argument("-f", "--file", default=None, metavar="FILE",
                     help="read the prompt from FILE, UTF-8 ('-' or /dev/stdin: standard input); one trailing "
                          "newline is dropped, as llama.cpp does")
    add_sampling_args(gen, max_tokens_default=-1)
    gen.add_argument("--no-echo", action="store_true", help="print only the generated text, not the prompt")
    gen.add_argument("--stats", action="store_true",
                     help="print token counts and prefill/decode speed to stderr at the end")
    gen.set_defaults(run=run_generate)

    chat = command("chat", help="an interactive chat in the terminal",
                   description="An interactive chat: the conversation is rendered with the model's own "
                               "chat template (or --chat-format) and each reply is streamed. Type /help "
                               "for commands; a line ending in \\ continues on the next line; Ctrl-C "
                               "stops a reply; Ctrl-D (or /exit) quits.")
    add_model_args(chat)
    chat.add_argument("--system", default=None, metavar="TEXT", help="the system prompt")
    chat.add_argument("--think", choices=("on", "off"), default=None,
                      help="a reasoning model (Qwen3, SmolLM3) thinks before answering (on) or answers at once "
                           "(off); default: the chat template's; /think switches it during the chat")
    add_chat_format_arg(chat)
    add_sampling_args(chat, max_tokens_default=-1)
    chat.set_defaults(run=run_chat)

    bench = command("bench", help="measure prompt processing and generation speed, as llama-bench, or serving "
                                  "speed under load (--concurrency)",
                    description="Prompt processing (ppN: N tokens from an empty cache) and generation "
                                "(tgN: N tokens one at a time) in tokens/s, mean and standard deviation "
                                "over repetitions, after an untimed warm-up. With --concurrency C1,C2,...: "
                                "serving speed instead: the model is served by `llmrun serve` in this process "
                                "(or the server at --url is used) and C streaming clients at a time each "
                                "send --requests completions of their own prompt (temperature 0, "
                                "--max-tokens); printed per level: aggregate generated tokens/s, the gain over "
                                "1 client, p50/p95 time to first token and errors (llmrun/loadtest.py).")
    bench.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    bench.add_argument("-z", "--tokenizer", help="tokenizer file, for llama2.c models")
    bench.add_argument("-p", "--n-prompt", default="128",
                       help="prompt lengths, comma-separated; 0 skips the test (default: 128)")
    bench.add_argument("-n", "--n-gen", default="64",
                       help="generation lengths, comma-separated; 0 skips the test (default: 64)")
    bench.add_argument("-t", "--threads", default=None, help="thread counts, comma-separated (default: physical cores)")
    bench.add_argument("-b", "--batch-size", type=int, default=DEFAULT_BATCH,
                       help=f"prompt tokens processed together; 1 = token by token (default: {DEFAULT_BATCH})")
    bench.add_argument("-r", "--repetitions", type=int, default=5, help="timed runs per test (default: 5)")
    bench.add_argument("--json", action="store_true", help="print JSON lines instead of a markdown table")
    serving = bench.add_argument_group("serving (--concurrency)")
    serving.add_argument("--concurrency", default=None, metavar="C1,C2,...",
                         help="concurrent streaming clients, comma-separated (e.g. 1,2,4,8): measure serving "
                              "instead of pp/tg")
    serving.add_argument("--url", default=None, help="an OpenAI-compatible server to measure (http://HOST:PORT); "
                                                     "default: serve MODEL in this process")
    serving.add_argument("--requests", type=int, default=4, help="requests per client (default: 4)")
    serving.add_argument("--duration", type=float, default=None, metavar="SECONDS",
                         help="instead of --requests: each client sends requests for this long")
    serving.add_argument("--max-tokens", type=int, default=64, help="max_tokens of each request (default: 64)")
    serving.add_argument("--parallel", type=int, default=None,
                         help="sequences the served model generates together (default: the largest "
                              "concurrency)")
    serving.add_argument("-c", "--ctx-size", type=int, default=None,
                         help="context size of the served model (default: what one request needs)")
    serving.add_argument("--api-key", default=os.environ.get("LLMRUN_API_KEY") or None, metavar="KEY",
                         help="with --url: the server's API key (default: the LLMRUN_API_KEY environment "
                              "variable)")
    bench.set_defaults(run=run_bench_command)

    ppl = command("perplexity", help="perplexity of a model on a text file",
                  description="Cuts the text's tokens into chunks of -c tokens (each starting with BOS) "
                              "and scores every token of a chunk from the ones before it, so every token "
                              "of the text counts once. --llama-cpp-compatible scores as llama.cpp's "
                              "llama-perplexity instead, so that the figures compare with published "
                              "ones.")
    add_model_args(ppl, ctx_help="tokens per chunk (default: the model's context, at most 4096)")
    ppl.add_argument("textfile", help="UTF-8 text ('-': standard input; one trailing newline is dropped, as "
                                      "llama.cpp's -f does)")
    ppl.add_argument("--llama-cpp-compatible", action="store_true",
                     help="llama-perplexity's scoring: the text tokenized as a whole, each chunk's first token "
                          "replaced by BOS, only the second half of each chunk scored")
    ppl.set_defaults(run=run_perplexity)

    serve = command("serve", help="an OpenAI-compatible HTTP server (needs: pip install 'llmrun[server]')",
                    description="Serve the model over HTTP with the OpenAI API: GET /v1/models, POST "
                                "/v1/completions, POST /v1/chat/completions (streaming or not, n choices), "
                                "POST /v1/embeddings, GET /health, GET /metrics (Prometheus). Up to --parallel "
                                "requests are generated together (continuous batching: each decode step is "
                                "one batched forward pass for all of them); more wait in a queue of "
                                "--max-queue.")
    add_model_args(serve)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 exposes "
                            "the model to the network: use --api-key then)")
    serve.add_argument("--port", type=int, default=8080, help="port (default: 8080)")
    serve.add_argument("--api-key", default=os.environ.get("LLMRUN_API_KEY") or None, metavar="KEY",
                       help="require 'Authorization: Bearer KEY' on every endpoint but /health and /metrics "
                            "(default: the "
                            "LLMRUN_API_KEY environment variable, which keeps the key out of the process list)")
    serve.add_argument("-a", "--alias", "--model-name", dest="alias", default=None, metavar="NAME",
                       help="the model's id in the API (default: the file or folder name without extension); "
                            "requests may name any model, as with llama-server: there is only this one")
    add_chat_format_arg(serve)
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20,
                       help="larger request bodies get 413 (default: 1 MiB)")
    serve.add_argument("-np", "--parallel", type=int, default=4, metavar="N",
                       help="requests generated together, each decode step one batched forward pass for all of "
                            "them (default: 4; decoding reads every weight once per step, so more slots cost "
                            "little time each, up to where the matrix products become compute-bound)")
    serve.add_argument("--kv-size", type=int, default=None, metavar="POSITIONS",
                       help="positions of the KV cache pool all slots share, taken in blocks as tokens arrive "
                            "(default: the context size, -c); a request still fits in -c tokens; when the pool "
                            "is full, sequences wait for room")
    serve.add_argument("--max-queue", type=int, default=64,
                       help="requests that may wait for a slot beyond --parallel; more get 503 (default: 64)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"],
                       help="server log level (default: info)")
    serve.set_defaults(run=run_serve)

    pull_cmd = command("pull", help="download a model from the Hugging Face Hub into its cache",
                       description="Download a model of the Hugging Face Hub into the Hugging Face cache "
                                   "(HF_HUB_CACHE, default ~/.cache/huggingface/hub), shared with other tools: a "
                                   "GGUF file (with every part of a split model) or a Hugging Face model's config, "
                                   "tokenizer and weights. A dropped connection resumes; each file is checked "
                                   "against the "
                                   "Hub's hash. HF_TOKEN: an access token, for gated and private models; "
                                   "HF_ENDPOINT: another Hub; HF_HUB_OFFLINE=1: never use the network. Prints the "
                                   "model's local path.")
    pull_cmd.add_argument("reference", metavar="REPO[:QUANT]", help=REFERENCE_HELP)
    pull_cmd.add_argument("--file", default=None, metavar="NAME", help="this file of the repository (e.g. "
                                                                     "model-Q5_K_M.gguf) instead of a QUANT tag")
    pull_cmd.set_defaults(run=run_pull)

    list_cmd = command("list", help="the models in the Hugging Face cache",
                       description="The models in the Hugging Face cache (what pull downloaded, and models other "
                                   "tools put there): reference, file, quantization, architecture, parameters, size "
                                   "on disk and when it was last used.")
    list_cmd.set_defaults(run=run_list)

    rm_cmd = command("rm", help="remove a model from the Hugging Face cache",
                     description="Remove a model from the Hugging Face cache: REPO removes every file of the "
                                 "repository, REPO:QUANT (or REPO:FILE.gguf) only that model's files.")
    rm_cmd.add_argument("reference", metavar="REPO[:QUANT]", help="what `llmrun list` shows as the reference")
    rm_cmd.add_argument("--file", default=None, metavar="NAME", help="this file of the repository")
    rm_cmd.set_defaults(run=run_rm)

    info = command("info", help="show a model's shape, parameters, type and size")
    add_model_args(info)
    info.set_defaults(run=run_info)

    quant = command("quantize", help="write a model as GGUF with its weights in another type",
                    description="Write a model (a GGUF file, a llama2.c .bin or a Hugging Face folder) as "
                                "a GGUF file with its weight matrices in TYPE, one of llama-quantize's presets, "
                                "with the same bytes as llama-quantize writes (without an importance matrix): "
                                "norms stay f32; the _S/_M/_L mixtures give some matrices more bits, the "
                                "classifier gets Q6_K, and rows that are not whole blocks fall back to a "
                                "32-value type or f16, as llama.cpp decides. A GGUF input keeps its metadata "
                                "and vocabulary; otherwise the tokenizer (the model's own, -z, or "
                                "tokenizer.bin beside the model) is written into the file.")
    quant.add_argument("input", help="the model to read: a GGUF file, a llama2.c .bin, a Hugging Face folder, "
                       "'demo' or a Hub reference OWNER/REPO[:QUANT]")
    quant.add_argument("output", help="GGUF file to write")
    quant.add_argument("--type", required=True, type=preset_name, metavar="TYPE",
                       help=f"the weights' type (any case): {', '.join(PRESETS)}")
    quant.add_argument("-z", "--tokenizer", help="tokenizer file to embed (llama2.c tokenizer.bin); default: the "
                                                 "model's own, else tokenizer.bin beside the model")
    quant.set_defaults(run=run_quantize)
    return parser


def preset_name(text: str) -> str:
    """--type's value: the name of a quantization preset; argparse reports the ValueError's reason."""
    try:
        return find_preset(text).name
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def add_model_args(p: argparse.ArgumentParser,
                   ctx_help: str = "context size in tokens (default: the model's, at most 4096)") -> None:
    p.add_argument("model", nargs="?", default=None, help=MODEL_HELP)
    p.add_argument("-z", "--tokenizer", help="tokenizer file (llama2.c tokenizer.bin); default: the model's "
                                             "own, else tokenizer.bin beside the model")
    p.add_argument("-t", "--threads", type=int, default=None, help="threads (default: physical cores)")
    p.add_argument("-c", "--ctx-size", type=int, default=None, help=ctx_help)
    p.add_argument("-b", "--batch-size", type=int, default=DEFAULT_BATCH,
                   help=f"prompt tokens processed together; 1 = token by token (default: {DEFAULT_BATCH})")


def add_chat_format_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--chat-format", default=None, choices=list(FORMATS),
                   help="a built-in chat format instead of the model's template (default: the model's own "
                        "template, else plain)")


def add_sampling_args(p: argparse.ArgumentParser, max_tokens_default: int) -> None:
    """-n, --stop, and one option per SamplingParams field, with its default and help text."""
    p.add_argument("-n", "--max-tokens", type=int, default=max_tokens_default,
                   help=f"tokens to generate; -1 = until the end of text or a full context "
                        f"(default: {max_tokens_default})")
    hints = typing.get_type_hints(SamplingParams)
    for f in SAMPLING_FIELDS:
        kind = next(t for t in (hints[f.name], *typing.get_args(hints[f.name])) if t in (int, float))
        if f.default is None:  # the seed: unset means a random one, spelled -1 on the command line
            default, shown = RANDOM_SEED, f"{RANDOM_SEED}, random"
        else:
            default, shown = f.default, f.default
        names = sorted([FLAGS[f.name], *SAMPLING_ALIASES.get(f.name, [])], key=lambda n: n.startswith("--"))
        p.add_argument(*names, dest=f.name, type=kind, default=default, help=f"{f.metadata['help']} (default: {shown})")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable)")


def model_path(args: argparse.Namespace) -> Path:
    """Where the command's MODEL is: the path given, the demo model (MODEL omitted), or a Hub model's file in
    the cache, downloaded first where it is missing (with a line on stderr and huggingface_hub's progress bars)."""
    return find_model(args.model or DEMO_NAME, announce=lambda line: print(line, file=sys.stderr, flush=True))


def open_model(args: argparse.Namespace, chat_format: str | None = None, path: Path | None = None,
               **options: typing.Any) -> Model:
    """The model the command's options describe (at `path` where the caller has found it already; `options`:
    more of load's arguments); a one-line warning where -c exceeds what it was trained for."""
    model = load(path or model_path(args), tokenizer=args.tokenizer, n_ctx=args.ctx_size, n_threads=args.threads,
                 n_batch=args.batch_size, chat_format=chat_format, **options)
    i = model.info
    if i.n_ctx > i.context_length:
        print(f"llmrun: warning: -c {i.n_ctx} is more than the {i.context_length} tokens the model was trained "
              f"for; it may write nonsense past them", file=sys.stderr)
    return model


def require_tokenizer(model: Model) -> None:
    """Fails now, not at the first message, where the model has no tokenizer (TokenizerError says why)."""
    if not model.has_tokenizer:
        model.tokenizer  # noqa: B018  (raises the model's own explanation)


def sampling_kwargs(args: argparse.Namespace) -> dict:
    """The generation's keyword arguments from the options, checked now (SamplingError names the field)."""
    if args.max_tokens < -1:
        raise InvalidArgumentError(f"max_tokens must be -1 (no limit) or >= 0, got {args.max_tokens}",
                                   param="max_tokens")
    sampling = {f.name: getattr(args, f.name) for f in SAMPLING_FIELDS}
    if sampling["seed"] == RANDOM_SEED:
        sampling["seed"] = None
    elif not 0 <= sampling["seed"] < 2**64:  # SamplingParams would speak of None, which -s cannot say
        raise InvalidArgumentError(f"-s must be {RANDOM_SEED} (random) or an int in [0, 2**64), got {sampling['seed']}")
    SamplingParams(**sampling)
    return dict(max_tokens=None if args.max_tokens == -1 else args.max_tokens, stop=args.stop or None, **sampling)


def read_text(path: str) -> str:
    """A UTF-8 text file ('-': standard input) as llama.cpp's -f reads it: one trailing newline dropped."""
    data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        name = "standard input" if path == "-" else path
        raise InvalidArgumentError(f"{name}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start})") \
            from None
    return text[:-1] if text.endswith("\n") else text


def read_prompt(args: argparse.Namespace) -> str:
    """-p, else -f, else empty. Standard input is read only as -f - (or -f /dev/stdin), as llama.cpp's
    llama-cli reads it: reading it whenever it is a pipe took the lines of a shell loop (`... | while read f;
    do llmrun generate ...; done`) and waited forever on a pipe that stays open."""
    if args.prompt is not None and args.file is not None:
        raise InvalidArgumentError("give the prompt with -p or with -f, not both")
    if args.prompt is not None:
        return args.prompt
    return "" if args.file is None else read_text(args.file)


def print_stream(generation: Generation) -> None:
    for piece in generation:
        sys.stdout.write(piece)
        sys.stdout.flush()


# --- commands -------------------------------------------------------------------------------------------

def run_generate(args: argparse.Namespace) -> int:
    prompt = read_prompt(args)
    kwargs = sampling_kwargs(args)
    with open_model(args) as model:
        generation = model.stream(prompt, **kwargs)
        if not args.no_echo:
            sys.stdout.write(prompt)
        try:
            print_stream(generation)
        finally:
            generation.close()  # after Ctrl-C: the generation ends as cancelled before its stats are shown
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
    with open_model(args, chat_format=args.chat_format) as model:
        require_tokenizer(model)
        if sys.stdin.isatty():
            enable_line_editing()
        repl = Repl(model, chat_format=args.chat_format, system=args.system, sampling=kwargs)
        repl.enable_thinking = None if args.think is None else args.think == "on"
        return repl.run()


def run_serve(args: argparse.Namespace) -> int:
    try:
        from .server import ServerConfig, serve
    except ImportError as e:
        print(f"llmrun: error: the server needs Starlette, uvicorn and prometheus_client ({e}); install them with: "
              f"pip install 'llmrun[server]'", file=sys.stderr)
        return EXIT_ERROR
    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port must be in [0, 65535], got {args.port}")
    if args.max_body_bytes < 1 or args.max_queue < 1 or args.parallel < 1:
        raise InvalidArgumentError("--max-body-bytes, --max-queue and --parallel must be >= 1")
    if args.kv_size is not None and args.kv_size < 1:
        raise InvalidArgumentError(f"--kv-size must be >= 1, got {args.kv_size}")
    if args.api_key is not None and not args.api_key.isprintable():
        raise InvalidArgumentError("the API key must be printable text")
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    name = args.alias or model_name(args.model or DEMO_NAME)
    config = ServerConfig(model_name=name, api_key=args.api_key, max_body_bytes=args.max_body_bytes,
                          max_queue=args.max_queue, parallel=args.parallel)
    with open_model(args, chat_format=args.chat_format, parallel=args.parallel, kv_size=args.kv_size) as model:
        require_tokenizer(model)
        serve(model, config, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def model_name(path: str) -> str:
    """The server's default model id: a file's name without .gguf / .bin, a folder's name as it is (dots and
    all: Qwen2.5-0.5B-Instruct), a Hub reference as written (without an hf.co/ prefix)."""
    p = Path(path)
    ref = None if p.exists() else parse_reference(path)
    if ref is not None:
        return str(ref)
    return p.stem if p.suffix.lower() in MODEL_SUFFIXES and not p.is_dir() else p.name


def run_pull(args: argparse.Namespace) -> int:
    ref = parse_reference(args.reference, args.file)
    if ref is None:
        raise InvalidArgumentError(f"{args.reference!r} is not a Hub reference: expected OWNER/REPO[:QUANT]")
    path = pull(ref)
    print(path)
    return 0


def run_list(args: argparse.Namespace) -> int:
    models = cached_models()
    if not models:
        print(f"llmrun: no models in the Hugging Face cache ({cache_dir()}); get one with llmrun pull REPO[:QUANT]",
              file=sys.stderr)
        return 0
    rows = [("REFERENCE", "FILE", "QUANT", "ARCHITECTURE", "PARAMETERS", "SIZE", "LAST USED")]
    for m in models:
        arch, params = describe(m)
        if m.path.is_dir():
            file = f"folder of {len(m.files)} files"
        else:
            file = m.files[0].file_name + (f" (+{len(m.files) - 1} parts)" if len(m.files) > 1 else "")
        rows.append((str(m.reference), file, m.quant or "-", arch, "?" if params is None else human(params, ""),
                     human(m.size, "B"), time.strftime("%Y-%m-%d %H:%M", time.localtime(m.last_used))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    print(f"cache: {cache_dir()}", file=sys.stderr)
    return 0


def run_rm(args: argparse.Namespace) -> int:
    ref = parse_reference(args.reference, args.file)
    if ref is None:
        raise InvalidArgumentError(f"{args.reference!r} is not a Hub reference: expected OWNER/REPO[:QUANT]")
    n_files, freed = remove(ref)
    print(f"removed {ref} from the cache: {n_files} files, {human(freed, 'B')} freed")
    return 0


def human(n: int, unit: str) -> str:
    """1234567 -> "1.2M" (with the unit: "1.2MB"); decimal prefixes, as Hub pages and `du -h --si` show sizes."""
    for prefix in ("", "K", "M", "G", "T"):
        if n < 1000 or prefix == "T":
            return f"{n:.0f}{unit}" if prefix == "" else f"{n:.1f}{prefix}{unit}"
        n /= 1000
    raise AssertionError


def status(message: str) -> None:
    """A progress line on stderr: rewritten in place on a terminal, one line each elsewhere (logs)."""
    if sys.stderr.isatty():
        print(f"\r\x1b[K{message}", end="", file=sys.stderr, flush=True)
    elif message:
        print(message, file=sys.stderr)


def int_list(text: str, option: str, minimum: int) -> list[int]:
    """Comma-separated integers, each at least `minimum`."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        raise InvalidArgumentError(f"{option} takes comma-separated integers, got {text!r}")
    if any(v < minimum for v in values):
        raise InvalidArgumentError(f"{option} values must be >= {minimum}, got {text!r}")
    return values


def run_bench_command(args: argparse.Namespace) -> int:
    if args.concurrency is not None:
        return run_serving_bench(args)
    # a length of 0 skips that test, as with llama-bench; a thread count has no such meaning
    prompts = [n for n in int_list(args.n_prompt, "-p", 0) if n]
    gens = [n for n in int_list(args.n_gen, "-n", 0) if n]
    if not prompts and not gens:
        raise InvalidArgumentError("nothing to measure: every -p and -n length is 0")
    threads = int_list(args.threads, "-t", 1) if args.threads else [None]
    n_ctx = max(prompts + [n + 1 for n in gens])
    path = model_path(args)
    rows = []
    for t in threads:
        with load(path, tokenizer=args.tokenizer, n_ctx=n_ctx, n_threads=t, n_batch=args.batch_size) as model:
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


def run_serving_bench(args: argparse.Namespace) -> int:
    """`bench --concurrency`: the load generator (llmrun/loadtest.py) at each concurrency level, against --url or
    MODEL served in this process."""
    levels = int_list(args.concurrency, "--concurrency", 1)
    if args.duration is None and args.requests < 1:
        raise InvalidArgumentError(f"--requests must be >= 1, got {args.requests}")
    if args.duration is not None and not args.duration > 0:
        raise InvalidArgumentError(f"--duration must be > 0, got {args.duration}")
    if args.max_tokens < 1:
        raise InvalidArgumentError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.parallel is not None and args.parallel < 1:
        raise InvalidArgumentError(f"--parallel must be >= 1, got {args.parallel}")
    threads = int_list(args.threads, "-t", 1) if args.threads else [None]
    if len(threads) > 1:
        raise InvalidArgumentError("-t takes one thread count with --concurrency (the served model's)")
    results: list[LoadResult] = []

    def measure(url: str, name: str, api_key: str | None) -> None:
        for c in levels:
            status(f"{c} client{'s' * (c > 1)}: {args.requests} requests each" if args.duration is None else
                   f"{c} client{'s' * (c > 1)}: {args.duration:g} s")
            result = run_load(LoadConfig(url, concurrency=c, requests_per_client=args.requests,
                                         duration_s=args.duration, max_tokens=args.max_tokens, model=name,
                                         api_key=api_key, warmup_requests=0 if results else 1))
            results.append(result)
            if args.json:
                print(json.dumps({"url": args.url or "in-process", **result.summary()}), flush=True)

    if args.url is not None:
        measure(args.url, args.model or "default", args.api_key)
    else:
        with serving_locally(args, parallel=args.parallel or max(levels)) as (url, name):
            measure(url, name, None)
    status("")
    for r in results:
        if r.errors:
            print(f"llmrun: {r.errors} of {len(r.requests)} requests failed with {r.config.concurrency} clients; "
                  f"the first: {r.error_messages[0]}", file=sys.stderr)
    if not args.json:
        print_serving_table(results)
    return 0


@contextlib.contextmanager
def serving_locally(args: argparse.Namespace, parallel: int) -> Iterator[tuple[str, str]]:
    """MODEL loaded as the options say and served by llmrun's server in this process (llmrun.loadtest.
    serving_in_thread); yields (base URL, model name). The model generates `parallel` sequences together, with KV room
    for all of them at once (no preemption): each one's prompt (at most ~4 tokens a word) and tokens, in whole
    blocks of 32."""
    from .server import ServerConfig, create_app, serving_in_thread

    need = -(-(4 * DEFAULT_PROMPT_WORDS[1] + 16 + args.max_tokens) // 32) * 32
    n_ctx = args.ctx_size or need
    threads = int(args.threads) if args.threads else None
    with load(model_path(args), tokenizer=args.tokenizer, n_ctx=n_ctx, n_threads=threads, n_batch=args.batch_size,
              parallel=parallel, kv_size=max(parallel * need, n_ctx)) as model:
        require_tokenizer(model)
        name = model_name(args.model or DEMO_NAME)
        with serving_in_thread(create_app(model, ServerConfig(model_name=name, parallel=parallel)),
                               log_level="warning") as url:
            yield url, name


def print_serving_table(results: list[LoadResult]) -> None:
    """The markdown table of `bench --concurrency`, and where its token counts came from."""
    base = next((r.tokens_per_second for r in results if r.config.concurrency == 1), None)

    def ms(seconds: float | None) -> str:
        return "-" if seconds is None else f"{seconds * 1000:.0f}"

    print("| clients | requests | tokens | t/s | x vs 1 client | TTFT p50 ms | TTFT p95 ms | t/s per request "
          "(p50) | errors |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        gain = f"{r.tokens_per_second / base:.2f}" if base else "-"
        per_request = r.request_tokens_per_second_p50
        print(f"| {r.config.concurrency} | {len(r.requests)} | {r.completion_tokens} | {r.tokens_per_second:.2f} "
              f"| {gain} | {ms(r.ttft_p50_s)} | {ms(r.ttft_p95_s)} | "
              f"{'-' if per_request is None else f'{per_request:.2f}'} | {r.errors} |")
    sources = {r.count_source for r in results if r.ok}
    how = {USAGE: "the server's usage chunks", CHUNKS: "text chunks (the server sent no usage)"}
    print(f"\ntokens: completion tokens, counted from {' and '.join(how.get(s, s) for s in sorted(sources))}; "
          f"t/s: all of them over each run's wall time" if sources else "\nno request succeeded")


def run_perplexity(args: argparse.Namespace) -> int:
    if args.model is None and (args.textfile.endswith(MODEL_SUFFIXES) or os.path.isdir(args.textfile)):
        # `perplexity MODEL` with the text forgotten, not the demo model scoring a model file as text
        raise ValueError(f"{args.textfile} looks like a model, not a text: usage: llmrun perplexity [MODEL] "
                         f"TEXTFILE")
    text = read_text(args.textfile)
    with open_model(args) as model:
        ctx = model.info.n_ctx  # -c: the chunk size, as llama-perplexity's

        def progress(chunk: int, n_chunks: int, ppl: float) -> None:
            status(f"chunk {chunk}/{n_chunks}: perplexity {ppl:.4f}")

        result = perplexity(model, text, ctx, progress, llama_cpp=args.llama_cpp_compatible)
    status("")
    scoring = "the second half of each, as llama.cpp" if args.llama_cpp_compatible else "every token"
    print(f"perplexity {result.value:.4f} over {result.tokens} tokens ({result.chunks} chunks of {ctx}, "
          f"scoring {scoring})")
    return 0


def run_info(args: argparse.Namespace) -> int:
    def token(id: int | None) -> str:
        return "none" if id is None else str(id)

    path = model_path(args)
    spec = read_model(path)
    types = tensor_type_rows(spec)
    with open_model(args, path=path) as model:
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
            *family_rows(spec),
            *types,
        ]
        try:
            tok = model.tokenizer
            rows.append(("tokenizer", f"{tok.vocab_size} tokens, bos {token(tok.bos_id)}, eos {token(tok.eos_id)}"))
        except LLMError as e:
            rows.append(("tokenizer", f"none ({e.for_flags(FLAGS)})"))
        width = max(len(k) for k, _ in rows)
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
    return 0


def family_rows(spec: ModelSpec) -> list[tuple[str, str]]:
    """`info`'s rows about the model family: its architecture, RoPE and, where not Llama's, its attention and
    scaling options (window pattern: S a windowed layer, G a global one)."""
    c = spec.config
    rope = f"theta {c.rope_theta:g}" + (f", {c.rotary_dim} of {c.head_dim} dims" if c.rope_dim else "")
    s = spec.rope_scaling
    if s is not None:
        rope += f", {s.kind}" + (f" x{s.factor:g}" if s.kind in ("linear", "yarn") else "")
        rope += f" (original context {s.original_context})" if s.original_context else ""
    if "local" in c.layer_ropes:
        rope += f"; local theta {c.rope_theta_local:g} on {c.layer_ropes.count('local')} layers"
    if "none" in c.layer_ropes:
        rope += f"; none on {c.layer_ropes.count('none')} layers"
    rows = [("architecture", spec.architecture), ("rope", rope)]
    attention = []
    if c.sliding_window:
        pattern = "".join("S" if w else "G" for w in c.layer_windows)
        attention.append(f"window {c.sliding_window} ({pattern if len(pattern) <= 48 else pattern[:45] + '...'})")
    if c.attn_scale is not None:
        attention.append(f"scale {c.attn_scale:.4g}")
    if c.attn_softcap:
        attention.append(f"softcap {c.attn_softcap:g}")
    if attention:
        rows.append(("attention", ", ".join(attention)))
    other = [f"{name} {value:.4g}" for name, value in (
        ("embed scale", c.embed_scale), ("residual scale", c.residual_scale), ("logit scale", c.logit_scale),
        ("final softcap", c.final_softcap)) if value not in (1.0, 0.0) or (name == "final softcap" and value)]
    if c.ffn_activation != "silu":
        other.insert(0, f"ffn {c.ffn_activation}")
    if other:
        rows.append(("options", ", ".join(other)))
    return rows


def tensor_type_rows(spec: ModelSpec) -> list[tuple[str, str]]:
    """`info`'s rows about storage: bits per weight over all tensors, then each type's tensor count, values
    and bits per weight (most values first)."""
    count: dict[str, int] = {}
    values: dict[str, int] = {}
    for t in spec.tensors():
        count[t.type] = count.get(t.type, 0) + 1
        values[t.type] = values.get(t.type, 0) + t.n_elements

    def bits(type: str) -> float:
        t = TENSOR_TYPES[type]
        return 8 * t.block_bytes / t.block_elems
    total = sum(values.values())
    overall = sum(bits(k) * v for k, v in values.items()) / max(total, 1)
    rows = [("bits/weight", f"{overall:.2f} over {total:,} values")]
    for type in sorted(values, key=lambda k: -values[k]):
        noun = "tensor " if count[type] == 1 else "tensors"
        rows.append(("tensors" if len(rows) == 1 else "", f"{type:<6} {count[type]:>4} {noun} "
                     f"{values[type]:>15,} values {bits(type):6.2f} bits/weight"))
    return rows


def run_quantize(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    spec = read_model(find_model(args.input, announce=lambda line: print(line, file=sys.stderr, flush=True)))
    tokenizer = None  # a GGUF input keeps its own vocabulary metadata as it is
    if args.tokenizer or "tokenizer.ggml.model" not in spec.metadata:
        tokenizer, problem = resolve_tokenizer(spec, args.tokenizer)
        if tokenizer is None:  # still a valid GGUF (our reader takes -z), but llama.cpp needs a vocabulary
            print(f"llmrun: warning: the output will have no vocabulary; pass -z TOKENIZER to embed one "
                  f"({problem})", file=sys.stderr)
    def progress(i: int, n_tensors: int, plan: TensorPlan) -> None:  # n_tensors: what the file gets
        shape = f"{plan.rows} x {plan.cols}" if not plan.is_vector else f"{plan.cols}"
        print(f"[{i + 1:>{len(str(n_tensors))}}/{n_tensors}] {plan.name:<28} {shape:>13}  {plan.source.type:>6} -> "
              f"{plan.type:<6} {plan.nbytes:>12,} bytes", file=sys.stderr)

    base = find_preset(args.type).base
    block_types = {name for name, t in TENSOR_TYPES.items() if t.block_elems > 1}
    requantized = sorted({t.type for t in spec.tensors() if t.type in block_types and t.type != base})
    if requantized and base in block_types:  # llama.cpp refuses this without --allow-requantize
        print(f"llmrun: warning: the input is already {'/'.join(requantized)}; quantizing it again adds the "
              f"errors of both steps (start from an f32, f16 or bf16 file if you can)", file=sys.stderr)

    plans = write_model(args.output, spec, args.type, tokenizer=tokenizer, on_tensor=progress)
    in_bytes = sum(part.data.nbytes for p in plans for part in (p.parts or (p.source,)))  # a fused tensor: all
    out_bytes = sum(p.nbytes for p in plans)
    ratio = in_bytes / out_bytes if in_bytes >= out_bytes else out_bytes / in_bytes
    print(f"wrote {args.output}: {len(plans)} tensors, weights {in_bytes / 2**20:.2f} MiB -> "
          f"{out_bytes / 2**20:.2f} MiB ({ratio:.2f}x {'smaller' if in_bytes >= out_bytes else 'larger'}), "
          f"file {os.path.getsize(args.output):,} bytes, {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
