"""The scheduler: every generation of a Model runs through it, and those running at the same time are decoded
together, one batched forward pass per step (continuous batching).

Decoding is memory-bound: a step reads every weight once, and reading them once for the next token of eight
generations costs little more than for one. So each step:

1. drops cancelled generations and admits waiting ones into free slots (a slot is one sequence of the C context,
   its own part of the KV cache), reusing the longest prefix already computed: the slot's own cache (the next
   turn of a chat, a repeated system prompt) or a copy of another sequence's (Engine.seq_copy shares its blocks:
   n > 1 choices of one prompt, the same system prompt in two conversations). A generation whose prompt shares
   more with a prompt still being computed waits for it instead of computing the same tokens twice;
2. makes one batch of the next token of every decoding generation and a bounded chunk of the prompts still to
   compute (chunked prefill: a long new prompt holds the others up by one chunk per step, not by all of it);
3. runs it (Engine.batch) and lets each generation whose logits came sample its next token with its own
   sampler, seed, penalties, stop strings, grammar and log-probabilities (Generation._advance).

When the KV pool is full, idle slots' caches are dropped first (least recently used first), then the engine's own
single-sequence cache, then the most recently admitted generation is preempted: its blocks are freed and it goes
back to the front of the queue, to be recomputed when blocks are free again (its tokens so far are kept, so it
continues where it was). No admission happens until a generation ends.

Who runs the steps: after start_background() a thread that steps whenever there is work (the server); otherwise
the threads waiting for a generation's next piece take turns, so a single caller steps in its own thread, as a
plain generation loop would, and generations iterated from several threads are batched together.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .engine import Engine, common_prefix
from .errors import KernelError, KVCacheFullError, LLMError

if TYPE_CHECKING:
    from .generate import Generation

# While other generations decode, a step computes at most this many prompt tokens (and the decode tokens): a long
# prompt then delays the others' next token by about one such chunk. With nothing decoding, a step takes n_batch.
DEFAULT_PREFILL_CHUNK = 128


@dataclass(frozen=True)
class ServingStats:
    """What the scheduler is doing now, and totals since the model was loaded."""

    parallel: int  # slots: generations decoded together at most
    active: int  # generations in slots (computing their prompt or decoding)
    waiting: int  # generations started but not yet in a slot
    kv_blocks_used: int  # blocks of the KV pool in use (all sequences, all layer groups)
    kv_blocks_total: int
    kv_block_size: int  # positions per block
    prompt_tokens: int  # prompt tokens of the generations admitted
    computed_prompt_tokens: int  # of those, the ones computed (the rest came from a cache or a prefix copy)
    generated_tokens: int
    preempted: int  # generations sent back to the queue because the KV pool was full


class _Slot:
    """One sequence of the C context, and the tokens its cache holds (positions 0..len-1)."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.tokens: list[int] = []
        self.job: _Job | None = None  # the generation using it; None: idle (its cache kept for reuse)
        self.last_used = 0  # the step it was last released in (idle caches are dropped oldest first)


class _Job:
    """A generation in the scheduler: its tokens (prompt, then what it generated) and how many of them are in its
    slot's cache. It holds its Generation weakly: one that nobody holds any more (dropped unfinished, never
    closed) is cancelled, instead of running on in its slot to max_tokens."""

    def __init__(self, gen: Generation) -> None:
        self._gen = weakref.ref(gen)
        self.history = list(gen.prompt)
        self.computed = 0  # history[:computed] is in the slot's cache
        self.slot: _Slot | None = None
        self.counted = False  # its prompt is in the totals

    @property
    def gen(self) -> Generation | None:
        return self._gen()

    @property
    def gone(self) -> bool:
        """Whether the generation was cancelled, ended, or dropped by everyone."""
        gen = self._gen()
        return gen is None or gen.cancelled or gen.finish_reason is not None

    @property
    def remaining(self) -> int:
        return len(self.history) - self.computed


class Scheduler:
    """Runs the generations of one Engine, `parallel` at a time, in the sequences `seqs` (its slots; more slots
    than `parallel` keep more finished generations' caches for later prompts that share them, in the pool's
    free blocks)."""

    def __init__(self, engine: Engine, seqs: Iterable[int], parallel: int,
                 prefill_chunk: int = DEFAULT_PREFILL_CHUNK) -> None:
        self.engine = engine
        self.slots = [_Slot(s) for s in seqs]
        self.parallel = parallel
        self.prefill_chunk = prefill_chunk
        self._mutex = threading.Lock()  # guards the queue, the jobs' delivery and the flags below
        self._changed = threading.Condition(self._mutex)  # a step ended, or work arrived
        self._waiting: deque[_Job] = deque()
        self._active: list[_Job] = []  # touched only by the thread that steps (and _stepping says who)
        self._stepping = False
        self._paused = False  # after a preemption: no admission until a generation ends
        self._background: threading.Thread | None = None
        self._stop = False
        self._steps = 0
        self._totals = {"prompt": 0, "computed": 0, "generated": 0, "preempted": 0}

    # --- what generations call -------------------------------------------------------------------------------

    def submit(self, gen: Generation) -> None:
        """Queues a generation (once; later calls do nothing)."""
        with self._mutex:
            self._submit(gen)

    def _submit(self, gen: Generation) -> None:
        if gen._job is None and gen.finish_reason is None:
            gen._job = _Job(gen)
            self._waiting.append(gen._job)
            self._changed.notify_all()

    def next_piece(self, gen: Generation) -> str | None:
        """The generation's next text piece, or None when it has ended; blocks meanwhile, stepping the scheduler
        itself when no other thread does. An error of the generation's (a failed forward pass, a sampling error)
        is raised here."""
        with self._mutex:
            self._submit(gen)
            while True:
                # the stepping thread appends a last piece, then ends the generation, without the mutex: whether it
                # has ended is read first, so that a piece appended meanwhile is still returned
                ended = gen.finish_reason is not None or gen._error is not None
                if gen._pieces:
                    return gen._pieces.popleft()
                if gen._error is not None:
                    raise gen._error
                if ended:
                    return None
                if self._background is None and not self._stepping:
                    if not self._step_unlocked() and gen.finish_reason is None and gen._error is None and \
                            gen._job not in (*self._waiting, *self._active):
                        gen._error = KernelError("the generation was lost: a step was interrupted while admitting "
                                                 "it")
                        gen._end("error")
                else:
                    self._changed.wait()

    def _step_unlocked(self) -> bool:
        """Runs one step with the mutex released (called and returning with it held)."""
        self._stepping = True
        self._mutex.release()
        try:
            return self._step()
        finally:
            self._mutex.acquire()
            self._stepping = False
            self._changed.notify_all()

    # --- the background driver (the server) ------------------------------------------------------------------

    def start_background(self) -> None:
        """Starts a thread that steps whenever there is work; the threads that wait for pieces then only wait."""
        with self._mutex:
            if self._background is not None:
                return
            self._stop = False
            self._background = threading.Thread(target=self._drive, name="llmrun-scheduler", daemon=True)
            self._background.start()

    def stop_background(self) -> None:
        """Stops the background thread (after its current step); waiting threads step themselves again."""
        with self._mutex:
            thread, self._stop = self._background, True
            self._changed.notify_all()
        if thread is not None:
            thread.join()
        with self._mutex:
            self._background = None
            self._changed.notify_all()

    def _drive(self) -> None:
        with self._mutex:
            while not self._stop:
                if self._stepping or not (self._waiting or self._active):
                    self._changed.wait()
                    continue
                try:
                    self._step_unlocked()
                except Exception as e:  # the generations get the error (say, the model was closed); the driver goes on
                    self._mutex.release()
                    try:
                        self._fail([*self._waiting, *self._active], e)
                    finally:
                        self._mutex.acquire()

    # --- state ----------------------------------------------------------------------------------------------

    def stats(self) -> ServingStats:
        self.reclaim()
        used, total = self.engine.kv_usage()
        t = self._totals
        return ServingStats(parallel=self.parallel, active=len(self._active), waiting=len(self._waiting),
                            kv_blocks_used=used, kv_blocks_total=total, kv_block_size=self.engine.block_size,
                            prompt_tokens=t["prompt"], computed_prompt_tokens=t["computed"],
                            generated_tokens=t["generated"], preempted=t["preempted"])

    def reclaim(self) -> None:
        """Frees the slots and queue places of generations cancelled, closed or dropped since the last step, now
        (when no step is running: the next step would do it otherwise, but nothing may step for a while)."""
        with self._mutex:
            if not self._stepping:
                self._drop_cancelled()
                self._changed.notify_all()

    def drop_caches(self) -> None:
        """Forgets what the idle slots hold (Model.reset): the next generations compute every token."""
        self.reclaim()
        with self._mutex:
            for slot in self.slots:
                if slot.job is None and slot.tokens:
                    self.engine.seq_keep(slot.seq, 0)
                    slot.tokens = []

    def cancel_all(self) -> None:
        """Cancels every generation, queued or running (Model.close)."""
        with self._mutex:
            for job in [*self._waiting, *self._active]:
                if (gen := job.gen) is not None:
                    gen.cancel()
            self._changed.notify_all()

    # --- one step -------------------------------------------------------------------------------------------

    def _step(self) -> bool:
        """Admits, runs one batch and delivers its tokens; False when there was nothing to do."""
        with self._mutex:
            self._steps += 1
            self._drop_cancelled()
            self._admit()
        if not self._active:
            return False
        plan, logits = self._run()
        if logits is None:  # the batch failed: its generations got the error
            return True
        rows = iter(logits)
        finished: list[_Job] = []
        for job, take, output in plan:
            job.computed += take
            if not output:
                continue
            row, gen = next(rows), job.gen
            if gen is None:  # dropped meanwhile: the next step releases it
                continue
            try:
                token = gen._advance(row, self.engine.n_ctx)
            except LLMError as e:  # a sampling error (say, NaN logits): this generation only
                self._fail([job], e)
                continue
            if token is None:
                finished.append(job)
            else:
                job.history.append(token)
                self._totals["generated"] += 1
        with self._mutex:
            for job in finished:
                self._release(job)
            self._changed.notify_all()
        return True

    def _run(self) -> tuple[list[tuple[_Job, int, bool]], np.ndarray | None]:
        """Plans the batch and runs it, making room in the KV pool when it is full; None for the logits when it
        failed (its generations then have the error)."""
        while True:
            plan = self._plan()
            tokens, seqs, positions, outputs = [], [], [], []
            for job, take, output in plan:
                assert job.slot is not None
                tokens += job.history[job.computed:job.computed + take]
                seqs += [job.slot.seq] * take
                positions += range(job.computed, job.computed + take)
                outputs += [False] * (take - 1) + [output]
            try:
                return plan, self.engine.batch(tokens, seqs, positions, outputs)
            except KVCacheFullError as e:
                with self._mutex:
                    room = self._make_room()
                if not room:
                    self._fail([job for job, _, _ in plan], KVCacheFullError(
                        f"{e} (the KV pool of {self.engine.n_kv} positions cannot hold this generation even alone: "
                        f"load the model with a larger kv_size)"))
                    return plan, None
            except LLMError as e:  # a failed forward pass: every generation of the batch gets the error
                self._fail([job for job, _, _ in plan], e)
                return plan, None

    def _plan(self) -> list[tuple[_Job, int, bool]]:
        """(job, tokens it runs, whether its logits are wanted): one token of each decoding generation, then
        prompt chunks within the batch size (at most prefill_chunk tokens while anything decodes)."""
        for job in self._active:  # a step cut short (Ctrl-C after the batch ran) leaves no token to run:
            if job.remaining == 0:  # its last token runs again, for its logits
                job.computed -= 1
        room = self.engine.n_batch
        decoding = [job for job in self._active if job.remaining == 1]
        n_decode = min(len(decoding), room)
        if n_decode == room and any(job.remaining > 1 for job in self._active):  # a prompt waits: leave it a token
            n_decode = room - 1 if room > 1 or self._steps % 2 else room  # (n_batch 1: every other step)
        start = self._steps % len(decoding) if decoding else 0  # more decoders than room: they take turns
        plan = [(job, 1, True) for job in (decoding[start:] + decoding[:start])[:n_decode]]
        room -= len(plan)
        if decoding:
            room = min(room, self.prefill_chunk)
        for job in self._active:
            if room <= 0:
                break
            if job.remaining > 1:
                take = min(job.remaining, room)
                plan.append((job, take, take == job.remaining))
                room -= take
        return plan

    # --- admission, release, room ------------------------------------------------------------------------------

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.gone]:
            self._waiting.remove(job)
            if (gen := job.gen) is not None:
                gen._end("cancelled")
        for job in [j for j in self._active if j.gone]:
            if (gen := job.gen) is not None:
                gen._end("cancelled")
            self._release(job)

    def _release(self, job: _Job) -> None:
        """The job leaves its slot, whose cache keeps the job's tokens for a later prompt that shares them."""
        slot = job.slot
        assert slot is not None
        slot.tokens, slot.job, slot.last_used = job.history[:job.computed], None, self._steps
        job.slot = None
        self._active.remove(job)
        self._paused = False

    def _admit(self) -> None:
        """Waiting jobs into free slots, in order (a job that should wait for a prompt being computed lets the
        next one go first)."""
        if self._paused and self._active:
            return
        i = 0
        while i < len(self._waiting) and len(self._active) < self.parallel:
            job = self._waiting[i]
            if job.slot is None and self._should_wait(job):
                i += 1
                continue
            if job.slot is None:
                self._place(job)  # if it raises, the job stays queued and the slot empty
            del self._waiting[i]

    def _should_wait(self, job: _Job) -> bool:
        """Whether a generation still computing its prompt will hold more of this job's prompt than any cache
        holds now, by a block or by all the job needs: then this job waits a step or two and copies it (n > 1
        choices, the same long prompt twice). A few shared tokens (a BOS) are not worth the wait."""
        need = len(job.history) - 1
        have = max((common_prefix(self._cached(s), job.history) for s in self.slots), default=0)
        for other in self._active:
            if other.remaining > 1:
                gain = min(common_prefix(other.history, job.history), need) - have
                if gain > 0 and gain >= min(self.engine.block_size, need - have):
                    return True
        return False

    def _cached(self, slot: _Slot) -> list[int]:
        """What a slot's sequence holds now (its job's computed tokens while it runs)."""
        return slot.tokens if slot.job is None else slot.job.history[:slot.job.computed]

    def _place(self, job: _Job) -> None:
        """Puts a job in a free slot, reusing the longest cached prefix of its tokens."""
        engine, need = self.engine, len(job.history) - 1  # the last token always runs: its logits are needed
        free = [s for s in self.slots if s.job is None]
        stalest = min(free, key=lambda s: (len(s.tokens) > 0, s.last_used))  # an empty or the oldest cache
        own = max(free, key=lambda s: (common_prefix(s.tokens, job.history), -s.last_used))
        reuse = min(common_prefix(own.tokens, job.history), need)
        if reuse < min(self.engine.block_size, need):  # a few shared tokens (a BOS) are not worth another's cache
            own, reuse = stalest, min(common_prefix(stalest.tokens, job.history), need)
        source = max(self.slots, key=lambda s: common_prefix(self._cached(s), job.history))
        shared = min(common_prefix(self._cached(source), job.history), need)
        if shared > reuse and source is not own:  # another sequence holds more: share its blocks
            slot = stalest
        else:
            slot, source = own, None
        try:
            if source is not None:
                keep = shared if shared >= engine.seq_resume_min(source.seq) else 0
                engine.seq_copy(source.seq, slot.seq, keep)
            else:
                keep = reuse if reuse >= engine.seq_resume_min(slot.seq) else 0
                engine.seq_keep(slot.seq, keep)
        except BaseException:  # Ctrl-C, a closed model: what the slot's sequence holds is unknown now
            slot.tokens = []
            with contextlib.suppress(LLMError):
                engine.seq_keep(slot.seq, 0)
            raise
        slot.job, slot.tokens = job, []
        job.slot, job.computed = slot, keep
        self._active.append(job)
        if not job.counted:
            job.counted = True
            self._totals["prompt"] += len(job.history)
            self._totals["computed"] += len(job.history) - keep
        if (gen := job.gen) is not None:
            gen._admitted(keep)

    def _make_room(self) -> bool:
        """Frees KV blocks after a full pool: an idle slot's cache, the engine's own, else the latest admitted job
        goes back to the queue. False when nothing can be freed (one job alone does not fit)."""
        idle = [s for s in self.slots if s.job is None and s.tokens]
        if idle:
            slot = min(idle, key=lambda s: s.last_used)
            self.engine.seq_keep(slot.seq, 0)
            slot.tokens = []
            return True
        if self.engine.seq_length(0) > 0:
            self.engine.reset()
            return True
        if len(self._active) < 2:
            return False
        job = self._active[-1]  # the latest admitted: admission appends, release removes in place
        assert job.slot is not None
        self.engine.seq_keep(job.slot.seq, 0)
        job.computed = 0
        self._release(job)
        self._waiting.appendleft(job)
        self._paused = True
        self._totals["preempted"] += 1
        return True

    def _fail(self, jobs: list[_Job], error: Exception) -> None:
        """Ends jobs with an error (raised to whoever iterates them); their caches are dropped."""
        with self._mutex:
            for job in jobs:
                if job.slot is not None:
                    slot = job.slot
                    self._release(job)
                    slot.tokens = []
                    try:
                        self.engine.seq_keep(slot.seq, 0)
                    except LLMError:
                        pass
                if (gen := job.gen) is not None:
                    gen._error = error
                    gen._end("error")
            self._changed.notify_all()


__all__ = ["DEFAULT_PREFILL_CHUNK", "Scheduler", "ServingStats"]
