"""A load generator for OpenAI-compatible servers (`llmrun serve`, llama.cpp's llama-server, vLLM ...):
C concurrent clients, each streaming completions of its own fixed prompt, measured from the client's side.

    from llmrun.loadtest import LoadConfig, run_load
    result = run_load(LoadConfig("http://127.0.0.1:8080", concurrency=4, requests_per_client=4))
    result.tokens_per_second, result.ttft_p50_s, result.ttft_p95_s, result.errors

Each client sends POST /v1/completions with "stream": true, "temperature": 0, "max_tokens": M and
"stream_options": {"include_usage": true}, one request after the other (a connection each),
R times (or until `duration_s` has passed). Client i always sends prompt i of `client_prompts(seed)`: words
drawn with a fixed seed, of mixed lengths, the same for every server and every concurrency level (a server
that keeps a prompt's KV cache between requests may skip recomputing it; every server gets the chance).

Measured:
- aggregate tokens/s: every completion token of the run over the wall time of the whole run (from the moment
  all clients start together until the last one's last stream ends);
- time to first token: request sent -> the first SSE chunk carrying text (p50 / p95 over all requests);
- per-request tokens/s: completion tokens / (request sent -> stream ended), and the decode rate after the
  first token;
- errors: HTTP statuses other than 200, connection failures, streams that end without `data: [DONE]`.
Completion tokens are counted from the usage chunk where the server sends one, else as the number of chunks
that carried text (one token per chunk for llama-server; `count_source` says which was used).

Standard library only (http.client and threads), so that it runs against any server from any environment (a
model served in this process, for `llmrun bench --concurrency`: llmrun.server.serving_in_thread).
"""

from __future__ import annotations

import http.client
import json
import math
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import InvalidArgumentError

USAGE, CHUNKS, MIXED = "usage", "chunks", "mixed"  # where a run's completion-token counts came from
DEFAULT_PROMPT_WORDS = (8, 64)
WARMUP_PROMPT = "Once upon a time"
# Common English words: every tokenizer splits them into a few tokens, so a prompt of n words is about n to
# 2n tokens whatever the vocabulary.
WORDS = ("the a and to of in was he she it they we you one day little big old new good bad happy sad "
         "dog cat bird tree house park sun moon star sky water fish boat car ball toy book friend mom dad "
         "girl boy king queen time way home school garden forest river hill road door window box cake "
         "apple bread milk red blue green yellow small tall fast slow warm cold bright dark loud quiet "
         "ran jumped played saw looked found made took gave said went came liked wanted helped smiled "
         "laughed walked talked opened closed ate drank slept sang danced climbed swam flew").split()


@dataclass(frozen=True)
class LoadConfig:
    """One load-generation run. url: the server's base URL (http://host:port, with or without /v1).
    requests_per_client: R requests each; duration_s instead: each client starts requests until that many
    seconds have passed (its last one runs to its end). prompt_words: (fewest, most) words of a client's
    prompt. warmup_requests: sent one at a time before the timed run, with a prompt no client uses."""

    url: str
    concurrency: int = 1
    requests_per_client: int = 4
    duration_s: float | None = None
    max_tokens: int = 64
    model: str = "default"
    api_key: str | None = None
    seed: int = 0
    prompt_words: tuple[int, int] = DEFAULT_PROMPT_WORDS
    warmup_requests: int = 1
    timeout_s: float = 600.0

    def check(self) -> None:
        if self.concurrency < 1:
            raise InvalidArgumentError(f"concurrency must be >= 1, got {self.concurrency}", param="concurrency")
        if self.duration_s is None and self.requests_per_client < 1:
            raise InvalidArgumentError(f"requests_per_client must be >= 1, got {self.requests_per_client}",
                                       param="requests_per_client")
        if self.duration_s is not None and not self.duration_s > 0:
            raise InvalidArgumentError(f"duration_s must be > 0, got {self.duration_s}", param="duration_s")
        if self.max_tokens < 1:
            raise InvalidArgumentError(f"max_tokens must be >= 1, got {self.max_tokens}", param="max_tokens")
        low, high = self.prompt_words
        if not 1 <= low <= high:
            raise InvalidArgumentError(f"prompt_words must be (low, high) with 1 <= low <= high, got "
                                       f"{self.prompt_words}", param="prompt_words")
        if self.warmup_requests < 0:
            raise InvalidArgumentError(f"warmup_requests must be >= 0, got {self.warmup_requests}",
                                       param="warmup_requests")
        _Endpoint.parse(self.url)


@dataclass(frozen=True)
class RequestResult:
    """One streamed request, timed from the moment it was sent (seconds)."""

    client: int
    ok: bool
    error: str | None
    completion_tokens: int
    count_source: str  # USAGE or CHUNKS
    text_chunks: int  # SSE chunks that carried text
    ttft_s: float | None  # request sent -> first chunk with text; None if no text came
    duration_s: float  # request sent -> stream ended (or the error)
    finish_reason: str | None
    prompt_tokens: int | None  # from the usage chunk, where there was one
    started_s: float  # when it was sent, from the start of the run

    @property
    def tokens_per_second(self) -> float:
        """Completion tokens over the whole request (waiting and prompt included)."""
        return self.completion_tokens / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float | None:
        """Tokens after the first over the time after the first: the decode rate this client saw."""
        if self.ttft_s is None or self.completion_tokens < 2 or self.duration_s <= self.ttft_s:
            return None
        return (self.completion_tokens - 1) / (self.duration_s - self.ttft_s)


@dataclass(frozen=True)
class LoadResult:
    """A run: every request (warm-ups not included) and the wall time of the whole run."""

    config: LoadConfig
    requests: list[RequestResult]
    wall_s: float

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.requests if r.ok]

    @property
    def errors(self) -> int:
        return sum(not r.ok for r in self.requests)

    @property
    def error_messages(self) -> list[str]:
        return [r.error or "" for r in self.requests if not r.ok]

    @property
    def completion_tokens(self) -> int:
        """Completion tokens of the requests that succeeded."""
        return sum(r.completion_tokens for r in self.ok)

    @property
    def count_source(self) -> str:
        """USAGE when every successful request's count came from a usage chunk, CHUNKS when none did, else
        MIXED."""
        sources = {r.count_source for r in self.ok}
        return sources.pop() if len(sources) == 1 else (MIXED if sources else USAGE)

    @property
    def tokens_per_second(self) -> float:
        """Aggregate generated tokens/s: all completion tokens over the run's wall time."""
        return self.completion_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def ttft_percentile_s(self, q: float) -> float | None:
        return percentile([r.ttft_s for r in self.ok if r.ttft_s is not None], q)

    @property
    def ttft_p50_s(self) -> float | None:
        return self.ttft_percentile_s(50)

    @property
    def ttft_p95_s(self) -> float | None:
        return self.ttft_percentile_s(95)

    @property
    def request_tokens_per_second_p50(self) -> float | None:
        """The median of the per-request tokens/s."""
        return percentile([r.tokens_per_second for r in self.ok], 50)

    def summary(self) -> dict[str, Any]:
        """The headline figures, JSON-ready (None where no request succeeded)."""
        def rounded(x: float | None, digits: int = 4) -> float | None:
            return None if x is None else round(x, digits)

        decode = [d for r in self.ok if (d := r.decode_tokens_per_second) is not None]
        return {"concurrency": self.config.concurrency, "requests": len(self.requests), "errors": self.errors,
                "completion_tokens": self.completion_tokens, "count_source": self.count_source,
                "wall_s": rounded(self.wall_s), "tokens_per_second": rounded(self.tokens_per_second, 2),
                "ttft_p50_s": rounded(self.ttft_p50_s), "ttft_p95_s": rounded(self.ttft_p95_s),
                "request_tokens_per_second_p50": rounded(self.request_tokens_per_second_p50, 2),
                "decode_tokens_per_second_p50": rounded(percentile(decode, 50), 2),
                "max_tokens": self.config.max_tokens,
                "finish_reasons": _counts(r.finish_reason for r in self.ok)}


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100) with linear interpolation between the closest ranks (numpy's default);
    None for no values."""
    if not values:
        return None
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = math.floor(k), math.ceil(k)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _counts(items: Iterator[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        out[str(item)] = out.get(str(item), 0) + 1
    return out


def client_prompts(n: int, seed: int = 0, words: tuple[int, int] = DEFAULT_PROMPT_WORDS) -> list[str]:
    """The prompts of clients 0 .. n-1: client i's depends only on (seed, i, words), so it is the same at every
    concurrency level. Lengths are drawn uniformly from words = (fewest, most)."""
    prompts = []
    for i in range(n):
        rng = random.Random(f"llmrun-loadtest:{seed}:{i}")
        length = rng.randint(*words)
        text = " ".join(rng.choice(WORDS) for _ in range(length))
        prompts.append(text[0].upper() + text[1:] + ".")
    return prompts


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    path: str  # /v1/completions under the base URL's path
    https: bool

    @staticmethod
    def parse(url: str) -> _Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InvalidArgumentError(f"the server URL must be http(s)://HOST[:PORT][/v1], got {url!r}",
                                       param="url")
        base = parts.path.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        https = parts.scheme == "https"
        return _Endpoint(parts.hostname, parts.port or (443 if https else 80), base + "/completions", https)

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=timeout)


@dataclass
class _Client:
    """One client: its prompt and its results."""

    index: int
    prompt: str
    endpoint: _Endpoint
    config: LoadConfig
    results: list[RequestResult] = field(default_factory=list)

    def body(self, prompt: str, max_tokens: int) -> bytes:
        return json.dumps({"model": self.config.model, "prompt": prompt, "max_tokens": max_tokens,
                           "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}).encode()

    def request(self, prompt: str, max_tokens: int, run_start: float) -> RequestResult:
        """One streamed completion on a connection of its own (llama-server closes a streaming response's
        connection, so none is reused); the connection's opening is part of its time to first token."""
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "Connection": "close"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        body = self.body(prompt, max_tokens)
        stream = _Stream()
        sent = time.perf_counter()
        conn = self.endpoint.connect(self.config.timeout_s)
        try:
            conn.request("POST", self.endpoint.path, body=body, headers=headers)
            response = conn.getresponse()
            if response.status != 200:
                detail = response.read(500).decode("utf-8", "replace").strip()
                raise _RequestFailed(f"HTTP {response.status}: {detail}")
            stream.read(response, sent)
        except (OSError, http.client.HTTPException, _RequestFailed, ValueError) as e:
            return stream.result(self.index, sent, run_start, error=str(e) or type(e).__name__)
        finally:
            conn.close()
        return stream.result(self.index, sent, run_start)

    def run(self, run_start: float, deadline: float | None) -> None:
        n = 0
        while (n < self.config.requests_per_client) if deadline is None else time.perf_counter() < deadline:
            self.results.append(self.request(self.prompt, self.config.max_tokens, run_start))
            n += 1


class _RequestFailed(Exception):
    pass


@dataclass
class _Stream:
    """What a streamed response has brought so far."""

    chunks: int = 0
    first_text_at: float | None = None
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    done: bool = False
    ended_at: float | None = None

    def read(self, response: http.client.HTTPResponse, sent: float) -> None:
        data: list[str] = []
        while not self.done:
            raw = response.readline()
            if not raw:
                break
            line = raw.decode("utf-8").rstrip("\r\n")
            if line:
                if line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
                elif line.startswith("error:"):
                    raise _RequestFailed(f"the server sent an error event: {line[6:].strip()[:300]}")
                continue  # event:, id:, retry: and comments do not matter here
            if data:
                self.event("\n".join(data), sent)
                data = []
        if data:
            self.event("\n".join(data), sent)
        self.ended_at = time.perf_counter()
        if not self.done:
            raise _RequestFailed("the stream ended without data: [DONE]")

    def event(self, data: str, sent: float) -> None:
        if data.strip() == "[DONE]":
            self.done = True
            return
        event = json.loads(data)
        if not isinstance(event, dict):
            raise _RequestFailed(f"unexpected event {data[:200]!r}")
        if "error" in event:
            raise _RequestFailed(f"the server sent an error: {json.dumps(event['error'])[:300]}")
        usage = event.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            self.usage_tokens = usage["completion_tokens"]
            if isinstance(usage.get("prompt_tokens"), int):
                self.prompt_tokens = usage["prompt_tokens"]
        choices = event.get("choices") or []
        if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
            raise _RequestFailed(f"unexpected choices in {data[:200]!r}")
        for choice in choices:
            text = choice.get("text")
            if text is None and isinstance(choice.get("delta"), dict):  # a chat-completion chunk
                text = choice["delta"].get("content")
            if text:
                self.chunks += 1
                if self.first_text_at is None:
                    self.first_text_at = time.perf_counter()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]

    def result(self, client: int, sent: float, run_start: float, error: str | None = None) -> RequestResult:
        end = self.ended_at if self.ended_at is not None and error is None else time.perf_counter()
        from_usage = self.usage_tokens is not None
        return RequestResult(
            client=client, ok=error is None, error=error,
            completion_tokens=self.usage_tokens if self.usage_tokens is not None else self.chunks,
            count_source=USAGE if from_usage else CHUNKS, text_chunks=self.chunks,
            ttft_s=None if self.first_text_at is None else self.first_text_at - sent,
            duration_s=end - sent, finish_reason=self.finish_reason, prompt_tokens=self.prompt_tokens,
            started_s=sent - run_start)


def run_load(config: LoadConfig) -> LoadResult:
    """Runs `config.concurrency` clients against the server together and returns what they measured.
    Warm-up requests (config.warmup_requests, one at a time, before the clients start) are not counted; a
    warm-up that fails raises ConnectionError (the server is not answering; a run would only count errors)."""
    config.check()
    endpoint = _Endpoint.parse(config.url)
    prompts = client_prompts(config.concurrency, config.seed, config.prompt_words)
    clients = [_Client(i, p, endpoint, config) for i, p in enumerate(prompts)]
    warm = _Client(-1, WARMUP_PROMPT, endpoint, config)
    for _ in range(config.warmup_requests):
        r = warm.request(WARMUP_PROMPT, min(config.max_tokens, 8), time.perf_counter())
        if not r.ok:
            raise ConnectionError(f"the warm-up request to {config.url} failed: {r.error}")
    start_line = threading.Barrier(config.concurrency + 1)
    times: dict[str, float] = {}

    def client_main(client: _Client) -> None:
        start_line.wait()
        client.run(times["start"], times.get("deadline"))

    threads = [threading.Thread(target=client_main, args=(c,), name=f"loadtest-client-{c.index}", daemon=True)
               for c in clients]
    for t in threads:
        t.start()
    times["start"] = time.perf_counter()
    if config.duration_s is not None:
        times["deadline"] = times["start"] + config.duration_s
    start_line.wait()  # every client starts now
    for t in threads:
        t.join()
    wall = time.perf_counter() - times["start"]
    requests = sorted((r for c in clients for r in c.results), key=lambda r: r.started_s)
    return LoadResult(config, requests, wall)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on now (for a server started next; another process could take it first)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_healthy(url: str, timeout_s: float, alive: Callable[[], bool] | None = None) -> None:
    """Polls GET {url}/health until it answers 200 (llama-server answers 503 while loading). `alive`: a
    callable that returns False when the server process has died (stop waiting then). TimeoutError after
    timeout_s."""
    ep = _Endpoint.parse(url)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if alive is not None and not alive():
            raise ConnectionError(f"the server at {url} exited before answering /health")
        conn = ep.connect(timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise TimeoutError(f"the server at {url} did not answer /health within {timeout_s:.0f} s")
