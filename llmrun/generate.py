"""The one generation core. The library API, the CLI and the server all generate text through it.

A Generation is one completion: its sampler, stop strings, grammar and log-probabilities, and the text it has
produced. The scheduler (llmrun/scheduler.py) computes its prompt (only what a cache does not already hold) and
then, step by step, hands it the logits after its last token: the Generation samples the next token, stops on an
end-of-generation id / stop string / token limit / full context, or turns the token into text and asks for it
to be run. Several generations share each step's forward pass.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InvalidArgumentError
from .sampling import Sampler, SamplingParams
from .structured import Constraint
from .tokenizer import StreamDecoder, Tokenizer

if TYPE_CHECKING:
    from .scheduler import Scheduler


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

    The model's scheduler (llmrun/scheduler.py) runs it: it starts when first iterated (or when
    Model.generate_batch starts it), and generations running at the same time, from any threads, are decoded
    together, one batched forward pass per step. Iterating blocks until the next piece is ready.

    `cancel()` may be called from any thread (or asyncio task) while another thread iterates: the generation
    leaves its slot within one step (a decode step, or one chunk of the prompt while the prompt is being
    processed), its iteration ends, and the slot is free for the next one; the slot's cache keeps what was
    computed, so a next request sharing the prefix reuses it."""

    def __init__(self, scheduler: Scheduler, tokenizer: Tokenizer, prompt: Sequence[int], params: SamplingParams,
                 max_tokens: int | None, stop: list[str], eog_ids: frozenset[int],
                 logprobs: int | None = None, constraint: Constraint | None = None) -> None:
        check_logprobs(logprobs)
        self.constraint = constraint  # structured output: masks each step's logits (llmrun/structured.py)
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
        self._scheduler = scheduler
        self._cancel = threading.Event()
        # the scheduler's side: its record of this generation, the pieces ready to be read, an error to raise
        self._job: object | None = None
        self._pieces: deque[str] = deque()
        self._error: Exception | None = None
        self._history = list(self.prompt)  # what the sampler's penalties look at
        bos = tokenizer.bos_id
        self._decoder = StreamDecoder(tokenizer, strip_leading_space=bos is not None and self.prompt[-1] == bos)
        self._stops = StopStrings(stop)
        self._clock = 0.0  # when the current phase (prompt, then decoding) began

    def __next__(self) -> str:
        piece = self._scheduler.next_piece(self)
        if piece is None:
            raise StopIteration
        return piece

    def start(self) -> Generation:
        """Queues the generation now instead of at its first iteration (several started together are admitted
        together); returns it."""
        self._scheduler.submit(self)
        return self

    def text(self) -> str:
        """Runs the generation to the end and returns all of its text."""
        return "".join(self)

    def cancel(self) -> None:
        """Asks the generation to stop, from any thread or task: the thread iterating it (if any) ends its
        iteration within one step with finish_reason "cancelled"; a generation not yet started computes nothing.
        Cancelling an ended generation changes nothing. Returns at once (it does not wait for the step)."""
        self._cancel.set()

    def ready(self) -> bool:
        """Whether the next piece (or the end) is already there: iterating would not wait for a step."""
        return bool(self._pieces) or self.finish_reason is not None or self._error is not None

    @property
    def cancelled(self) -> bool:
        """Whether cancel() (or close()) was called."""
        return self._cancel.is_set()

    def close(self) -> None:
        """Stops the generation early (what a consumer does on Ctrl-C or a closed connection); an unfinished
        generation's finish_reason becomes "cancelled". Closing an ended generation changes nothing."""
        self._cancel.set()
        if self.finish_reason is None:
            self.finish_reason = "cancelled"
        self._scheduler.reclaim()  # its slot and KV blocks are free now, not at the next step

    def logprobs_content(self) -> list[dict[str, Any]]:
        """`token_logprobs` in the shape of OpenAI's chat logprobs "content": [{"token", "logprob", "bytes",
        "top_logprobs": [{"token", "logprob", "bytes"}, ...]}, ...] (see logprob_entry for token and bytes)."""
        tok = self.tokenizer
        return [{**logprob_entry(tok, e.token, e.logprob),
                 "top_logprobs": [logprob_entry(tok, t, v) for t, v in e.top]} for e in self.token_logprobs]

    # --- the steps, as the scheduler runs them ------------------------------------------------------------

    def _admitted(self, reused: int) -> None:
        """The generation got a slot whose cache holds its first `reused` tokens; its prompt is computed next."""
        self.stats.reused_tokens = min(reused, len(self.prompt))
        self._clock = time.perf_counter()

    def _advance(self, logits: np.ndarray, n_ctx: int) -> int | None:
        """One decode step, given the logits after the last token: samples the next token, turns it into text
        (held back while it may be the start of a stop string) and returns it, or returns None when the
        generation has ended (finish_reason says why) and the token is not to be run."""
        if not self.tokens and not self.stats.prefill_seconds:  # the prompt's logits: prefill ends here
            now = time.perf_counter()
            self.stats.prefill_seconds, self._clock = now - self._clock, now
        if self.finish_reason is not None:
            return None
        if self._cancel.is_set():
            return self._end("cancelled")
        if self.max_tokens is not None and len(self.tokens) >= self.max_tokens:
            return self._end("length", flush=True)
        if self.constraint is not None:  # disallowed ids at -inf; logprobs stay the model's
            token = self.sampler.sample(self.constraint.apply(logits, self.eog_ids), self._history, self.tokens)
        else:
            token = self.sampler.sample(logits, self._history, self.tokens)
        if token in self.eog_ids:
            return self._end("stop", flush=True)
        self.tokens.append(token)
        if self.logprobs is not None:
            self.token_logprobs.append(token_logprob(logits, token, self.logprobs))
        self._history.append(token)
        self.stats.generated_tokens += 1
        text, hit = self._stops.feed(self._decoder.feed(token))
        if text:
            self._pieces.append(text)
        if hit:
            return self._end("stop")
        if self.constraint is not None:
            self.constraint.consume(token)
            if self.constraint.done:  # the grammar is complete and nothing can follow
                return self._end("stop", flush=True)
        if len(self._history) > n_ctx:  # the newest token has no cache slot to run in
            return self._end("length", flush=True)
        return token

    def _end(self, reason: str, flush: bool = False) -> None:
        """Ends the generation (unless it has ended); with `flush`, the text held back is released first."""
        if self.finish_reason is None:
            if flush:
                text, hit = self._stops.feed(self._decoder.flush())
                text += "" if hit else self._stops.flush()
                if text:
                    self._pieces.append(text)
            self.finish_reason = reason
            if self._clock:
                self.stats.decode_seconds = time.perf_counter() - self._clock if self.tokens else 0.0
        return None
