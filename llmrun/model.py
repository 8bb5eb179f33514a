"""The Python API: `llmrun.load(...)` returns a `Model` that tokenizes, generates, streams and scores."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from .aio import AsyncStream
from .chat import FORMATS, ChatStream, ChatTemplate, end_of_turn, tokenize_chat
from .embeddings import check_pooling, default_pooling, l2_normalize, pool
from .engine import DEFAULT_BATCH, MAX_THREADS, Engine, context_bytes, isa_for, repack_bytes, repack_model
from .errors import ContextOverflowError, InvalidArgumentError, KVCacheFullError, TokenizerError
from .formats import Progress, beside_tokenizer, read_model, read_tokenizer
from .generate import Generation, check_max_tokens, normalize_stop
from .hub import find_model
from .openai_api import chat_logprobs
from .sampling import SamplingParams
from .scheduler import Scheduler, ServingStats
from .spec import ModelSpec
from .structured import Grammar, compile_constraint, from_request
from .system import memory_limit, physical_cores, physical_memory
from .tokenizer import Tokenizer
from .tools import ToolCallSplitter, tool_format, tool_grammar, validate_tool_choice, validate_tools

DEFAULT_MAX_CTX = 4096  # default KV cache size cap; pass n_ctx to use more of a long-context model
DEFAULT_PARALLEL = 4  # generations decoded together (llama.cpp's server has 4 slots by default too)
MAX_PARALLEL = 256
EMBED_TEXTS = 32  # texts Model.embed packs into one forward pass at most (each is a sequence of the context)
DEFAULT_SAMPLING = SamplingParams()  # llama.cpp's defaults (see SamplingParams)
T = TypeVar("T")


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
    parallel: int = 1  # generations decoded together at most (the scheduler's slots)
    kv_size: int = 0  # positions of the KV cache's pool, shared by all sequences (blocks of kv_block_size)
    repacked: int = 0  # weight matrices repacked at load time (load's repack; 0: all in the file's layout)


class Model:
    """A loaded model with its KV cache and threads. Use `llmrun.load` to make one; close it (or use it as
    a context manager) to free the cache and threads at once.

    Generations run through the model's scheduler (llmrun/scheduler.py): those running at the same time, from
    several threads or asyncio tasks (or `generate_batch`), are decoded together, up to `parallel` of them, each
    step one forward pass that reads the weights once for all (more wait their turn). A generation whose prompt
    shares a prefix with an earlier one (a chat turn, a repeated system prompt, n choices of one prompt) only
    computes the new tokens. The KV cache is a pool of blocks shared by all generations (`kv_size` positions).
    Scoring calls (logits, evaluate, embed) are serialized with the generation steps."""

    def __init__(self, spec: ModelSpec, tokenizer: Tokenizer | None, n_ctx: int, n_threads: int,
                 tokenizer_problem: str = "", n_batch: int = DEFAULT_BATCH, chat_format: str | None = None,
                 parallel: int = DEFAULT_PARALLEL, kv_size: int | None = None, repacked: int = 0) -> None:
        _check_chat_format(chat_format)
        self._chat_format = chat_format
        self._templates: dict[str | None, ChatTemplate] = {}
        self._spec = spec
        self._tokenizer = tokenizer
        self._tokenizer_problem = tokenizer_problem
        # sequence 0: evaluate/logits; then the scheduler's slots, twice `parallel` of them (the idle ones keep
        # finished generations' caches while the pool has room: a client's next request, a repeated system
        # prompt); then embed's texts
        slots = 2 * parallel
        self._engine = Engine(spec, n_ctx=n_ctx, n_threads=n_threads, n_batch=n_batch,
                              n_seq=_sequences(parallel), n_kv=kv_size or n_ctx)
        self._scheduler = Scheduler(self._engine, range(1, 1 + slots), parallel)
        self._embed_seqs = list(range(1 + slots, 1 + slots + EMBED_TEXTS))
        cfg = spec.config
        self.info = ModelInfo(
            path=str(spec.path), format=spec.format, dim=cfg.dim, hidden_dim=cfg.hidden_dim,
            n_layers=cfg.n_layers, n_heads=cfg.n_heads, n_kv_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
            vocab_size=cfg.vocab_size, context_length=cfg.max_seq_len, n_ctx=n_ctx, n_params=spec.n_params,
            dtype=spec.dtype, weight_bytes=spec.weight_bytes, file_size=spec.file_size, n_threads=n_threads,
            n_batch=self._engine.n_batch, isa=self._engine.isa, parallel=parallel, kv_size=self._engine.n_kv,
            repacked=repacked)
        eog = set(spec.eog_token_ids)  # e.g. Llama 3's <|eot_id|>, generation_config.json's eos_token_id list
        if tokenizer is not None and tokenizer.eos_id is not None:
            eog.add(tokenizer.eos_id)
        # llama2.c's stories models end a story by starting the next one with BOS; run.c stops there.
        if spec.format.startswith("llama2.c") and tokenizer is not None and tokenizer.bos_id is not None:
            eog.add(tokenizer.bos_id)
        self.eog_ids: frozenset[int] = frozenset(eog)

    # --- text <-> tokens ----------------------------------------------------------------------------

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer; TokenizerError (param "tokenizer") if it has none."""
        if self._tokenizer is None:
            raise TokenizerError(self._tokenizer_problem or f"{self._spec.path}: the model has no tokenizer",
                                 param="tokenizer")
        return self._tokenizer

    def tokenize(self, text: str, add_bos: bool | None = None, special: bool = False) -> list[int]:
        """Token ids of `text`, starting with BOS when `add_bos` (and the tokenizer has one). The default,
        None, does what the model file says (GGUF `tokenizer.ggml.add_bos_token`; True for Llama 2 models).
        With `special`, the text of control tokens ("</s>", "<|im_end|>") becomes those tokens; by default it
        is plain text (never turn it on for text from users: they could forge turns). InvalidArgumentError
        (param "text") for anything but a str."""
        if add_bos is None:
            add_bos = self._spec.add_bos_token
        return self.tokenizer.encode(text, add_bos=add_bos, add_eos=self._spec.add_eos_token, special=special)

    @property
    def add_bos_token(self) -> bool:
        """Whether `tokenize` starts a text with BOS by default: the model file says so and the tokenizer has a
        BOS token (False without a tokenizer)."""
        return self._spec.add_bos_token and self._tokenizer is not None and self._tokenizer.bos_id is not None

    def detokenize(self, ids: Iterable[int]) -> str:
        """The text of token ids (control tokens such as BOS/EOS produce no text). InvalidArgumentError (param
        "ids") for anything but a sequence of ints."""
        return self.tokenizer.decode(ids)

    # --- scoring ------------------------------------------------------------------------------------

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after each position: an array (len(tokens), vocab_size) of float32, where row i
        scores the token that would follow tokens[0..i]. Rows for a prefix shared with the previous
        logits() call are reused, not recomputed (scoring several continuations of one prompt)."""
        self._check_fits(len(tokens), "tokens")
        return self._with_room(lambda: self._engine.evaluate_all(tokens))

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
        return self._with_room(lambda: self._engine.evaluate(tokens, out=out))

    def warm_up(self) -> None:
        """Runs one token through the model and forgets it: every weight is read once, so that the first request
        does not wait for the file's pages to come in from disk (llama.cpp's server does the same at start)."""
        self._with_room(lambda: self._engine.evaluate([self._tokenizer.bos_id if self._tokenizer is not None and
                                                       self._tokenizer.bos_id is not None else 0]))
        self._engine.reset()

    def reset(self) -> None:
        """Empties the KV cache (what scoring calls and finished generations left there): the next call computes
        every token from the first."""
        self._engine.reset()
        self._scheduler.drop_caches()

    # --- embeddings ---------------------------------------------------------------------------------

    @property
    def pooling(self) -> str:
        """The pooling `embed` uses by default: the model file's (GGUF `<arch>.pooling_type`, a
        sentence-transformers folder's pooling module), else "mean" (llmrun/embeddings.py says why)."""
        return default_pooling(self._spec)

    def embed(self, texts: str | Sequence[str] | Sequence[Sequence[int]], pooling: str | None = None,
              normalize: bool = True) -> np.ndarray | list[np.ndarray]:
        """Embeddings of `texts` (a string, a list of strings, or a list of token-id lists: one text each):
        a float32 array (len(texts), dim) of the final hidden states after the final norm, pooled over each
        text's tokens ("mean", "last", "cls"; default `self.pooling`) and L2-normalized (normalize=False: raw).
        Pooling "none" returns a list of (n_tokens, dim) arrays instead, one per text (texts differ in length),
        each row normalized on its own. Strings are tokenized as `tokenize` does (the model's BOS and EOS
        rule); token ids are used as given. Consecutive texts are packed into batches of up to n_batch tokens
        (and 32 texts) that go through each layer together, each text a sequence of its own; a text longer than
        n_batch runs alone in chunks. What the KV cache holds afterwards is no chat prefix.
        InvalidArgumentError for an empty list, an empty text, a wrong type or an id outside the vocabulary;
        ContextOverflowError for a text longer than n_ctx."""
        pooling = self.pooling if pooling is None else check_pooling(pooling)
        if not isinstance(normalize, bool):
            raise InvalidArgumentError(f"normalize must be True or False, got {normalize!r}", param="normalize")
        docs = [self._embedding_ids(text, i) for i, text in enumerate(_texts(texts))]
        for i, ids in enumerate(docs):
            self._check_fits(len(ids), f"text at index {i}")
            self._engine.check_tokens(ids)
        rows: list[np.ndarray] = []
        blocks = self._engine.n_kv // self._engine.block_size
        for pack in _packs(docs, self._engine.n_batch, len(self._embed_seqs), blocks, self._engine.block_size):
            rows += [pool(s, pooling) for s in self._hidden_states(pack)]
        if normalize:
            rows = [l2_normalize(r) for r in rows]
        return rows if pooling == "none" else np.stack(rows)

    def _hidden_states(self, pack: list[list[int]]) -> list[np.ndarray]:
        """Every token's final hidden state, for each text of a pack: the texts as sequences of one batch, a text
        longer than n_batch alone in chunks (sequence 0). When generations hold too much of the KV pool for the
        whole pack, its texts go one at a time."""
        engine = self._engine
        if len(pack) == 1 and len(pack[0]) > engine.n_batch:
            return [self._with_room(lambda: engine.hidden(pack[0]))]
        try:
            return self._with_room(lambda: engine.hidden_texts(pack, self._embed_seqs[:len(pack)]))
        except KVCacheFullError:
            if len(pack) == 1:
                raise
            return [s for text in pack for s in self._hidden_states([text])]

    def _embedding_ids(self, text: object, i: int) -> list[int]:
        if isinstance(text, str):
            if not text:
                raise InvalidArgumentError(f"the text at index {i} is empty", param="texts")
            ids = self.tokenize(text)
            if not ids:
                raise InvalidArgumentError(f"the text at index {i} has no tokens", param="texts")
            return ids
        if isinstance(text, (Sequence, np.ndarray)) and not isinstance(text, (bytes, bytearray)):
            ids = list(text)
            if not ids:
                raise InvalidArgumentError(f"the token list at index {i} is empty", param="texts")
            return ids  # each id is checked by the engine
        raise InvalidArgumentError(f"texts[{i}] must be a string or a list of token ids, got {type(text).__name__}",
                                   param="texts")

    # --- generation ---------------------------------------------------------------------------------
    #
    # The sampling parameters have one definition, SamplingParams: each method takes one (`params`, default
    # llama.cpp's) and keyword overrides of its fields (`temperature=0`), applied in one validated step.

    def stream(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
               max_tokens: int | None = 256, stop: str | Iterable[str] | None = None, logprobs: int | None = None,
               response_format: dict[str, Any] | None = None, grammar: str | Grammar | None = None,
               **sampling: Any) -> Generation:
        """Generates a continuation of `prompt` (text, or token ids), yielding text pieces as they are
        complete (never half a UTF-8 character). Sampling follows `params` with the fields named in
        `sampling` replaced (SamplingParams' defaults are llama.cpp's; temperature 0 is greedy).
        Generation ends at an end-of-generation token, a stop string (not included in the text),
        `max_tokens` new tokens (None: until the context is full) or a full context. The returned Generation
        also reports `finish_reason`, `tokens` and `stats` once it is exhausted. With `logprobs` (0-20),
        `Generation.token_logprobs` reports each token's log-probability and that many alternatives.
        Structured output: `response_format` (OpenAI's {"type": "json_object"} or {"type": "json_schema",
        "json_schema": {"name", "schema", "strict"}}) or `grammar` (a Lark grammar str, or a llmrun.Grammar:
        json_schema / lark / regex) constrains every token so that the text matches; it ends ("stop") when the
        grammar is complete; a max_tokens cut ("length") may leave it incomplete (llmrun/structured.py).
        InvalidArgumentError for an unknown keyword or an invalid schema / grammar, SamplingError for a bad
        sampling value."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else list(prompt)
        return self._start(ids, self.eog_ids, [], _sampling(params, sampling), max_tokens, stop, logprobs,
                           from_request(response_format, grammar))

    def generate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                 max_tokens: int | None = 256, stop: str | Iterable[str] | None = None, logprobs: int | None = None,
                 response_format: dict[str, Any] | None = None, grammar: str | Grammar | None = None,
                 **sampling: Any) -> str:
        """Like `stream`, but returns the whole continuation as one string. It has nowhere to put
        log-probabilities, so `logprobs` is refused (InvalidArgumentError): use `stream(..., logprobs=N)` and
        read its `token_logprobs`."""
        if logprobs is not None:
            raise InvalidArgumentError("generate() returns text only; for log-probabilities use stream(..., "
                                       "logprobs=N) and read Generation.token_logprobs", param="logprobs")
        return self.stream(prompt, params, max_tokens=max_tokens, stop=stop, response_format=response_format,
                           grammar=grammar, **sampling).text()

    def _start(self, ids: list[int], eog_ids: frozenset[int], extra_stops: list[str], params: SamplingParams,
               max_tokens: int | None, stop: str | Iterable[str] | None, logprobs: int | None,
               constraint: Grammar | None = None) -> Generation:
        check_max_tokens(max_tokens)
        stops = normalize_stop(stop)
        stops += [s for s in extra_stops if s not in stops]
        if not ids:
            raise InvalidArgumentError("the prompt has no tokens (empty text and no BOS token to start from)",
                                       param="prompt")
        self._check_fits(len(ids), "prompt")
        self._engine.check_tokens(ids)
        compiled = compile_constraint(constraint, self.tokenizer, self._engine.vocab_size) if constraint else None
        return Generation(self._scheduler, self.tokenizer, ids, params, max_tokens, stops, eog_ids,
                          logprobs=logprobs, constraint=compiled)

    # --- many at once -------------------------------------------------------------------------------

    def generate_batch(self, prompts: Sequence[str | Sequence[int]], params: SamplingParams | None = None, *,
                       max_tokens: int | None = 256, stop: str | Iterable[str] | None = None,
                       response_format: dict[str, Any] | None = None, grammar: str | Grammar | None = None,
                       **sampling: Any) -> list[str]:
        """The continuation of each prompt (text or token ids), as `generate` gives it alone, computed together:
        up to `parallel` at a time, each step one forward pass for all of them (the rest wait their turn). The
        keywords apply to every prompt; with a `seed`, prompt i is sampled with seed + i (so that equal prompts
        give different samples, and each result is what `generate(prompt_i, seed=seed + i)` gives).
        InvalidArgumentError for an empty list or a bad prompt (nothing is generated then)."""
        prompts = _batch_items(prompts, "prompts")
        gens = [self.stream(prompt, params, max_tokens=max_tokens, stop=stop, response_format=response_format,
                            grammar=grammar, **_seeded(params, sampling, i)) for i, prompt in enumerate(prompts)]
        return [g.text() for g in _started(gens)]

    def chat_batch(self, conversations: Sequence[Sequence[dict]], params: SamplingParams | None = None, *,
                   chat_format: str | None = None, max_tokens: int | None = None,
                   stop: str | Iterable[str] | None = None, logprobs: int | None = None,
                   enable_thinking: bool | None = None, response_format: dict[str, Any] | None = None,
                   grammar: str | Grammar | None = None, tools: Sequence[dict] | None = None,
                   tool_choice: str | dict | None = None, **sampling: Any) -> list[dict[str, Any]]:
        """The assistant's reply to each conversation, as `chat` gives it alone (the same dicts), computed
        together as in `generate_batch` (with a `seed`, conversation i is sampled with seed + i)."""
        conversations = _batch_items(conversations, "conversations")
        streams = [self.chat_stream(messages, params, chat_format=chat_format, max_tokens=max_tokens, stop=stop,
                                    logprobs=logprobs, enable_thinking=enable_thinking,
                                    response_format=response_format, grammar=grammar, tools=tools,
                                    tool_choice=tool_choice, **_seeded(params, sampling, i))
                   for i, messages in enumerate(conversations)]
        _started([s.generation for s in streams])
        replies = []
        for s in streams:
            reply = s.result()
            if logprobs is not None:
                reply["logprobs"] = chat_logprobs(self.tokenizer, s.generation.token_logprobs)
            replies.append(reply)
        return replies

    def start_batching(self) -> None:
        """Starts a background thread that runs the generation steps whenever there is work, so generations
        advance even while nobody is waiting for their next piece (a server sending pieces to clients). Without
        it the threads that iterate generations take turns running the steps."""
        self._scheduler.start_background()

    def stop_batching(self) -> None:
        """Stops the background thread of start_batching (after its current step)."""
        self._scheduler.stop_background()

    def serving_stats(self) -> ServingStats:
        """What the scheduler does now (slots in use, generations waiting, KV blocks in use) and token totals."""
        return self._scheduler.stats()

    # --- chat ---------------------------------------------------------------------------------------

    @property
    def has_chat_template(self) -> bool:
        """Whether the model file carries its own chat template (else chat uses `chat_format` or plain)."""
        return self._spec.chat_template is not None

    def chat_template(self, chat_format: str | None = None) -> ChatTemplate:
        """The template chat uses: the built-in format `chat_format` (see llmrun.chat.FORMATS), else the one
        chosen at load, else the model's own template, else "plain" (a base model continues the text).
        ChatTemplateError if the model's template does not compile; InvalidArgumentError for an unknown
        format name."""
        _check_chat_format(chat_format)
        name = chat_format or self._chat_format
        if name not in self._templates:
            if name is not None:
                self._templates[name] = ChatTemplate.builtin(name)
            elif self._spec.chat_template is not None:
                self._templates[name] = ChatTemplate(self._spec.chat_template, name="model")
            else:
                self._templates[name] = ChatTemplate.builtin("plain")
        return self._templates[name]

    def chat_prompt(self, messages: Sequence[dict], chat_format: str | None = None,
                    enable_thinking: bool | None = None) -> list[int]:
        """The token ids `chat` would feed the model for `messages` (with the generation prompt)."""
        return tokenize_chat(self.chat_template(chat_format), self.tokenizer, messages,
                             add_bos=self._spec.add_bos_token, variables=_thinking(enable_thinking)).ids

    def chat_stream(self, messages: Sequence[dict], params: SamplingParams | None = None, *,
                    chat_format: str | None = None, max_tokens: int | None = None,
                    stop: str | Iterable[str] | None = None, logprobs: int | None = None,
                    enable_thinking: bool | None = None, response_format: dict[str, Any] | None = None,
                    grammar: str | Grammar | None = None, tools: Sequence[dict] | None = None,
                    tool_choice: str | dict | None = None, **sampling: Any) -> ChatStream:
        """Starts the assistant's reply to `messages` (a list of {"role": "system" | "user" | "assistant",
        "content": str}) and returns a ChatStream that yields its text as it is generated. The conversation is
        rendered with `chat_template(chat_format)`; message contents can never produce control tokens. The
        reply ends at an end-of-turn token (EOS, <|eot_id|>, <|im_end|> ... as the template uses them), a stop
        string (never part of the text), `max_tokens` (default None: no limit but the context) or a full
        context. The KV cache keeps the conversation, so the next turn only computes the new tokens.
        Sampling (`params` and keyword overrides) and `logprobs` as `stream`. ContextOverflowError if the
        conversation does not fit. `response_format` / `grammar` constrain the reply as in `stream` (from its
        first token: a reasoning model does not think first).

        Reasoning models (Qwen3, SmolLM3: templates that write `<think>` blocks): `enable_thinking` is passed
        to the template (False: the model answers without thinking; None, the default: the template's own
        default, thinking for both), and the reply's `<think>…</think>` block is kept out of the answer: the
        ChatStream yields the answer's text, `ChatStream.deltas()` the reasoning too, and `reasoning` holds it.

        Tool calls (llmrun/tools.py): `tools` (OpenAI function tools, [{"type": "function", "function": {"name",
        "description", "parameters"}}]) reach the template as its `tools` variable; the reply is parsed in the
        template family's syntax into `ChatStream.tool_calls` (finish_reason "tool_calls"; the call is held back
        from the text deltas and comes as the last ChatDelta's `tool_calls`). `tool_choice`: "auto" (default),
        "none" (the tools are not shown to the model and nothing is parsed), "required" or {"type": "function",
        "function": {"name": ...}} (one call, enforced by a grammar whose arguments match the parameters
        schema). Messages may hold an assistant's "tool_calls" and {"role": "tool", "tool_call_id", "content"}
        results for the next turn."""
        params = _sampling(params, sampling)
        constraint = from_request(response_format, grammar)
        template = self.chat_template(chat_format)
        variables = _thinking(enable_thinking)
        splitter = None
        tool_list = validate_tools(tools) if tools is not None else []
        choice = validate_tool_choice(tool_choice, tool_list)
        if tool_list and choice != "none":
            variables = {**(variables or {}), "tools": tool_list}
            fmt = tool_format(template.source)
            if choice != "auto":
                if constraint is not None:
                    raise InvalidArgumentError("tool_choice required or a named function cannot be combined with "
                                               "response_format or grammar", param="tool_choice")
                constraint = tool_grammar(fmt, tool_list, None if choice == "required" else choice)
            splitter = ToolCallSplitter(fmt, {t["function"]["name"] for t in tool_list})
        prompt = tokenize_chat(template, self.tokenizer, messages, add_bos=self._spec.add_bos_token,
                               variables=variables)
        eog, marker_stops = end_of_turn(template, self.tokenizer, self.eog_ids)
        generation = self._start(prompt.ids, eog, marker_stops, params, max_tokens, stop, logprobs, constraint)
        return ChatStream(generation, prompt, template, splitter)

    def chat(self, messages: Sequence[dict], params: SamplingParams | None = None, *,
             chat_format: str | None = None, max_tokens: int | None = None, stop: str | Iterable[str] | None = None,
             logprobs: int | None = None, enable_thinking: bool | None = None,
             response_format: dict[str, Any] | None = None, grammar: str | Grammar | None = None,
             tools: Sequence[dict] | None = None, tool_choice: str | dict | None = None,
             **sampling: Any) -> dict[str, Any]:
        """The assistant's reply to `messages`, as `chat_stream` generates it, in the shape of an OpenAI
        chat completion's choice:

            {"message": {"role": "assistant", "content": "..."},
             "finish_reason": "stop" | "length",
             "usage": {"prompt_tokens": ..., "completion_tokens": ..., "total_tokens": ...}}

        A reasoning model's reply that thought first also has "reasoning_content" in its message (the text of
        its `<think>` block, kept out of "content"; see `chat_stream` for `enable_thinking`). With `logprobs`
        (0-20 alternatives) it also has "logprobs": {"content": [{"token", "logprob", "bytes", "top_logprobs":
        [...]}, ...]}, one entry per generated token (reasoning tokens included). With `tools` (see
        `chat_stream`) a reply that calls them has "tool_calls" in its message and finish_reason "tool_calls"."""
        stream = self.chat_stream(messages, params, chat_format=chat_format, max_tokens=max_tokens, stop=stop,
                                  logprobs=logprobs, enable_thinking=enable_thinking,
                                  response_format=response_format, grammar=grammar, tools=tools,
                                  tool_choice=tool_choice, **sampling)
        reply = stream.result()
        if logprobs is not None:
            reply["logprobs"] = chat_logprobs(self.tokenizer, stream.generation.token_logprobs)
        return reply

    # --- asyncio: the same generations, run in a worker thread (llmrun/aio.py) --------------------------
    #
    # The event loop only receives the pieces: it is never blocked for a step. The prompt is tokenized (the
    # chat template rendered) in the worker too, so a bad argument raises where the first piece is awaited.
    # Cancelling the awaiting task cancels the generation; the model is free when the task has ended.

    def astream(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                max_tokens: int | None = 256, stop: str | Iterable[str] | None = None, logprobs: int | None = None,
                **sampling: Any) -> AsyncStream[str]:
        """`stream` for asyncio: `async for piece in model.astream(...)` (keywords such as response_format and
        grammar go to `stream`). The returned AsyncStream's
        `generation` (once started) is the Generation; `cancel()`, `aclose()` and `async with` stop it."""
        return AsyncStream(lambda: self.stream(prompt, params, max_tokens=max_tokens, stop=stop, logprobs=logprobs,
                                               **sampling))

    async def agenerate(self, prompt: str | Sequence[int], params: SamplingParams | None = None, *,
                        max_tokens: int | None = 256, stop: str | Iterable[str] | None = None,
                        **sampling: Any) -> str:
        """`generate` for asyncio: the whole continuation's text."""
        async with self.astream(prompt, params, max_tokens=max_tokens, stop=stop, **sampling) as pieces:
            return "".join([piece async for piece in pieces])

    def achat_stream(self, messages: Sequence[dict], params: SamplingParams | None = None, *,
                     chat_format: str | None = None, max_tokens: int | None = None,
                     stop: str | Iterable[str] | None = None, logprobs: int | None = None,
                     enable_thinking: bool | None = None, **sampling: Any) -> AsyncStream[str]:
        """`chat_stream` for asyncio: an AsyncStream of the answer's text pieces whose `source` (once started)
        is the ChatStream (`reasoning`, `message`, `usage`, `result()`)."""
        return AsyncStream(lambda: self.chat_stream(messages, params, chat_format=chat_format, max_tokens=max_tokens,
                                                    stop=stop, logprobs=logprobs, enable_thinking=enable_thinking,
                                                    **sampling))

    async def achat(self, messages: Sequence[dict], params: SamplingParams | None = None, *,
                    chat_format: str | None = None, max_tokens: int | None = None,
                    stop: str | Iterable[str] | None = None, logprobs: int | None = None,
                    enable_thinking: bool | None = None, **sampling: Any) -> dict[str, Any]:
        """`chat` for asyncio: the reply dict (message, finish_reason, usage[, logprobs])."""
        stream = self.achat_stream(messages, params, chat_format=chat_format, max_tokens=max_tokens, stop=stop,
                                   logprobs=logprobs, enable_thinking=enable_thinking, **sampling)
        async with stream:
            async for _ in stream:
                pass
        chat = stream.source
        assert isinstance(chat, ChatStream)
        reply = chat.result()  # exhausted: nothing left to compute
        if logprobs is not None:
            reply["logprobs"] = chat_logprobs(self.tokenizer, chat.generation.token_logprobs)
        return reply

    def _with_room(self, call: Callable[[], T]) -> T:
        """call() (a scoring call of the engine); if the KV pool is full, once more after the caches that finished
        generations and earlier scoring calls left in it are dropped. KVCacheFullError if running generations
        hold what it needs."""
        try:
            return call()
        except KVCacheFullError:
            self._scheduler.drop_caches()
            self._engine.reset()
            return call()

    def _check_fits(self, n_tokens: int, what: str) -> None:
        """ContextOverflowError unless `n_tokens` fit in the context; it advises a larger n_ctx only where the
        model could take one."""
        n_ctx, max_ctx = self.info.n_ctx, self._spec.max_context
        if n_tokens <= n_ctx:
            return
        message = f"the {what} is {n_tokens} tokens, more than the context of {n_ctx}"
        if n_ctx < max_ctx:
            raise ContextOverflowError(f"{message} (load with a larger n_ctx, up to the model's {max_ctx})",
                                       param="n_ctx", n_tokens=n_tokens, n_ctx=n_ctx, max_ctx=max_ctx)
        if n_ctx == max_ctx:
            message += ", which is already the model's maximum"
        raise ContextOverflowError(message, n_tokens=n_tokens, n_ctx=n_ctx, max_ctx=max_ctx)

    # --- lifetime -----------------------------------------------------------------------------------

    def close(self) -> None:
        """Cancels the generations still running, frees the KV cache and threads now. The model cannot be used
        afterwards."""
        self._scheduler.cancel_all()
        self._scheduler.stop_background()
        self._engine.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        return (f"Model({i.path!r}, {i.format}, {i.n_params / 1e6:.2f}M params, {i.dtype}, n_ctx={i.n_ctx}, "
                f"n_threads={i.n_threads})")


def load(path: str | os.PathLike, tokenizer: str | os.PathLike | Tokenizer | None = None,
         n_ctx: int | None = None, n_threads: int | None = None, n_batch: int = DEFAULT_BATCH,
         chat_format: str | None = None, quantize: str | None = None, progress: Progress | None = None,
         parallel: int = DEFAULT_PARALLEL, kv_size: int | None = None, repack: bool | None = None) -> Model:
    """Loads a model file or folder, the demo model, or a model of the Hugging Face Hub.

    path:      a GGUF file (architecture llama, qwen2, qwen3, gemma2, gemma3, phi3, smollm3 or granite; F32, F16, BF16,
               Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, the K-quants Q2_K to Q6_K and IQ4_XS tensors, in any mix; a split
               model by any of its parts), a llama2.c checkpoint (.bin) or a Hugging Face model folder (config.json,
               *.safetensors, tokenizer.json) of the same families; as a str also "demo" (the tiny stories260K model the
               package ships) or a Hub reference "OWNER/REPO[:QUANT]" (llmrun/hub.py: taken from the Hugging Face cache,
               downloaded into it first when missing unless HF_HUB_OFFLINE is set, else HubError). A path that exists
               always wins over the other two readings.
    tokenizer: a llama2.c tokenizer.bin (or a Tokenizer). Default: the model's own tokenizer (GGUF,
               tokenizer.json), else a tokenizer.bin beside the model if its vocabulary matches.
    n_ctx:     positions the KV cache holds; default: the model's context length, at most 4096. More than
               the model was trained for is allowed (quietly: the model may degrade past it;
               `info.context_length` says what it was trained for); the cache must fit in physical memory
               (a sliding-window layer keeps only its window's keys, so it costs little at any n_ctx).
    n_threads: threads for the matrix products; default: the number of physical cores.
    n_batch:   prompt tokens processed together (matrix-matrix products, each weight read once per
               batch); longer prompts go in batches of this size. 1 processes prompts token by token.
    chat_format: the built-in chat format `chat` uses ("llama-2", "llama-3", "chatml", "zephyr", "mistral",
               "gemma", "plain"); default: the model's own template, else "plain".
    quantize:  Hugging Face folders only: convert the weights at load time ("q8_0", "q4_0", "f16", ...);
               `progress(done, total, name)` is called after each tensor.
    parallel:  generations decoded together at most (default 4): concurrent generations (threads, asyncio
               tasks, generate_batch, the server's requests) share each forward pass; more wait their turn.
    kv_size:   positions the KV cache holds for all generations together (a pool of blocks of 32 positions that
               each sequence takes as it grows); default n_ctx, the memory of one full context. A generation
               may use up to n_ctx of them; when the pool is full the latest generation waits (it is
               recomputed later) until others end. Must be >= n_ctx.
    repack:    copy the 32-value block matrices (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL) and the float ones (F32,
               F16, BF16; not the token embedding) once into the interleaved layout the batched products read
               (csrc/llmrun.h's _R8 types), instead of reading the file's layout in place: faster prompt
               processing, for a copy of those weights in anonymous memory (the file's pages are given back)
               and a longer load. None (default): repack on CPUs with kernels for that layout (x86-64; the
               float matrices on AVX2-only CPUs) when the copy and the KV cache take less than half
               of the memory this process may use (physical memory, or its container's cgroup limit); each
               process holds its own copy, so several server processes of one model may prefer False; True,
               False: always, never. `info.repacked` says how many matrices were.

    A bad argument raises an LLMError whose `param` names it (InvalidArgumentError for n_ctx, n_threads,
    n_batch, chat_format, parallel, kv_size, repack; TokenizerError for tokenizer); a bad file ModelFormatError."""
    _check_chat_format(chat_format)
    if n_threads is None:
        n_threads = min(physical_cores(), MAX_THREADS)
    _check_int("n_threads", n_threads, 1, MAX_THREADS)
    _check_int("n_batch", n_batch, 1, 1 << 16)
    _check_int("parallel", parallel, 1, MAX_PARALLEL)
    if n_ctx is not None:
        _check_int("n_ctx", n_ctx, 1, 1 << 24)
    if repack is not None and not isinstance(repack, bool):
        raise InvalidArgumentError(f"repack must be True, False or None, got {repack!r}", param="repack")
    if isinstance(path, str):
        path = find_model(path)
    spec = read_model(path, quantize=quantize, progress=progress)
    if n_ctx is None:
        n_ctx = min(spec.max_context, DEFAULT_MAX_CTX)
    if kv_size is not None:
        _check_int("kv_size", kv_size, n_ctx, 1 << 30)
    context = _check_context(spec, n_ctx, n_batch, n_threads, kv_size or n_ctx, _sequences(parallel))
    tok, problem = resolve_tokenizer(spec, tokenizer)
    floats = _repacks_floats(repack)
    repacked = repack_model(spec, n_threads, floats) if _should_repack(spec, repack, context or 0, floats) else 0
    return Model(spec, tok, n_ctx=n_ctx, n_threads=n_threads, tokenizer_problem=problem, n_batch=n_batch,
                 chat_format=chat_format, parallel=parallel, kv_size=kv_size, repacked=repacked)


# The instruction-set levels with kernels of their own for the repacked types (csrc/kernels_x86_repacked.c); the
# others (arm64's for now) run them through the scalar reference, slower than their kernels of the file's layout.
REPACKING_LEVELS = frozenset({"avx2", "avx512vnni", "avx512bf16"})
# The levels whose kernels of the repacked float types (kernels_x86_float_r8.c: 256-bit outer products, 78-95%
# of the FMA peak on AVX2-only AMD Zen 3, against 67-79%) beat those of the file's layout. AVX-512's own tiles of
# the file's layout (kernels_x86_float.c) reach its peak already, with vectors twice as wide: there the float
# matrices keep the file's layout unless load(repack=True).
FLOAT_REPACKING_LEVELS = frozenset({"avx2"})


def _repacks_floats(repack: bool | None) -> bool:
    """Whether load(repack=...) copies the float matrices too (when it repacks at all): asked to, or by default
    on FLOAT_REPACKING_LEVELS."""
    return repack is True or isa_for(None) in FLOAT_REPACKING_LEVELS


def _should_repack(spec: ModelSpec, repack: bool | None, context: int, floats: bool) -> bool:
    """load's repack=None: repack on a level with repacked kernels when the copy and the context (the KV cache,
    `context` bytes) together take under half of the memory this process may use (physical memory or its cgroup's
    limit): the copy is private memory, where the file's pages it replaces were page cache that gives way, and
    each process that loads the model holds a copy of its own."""
    if repack is not None:
        return repack
    if isa_for(None) not in REPACKING_LEVELS:
        return False  # this level runs the repacked types through the scalar reference: keep the file's layout
    memory = memory_limit()
    copy = repack_bytes(spec, floats)
    return memory is not None and copy > 0 and copy + context < memory // 2


def _packs(docs: list[list[int]], n_batch: int, max_texts: int, blocks: int, block_size: int
           ) -> list[list[list[int]]]:
    """Consecutive texts grouped into packs of at most n_batch tokens, max_texts texts and `blocks` KV blocks of
    block_size positions (a text longer than n_batch is a pack of its own)."""
    packs: list[list[list[int]]] = []
    size, used = n_batch, blocks
    for ids in docs:
        need = -(-len(ids) // block_size)
        if size + len(ids) > n_batch or used + need > blocks or len(packs[-1]) == max_texts:
            packs.append([])
            size = used = 0
        packs[-1].append(ids)
        size += len(ids)
        used += need
    return packs


def _batch_items(items: object, name: str) -> list[Any]:
    """generate_batch's prompts / chat_batch's conversations as a non-empty list."""
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence) or not items:
        raise InvalidArgumentError(f"{name} must be a non-empty list, got {type(items).__name__}"
                                   f"{' (empty)' if isinstance(items, Sequence) and not items else ''}", param=name)
    return list(items)


def _seeded(params: SamplingParams | None, sampling: dict[str, Any], i: int) -> dict[str, Any]:
    """The sampling keywords of the i-th item of a batch: seed + i where a seed is given (as a keyword, or in
    params)."""
    seed = sampling.get("seed", params.seed if isinstance(params, SamplingParams) else None)
    if isinstance(seed, int) and not isinstance(seed, bool):
        return {**sampling, "seed": (seed + i) % 2**64}
    return sampling


def _started(gens: list[Generation]) -> list[Generation]:
    """Queues every generation before any is iterated, so that the scheduler admits them together."""
    for g in gens:
        g.start()
    return gens


def _texts(texts: object) -> list[object]:
    """embed's `texts` as a list of texts (a string: one)."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (Sequence, np.ndarray)) or isinstance(texts, (bytes, bytearray)):
        raise InvalidArgumentError(f"texts must be a string or a list of strings or of token-id lists, got "
                                   f"{type(texts).__name__}", param="texts")
    items = list(texts)
    if not items:
        raise InvalidArgumentError("texts is empty: nothing to embed", param="texts")
    if any(isinstance(t, (int, np.integer)) for t in items):
        raise InvalidArgumentError("texts is a flat list of ids: pass [ids] to embed one tokenized text",
                                   param="texts")
    return items


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgumentError(f"{name} must be an int in [{low}, {high}], got {value!r}", param=name)


def _check_chat_format(name: str | None) -> None:
    if name is not None and name not in FORMATS:
        raise InvalidArgumentError(f"chat_format: unknown chat format {name!r}; choose one of {', '.join(FORMATS)}",
                                   param="chat_format")


def _thinking(enable_thinking: bool | None) -> dict[str, bool] | None:
    """The template variables for `enable_thinking` (None: none, the template's default applies)."""
    if enable_thinking is None:
        return None
    if not isinstance(enable_thinking, bool):
        raise InvalidArgumentError(f"enable_thinking must be True, False or None, got {enable_thinking!r}",
                                   param="enable_thinking")
    return {"enable_thinking": enable_thinking}


def _sampling(params: SamplingParams | None, overrides: dict[str, Any]) -> SamplingParams:
    """`params` (default: SamplingParams' defaults) with `overrides` applied; InvalidArgumentError naming an
    unknown keyword."""
    if params is not None and not isinstance(params, SamplingParams):
        raise InvalidArgumentError(f"params must be a SamplingParams, got {type(params).__name__}", param="params")
    return (params or DEFAULT_SAMPLING).with_overrides(**overrides)


def _sequences(parallel: int) -> int:
    """The sequences a Model's context holds: 0 for scoring calls, 2 x parallel scheduler slots, embed's texts."""
    return 1 + 2 * parallel + EMBED_TEXTS


def _check_context(spec: ModelSpec, n_ctx: int, n_batch: int, n_threads: int, kv_size: int, n_seq: int
                   ) -> int | None:
    """Refuses an n_ctx (or kv_size) whose KV cache would not fit in physical memory, before anything is
    allocated, saying which n_ctx would do; else returns the bytes the context takes (None: the library cannot
    tell)."""
    memory = physical_memory()
    needed = context_bytes(spec.config, n_ctx, n_batch, n_threads, n_seq=n_seq, n_kv=kv_size)
    if memory is None or needed is None or needed <= memory:
        return needed
    if kv_size > n_ctx:
        raise InvalidArgumentError(
            f"kv_size = {kv_size} needs {needed / 2**30:.1f} GiB for the KV cache and buffers of {spec.path}, more "
            f"than this machine's {memory / 2**30:.1f} GiB of physical memory", param="kv_size")
    low, high = 0, n_ctx  # the largest n_ctx that fits, by bisection (the size grows with n_ctx)
    while low < high:
        mid = (low + high + 1) // 2
        fits = context_bytes(spec.config, mid, n_batch, n_threads, n_seq=n_seq)
        low, high = (mid, high) if fits is not None and fits <= memory else (low, mid - 1)
    raise InvalidArgumentError(
        f"n_ctx = {n_ctx} needs {needed / 2**30:.1f} GiB for the KV cache and buffers of {spec.path}, more than "
        f"this machine's {memory / 2**30:.1f} GiB of physical memory: use n_ctx <= {low}", param="n_ctx")


def resolve_tokenizer(spec: ModelSpec, tokenizer: str | os.PathLike | Tokenizer | None
                      ) -> tuple[Tokenizer | None, str]:
    """The tokenizer to use (the one given, a file given, else the model's own), or None and why there is
    none. TokenizerError (param "tokenizer") for a given tokenizer that does not fit the model."""
    vocab = spec.config.vocab_size
    if isinstance(tokenizer, Tokenizer):
        if tokenizer.vocab_size != vocab:
            raise TokenizerError(f"the tokenizer has {tokenizer.vocab_size} tokens but the model "
                                 f"{spec.path} has a vocabulary of {vocab}", param="tokenizer")
        return tokenizer, ""
    if isinstance(tokenizer, (str, os.PathLike)):
        return read_tokenizer(tokenizer, vocab), ""
    if tokenizer is not None:
        raise InvalidArgumentError(f"tokenizer must be a path, a Tokenizer or None, got {type(tokenizer).__name__}",
                                   param="tokenizer")
    if spec.tokenizer is not None:
        return spec.tokenizer, ""
    if spec.tokenizer_problem:  # the file has a tokenizer llmrun cannot use (yet)
        return None, spec.tokenizer_problem
    return beside_tokenizer(spec)
