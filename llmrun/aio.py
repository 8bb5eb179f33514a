"""asyncio front end: `Model.astream/agenerate/achat/achat_stream`.

A generation runs in a worker thread of its own (the forward pass releases the GIL); each text piece is handed
to the event loop with `loop.call_soon_threadsafe` into an asyncio.Queue, so the loop only ever runs short
callbacks and is never blocked by a step. The worker runs at most `READ_AHEAD` pieces ahead of the consumer.
Cancelling the task that awaits a piece (or `cancel()`, `aclose()`, leaving `async with`) cancels the
generation (Generation.cancel): the worker stops within one decode step or prompt batch and the model is free.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Generic, TypeVar

from .chat import ChatStream
from .generate import Generation

T = TypeVar("T")
Source = Generation | ChatStream

READ_AHEAD = 8  # pieces the worker may generate before the consumer takes them


class _Worker:
    """What the worker thread shares with the event loop (not the AsyncStream itself, so that a stream that
    is dropped unfinished is collected, and its __del__ cancels the generation)."""

    def __init__(self, start: Callable[[], Source], pieces: Callable[[Any], Iterator[Any]],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.start = start
        self.pieces = pieces
        self.loop = loop
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.finished: asyncio.Future[None] = loop.create_future()
        self.credits = threading.Semaphore(READ_AHEAD)
        self.cancelled = threading.Event()
        self.source: Source | None = None

    def cancel(self) -> None:
        self.cancelled.set()
        source = self.source
        if source is not None:
            source.cancel()
        self.credits.release()  # a worker waiting for the consumer goes on, and ends

    def _post(self, kind: str, value: Any) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, (kind, value))
        except RuntimeError:  # the loop is closed: nobody will read
            self.cancel()

    def _done(self) -> None:
        if not self.finished.done():
            self.finished.set_result(None)

    def run(self) -> None:
        try:
            if self.cancelled.is_set():
                self._post("end", None)
                return
            self.source = source = self.start()
            if self.cancelled.is_set():  # cancel() may have come before source was set
                source.cancel()
            pieces = self.pieces(source)
            while True:
                self.credits.acquire()
                try:
                    piece = next(pieces)
                except StopIteration:
                    break
                self._post("piece", piece)
            self._post("end", None)
        except BaseException as e:  # handed to the awaiting task
            self._post("error", e)
        finally:
            try:
                self.loop.call_soon_threadsafe(self._done)
            except RuntimeError:
                pass


class AsyncStream(AsyncIterator[T], Generic[T]):
    """An async iterator over a generation's pieces (text, or ChatDeltas for `achat_stream(...).deltas()`).
    The generation is prepared (prompt tokenized, chat template rendered) and run in a worker thread that the
    first `__anext__` starts, so argument errors surface there. Once started, `source` is the Generation (or
    ChatStream) with `finish_reason`, `tokens`, `token_logprobs`, `stats`.

    `cancel()` (from any thread or task) stops it within one decode step; so does cancelling the task awaiting
    a piece (which returns once the worker has stopped, so the model is then free), `await aclose()` and leaving
    `async with`."""

    def __init__(self, start: Callable[[], Source], pieces: Callable[[Any], Iterator[T]] = iter) -> None:
        self._start = start
        self._pieces = pieces
        self._worker: _Worker | None = None
        self._ended = False
        self._cancel_early = False

    @property
    def source(self) -> Source | None:
        """The Generation or ChatStream, once the worker has made it (None before)."""
        return None if self._worker is None else self._worker.source

    @property
    def generation(self) -> Generation | None:
        source = self.source
        return source.generation if isinstance(source, ChatStream) else source

    @property
    def finish_reason(self) -> str | None:
        generation = self.generation
        if generation is None:
            return "cancelled" if self._cancel_early else None
        return generation.finish_reason

    def _begin(self) -> _Worker:
        worker = self._worker = _Worker(self._start, self._pieces, asyncio.get_running_loop())
        if self._cancel_early:
            worker.cancelled.set()
        threading.Thread(target=worker.run, name="llmrun-generation", daemon=True).start()
        return worker

    def __aiter__(self) -> AsyncStream[T]:
        return self

    async def __anext__(self) -> T:
        worker = self._worker or self._begin()
        if self._ended:
            raise StopAsyncIteration
        try:
            kind, value = await worker.queue.get()
        except asyncio.CancelledError:
            worker.cancel()
            await asyncio.shield(worker.finished)  # within one step: the model is free when the task ends
            raise
        if kind == "piece":
            worker.credits.release()
            return value  # type: ignore[no-any-return]
        self._ended = True
        if kind == "error":
            raise value
        raise StopAsyncIteration

    def cancel(self) -> None:
        """Asks the generation to stop (any thread or task); returns at once."""
        if self._worker is None:
            self._cancel_early = True
        else:
            self._worker.cancel()

    async def aclose(self) -> None:
        """Cancels the generation if it has not ended and waits until its worker has stopped (one step)."""
        self.cancel()
        self._ended = True
        if self._worker is not None:
            await asyncio.shield(self._worker.finished)

    async def wait(self) -> None:
        """Waits until the worker has stopped (after the last piece, or after a cancel)."""
        if self._worker is not None:
            await asyncio.shield(self._worker.finished)

    async def __aenter__(self) -> AsyncStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        worker = getattr(self, "_worker", None)
        if worker is not None and not self._ended:
            worker.cancel()
