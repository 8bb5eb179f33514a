"""The one generation loop. The library API, the CLI and (later) the server all drive text through it.

prefill: evaluate the prompt (only what the KV cache does not already hold)
decode:  sample a token, stop on an end-of-generation id / stop string / token limit / full context,
         otherwise stream its text and evaluate it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .engine import Engine, EvaluationCancelled
from .errors import InvalidArgumentError
from .sampling import Sampler, SamplingParams
from .structured import Constraint
from .tokenizer import StreamDecoder, Tokenizer


@dataclass
class GenerationStats:
    """What one generation cost. Timings are wall-clock seconds."""

    prompt_tokens: int = 0  # tokens in the prompt
    reused_tokens: int = 0  # of those, how many the KV cache already held
    generated_tokens: int = 0
    prefill_seconds: float = 0.0
    decode_seconds: float = 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        computed = self.prompt_tokens - self.reused_tokens
        return computed / self.prefill_seconds if self.prefill_seconds > 0 else 0.0

    @property
    def decode_tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds > 0 else 0.0


MAX_TOP_LOGPROBS = 20  # alternatives per token a Generation reports at most (OpenAI's limit)


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability under the model (log-softmax of the raw logits the sampler was
    given, before penalties, temperature and filters) and the `top` most likely ids with theirs."""

    token: int
    logprob: float
    top: tuple[tuple[int, float], ...]


def token_logprob(logits: np.ndarray, token: int, n_top: int) -> TokenLogprob:
    """The TokenLogprob of `token` for one step's logits, with the `n_top` most likely alternatives (ties
    to the lowest ids)."""
    x = logits.astype(np.float64)
    top = x.max()
    logz = top + np.log(np.exp(x - top).sum())
    alternatives: tuple[tuple[int, float], ...] = ()
    if n_top > 0:
        ids = np.argpartition(-x, min(n_top, x.size) - 1)[:n_top]
        ids = ids[np.lexsort((ids, -x[ids]))]
        alternatives = tuple((int(i), float(x[i] - logz)) for i in ids)
    return TokenLogprob(token, float(x[token] - logz), alternatives)


def logprob_entry(tokenizer: Tokenizer, token: int, logprob: float) -> dict[str, Any]:
    """{"token", "logprob", "bytes"} as OpenAI reports a token: "bytes" is the token's own UTF-8 bytes (a
    byte-fallback or byte-level token holding part of a character, such as one byte of an emoji, gives that
    raw byte, so that joining the bytes of consecutive tokens gives the text); "token" is those bytes decoded
    with U+FFFD for what is not whole UTF-8 on its own. Control tokens have no text: "" and []."""
    raw = tokenizer.surface(token, at_start=False)[0]
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def check_max_tokens(max_tokens: int | None) -> None:
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 0):
        raise InvalidArgumentError(f"max_tokens must be None or an int >= 0, got {max_tokens!r}", param="max_tokens")


def check_logprobs(logprobs: int | None) -> None:
    if logprobs is not None and (isinstance(logprobs, bool) or not isinstance(logprobs, int)
                                 or not 0 <= logprobs <= MAX_TOP_LOGPROBS):
        raise InvalidArgumentError(f"logprobs must be None or an int in [0, {MAX_TOP_LOGPROBS}], got {logprobs!r}",
                                   param="logprobs")


def normalize_stop(stop: str | Iterable[str] | None) -> list[str]:
    """Stop strings as a list; one string is one stop string. Empty strings are refused."""
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else list(stop)
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InvalidArgumentError(f"stop strings must be non-empty str, got {s!r}", param="stop")
    return stops


class StopStrings:
    """Holds back text that might be the start of a stop string, so a stop string is never emitted."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Returns (text safe to emit, whether a stop string was hit)."""
        if not self.stops:
            return text, False
        self.pending += text
        hits = [i for i in (self.pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.pending = self.pending[:min(hits)], ""
            return out, True
        hold = 0  # the longest tail of pending that begins some stop string
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.pending)), hold, -1):
                if self.pending.endswith(s[:n]):
                    hold = n
                    break
        cut = len(self.pending) - hold
        out, self.pending = self.pending[:cut], self.pending[cut:]
        return out, False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Generation(Iterator[str]):
    """One completion, streamed as text pieces. After iteration ends, `finish_reason` is "stop" (an
    end-of-generation token or a stop string) or "length" (max_tokens, or the context is full); after
    `cancel()` or `close()` on a generation that had not ended (Ctrl-C, a closed connection, another thread
    or task giving up) it is "cancelled". While the generation runs it is None. `tokens` holds the generated
    ids. With `logprobs` (the number of alternatives, 0-20), `token_logprobs` holds a TokenLogprob for each
    generated token, filled as the tokens are generated (`logprobs_content()`: OpenAI's shape, with bytes).

    `cancel()` may be called from any thread (or asyncio task) while another thread iterates: the iterating
    thread stops within one decode step (or one prompt batch of n_batch tokens while the prompt is being
    processed), its iteration ends, and the model is free for the next call; the KV cache keeps what was
    computed, so a next request sharing the prefix reuses it."""

    def __init__(self, engine: Engine, tokenizer: Tokenizer, prompt: Sequence[int], params: SamplingParams,
                 max_tokens: int | None, stop: list[str], eog_ids: frozenset[int],
                 logprobs: int | None = None, constraint: Constraint | None = None) -> None:
        check_logprobs(logprobs)
        self.constraint = constraint  # structured output: masks each step's logits (llmrun/structured.py)
        self.engine = engine
        self.tokenizer = tokenizer
        self.prompt = list(prompt)
        self.sampler = Sampler(params)
        self.max_tokens = max_tokens
        self.stop = stop
        self.eog_ids = eog_ids
        self.tokens: list[int] = []
        self.logprobs = logprobs
        self.token_logprobs: list[TokenLogprob] = []
        self.finish_reason: str | None = None
        self.stats = GenerationStats(prompt_tokens=len(self.prompt))
        self._cancel = threading.Event()
        self._steps = self._run()

    def __next__(self) -> str:
        return next(self._steps)

    def text(self) -> str:
        """Runs the generation to the end and returns all of its text."""
        return "".join(self)

    def cancel(self) -> None:
        """Asks the generation to stop, from any thread or task: the thread iterating it (if any) ends its
        iteration within one decode step or prompt batch with finish_reason "cancelled"; a generation not yet
        started computes nothing. Cancelling an ended generation changes nothing. Returns at once (it does not
        wait for the iterating thread)."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        """Whether cancel() (or close()) was called."""
        return self._cancel.is_set()

    def close(self) -> None:
        """Stops the generation early (what a consumer does on Ctrl-C or a closed connection); an unfinished
        generation's finish_reason becomes "cancelled". Closing an ended generation changes nothing. From a
        thread other than the one iterating, while that one is inside a step, close() is cancel()."""
        self._cancel.set()
        try:
            self._steps.close()
        except ValueError:  # "generator already executing" in another thread: the flag stops it within a step
            return
        if self.finish_reason is None:
            self.finish_reason = "cancelled"

    def logprobs_content(self) -> list[dict[str, Any]]:
        """`token_logprobs` in the shape of OpenAI's chat logprobs "content": [{"token", "logprob", "bytes",
        "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...] (see logprob_entry for token and bytes)."""
        tok = self.tokenizer
        return [{**logprob_entry(tok, e.token, e.logprob),
                 "top_logprobs": [logprob_entry(tok, t, v) for t, v in e.top]} for e in self.token_logprobs]

    def _run(self) -> Iterator[str]:
        engine, stats = self.engine, self.stats
        start = time.perf_counter()
        stats.reused_tokens = engine.reusable_prefix(self.prompt)
        try:
            # this generation's own logits buffer: another caller of the same engine cannot overwrite it
            logits = engine.evaluate(self.prompt, out=np.empty(engine.vocab_size, dtype=np.float32),
                                     cancelled=self._cancel.is_set)
        except EvaluationCancelled:
            self.finish_reason = "cancelled"
            return
        finally:
            stats.prefill_seconds = time.perf_counter() - start
        start = time.perf_counter()
        try:
            yield from self._decode(logits)
        finally:
            stats.decode_seconds = time.perf_counter() - start

    def _decode(self, logits: np.ndarray) -> Iterator[str]:
        history = list(self.prompt)
        bos = self.tokenizer.bos_id
        decoder = StreamDecoder(self.tokenizer, strip_leading_space=bos is not None and history[-1] == bos)
        stops = StopStrings(self.stop)
        while True:
            if self._cancel.is_set():
                self.finish_reason = "cancelled"
                return
            if self.max_tokens is not None and len(self.tokens) >= self.max_tokens:
                self.finish_reason = "length"
                break
            if self.constraint is not None:  # disallowed ids at -inf; logprobs stay the model's
                token = self.sampler.sample(self.constraint.apply(logits, self.eog_ids), history, self.tokens)
            else:
                token = self.sampler.sample(logits, history, self.tokens)
            if token in self.eog_ids:
                self.finish_reason = "stop"
                break
            self.tokens.append(token)
            if self.logprobs is not None:
                self.token_logprobs.append(token_logprob(logits, token, self.logprobs))
            history.append(token)
            self.stats.generated_tokens += 1
            text, hit = stops.feed(decoder.feed(token))
            if text:
                yield text
            if hit:
                self.finish_reason = "stop"
                return
            if self.constraint is not None:
                self.constraint.consume(token)
                if self.constraint.done:  # the grammar is complete and nothing can follow
                    self.finish_reason = "stop"
                    break
            if len(history) > self.engine.n_ctx:  # the newest token has no cache slot to run in
                self.finish_reason = "length"
                break
            try:
                logits = self.engine.evaluate(history, out=logits, cancelled=self._cancel.is_set)
            except EvaluationCancelled:
                self.finish_reason = "cancelled"
                return
        text, hit = stops.feed(decoder.flush())
        text += "" if hit else stops.flush()
        if text:
            yield text

