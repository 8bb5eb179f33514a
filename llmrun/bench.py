"""Measurements on a loaded model: llama-bench style throughput (pp / tg) and perplexity over a text.

pp N: process a prompt of N tokens from an empty cache. tg N: generate N tokens one at a time (greedy),
starting from BOS. Both report tokens per second; the library's own generation loop is not involved, so
the figures are the engine's (sampling and detokenizing cost a few microseconds a token on top).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .engine import Engine
from .errors import InvalidArgumentError
from .model import Model


@dataclass(frozen=True)
class BenchResult:
    """One (threads, test) cell of a benchmark: tokens/s of each repetition."""

    threads: int
    test: str  # "pp512", "tg64"
    tokens_per_second: list[float]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.tokens_per_second)

    @property
    def stdev(self) -> float:
        return statistics.stdev(self.tokens_per_second) if len(self.tokens_per_second) > 1 else 0.0


def _prompt_processing(engine: Engine, n: int, rng: np.random.Generator) -> float:
    """Seconds to evaluate n random tokens from an empty cache."""
    tokens = rng.integers(0, engine.vocab_size, size=n).tolist()
    engine.reset()
    start = time.perf_counter()
    engine.evaluate(tokens)
    return time.perf_counter() - start


def _generation(engine: Engine, n: int, first: int) -> float:
    """Seconds to generate n tokens greedily, one evaluation each, after `first`."""
    engine.reset()
    history = [first]
    logits = engine.evaluate(history)
    start = time.perf_counter()
    for _ in range(n):
        history.append(int(np.argmax(logits)))
        engine.evaluate(history, out=logits)
    return time.perf_counter() - start


def run_bench(model: Model, prompts: list[int], gens: list[int], repetitions: int,
              progress: Callable[[str], None] = lambda _: None) -> Iterator[BenchResult]:
    """Yields a BenchResult per test (ppN for each N in `prompts`, tgN for each N in `gens`) on `model`
    as loaded (its thread count). One untimed warm-up run precedes each test."""
    if repetitions < 1:
        raise InvalidArgumentError(f"repetitions must be >= 1, got {repetitions}")
    engine = model._engine
    longest = max(prompts + [n + 1 for n in gens], default=0)
    if longest > engine.n_ctx:
        raise InvalidArgumentError(f"a test needs {longest} positions but the context holds {engine.n_ctx}")
    rng = np.random.default_rng(0)
    first = model.tokenizer.bos_id if model._tokenizer and model.tokenizer.bos_id is not None else 0
    tests = [(f"pp{n}", n, lambda n: _prompt_processing(engine, n, rng)) for n in prompts]
    tests += [(f"tg{n}", n, lambda n: _generation(engine, n, first)) for n in gens]
    for name, n, run in tests:
        run(n)  # warm-up: caches, page faults, thread start
        speeds = []
        for r in range(repetitions):
            progress(f"{name} with {engine.n_threads} threads: run {r + 1}/{repetitions}")
            speeds.append(n / run(n))
        yield BenchResult(engine.n_threads, name, speeds)


@dataclass(frozen=True)
class Perplexity:
    value: float
    tokens: int  # predictions scored
    chunks: int


def perplexity(model: Model, text: str, ctx: int,
               progress: Callable[[int, int, float], None] = lambda *_: None) -> Perplexity:
    """Perplexity of `model` on `text`: the text's tokens are cut into chunks of `ctx` tokens, each
    starting with BOS; within a chunk every token after the first is scored from the logits of the
    positions before it. progress(chunk, n_chunks, running_ppl) is called after each chunk."""
    if ctx < 2 or ctx > model.info.n_ctx:
        raise InvalidArgumentError(f"ctx must be in [2, {model.info.n_ctx}] (the loaded context), got {ctx}")
    tok = model.tokenizer
    ids = tok.encode(text, add_bos=False)
    starter = [tok.bos_id] if tok.bos_id is not None else []
    body = ctx - len(starter)
    n_chunks = len(ids) // body
    if n_chunks == 0:
        raise InvalidArgumentError(f"the text has {len(ids)} tokens, fewer than one chunk of {body}")
    nll, count = 0.0, 0
    for c in range(n_chunks):
        chunk = starter + ids[c * body:(c + 1) * body]
        logits = model.logits(chunk).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        targets = np.asarray(chunk[1:])
        nll -= float(logp[np.arange(len(targets)), targets].sum())
        count += len(targets)
        progress(c + 1, n_chunks, math.exp(nll / count))
    return Perplexity(math.exp(nll / count), count, n_chunks)
