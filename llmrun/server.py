"""`llmrun serve`: an OpenAI-compatible HTTP server for one model (Starlette + uvicorn + prometheus_client, the
`server` extra).

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions (JSON, or
server-sent events with `"stream": true`; `n` choices up to 16), POST /v1/embeddings (Model.embed with the
model's pooling), GET /health (slots in use) and GET /metrics (Prometheus text format). Request and response
shapes: llmrun/openai_api.py. A reasoning model's thinking (its reply's `<think>` block) is sent as
`reasoning_content`, in the message and in stream deltas apart from `content`, as vLLM and llama.cpp's server do.

Safety: the CLI binds 127.0.0.1 unless told otherwise; with an API key every endpoint but /health and /metrics
wants `Authorization: Bearer KEY` (compared in constant time; the two are left open for load balancers and
scrapers, and say nothing about prompts or answers); bodies over `max_body_bytes` get 413 (by Content-Length
and by what actually arrives); every client mistake gets a 4xx with OpenAI's error body.

Concurrency: every admitted request starts its generations at once (one per choice) and the model's scheduler
runs them together, `parallel` sequences per batched decode step, the others waiting in its queue; the server
calls Model.start_batching() when it starts (the ASGI lifespan) and stop_batching() when it stops. At most
`parallel + max_queue` requests are in flight; later ones get 503 (server_busy) at once, so that a load
balancer can send them to another replica. Generations are iterated in worker threads, a piece per hop, so
the event loop keeps answering (health checks, new clients, disconnects). Every request watches its
connection: a client that goes away (streaming or not, while generating or while waiting for a slot) cancels
its generations (Generation.cancel: each frees its slot within one decode step or prompt batch).
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .chat import ChatDelta, ChatStream
from .errors import ContextOverflowError, KernelError, KVCacheFullError, LLMError
from .generate import Generation, GenerationStats
from .model import Model
from .openai_api import (
    MAX_CHOICES,
    APIError,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    GenerationRequest,
    bad_request,
    chat_logprobs,
    completion_logprobs,
    embedding_response,
    error_body,
    model_card,
    new_id,
    now,
    parse_chat,
    parse_completion,
    parse_embeddings,
    usage,
)
from .tokenizer import Tokenizer

log = logging.getLogger("llmrun.server")

T = TypeVar("T")

DEFAULT_MAX_BODY_BYTES = 1 << 20
DEFAULT_MAX_QUEUE = 64
HOP_SECONDS = 0.1  # a non-streaming request checks for a vanished client this often
CLIENT_CLOSED = 499  # nginx's status for a client that went away before its answer
SEED_MODULUS = 2**64  # choice i of a seeded request samples with (seed + i) mod 2**64, still a valid seed
# Seconds: from a small model's milliseconds to a large one's prompt of thousands of tokens on a CPU.
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class ServerConfig:
    """model_name: what /v1/models lists and responses name (requests may name any model). api_key: None = no
    auth. parallel: requests generated together (with max_queue, the bound on requests in flight); None: the
    model's (llmrun.load's `parallel`, its scheduler's slots)."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_queue: int = DEFAULT_MAX_QUEUE
    parallel: int | None = None


@dataclass
class _Job:
    """One choice of an admitted request: its generation (for chat, the ChatStream around it) and what its
    response chunks need. The choices of a request share its id and creation time."""

    chat: bool
    gen: Generation
    model: str
    tokenizer: Tokenizer
    id: str
    created: int
    index: int = 0  # the choice's index
    stream: ChatStream | None = None
    include_usage: bool = False
    echo: str = ""  # completions with echo: the prompt's text, sent first
    sent_logprobs: int = 0  # gen.token_logprobs already sent
    sent_chars: int = 0  # completion text already sent (legacy logprobs' text_offset)
    source: Iterator[str | ChatDelta] = field(init=False)

    def __post_init__(self) -> None:
        self.source = self.pieces()

    def logprobs(self) -> dict[str, Any] | None:
        """The logprobs of the tokens generated since the last call (None when not asked for)."""
        if self.gen.logprobs is None:
            return None
        entries = self.gen.token_logprobs[self.sent_logprobs:]
        self.sent_logprobs += len(entries)
        if self.chat:
            return chat_logprobs(self.tokenizer, entries)
        return completion_logprobs(self.tokenizer, entries, self.sent_chars)

    @property
    def finish_reason(self) -> str | None:
        """The generation's, or the ChatStream's ("tool_calls" when the reply called tools)."""
        return self.stream.finish_reason if self.stream is not None else self.gen.finish_reason

    def envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def pieces(self) -> Iterator[str | ChatDelta]:
        """What the response is made of as it is generated: ChatDeltas (answer or reasoning) for chat, text
        for completions."""
        return self.stream.deltas() if self.stream is not None else self.gen

    def chunk(self, piece: str | ChatDelta | None = None, finish_reason: str | None = None, opening: bool = False
              ) -> dict[str, Any]:
        """A streamed chunk of this choice: the opening one (chat: the assistant role; completions: the echoed
        prompt), one with `piece` (chat: its answer text as "content", its reasoning as "reasoning_content",
        as vLLM and llama.cpp's server stream them), or the closing one with `finish_reason`."""
        choice: dict[str, Any] = {"index": self.index}
        if self.chat:
            if opening:
                choice["delta"] = {"role": "assistant", "content": ""}
            elif isinstance(piece, ChatDelta) and piece.tool_calls:  # each call whole, in one chunk
                choice["delta"] = {"tool_calls": [{"index": k, **call} for k, call in enumerate(piece.tool_calls)]}
            elif isinstance(piece, ChatDelta):
                choice["delta"] = {"reasoning_content": piece.reasoning} if piece.reasoning else \
                    {"content": piece.content}
            else:
                choice["delta"] = {} if piece is None else {"content": piece}
        else:
            assert not isinstance(piece, ChatDelta)
            choice["text"] = piece or ""
        choice["logprobs"] = None if opening else self.logprobs()
        choice["finish_reason"] = finish_reason
        if not self.chat:
            self.sent_chars += len(piece or "")
        body = self.envelope([choice], chunk=True)
        if self.include_usage:
            body["usage"] = None
        return body

    def choice(self, text: str) -> dict[str, Any]:
        """This choice of a non-streaming response, for its generated `text` (chat: the ChatStream's message,
        with "reasoning_content" when the reply had reasoning)."""
        choice: dict[str, Any] = {"index": self.index}
        if self.chat:
            choice["message"] = self.stream.message if self.stream is not None else \
                {"role": "assistant", "content": text}
        else:
            self.sent_chars = len(self.echo)
            choice["text"] = self.echo + text
        choice["logprobs"] = self.logprobs()
        choice["finish_reason"] = self.finish_reason
        return choice


@dataclass
class _Request:
    """An admitted generation request: its choices, and what the metrics record when it ends."""

    endpoint: str
    streaming: bool
    started: float = field(default_factory=time.perf_counter)
    jobs: list[_Job] = field(default_factory=list)
    first_piece: float | None = None  # when the first piece of any choice arrived (time to first token)
    outcome: str = "cancelled"  # a stream's, until it has sent everything
    handed_over: bool = False  # a streaming response began: it counts the request itself when it ends
    ended: bool = False

    def cancel(self) -> None:
        """Cancels every choice (a client gone, an error): each frees its slot within a step."""
        for job in self.jobs:
            job.gen.cancel()

    def usage(self) -> dict[str, int]:
        """The prompt counted once, the completion tokens of all choices together (as OpenAI counts n > 1)."""
        return usage(len(self.jobs[0].gen.prompt), sum(len(job.gen.tokens) for job in self.jobs))

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk of `stream_options.include_usage`: no choices, the usage."""
        return {**self.jobs[0].envelope([], chunk=True), "usage": self.usage()}

    def response(self, texts: Sequence[str]) -> dict[str, Any]:
        """The whole non-streaming response: a choice per job."""
        choices = [job.choice(text) for job, text in zip(self.jobs, texts, strict=True)]
        return {**self.jobs[0].envelope(choices, chunk=False), "usage": self.usage()}


_Message = tuple[_Job, list[str | ChatDelta], bool, Exception | None]  # a pump's hop: pieces, ended, failure


class _Metrics:
    """The server's Prometheus metrics, in a registry of its own (several servers in a process, as in the
    tests, do not mix their counts). The gauges of the model's scheduler are read when /metrics is scraped."""

    def __init__(self, server: ModelServer) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llmrun_requests", "Requests to the API endpoints, by endpoint and outcome (ok, "
                                "cancelled: the client went away, client_error: 4xx, busy: 503, server_error)",
                                ["endpoint", "outcome"], registry=r)
        self.prompt_tokens = Counter("llmrun_prompt_tokens", "Prompt tokens of completion and chat requests "
                                     "(once per request, as `usage` counts them)", registry=r)
        self.generated_tokens = Counter("llmrun_generation_tokens", "Tokens generated, all choices", registry=r)
        self.ttft = Histogram("llmrun_time_to_first_token_seconds", "From admission to the first generated text "
                              "of a completion or chat request", ["endpoint"], buckets=TTFT_BUCKETS, registry=r)
        self.duration = Histogram("llmrun_request_duration_seconds", "From admission to the end of the answer "
                                  "(a stream's last event)", ["endpoint"], buckets=DURATION_BUCKETS, registry=r)
        r.register(_ServingCollector(server))

    def request_done(self, endpoint: str, outcome: str, started: float) -> None:
        self.requests.labels(endpoint=endpoint, outcome=outcome).inc()
        self.duration.labels(endpoint=endpoint).observe(time.perf_counter() - started)


class _ServingCollector:
    """The gauges a scrape reads from the server and the model's scheduler (Model.serving_stats)."""

    def __init__(self, server: ModelServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        s = self.server.model.serving_stats()
        yield GaugeMetricFamily("llmrun_requests_in_flight", "Requests admitted and not yet answered (at most "
                                "parallel + max_queue)", value=self.server.in_flight)
        yield GaugeMetricFamily("llmrun_requests_waiting", "Generations waiting for a slot (queue depth)",
                                value=s.waiting)
        yield GaugeMetricFamily("llmrun_slots_busy", "Slots generating or prefilling", value=s.active)
        yield GaugeMetricFamily("llmrun_slots_total", "Slots: sequences generated together", value=s.parallel)
        yield GaugeMetricFamily("llmrun_kv_blocks_used", "KV cache blocks in use", value=s.kv_blocks_used)
        yield GaugeMetricFamily("llmrun_kv_blocks_total", "KV cache blocks in the pool", value=s.kv_blocks_total)
        yield GaugeMetricFamily("llmrun_kv_block_size", "Positions per KV cache block", value=s.kv_block_size)
        yield CounterMetricFamily("llmrun_preemptions", "Sequences sent back to the queue because the KV pool "
                                  "was full", value=s.preempted)
        yield CounterMetricFamily("llmrun_prompt_tokens_computed", "Prompt tokens computed (the others came "
                                  "from the cache or a prefix copy)", value=s.computed_prompt_tokens)


def _outcome(status: int) -> str:
    if status == CLIENT_CLOSED:
        return "cancelled"
    if status == 503:
        return "busy"
    return "client_error" if status < 500 else "server_error"


def _pull(source: Iterator[str | ChatDelta], seconds: float, ready: Callable[[], bool] = lambda: False
          ) -> tuple[list[str | ChatDelta], bool]:
    """The next pieces of `source`: at least one (unless it ends), more while `seconds` last or while `ready()`
    says more are waiting (the scheduler generates ahead of a client: one hop takes them all); and whether it
    ended. Runs in a worker thread."""
    pieces: list[str | ChatDelta] = []
    deadline = time.perf_counter() + seconds
    for piece in source:
        pieces.append(piece)
        if time.perf_counter() >= deadline and not ready():
            return pieces, False
    return pieces, True


def _sse(data: dict[str, Any] | str) -> str:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"data: {text}\n\n"


async def _until_disconnected(receive: Receive) -> None:
    """Returns when the client has gone away (the request body has been read: only the disconnect is left)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_disconnected(receive: Receive, work: Callable[[], Awaitable[T]],
                               on_disconnect: Callable[[], None] | None = None) -> T:
    """The result of `work()`, watching the connection meanwhile. If the client goes away first: with
    `on_disconnect` (which cancels the generation, so that `work` ends within a step), that is called and
    `work` finishes; without, `work` is cancelled. Either way APIError(CLIENT_CLOSED) then."""
    outcome: list[Any] = []
    gone = False
    async with anyio.create_task_group() as group:
        async def watch() -> None:
            nonlocal gone
            await _until_disconnected(receive)
            gone = True
            if on_disconnect is None:
                group.cancel_scope.cancel()
            else:
                on_disconnect()

        group.start_soon(watch)
        try:
            outcome.append(await work())
        except Exception as e:  # kept out of the task group (which would wrap it in an ExceptionGroup)
            outcome.append(e)
        group.cancel_scope.cancel()
    if gone:
        raise APIError(CLIENT_CLOSED, "the client closed the connection")
    if isinstance(outcome[0], Exception):
        raise outcome[0]
    return outcome[0]  # type: ignore[no-any-return]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


async def _gather(calls: Sequence[Callable[[], Awaitable[T]]]) -> list[T]:
    """The results of the calls, run concurrently; after all have ended, the first exception one raised, as it
    is (not wrapped in an ExceptionGroup, so that an APIError still becomes its status)."""
    if len(calls) == 1:
        return [await calls[0]()]
    results: list[Any] = [None] * len(calls)
    errors: list[Exception] = []

    async def run(i: int) -> None:
        try:
            results[i] = await calls[i]()
        except Exception as e:
            errors.append(e)

    async with anyio.create_task_group() as group:
        for i in range(len(calls)):
            group.start_soon(run, i)
    if errors:
        raise errors[0]
    return results


class _SlotStream(StreamingResponse):
    """A streaming response whose events come from `producers` (tasks run beside it, one per choice still
    generating) and that, however it ends (finished, client gone, error), stops the producers, closes its event
    stream and then calls `on_close` (which closes the generations and frees their slots). A client that goes
    away meanwhile gets `on_disconnect` called at once (which cancels the generations: the hops in progress
    end within a step); so does a response that fails."""

    def __init__(self, events: AsyncIterator[str], producers: Sequence[Callable[[], Awaitable[None]]],
                 on_close: Callable[[], None], on_disconnect: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events
        self._producers = producers
        self._on_close = on_close
        self._on_disconnect = on_disconnect

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            error: Exception | None = None
            async with anyio.create_task_group() as group:
                async def watch() -> None:
                    await _until_disconnected(receive)
                    self._on_disconnect()

                group.start_soon(watch)
                for producer in self._producers:
                    group.start_soon(producer)
                try:
                    await super().__call__(scope, receive, send)
                except Exception as e:  # kept out of the task group (which would wrap it in an ExceptionGroup)
                    error = e
                finally:
                    # however it ended (the client gone, an error, or one choice failing while others still run),
                    # the producers' hops end within a step instead of running on; ended generations are unmoved
                    self._on_disconnect()
                    group.cancel_scope.cancel()
            if error is not None:
                raise error
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()  # type: ignore[attr-defined]
            self._on_close()


class ModelServer:
    """The ASGI app (`.app`) serving one Model. The model is not closed by the server; its batching thread is
    started and stopped with the app (the ASGI lifespan)."""

    def __init__(self, model: Model, config: ServerConfig) -> None:
        self.model = model
        self.config = config
        self.created = now()
        self.parallel = config.parallel if config.parallel is not None else model.serving_stats().parallel
        self.in_flight = 0  # requests admitted and not yet answered
        self.finished = 0  # generations run to their end
        self.stopped = 0  # generations stopped early (client gone, error)
        self.last_stats: GenerationStats | None = None  # the last generation's token counts and speeds
        self._limiter: anyio.CapacityLimiter | None = None
        self.metrics = _Metrics(self)
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/metrics", self.prometheus, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.model_info, methods=["GET"]),
                Route("/v1/completions", self._measured("completions", self.completions), methods=["POST"]),
                Route("/v1/chat/completions", self._measured("chat_completions", self.chat_completions),
                      methods=["POST"]),
                Route("/v1/embeddings", self._measured("embeddings", self.embeddings), methods=["POST"]),
            ],
            exception_handlers={APIError: self._api_error, HTTPException: self._http_error,
                                Exception: self._server_error},
            lifespan=self._lifespan)

    @property
    def capacity(self) -> int:
        """Requests in flight at most: `parallel` generating, `max_queue` waiting for a slot."""
        return self.parallel + self.config.max_queue

    @contextlib.asynccontextmanager
    async def _lifespan(self, app: Starlette) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(self.model.warm_up)  # the first request does not page the weights in
        await anyio.to_thread.run_sync(self.model.start_batching)
        try:
            yield
        finally:
            await anyio.to_thread.run_sync(self.model.stop_batching)

    def _threads(self) -> anyio.CapacityLimiter:
        """The worker threads' limiter: every choice in flight may block a thread on its generation (waiting
        for a slot, then a step), so anyio's default of 40 threads could hold back the hops of the generating
        ones behind waiting ones; this one has room for all of them (threads are made as needed)."""
        if self._limiter is None:  # made here, in the event loop, where anyio wants it made
            self._limiter = anyio.CapacityLimiter(self.capacity * MAX_CHOICES + 8)
        return self._limiter

    async def _in_thread(self, func: Callable[..., T], *args: Any) -> T:
        return await anyio.to_thread.run_sync(func, *args, limiter=self._threads())

    # --- endpoints ------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """Liveness and load, without authentication (for load balancers): {"status": "ok", "slots_idle",
        "slots_processing", "requests_waiting"} (llama.cpp's server's names)."""
        s = await self._in_thread(self.model.serving_stats)  # it may wait for a step: not on the event loop
        return JSONResponse({"status": "ok", "slots_idle": max(s.parallel - s.active, 0),
                             "slots_processing": s.active, "requests_waiting": s.waiting})

    async def prometheus(self, request: Request) -> Response:
        """The metrics in the Prometheus text format, without authentication (as /health: for scrapers; they
        count requests and tokens, and show no prompt or answer)."""
        text = await self._in_thread(generate_latest, self.metrics.registry)  # reads serving_stats: as /health
        return Response(text, media_type=CONTENT_TYPE_LATEST)

    async def models(self, request: Request) -> Response:
        self._authorize(request)
        return JSONResponse({"object": "list", "data": [model_card(self.config.model_name, self.created)]})

    async def model_info(self, request: Request) -> Response:
        self._authorize(request)
        self._check_model(request.path_params["model_id"])
        return JSONResponse(model_card(self.config.model_name, self.created))

    async def completions(self, request: Request) -> Response:
        self._authorize(request)
        req = parse_completion(await self._read_json(request))
        return await self._serve(request, req, "completions")

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        req = parse_chat(await self._read_json(request))
        return await self._serve(request, req, "chat_completions")

    async def embeddings(self, request: Request) -> Response:
        """OpenAI's /v1/embeddings: one vector per input, pooled as the model says (Model.pooling), normalized.
        It counts as a request in flight, but needs no slot (Model.embed is thread-safe)."""
        self._authorize(request)
        req = parse_embeddings(await self._read_json(request))
        dim = self.model.info.dim
        if req.dimensions is not None and req.dimensions != dim:
            raise bad_request(f"dimensions must be the model's {dim} (llmrun does not shorten embeddings), got "
                              f"{req.dimensions}", param="dimensions")
        self._admit()
        try:
            vectors, n_tokens = await self._in_thread(self._embed, req)
        finally:
            self.in_flight -= 1
        return JSONResponse(embedding_response(vectors, req.encoding_format, self.config.model_name, n_tokens))

    def _measured(self, endpoint: str, handler: Callable[[Request], Awaitable[Response]]
                  ) -> Callable[[Request], Awaitable[Response]]:
        """`handler` with its outcome and duration counted; a stream counts itself when it ends."""
        async def measured(request: Request) -> Response:
            started = time.perf_counter()
            try:
                response = await handler(request)
            except APIError as e:
                self.metrics.request_done(endpoint, _outcome(e.status), started)
                raise
            except Exception:
                self.metrics.request_done(endpoint, "server_error", started)
                raise
            if not isinstance(response, _SlotStream):
                self.metrics.request_done(endpoint, "ok", started)
            return response

        return measured

    def _embed(self, req: EmbeddingRequest) -> tuple[Any, int]:
        """The request's vectors and its token count; 400 for what the model refuses."""
        try:
            if self.model.pooling == "none":
                raise bad_request("the model's pooling is 'none' (a vector per token), which /v1/embeddings "
                                  "cannot return", param="input")
            docs = [self.model.tokenize(t) if isinstance(t, str) else t for t in req.input]
            return self.model.embed(docs), sum(len(d) for d in docs)
        except ContextOverflowError as e:
            raise bad_request(str(e), param="input", code="context_length_exceeded") from None
        except KVCacheFullError as e:  # the generations running now hold the KV pool: a retry (here or on another
            raise APIError(503, f"the server is busy: {e}; try again later", type="server_error",  # replica) will do
                           code="server_busy") from None
        except KernelError:
            raise
        except LLMError as e:  # ids outside the vocabulary, a pooling llmrun cannot do ...
            raise bad_request(str(e), param="input") from None

    # --- the request's way through -------------------------------------------------------------------------

    def _authorize(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), key.encode()):
            raise APIError(401, "missing or incorrect API key: send the header 'Authorization: Bearer KEY'",
                           code="invalid_api_key")

    def _check_model(self, name: str) -> None:
        """For GET /v1/models/{id}. Generation requests may name any model: this server has only the one (as
        llama-server, so that a client configured for another model's name works as it is)."""
        if name != self.config.model_name:
            raise APIError(404, f"the model {name!r} does not exist; this server serves "
                                f"{self.config.model_name!r}", param="model", code="model_not_found")

    async def _read_json(self, request: Request) -> object:
        """The body as JSON: 413 past max_body_bytes (announced or received), 400 if it is not JSON."""
        limit = self.config.max_body_bytes
        too_large = APIError(413, f"the request body is larger than {limit} bytes", code="request_too_large")
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                raise bad_request(f"invalid Content-Length header {length[:40]!r}")
            if int(length) > limit:
                raise too_large
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_large
        except ClientDisconnect:
            raise APIError(CLIENT_CLOSED, "the client closed the connection before sending the whole request") \
                from None
        try:
            return json.loads(body, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise bad_request(f"the request body is not valid JSON: {e}") from None

    async def _serve(self, request: Request, req: GenerationRequest, endpoint: str) -> Response:
        """Admits a checked request: starts its generations (the scheduler queues them for slots), waits for
        the first hop of each, then answers: a stream (each choice's pieces as they come) or the whole
        response."""
        if req.max_tokens is not None:
            req.max_tokens = min(req.max_tokens, self.model.info.n_ctx)  # the context ends it anyway
        self._admit()
        state = _Request(endpoint=endpoint, streaming=req.stream)
        try:
            state.jobs = await self._in_thread(self._start, req)  # tokenizing can take a while
            # The first hop of each choice (the prompt and its first piece) happens before answering: its errors
            # get a status. A client that leaves meanwhile, waiting for a slot or not, cancels the generations.
            firsts = await _unless_disconnected(request.receive, partial(self._first_hops, state),
                                                on_disconnect=state.cancel)
            if req.stream:
                send: MemoryObjectSendStream[_Message]
                receive: MemoryObjectReceiveStream[_Message]
                send, receive = anyio.create_memory_object_stream(len(state.jobs))
                producers = [partial(self._pump, state, job, send.clone())
                             for job, (_, done) in zip(state.jobs, firsts, strict=True) if not done]
                send.close()  # the stream of messages ends when the last producer's clone closes
                response = _SlotStream(self._events(state, firsts, receive), producers,
                                       on_close=partial(self._finish, state), on_disconnect=state.cancel)
                state.handed_over = True
                return response
            texts = await _unless_disconnected(request.receive, partial(self._collect_all, state, firsts),
                                               on_disconnect=state.cancel)
            return JSONResponse(state.response(texts))
        finally:
            if not state.handed_over:
                self._finish(state)

    def _start(self, req: GenerationRequest) -> list[_Job]:
        """Tokenizes the request and prepares its choices' generations (nothing is computed yet); 4xx for bad
        input. With a seed, choice i samples with seed + i: the choices differ, and each is reproducible."""
        chat = isinstance(req, ChatRequest)
        request_id, created = new_id("chatcmpl" if chat else "cmpl"), now()
        echo = ""
        if isinstance(req, CompletionRequest) and req.echo:
            echo = req.prompt if isinstance(req.prompt, str) else self.model.detokenize(req.prompt)
        jobs: list[_Job] = []
        try:
            for i in range(req.n):
                sampling = dict(req.sampling)
                if sampling.get("seed") is not None:
                    sampling["seed"] = (sampling["seed"] + i) % SEED_MODULUS
                started = self._start_one(req, sampling)
                stream = started if isinstance(started, ChatStream) else None
                gen = started.generation if isinstance(started, ChatStream) else started
                jobs.append(_Job(chat=chat, gen=gen, model=self.config.model_name, tokenizer=self.model.tokenizer,
                                 id=request_id, created=created, index=i, stream=stream,
                                 include_usage=req.include_usage, echo=echo))
        except BaseException:
            for job in jobs:
                job.gen.close()
            raise
        return jobs

    def _start_one(self, req: GenerationRequest, sampling: dict[str, Any]) -> Generation | ChatStream:
        kwargs = dict(max_tokens=req.max_tokens, logprobs=req.logprobs, response_format=req.response_format,
                      **sampling)
        try:
            if isinstance(req, ChatRequest):
                return self.model.chat_stream(req.messages, enable_thinking=req.enable_thinking, tools=req.tools,
                                              tool_choice=req.tool_choice, **kwargs)
            assert isinstance(req, CompletionRequest)
            return self.model.stream(req.prompt, **kwargs)
        except ContextOverflowError as e:
            param = "messages" if isinstance(req, ChatRequest) else "prompt"
            raise bad_request(str(e), param=param, code="context_length_exceeded") from None
        except KernelError:
            raise
        except LLMError as e:  # bad token ids, sampling values, a conversation the template refuses, a schema ...
            raise bad_request(str(e), param=e.param if e.param in ("response_format", "tools", "tool_choice")
                              else None) from None

    def _admit(self) -> None:
        """Counts a request in, or refuses it with 503 when `capacity` are in flight (a load balancer then
        tries another replica; a client retries later)."""
        if self.in_flight >= self.capacity:
            raise APIError(503, f"the server is busy ({self.in_flight} requests in flight); try again later",
                           type="server_error", code="server_busy")
        self.in_flight += 1

    def _finish(self, state: _Request) -> None:
        """Ends a request (once): closes its generations, counts its tokens (and a stream's outcome), lets the
        next request in."""
        if state.ended:
            return
        state.ended = True
        self.in_flight -= 1
        for job in state.jobs:
            self._release(job)
        if state.jobs:
            self.metrics.prompt_tokens.inc(len(state.jobs[0].gen.prompt))
            self.metrics.generated_tokens.inc(sum(len(job.gen.tokens) for job in state.jobs))
        if state.handed_over:  # a stream that began counts itself; anything else is counted by _measured
            self.metrics.request_done(state.endpoint, state.outcome, state.started)

    def _release(self, job: _Job) -> None:
        """Ends a choice: closes its generation if it did not finish (which frees its slot), logs it."""
        gen = job.gen
        if gen.finish_reason in (None, "cancelled"):
            gen.close()
            self.stopped += 1
        else:
            self.finished += 1
        s = self.last_stats = gen.stats
        log.info("%s %s/%d: %d prompt tokens (%d from the cache), %d generated, finish %s, %.1f tokens/s",
                 "chat" if job.chat else "completion", job.id, job.index, s.prompt_tokens, s.reused_tokens,
                 s.generated_tokens, gen.finish_reason or "stopped early", s.decode_tokens_per_second)

    async def _hop(self, state: _Request, job: _Job, seconds: float) -> tuple[list[str | ChatDelta], bool]:
        """The next pieces of a choice (_pull in a worker thread); the first piece of the request is its time
        to first token."""
        pieces, done = await self._in_thread(_pull, job.source, seconds, job.gen.ready)
        if pieces and state.first_piece is None:
            state.first_piece = time.perf_counter()
            self.metrics.ttft.labels(endpoint=state.endpoint).observe(state.first_piece - state.started)
        return pieces, done

    async def _first_hops(self, state: _Request) -> list[tuple[list[str | ChatDelta], bool]]:
        return await _gather([partial(self._hop, state, job, 0.0) for job in state.jobs])

    async def _collect_all(self, state: _Request, firsts: list[tuple[list[str | ChatDelta], bool]]) -> list[str]:
        """The whole text of each choice of a non-streaming request (chat: its answer's text; the ChatStream
        keeps the reasoning). The caller watches the client: one that goes away cancels the generations."""
        async def collect(job: _Job, parts: list[str | ChatDelta], done: bool) -> str:
            try:
                while not done:
                    pieces, done = await self._hop(state, job, HOP_SECONDS)
                    parts += pieces
            except BaseException:
                state.cancel()  # the others' answers are not wanted without this one
                raise
            return "".join(p.content if isinstance(p, ChatDelta) else p for p in parts)

        return await _gather([partial(collect, job, list(pieces), done)
                              for job, (pieces, done) in zip(state.jobs, firsts, strict=True)])

    async def _pump(self, state: _Request, job: _Job, send: MemoryObjectSendStream[_Message]) -> None:
        """A choice of a streaming request: its hops, sent to the response's events as they come."""
        async with send:
            error: Exception | None = None
            try:
                done = False
                while not done:
                    pieces, done = await self._hop(state, job, 0.0)
                    await send.send((job, pieces, done, None))
                return
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):  # the response has ended
                return
            except Exception as e:  # reported in the stream by _events
                error = e
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                await send.send((job, [], True, error))

    async def _events(self, state: _Request, firsts: list[tuple[list[str | ChatDelta], bool]],
                      messages: MemoryObjectReceiveStream[_Message]) -> AsyncIterator[str]:
        """The server-sent events of a streaming request: each chunk one choice's (by its index), the choices
        interleaved as their pieces come, each ending with its own finish chunk; then the usage (when asked
        for) and `data: [DONE]`."""
        async with messages:
            for job in state.jobs:
                if job.chat or job.echo:
                    yield _sse(job.chunk(job.echo or None, opening=True))
            for job, (pieces, done) in zip(state.jobs, firsts, strict=True):
                for piece in pieces:
                    yield _sse(job.chunk(piece))
                if done:
                    yield _sse(job.chunk(None, finish_reason=job.finish_reason))
            async for job, pieces, done, error in messages:
                if isinstance(error, LLMError):  # the status line is sent: report the error in the stream
                    log.error("generation failed: %s", error, exc_info=error)
                    state.outcome = "server_error"
                    yield _sse(error_body(f"generation failed: {error}", type="server_error"))
                    return
                if error is not None:
                    state.outcome = "server_error"
                    raise error
                for piece in pieces:
                    yield _sse(job.chunk(piece))
                if done:
                    yield _sse(job.chunk(None, finish_reason=job.finish_reason))
        if state.jobs[0].include_usage:
            yield _sse(state.usage_chunk())
        state.outcome = "ok"
        yield _sse("[DONE]")

    # --- errors ---------------------------------------------------------------------------------------------

    async def _api_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        if exc.status == CLIENT_CLOSED:  # nobody reads the answer; not a server error
            log.info("%s %s: client disconnected (%d): %s", request.method, request.url.path, exc.status, exc.message)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def _http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(exc.status_code,
                                                                                            str(exc.detail))
        return JSONResponse(error_body(message), status_code=exc.status_code, headers=exc.headers)

    async def _server_error(self, request: Request, exc: Exception) -> Response:
        log.error("internal error on %s %s: %r", request.method, request.url.path, exc)
        return JSONResponse(error_body(f"internal server error: {exc}", type="server_error"), status_code=500)


def create_app(model: Model, config: ServerConfig) -> Starlette:
    """The ASGI application serving `model` (for uvicorn or any ASGI server; run its lifespan, which starts the
    model's batching thread)."""
    return ModelServer(model, config).app


@contextlib.contextmanager
def serving_in_thread(app: Starlette, host: str = "127.0.0.1", log_level: str | None = None) -> Iterator[str]:
    """`app` served by uvicorn in a thread of this process on a free port of `host` (its lifespan run as `llmrun
    serve` runs it), for `llmrun bench --concurrency` and the tests; yields the base URL. log_level: uvicorn's,
    None to leave its loggers as they are. ConnectionError if the server does not start."""
    import uvicorn

    sock = socket.socket()
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, log_level=log_level, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="llmrun-server", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not server.started:
            raise ConnectionError("the in-process server did not start")
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def serve(model: Model, config: ServerConfig, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "info") -> None:
    """Serves `model` over HTTP until interrupted (uvicorn)."""
    import uvicorn

    i = model.info
    server = ModelServer(model, config)
    s = model.serving_stats()
    log.info("serving %s as %r (%s, %.2fM parameters, %s): context %d tokens (trained for %d), threads %d, "
             "batch %d, %s kernels; %d requests generated together (%d more queued at most), a KV pool of %d "
             "positions", i.path, config.model_name, i.format, i.n_params / 1e6, i.dtype, i.n_ctx, i.context_length,
             i.n_threads, i.n_batch, i.isa, server.parallel, config.max_queue, s.kv_blocks_total * s.kv_block_size)
    if config.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                    "(set --api-key or LLMRUN_API_KEY)", host)
    uvicorn.run(server.app, host=host, port=port, log_level=log_level)
