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


def _prompt_processing(model: Model, n: int, rng: np.random.Generator) -> float:
    """Seconds to evaluate n random tokens from an empty cache."""
    tokens = rng.integers(0, model.info.vocab_size, size=n).tolist()
    model.reset()
    start = time.perf_counter()
    model.evaluate(tokens)
    return time.perf_counter() - start


def _generation(model: Model, n: int, first: int) -> float:
    """Seconds to generate n tokens greedily, one evaluation each, after `first`."""
    model.reset()
    history = [first]
    logits = model.evaluate(history)
    start = time.perf_counter()
    for _ in range(n):
        history.append(int(np.argmax(logits)))
        model.evaluate(history, out=logits)
    return time.perf_counter() - start


def run_bench(model: Model, prompts: list[int], gens: list[int], repetitions: int,
              progress: Callable[[str], None] = lambda _: None) -> Iterator[BenchResult]:
    """Yields a BenchResult per test (ppN for each N in `prompts`, tgN for each N in `gens`) on `model`
    as loaded (its thread count). One untimed warm-up run precedes each test."""
    if repetitions < 1:
        raise InvalidArgumentError(f"repetitions must be >= 1, got {repetitions}", param="repetitions")
    n_ctx, n_threads = model.info.n_ctx, model.info.n_threads
    longest = max(prompts + [n + 1 for n in gens], default=0)
    if longest > n_ctx:
        raise InvalidArgumentError(f"a test needs {longest} positions but the context holds {n_ctx}")
    rng = np.random.default_rng(0)
    bos = model.tokenizer.bos_id if model.has_tokenizer else None
    first = bos if bos is not None else 0
    tests = [(f"pp{n}", n, lambda n: _prompt_processing(model, n, rng)) for n in prompts]
    tests += [(f"tg{n}", n, lambda n: _generation(model, n, first)) for n in gens]
    for name, n, run in tests:
        run(n)  # warm-up: caches, page faults, thread start
        speeds = []
        for r in range(repetitions):
            progress(f"{name} with {n_threads} threads: run {r + 1}/{repetitions}")
            speeds.append(n / run(n))
        yield BenchResult(n_threads, name, speeds)


@dataclass(frozen=True)
class Perplexity:
    value: float
    tokens: int  # predictions scored
    chunks: int


def perplexity(model: Model, text: str, ctx: int, progress: Callable[[int, int, float], None] = lambda *_: None,
               llama_cpp: bool = False) -> Perplexity:
    """Perplexity of `model` on `text`, in chunks of `ctx` tokens that each start with BOS (where the model has
    one) and are scored from the positions before them in the chunk.

    By default the text's tokens are cut into chunks of ctx - 1 after BOS and every token of a chunk after BOS
    is scored, so each token of the text is scored once. With `llama_cpp`, as llama.cpp's llama-perplexity:
    the text is tokenized as a prompt (BOS first where the model file asks for one), cut into chunks of ctx
    tokens whose first token becomes BOS, and only the second half of each chunk is scored (every prediction
    sees at least ctx / 2 tokens); the text must have 2 * ctx tokens. Its figures compare with published
    llama.cpp perplexities; they are lower than the default's (more context per prediction) from half the
    predictions. progress(chunk, n_chunks, running_ppl) is called after each chunk."""
    if ctx < 2:  # a chunk is BOS and at least one token to score
        raise InvalidArgumentError(f"ctx must be at least 2, got {ctx}", param="ctx")
    if ctx > model.info.n_ctx:
        raise InvalidArgumentError(f"ctx must be at most the loaded context ({model.info.n_ctx}), got {ctx}",
                                   param="ctx")
    chunks, first = _llama_cpp_chunks(model, text, ctx) if llama_cpp else (_chunks(model, text, ctx), 0)
    nll, count = 0.0, 0
    for c, chunk in enumerate(chunks):
        nll += _negative_log_likelihood(model.logits(chunk), chunk, first)
        count += len(chunk) - 1 - first
        progress(c + 1, len(chunks), math.exp(nll / count))
    return Perplexity(math.exp(nll / count), count, len(chunks))


def _chunks(model: Model, text: str, ctx: int) -> list[list[int]]:
    """BOS and the next ctx - 1 tokens of the text, for as many whole chunks as the text has."""
    tok = model.tokenizer
    ids = tok.encode(text, add_bos=False)
    starter = [tok.bos_id] if tok.bos_id is not None else []
    body = ctx - len(starter)
    if len(ids) < body:
        raise InvalidArgumentError(f"the text has {len(ids)} tokens, fewer than one chunk of {body}")
    return [starter + ids[c * body:(c + 1) * body] for c in range(len(ids) // body)]


def _llama_cpp_chunks(model: Model, text: str, ctx: int) -> tuple[list[list[int]], int]:
    """llama-perplexity's chunks (tools/perplexity/perplexity.cpp, perplexity()) and the first position it
    scores from: the whole text tokenized with the model's special tokens, cut every ctx tokens, the first of
    each chunk replaced by BOS when the model adds one; predictions from position ctx / 2 on."""
    ids = model.tokenize(text)
    if len(ids) < 2 * ctx:
        raise InvalidArgumentError(f"the text has {len(ids)} tokens; llama.cpp's scoring needs at least 2 * ctx "
                                   f"= {2 * ctx}", param="ctx")
    chunks = [ids[c * ctx:(c + 1) * ctx] for c in range(len(ids) // ctx)]
    if model.add_bos_token:
        for chunk in chunks:
            chunk[0] = model.tokenizer.bos_id
    return chunks, ctx // 2


def _negative_log_likelihood(logits: np.ndarray, chunk: list[int], first: int, rows: int = 256) -> float:
    """-sum of log p(chunk[i + 1] | chunk[..i]) for i from `first`, in float64, `rows` rows at a time (a
    chunk's logits are ctx x vocabulary: a float64 copy of all of them at once can be gigabytes)."""
    total = 0.0
    for start in range(first, len(chunk) - 1, rows):
        z = logits[start:min(start + rows, len(chunk) - 1)].astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        targets = chunk[start + 1:start + 1 + len(z)]
        total -= float(logp[np.arange(len(z)), targets].sum())
    return total
