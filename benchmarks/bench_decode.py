"""pytest-benchmark suite: one decode step and a 128-token prompt on the stories15M shape, and the
matrix-vector (decode) and matrix-matrix (prompt) kernels of every weight type and instruction set.

    pytest benchmarks/bench_decode.py --benchmark-only
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quants import encode, product_reference

import llmrun
from llmrun.engine import ISA_NAMES, available_isas, ffi, lib
from llmrun.spec import TENSOR_TYPES
from models import write_random_model

ISAS = available_isas()


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_random_model(tmp_path_factory.mktemp("m") / "stories15M.bin", "stories15M")


@pytest.mark.parametrize("n_threads", [1, 2])
def test_decode_step_15m(benchmark, model_path: Path, n_threads: int) -> None:
    """One token through the model at position 64 (the KV cache holds 64 tokens): the per-token cost."""
    with llmrun.load(model_path, n_threads=n_threads) as model:
        tokens = list(np.random.default_rng(0).integers(3, 32000, size=65))
        model.evaluate(tokens[:64])
        logits = np.empty(model.info.vocab_size, dtype=np.float32)

        def step() -> None:
            model.evaluate(tokens, out=logits)  # the 64-token prefix is cached: this runs exactly one token

        benchmark(step)
        benchmark.extra_info["tokens_per_second"] = 1.0 / benchmark.stats.stats.mean


@pytest.mark.parametrize("n_batch", [1, 512])
def test_prompt_128_15m(benchmark, model_path: Path, n_batch: int) -> None:
    """A 128-token prompt from an empty cache on one thread, as one batch and token by token (n_batch=1)."""
    with llmrun.load(model_path, n_threads=1, n_batch=n_batch) as model:
        tokens = list(np.random.default_rng(0).integers(3, 32000, size=128))

        def prompt() -> None:
            model.reset()
            model.evaluate(tokens)

        benchmark(prompt)
        benchmark.extra_info["tokens_per_second"] = 128 / benchmark.stats.stats.mean


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", ["f32", "f16", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("n", [1, 64])
def test_product_768(benchmark, type: str, isa: str, n: int) -> None:
    """A 4096 x 768 product (a 110M model's largest layer matrices are 3072 x 768) on one thread, in each
    weight type and instruction set, for one token (the decode kernel) and for 64 (the prompt kernel);
    for block types this includes quantizing the input."""
    rng = np.random.default_rng(0)
    rows, cols = 4096, 768
    w = encode(rng.standard_normal((rows, cols)).astype(np.float32), type)
    x = rng.standard_normal((n, cols)).astype(np.float32)
    out = np.empty((n, rows), dtype=np.float32)
    args = (TENSOR_TYPES[type].code, ISA_NAMES[isa], ffi.from_buffer(w.data), rows, cols,
            ffi.from_buffer("float[]", x), n, ffi.from_buffer("float[]", out))
    benchmark(lambda: lib.llm_matmul(*args))
    benchmark.extra_info["multiply_adds_per_second"] = rows * cols * n / benchmark.stats.stats.mean
    np.testing.assert_allclose(out[0], product_reference(w, x[0]), rtol=1e-3, atol=1e-2)
