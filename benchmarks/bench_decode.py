"""pytest-benchmark suite: one decode step on the stories15M shape, and the matrix-vector kernels of every
weight type and instruction set.

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
        engine = model._engine
        tokens = list(np.random.default_rng(0).integers(3, 32000, size=65))
        engine.evaluate(tokens[:64])

        def step() -> None:
            engine.evaluate(tokens)  # the 64-token prefix is cached: this runs exactly one token

        benchmark(step)
        benchmark.extra_info["tokens_per_second"] = 1.0 / benchmark.stats.stats.mean


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", ["f32", "f16", "bf16", "q8_0", "q4_0"])
def test_matvec_classifier(benchmark, type: str, isa: str) -> None:
    """The largest product of a 110M model, the 32000 x 768 classifier, on one thread, in each weight type
    and instruction set (for block types this includes quantizing the input vector)."""
    rng = np.random.default_rng(0)
    w = encode(rng.standard_normal((32000, 768)).astype(np.float32), type)
    x = rng.standard_normal(768).astype(np.float32)
    out = np.empty(32000, dtype=np.float32)
    args = (TENSOR_TYPES[type].code, ISA_NAMES[isa], ffi.from_buffer(w.data), 32000, 768,
            ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out))
    benchmark(lambda: lib.llm_matvec(*args))
    benchmark.extra_info["weights_per_second"] = 32000 * 768 / benchmark.stats.stats.mean
    np.testing.assert_allclose(out, product_reference(w, x), rtol=1e-3, atol=1e-2)
