"""The Python API: `llmrun.load(...)` returns a `Model` that tokenizes, generates, streams and scores."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .chat import FORMATS, ChatStream, ChatTemplate, end_of_turn, tokenize_chat
from .engine import DEFAULT_BATCH, Engine
from .errors import ContextOverflowError, InvalidArgumentError, TokenizerError
from .formats import read_model
from .formats.hf import Progress, check_context
from .formats.llama2c_tokenizer import load_llama2c_tokenizer
from .generate import Generation, check_max_tokens, normalize_stop
from .sampling import SamplingParams
from .spec import ModelSpec
from .system import physical_cores
from .tokenizer import Tokenizer
from .tokenizer.bpe import BPETokenizer

DEFAULT_MAX_CTX = 4096  # default KV cache size cap; pass n_ctx to use more of a long-context model
MAX_THREADS = 512


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is and how it runs."""

    path: str
    format: str
    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    context_length: int  # what the model was trained for
    n_ctx: int  # the KV cache this instance allocated
    n_params: int
    dtype: str
    weight_bytes: int
    file_size: int
    n_threads: int
    n_batch: int  # the most prompt tokens processed together
    isa: str  # the kernels' instruction set, e.g. "avx2"


class Model:
    """A loaded model with its KV cache and threads. Use `llmrun.load` to make one; close it (or use it as
    a context manager) to free the cache and threads at once.

    Calls on one Model are serialized; a request that shares a prefix with the previous one (a chat
    turn, a repeated system prompt) only computes the new tokens. The model has one KV cache: generations
    interleaved from several threads stay correct, but each step then recomputes its history from the
    prefix it shares with the other's (slow: use one Model per concurrent stream)."""

    def __init__(self, spec: ModelSpec, tokenizer: Tokenizer | None, n_ctx: int, n_threads: int,
                 tokenizer_problem: str = "", n_batch: int = DEFAULT_BATCH, chat_format: str | None = None) -> None:
        if chat_format is not None and chat_format not in FORMATS:
            raise InvalidArgumentError(f"unknown chat format {chat_format!r}; choose one of {', '.join(FORMATS)}")
        self._chat_format = chat_format
        self._templates: dict[str | None, ChatTemplate] = {}
        self._spec = spec
        self._tokenizer = tokenizer
        self._tokenizer_problem = tokenizer_problem
        self._engine = Engine(spec, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch)
        cfg = spec.config
        self.info = ModelInfo(
            path=str(spec.path), format=spec.format, dim=cfg.dim, hidden_dim=cfg.hidden_dim,
            n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
            vocab_size=cfg.vocab_size, context_length=cfg.max_seq_len, n_ctx=n_ctx, n_params=spec.n_params,
            dtype=spec.dtype, weight_bytes=spec.weight_bytes, file_size=spec.file_size, n_threads=n_threads,
            n_batch=self._engine.n_batch, isa=self._engine.isa)
        eog = set()
        if tokenizer is not None and tokenizer.eos_id is not None:
            eog.add(tokenizer.eos_id)
        if spec.extra.get("eot_token_id") is not None:  # e.g. Llama 3's <|eot_id|>: the end of a turn
            eog.add(spec.extra["eot_token_id"])
        eog.update(spec.extra.get("eog_token_ids") or ())  # generation_config.json's eos_token_id list
        # llama2.c's stories models end a story by starting the next one with BOS; run.c stops there.
        if spec.format.startswith("llama2.c") and tokenizer is not None and tokenizer.bos_id is not None:
            eog.add(tokenizer.bos_id)
        self.eog_ids: frozenset[int] = frozenset(eog)

    # --- text <-> tokens ----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer; TokenizerError if it has none."""
        if self._tokenizer is None:
            raise TokenizerError(self._tokenizer_problem or f"{self._spec.path}: the model has no tokenizer")
        return self._tokenizer

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of `text`, starting with BOS when `add_bos` (and the tokenizer has one). The default,
        None, does what the model file says (GGUF `tokenizer.ggml.add_bos_token`; True for Llama 2 models).
        With `special`, the text of control tokens ("</s>", "<|im_end|>") becomes those tokens; by default it
        is plain text (never turn it on for text from users: they could forge turns)."""
        if add_bos is None:
            add_bos = self._add_bos
        return self.tokenizer.encode(text, add_bos=add_bos, add_eos=bool(self._spec.extra.get("add_eos_token")),
                                     special=special)

    @property
    def _add_bos(self) -> bool:
        return bool(self._spec.extra.get("add_bos_token", True))

    def detokenize(self, ids: Iterable[int]) -> str:
        """The text of token ids (control tokens such as BOS/EOS produce no text)."""
        return self.tokenizer.decode(ids)

    # --- scoring ------------------------------------------------------------------------------------

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after each position: an array (len(tokens), vocab_size) of float32, where row i
        scores the token that would follow tokens[0..i]. Rows for a prefix shared with the previous
        logits() call are reused, not recomputed (scoring several continuations of one prompt)."""
        self._check_fits(len(tokens), "tokens")
        return self._engine.evaluate_all(tokens)

    # --- measurement: the engine's own steps, without sampling or text ----------------------------------

    @property
    def has_tokenizer(self) -> bool:
        """Whether the model has a tokenizer (`tokenizer` raises TokenizerError when it has none)."""
        return self._tokenizer is not None

    def evaluate(self, tokens: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Logits (vocab_size,) of the token that would follow `tokens`, computing only the positions the KV
        cache does not hold yet: `evaluate(prompt)` is prompt processing from wherever the cache is,
        `evaluate(history + [token])` one decode step. `out`, a float32 array of vocab_size, receives them
        when given (a loop can reuse it). Benchmarks time these calls."""
        self._check_fits(len(tokens), "tokens")
        return self._engine.evaluate(tokens, out=out)

    def reset(self) -> None:
        """Empties the KV cache: the next call computes every token from the first."""
        self._engine.reset()

    # --- generation ---------------------------------------------------------------------------------

    def stream(self, prompt: str | Sequence[int], max_tokens: int | None = 256, temperature: float = 0.8,
               top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
               seed: int | None = None, stop: str | Iterable[str] | None = None,
               repeat_last_n: int = 64, presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
               logprobs: int | None = None) -> Generation:
        """Generates a continuation of `prompt` (text, or token ids), yielding text pieces as they are
        complete (never half a UTF-8 character). Sampling defaults are llama.cpp's; temperature 0 is
        greedy. Generation ends at an end-of-generation token, a stop string (not included in the text),
        `max_tokens` new tokens (None: until the context is full) or a full context. The repetition
        penalty looks at the last `repeat_last_n` tokens (-1: all). The returned Generation also reports
        `finish_reason`, `tokens` and `stats` once it is exhausted. `presence_penalty` and `frequency_penalty`
        (OpenAI's, in [-2, 2]) lower the logits of tokens this generation already produced. With `logprobs`
        (0-20), `Generation.token_logprobs` reports each token's log-probability and that many alternatives."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        return self._start(ids, self.eog_ids, [], max_tokens=max_tokens, temperature=temperature, top_k=top_k,
                           top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, stop=stop,
                           repeat_last_n=repeat_last_n, presence_penalty=presence_penalty,
                           frequency_penalty=frequency_penalty, logprobs=logprobs)

    def _start(self, ids: list[int], eog_ids: frozenset[int], extra_stops: list[str], max_tokens: int | None,
               temperature: float, top_k: int, top_p: float, min_p: float, repeat_penalty: float,
               seed: int | None, stop: str | Iterable[str] | None, repeat_last_n: int,
               presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
               logprobs: int | None = None) -> Generation:
        params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                                repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n, seed=seed,
                                presence_penalty=presence_penalty, frequency_penalty=frequency_penalty)
        check_max_tokens(max_tokens)
        stops = normalize_stop(stop)
        stops += [s for s in extra_stops if s not in stops]
        if not ids:
            raise InvalidArgumentError("the prompt has no tokens (empty text and no BOS token to start from)")
        self._check_fits(len(ids), "prompt")
        self._engine.check_tokens(ids)
        return Generation(self._engine, self.tokenizer, ids, params, max_tokens, stops, eog_ids, logprobs=logprobs)

    def generate(self, prompt: str | Sequence[int], max_tokens: int | None = 256, temperature: float = 0.8,
                 top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05, repeat_penalty: float = 1.0,
                 seed: int | None = None, stop: str | Iterable[str] | None = None,
                 repeat_last_n: int = 64, presence_penalty: float = 0.0, frequency_penalty: float = 0.0) -> str:
        """Like `stream`, but returns the whole continuation as one string."""
        return self.stream(prompt, max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                           min_p=min_p, repeat_penalty=repeat_penalty, seed=seed, stop=stop,
                           repeat_last_n=repeat_last_n, presence_penalty=presence_penalty,
                           frequency_penalty=frequency_penalty).text()

    # --- chat ---------------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        """Whether the model file carries its own chat template (else chat uses `chat_format` or plain)."""
        return isinstance(self._spec.extra.get("chat_template"), str)

    def chat_template(self, chat_format: str | None = None) -> ChatTemplate:
        """The template chat uses: the built-in format `chat_format` (see llmrun.chat.FORMATS), else the one
        chosen at load, else the model's own template, else "plain" (a base model continues the text).
        ChatTemplateError if the model's template does not compile; InvalidArgumentError for an unknown
        format name."""
        name = chat_format or self._chat_format
        if name not in self._templates:
            if name is not None:
                self._templates[name] = ChatTemplate.builtin(name)
            elif self.has_chat_template:
                self._templates[name] = ChatTemplate(self._spec.extra["chat_template"], name="model")
            else:
                self._templates[name] = ChatTemplate.builtin("plain")
        return self._templates[name]

    def chat_prompt(self, messages: Sequence[dict], chat_format: str | None = None) -> list[int]:
        """The token ids `chat` would feed the model for `messages` (with the generation prompt)."""
        return tokenize_chat(self.chat_template(chat_format), self.tokenizer, messages, add_bos=self._add_bos).ids

    def chat_stream(self, messages: Sequence[dict], chat_format: str | None = None, max_tokens: int | None = None,
                    temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
                    repeat_penalty: float = 1.0, seed: int | None = None, stop: str | Iterable[str] | None = None,
                    repeat_last_n: int = 64, presence_penalty: float = 0.0,
                    frequency_penalty: float = 0.0, logprobs: int | None = None) -> ChatStream:
        """Starts the assistant's reply to `messages` (a list of {"role": "system" | "user" | "assistant",
        "content": str}) and returns a ChatStream that yields its text as it is generated. The conversation is
        rendered with `chat_template(chat_format)`; message contents can never produce control tokens. The
        reply ends at an end-of-turn token (EOS, <|eot_id|>, <|im_end|> ... as the template uses them), a stop
        string (never part of the text), `max_tokens` (default None: no limit but the context) or a full
        context. The KV cache keeps the conversation, so the next turn only computes the new tokens.
        Sampling arguments and `logprobs` as `stream`. ContextOverflowError if the conversation does not fit."""
        template = self.chat_template(chat_format)
        prompt = tokenize_chat(template, self.tokenizer, messages, add_bos=self._add_bos)
        eog, marker_stops = end_of_turn(template, self.tokenizer, self.eog_ids)
        generation = self._start(prompt.ids, eog, marker_stops, max_tokens=max_tokens, temperature=temperature,
                                 top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed,
                                 stop=stop, repeat_last_n=repeat_last_n, presence_penalty=presence_penalty,
                                 frequency_penalty=frequency_penalty, logprobs=logprobs)
        return ChatStream(generation, prompt, template)

    def chat(self, messages: Sequence[dict], chat_format: str | None = None, max_tokens: int | None = None,
             temperature: float = 0.8, top_k: int = 40, top_p: float = 0.95, min_p: float = 0.05,
             repeat_penalty: float = 1.0, seed: int | None = None, stop: str | Iterable[str] | None = None,
             repeat_last_n: int = 64, presence_penalty: float = 0.0, frequency_penalty: float = 0.0) -> dict:
        """The assistant's reply to `messages`, as `chat_stream` generates it, in OpenAI's shape:

            {"message": {"role": "assistant", "content": "..."},
             "finish_reason": "stop" | "length",
             "usage": {"prompt_tokens": ..., "completion_tokens": ..., "total_tokens": ...}}"""
        return self.chat_stream(messages, chat_format=chat_format, max_tokens=max_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, min_p=min_p, repeat_penalty=repeat_penalty, seed=seed,
                                stop=stop, repeat_last_n=repeat_last_n, presence_penalty=presence_penalty,
                                frequency_penalty=frequency_penalty).result()

    def _check_fits(self, n_tokens: int, what: str) -> None:
        if n_tokens > self.info.n_ctx:
            raise ContextOverflowError(
                f"the {what} is {n_tokens} tokens, more than the context of {self.info.n_ctx} "
                f"(load with a larger n_ctx, up to the model's {self.info.context_length})")

    # --- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Frees the KV cache and threads now. The model cannot be used afterwards."""
        self._engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"Model({i.path!r}, {i.format}, {i.n_params / 1e6:.2f}M params, {i.dtype}, n_ctx={i.n_ctx}, "
                f"n_threads={i.n_threads})")


def load(path: str | os.PathLike, tokenizer: str | os.PathLike | Tokenizer | BPETokenizer | None = None,
         n_ctx: int | None = None, n_threads: int | None = None, n_batch: int = DEFAULT_BATCH,
         chat_format: str | None = None, quantize: str | None = None, progress: Progress | None = None) -> Model:
    """Loads a model file or folder.

    path:      a GGUF file (llama / qwen2 architecture; F32, F16, BF16, Q8_0, Q4_0 tensors), a llama2.c
               checkpoint (.bin) or a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).
    tokenizer: a llama2.c tokenizer.bin (or a Tokenizer). Default: the model's own tokenizer (GGUF,
               tokenizer.json), else a tokenizer.bin beside the model if its vocabulary matches.
    n_ctx:     positions the KV cache holds; default: the model's context length, at most 4096 (and at most
               a sliding attention window).
    n_threads: threads for the matrix products; default: the number of physical cores.
    n_batch:   prompt tokens processed together (matrix-matrix products, each weight read once per
               batch); longer prompts go in batches of this size. 1 processes prompts token by token.
    chat_format: the built-in chat format `chat` uses ("llama-2", "llama-3", "chatml", "zephyr", "mistral",
               "plain"); default: the model's own template, else "plain".
    quantize:  Hugging Face folders only: convert the weights at load time ("q8_0", "q4_0", "f16", ...);
               `progress(done, total, name)` is called after each tensor."""
    spec = read_model(path, quantize=quantize, progress=progress)
    cfg = spec.config
    if n_ctx is None:
        n_ctx = min(cfg.max_seq_len, DEFAULT_MAX_CTX, spec.extra.get("sliding_window") or DEFAULT_MAX_CTX)
    _check_int("n_ctx", n_ctx, 1, 1 << 24)
    check_context(spec, n_ctx)
    if n_threads is None:
        n_threads = min(physical_cores(), MAX_THREADS)
    _check_int("n_threads", n_threads, 1, MAX_THREADS)
    _check_int("n_batch", n_batch, 1, 1 << 16)
    tok, problem = resolve_tokenizer(spec, tokenizer)
    return Model(spec, tok, n_ctx=n_ctx, n_threads=n_threads, tokenizer_problem=problem, n_batch=n_batch,
                 chat_format=chat_format)


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be an int in [{low}, {high}], got {value!r}")


def resolve_tokenizer(spec: ModelSpec, tokenizer: str | os.PathLike | Tokenizer | BPETokenizer | None
                       ) -> tuple[Tokenizer | BPETokenizer | None, str]:
    """The tokenizer to use, or None and why there is none."""
    vocab = spec.config.vocab_size
    if isinstance(tokenizer, (Tokenizer, BPETokenizer)):
        if tokenizer.vocab_size != vocab:
            raise TokenizerError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
                                 f"{spec.path} has a vocabulary of {vocab}")
        return tokenizer, ""
    if tokenizer is not None:
        return load_llama2c_tokenizer(tokenizer, vocab_size=vocab), ""
    if spec.tokenizer is not None:
        return spec.tokenizer, ""  # type: ignore[return-value]
    if "tokenizer_problem" in spec.extra:  # the file has a tokenizer llmrun cannot use (yet)
        return None, spec.extra["tokenizer_problem"]
    beside = Path(spec.path).with_name("tokenizer.bin")
    hint = f"{spec.path}: no tokenizer; pass tokenizer= (llama2.c models keep it in a separate .bin file)"
    if beside.is_file():
        try:
            return load_llama2c_tokenizer(beside, vocab_size=vocab), ""
        except TokenizerError as e:
            return None, f"{hint}; {beside} does not fit this model: {e}"
    return None, hint
