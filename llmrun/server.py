"""`llmrun serve`: an OpenAI-compatible HTTP server for one model (Starlette + uvicorn, the `server` extra).

Endpoints: GET /v1/models, GET /v1/models/{id}, POST /v1/completions, POST /v1/chat/completions (JSON, or
server-sent events with `"stream": true`), POST /v1/embeddings (Model.embed with the model's pooling),
GET /health. Request and response shapes: llmrun/openai_api.py.
A reasoning model's thinking (its reply's `<think>` block) is sent as `reasoning_content`, in the message
and in stream deltas apart from `content`, as vLLM and llama.cpp's server do.

Safety: the CLI binds 127.0.0.1 unless told otherwise; with an API key every endpoint but /health wants
`Authorization: Bearer KEY` (compared in constant time); bodies over `max_body_bytes` get 413 (by
Content-Length and by what actually arrives); every client mistake gets a 4xx with OpenAI's error body.

Concurrency: the model has one KV cache, so requests take turns through a FIFO slot (a semaphore of one);
at most `max_queue` wait, later ones get 503. The generation runs in worker threads, a few tokens per hop,
so the event loop keeps answering (health checks, new clients, disconnects). Every request watches its
connection: a client that goes away (streaming or not, while generating or while queued) cancels its
generation (Generation.cancel: the worker stops within one decode step or prompt batch) or leaves the queue,
and the slot passes on. The KV cache keeps the previous request's tokens, so a request sharing a
prefix with it (a repeated system prompt, the next chat turn) only computes the rest.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import anyio.to_thread
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from .chat import ChatDelta, ChatStream
from .errors import ContextOverflowError, KernelError, LLMError
from .generate import Generation, GenerationStats
from .model import Model
from .openai_api import (
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


@dataclass(frozen=True)
class ServerConfig:
    """model_name: what /v1/models lists and responses name (requests may name any model). api_key: None = no
    auth."""

    model_name: str
    api_key: str | None = None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_queue: int = DEFAULT_MAX_QUEUE


@dataclass
class _Job:
    """One admitted request: its generation (for chat, the ChatStream around it) and what its response chunks
    need."""

    chat: bool
    gen: Generation
    model: str
    tokenizer: Tokenizer
    stream: ChatStream | None = None
    include_usage: bool = False
    echo: str = ""  # completions with echo: the prompt's text, sent first
    id: str = ""
    created: int = field(default_factory=now)
    sent_logprobs: int = 0  # gen.token_logprobs already sent
    sent_chars: int = 0  # completion text already sent (legacy logprobs' text_offset)

    def __post_init__(self) -> None:
        self.id = new_id("chatcmpl" if self.chat else "cmpl")

    def logprobs(self) -> dict[str, Any] | None:
        """The logprobs of the tokens generated since the last call (None when not asked for)."""
        if self.gen.logprobs is None:
            return None
        entries = self.gen.token_logprobs[self.sent_logprobs:]
        self.sent_logprobs += len(entries)
        if self.chat:
            return chat_logprobs(self.tokenizer, entries)
        return completion_logprobs(self.tokenizer, entries, self.sent_chars)

    def usage(self) -> dict[str, int]:
        return usage(len(self.gen.prompt), len(self.gen.tokens))

    @property
    def finish_reason(self) -> str | None:
        """The generation's, or the ChatStream's ("tool_calls" when the reply called tools)."""
        return self.stream.finish_reason if self.stream is not None else self.gen.finish_reason

    def _envelope(self, choices: list[dict[str, Any]], chunk: bool) -> dict[str, Any]:
        kind = ("chat.completion.chunk" if chunk else "chat.completion") if self.chat else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def pieces(self) -> Iterator[str | ChatDelta]:
        """What the response is made of as it is generated: ChatDeltas (answer or reasoning) for chat, text
        for completions."""
        return self.stream.deltas() if self.stream is not None else self.gen

    def chunk(self, piece: str | ChatDelta | None = None, finish_reason: str | None = None, opening: bool = False
              ) -> dict[str, Any]:
        """A streamed chunk: the opening one (chat: the assistant role; completions: the echoed prompt), one with
        `piece` (chat: its answer text as "content", its reasoning as "reasoning_content", as vLLM and
        llama.cpp's server stream them), or the closing one with `finish_reason`."""
        choice: dict[str, Any] = {"index": 0}
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
        body = self._envelope([choice], chunk=True)
        if self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self) -> dict[str, Any]:
        """The last chunk of `stream_options.include_usage`: no choices, the usage."""
        return {**self._envelope([], chunk=True), "usage": self.usage()}

    def response(self, text: str) -> dict[str, Any]:
        """The whole non-streaming response for the generated `text` (chat: the ChatStream's message, with
        "reasoning_content" when the reply had reasoning)."""
        choice: dict[str, Any] = {"index": 0}
        if self.chat:
            choice["message"] = self.stream.message if self.stream is not None else \
                {"role": "assistant", "content": text}
        else:
            self.sent_chars = len(self.echo)
            choice["text"] = self.echo + text
        choice["logprobs"] = self.logprobs()
        choice["finish_reason"] = self.finish_reason
        return {**self._envelope([choice], chunk=False), "usage": self.usage()}


def _pull(source: Iterator[str | ChatDelta], seconds: float) -> tuple[list[str | ChatDelta], bool]:
    """The next pieces of `source`: at least one (unless it ends), more while `seconds` last; and whether it
    ended. Runs in a worker thread."""
    pieces: list[str | ChatDelta] = []
    deadline = time.perf_counter() + seconds
    for piece in source:
        pieces.append(piece)
        if time.perf_counter() >= deadline:
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


class _SlotStream(StreamingResponse):
    """A streaming response that, however it ends (finished, client gone, error), closes its event stream
    and then calls `on_close` (which closes the generation and frees the slot). A client that goes away
    meanwhile gets `on_disconnect` called at once (which cancels the generation: the hop in progress ends
    within a step)."""

    def __init__(self, events: AsyncIterator[str], on_close: Callable[[], None],
                 on_disconnect: Callable[[], None]) -> None:
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events
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
                try:
                    await super().__call__(scope, receive, send)
                except Exception as e:  # kept out of the task group (which would wrap it in an ExceptionGroup)
                    error = e
                finally:
                    group.cancel_scope.cancel()
            if error is not None:
                raise error
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()  # type: ignore[attr-defined]
            self._on_close()


class ModelServer:
    """The ASGI app (`.app`) serving one Model. The model is not closed by the server."""

    def __init__(self, model: Model, config: ServerConfig) -> None:
        self.model = model
        self.config = config
        self.created = now()
        self._slot = anyio.Semaphore(1)
        self.waiting = 0  # requests queued for the slot
        self.finished = 0  # generations run to their end
        self.stopped = 0  # generations stopped early (client gone, error)
        self.last_stats: GenerationStats | None = None  # the last request's token counts and speeds
        self.app = Starlette(
            routes=[
                Route("/health", self.health, methods=["GET"]),
                Route("/v1/models", self.models, methods=["GET"]),
                Route("/v1/models/{model_id:path}", self.model_info, methods=["GET"]),
                Route("/v1/completions", self.completions, methods=["POST"]),
                Route("/v1/chat/completions", self.chat_completions, methods=["POST"]),
                Route("/v1/embeddings", self.embeddings, methods=["POST"]),
            ],
            exception_handlers={APIError: self._api_error, HTTPException: self._http_error,
                                Exception: self._server_error})

    # --- endpoints ------------------------------------------------------------------------------------------

    async def health(self, request: Request) -> Response:
        """Liveness, without authentication: {"status": "ok"}."""
        return JSONResponse({"status": "ok"})

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
        return await self._serve(request, req)

    async def chat_completions(self, request: Request) -> Response:
        self._authorize(request)
        req = parse_chat(await self._read_json(request))
        return await self._serve(request, req)

    async def embeddings(self, request: Request) -> Response:
        """OpenAI's /v1/embeddings: one vector per input, pooled as the model says (Model.pooling), normalized.
        It takes its turn in the slot like a generation (the model has one KV cache)."""
        self._authorize(request)
        req = parse_embeddings(await self._read_json(request))
        dim = self.model.info.dim
        if req.dimensions is not None and req.dimensions != dim:
            raise bad_request(f"dimensions must be the model's {dim} (llmrun does not shorten embeddings), got "
                              f"{req.dimensions}", param="dimensions")
        await self._acquire()
        try:
            vectors, n_tokens = await anyio.to_thread.run_sync(self._embed, req)
        finally:
            self._slot.release()
        return JSONResponse(embedding_response(vectors, req.encoding_format, self.config.model_name, n_tokens))

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

    async def _serve(self, request: Request, req: GenerationRequest) -> Response:
        """Admits a checked request: waits for the slot, starts and runs its generation, answers it."""
        if req.max_tokens is not None:
            req.max_tokens = min(req.max_tokens, self.model.info.n_ctx)  # the context ends it anyway
        started = await anyio.to_thread.run_sync(self._start, req)  # tokenizing can take a while
        stream = started if isinstance(started, ChatStream) else None
        gen = started.generation if isinstance(started, ChatStream) else started
        job = _Job(chat=isinstance(req, ChatRequest), gen=gen, model=self.config.model_name,
                   tokenizer=self.model.tokenizer, stream=stream, include_usage=req.include_usage)
        source = job.pieces()
        if isinstance(req, CompletionRequest) and req.echo:
            job.echo = req.prompt if isinstance(req.prompt, str) else self.model.detokenize(req.prompt)
        try:
            await _unless_disconnected(request.receive, self._acquire)  # a client gone meanwhile leaves the queue
        except APIError as e:
            if e.status == CLIENT_CLOSED:
                gen.close()  # never ran: finish_reason "cancelled"
                self.stopped += 1
                log.info("%s %s: the client went away while queued", "chat" if job.chat else "completion", job.id)
            raise
        handed_over = False
        try:
            # The first hop (the prompt and the first token) happens before answering: its errors get a status.
            first = await _unless_disconnected(
                request.receive, lambda: anyio.to_thread.run_sync(_pull, source, 0.0 if req.stream else HOP_SECONDS),
                on_disconnect=gen.cancel)
            if req.stream:
                response = _SlotStream(self._events(job, source, *first), on_close=lambda: self._release(job),
                                       on_disconnect=gen.cancel)
                handed_over = True
                return response
            text = await _unless_disconnected(request.receive, lambda: self._collect(job, source, *first),
                                              on_disconnect=gen.cancel)
            return JSONResponse(job.response(text))
        finally:
            if not handed_over:
                self._release(job)

    def _start(self, req: GenerationRequest) -> Generation | ChatStream:
        """Tokenizes the request and prepares its generation (nothing is computed yet); 4xx for bad input."""
        kwargs = dict(max_tokens=req.max_tokens, logprobs=req.logprobs, response_format=req.response_format,
                      **req.sampling)
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

    async def _acquire(self) -> None:
        if self.waiting >= self.config.max_queue:
            raise APIError(503, f"the server is busy ({self.waiting} requests waiting); try again later",
                           type="server_error", code="server_busy")
        self.waiting += 1
        try:
            await self._slot.acquire()
        finally:
            self.waiting -= 1

    def _release(self, job: _Job) -> None:
        """Ends a request: closes its generation if it did not finish, logs it, frees the slot."""
        gen = job.gen
        if gen.finish_reason in (None, "cancelled"):
            gen.close()
            self.stopped += 1
        else:
            self.finished += 1
        s = self.last_stats = gen.stats
        log.info("%s %s: %d prompt tokens (%d from the cache), %d generated, finish %s, %.1f tokens/s",
                 "chat" if job.chat else "completion", job.id, s.prompt_tokens, s.reused_tokens,
                 s.generated_tokens, gen.finish_reason or "stopped early", s.decode_tokens_per_second)
        self._slot.release()

    async def _collect(self, job: _Job, source: Iterator[str | ChatDelta], pieces: list[str | ChatDelta],
                       done: bool) -> str:
        """The whole text of a non-streaming request (chat: its answer's text; the ChatStream keeps the
        reasoning). The caller watches the client: one that goes away cancels the generation."""
        parts = list(pieces)
        while not done:
            pieces, done = await anyio.to_thread.run_sync(_pull, source, HOP_SECONDS)
            parts += pieces
        return "".join(p.content if isinstance(p, ChatDelta) else p for p in parts)

    async def _events(self, job: _Job, source: Iterator[str | ChatDelta], pieces: list[str | ChatDelta],
                      done: bool) -> AsyncIterator[str]:
        """The server-sent events of a streaming request, ending with `data: [DONE]`."""
        if job.chat or job.echo:
            yield _sse(job.chunk(job.echo or None, opening=True))
        try:
            while True:
                for piece in pieces:
                    yield _sse(job.chunk(piece))
                if done:
                    break
                pieces, done = await anyio.to_thread.run_sync(_pull, source, 0.0)
        except LLMError as e:  # the status line is sent: report the error in the stream
            log.exception("generation failed")
            yield _sse(error_body(f"generation failed: {e}", type="server_error"))
            return
        yield _sse(job.chunk(None, finish_reason=job.finish_reason))
        if job.include_usage:
            yield _sse(job.usage_chunk())
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
    """The ASGI application serving `model` (for uvicorn or any ASGI server)."""
    return ModelServer(model, config).app


def serve(model: Model, config: ServerConfig, host: str = "127.0.0.1", port: int = 8080,
          log_level: str = "info") -> None:
    """Serves `model` over HTTP until interrupted (uvicorn)."""
    import uvicorn

    i = model.info
    log.info("serving %s as %r (%s, %.2fM parameters, %s): context %d tokens (trained for %d), threads %d, "
             "batch %d, %s kernels", i.path, config.model_name, i.format, i.n_params / 1e6, i.dtype, i.n_ctx,
             i.context_length, i.n_threads, i.n_batch, i.isa)
    if config.api_key is None and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("listening on %s without an API key: anyone who can reach this port can use the model "
                    "(set --api-key or LLMRUN_API_KEY)", host)
    uvicorn.run(ModelServer(model, config).app, host=host, port=port, log_level=log_level)
