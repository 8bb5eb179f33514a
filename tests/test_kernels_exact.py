"""A token's float product is bit for bit the same alone (the matrix-vector kernel, n = 1) or batched with
others (the matrix-matrix kernel's tiles, n > 1), on every instruction set (issue 16: users' decode steps
batched into one forward pass must each get exactly the greedy tokens they get alone). The x86 kernels sum
every (row, token) in the one-token kernel's order (csrc/kernels_x86_float.c); the scalar level has no batch
kernel and runs a batch token by token."""

from __future__ import annotations

import numpy as np
import pytest

from builders import make_config, random_tensors, spec_from_tensors
from llmrun.engine import ISA_NAMES, Engine, available_isas, ffi, lib

ISAS = available_isas()
FLOAT_TYPES = {"f32": lib.LLM_F32, "f16": lib.LLM_F16, "bf16": lib.LLM_BF16}
# whole 32-value steps, leftover 8-value steps and a scalar tail, alone and together
COLS = [8, 31, 64, 72, 100, 2048 + 3]


def stored(a: np.ndarray, type: str) -> np.ndarray:
    if type == "f32":
        return a
    if type == "f16":
        return a.astype(np.float16)
    return (a.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16: the upper half of each float


def product(type: str, w: np.ndarray, x: np.ndarray, isa: str) -> np.ndarray:
    """out (n, rows) through llm_matmul with n = len(x) tokens."""
    rows, cols = w.shape
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    out = np.empty((len(x), rows), dtype=np.float32)
    assert lib.llm_matmul(FLOAT_TYPES[type], ISA_NAMES[isa], ffi.from_buffer(w), rows, cols,
                          ffi.from_buffer("float[]", x), len(x), ffi.from_buffer("float[]", out)) == 0
    return out


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", FLOAT_TYPES)
def test_batched_tokens_equal_tokens_alone(type: str, isa: str) -> None:
    rng = np.random.default_rng(16)
    for cols in COLS:
        for rows in (1, 5, 37):
            w = stored(rng.standard_normal((rows, cols)).astype(np.float32), type)
            for n in (2, 3, 7, 13):
                x = rng.standard_normal((n, cols)).astype(np.float32)
                alone = np.stack([product(type, w, x[i], isa)[0] for i in range(n)])
                batched = product(type, w, x, isa)
                assert np.array_equal(batched, alone), f"{type} {isa} rows={rows} cols={cols} n={n}: " \
                    f"max diff {np.abs(batched - alone).max():.3g}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_threads", [1, 2])
def test_prompt_logits_equal_token_by_token(isa: str, n_threads: int) -> None:
    """An F32 model: a prompt's logits computed as one batch equal those computed one token at a time
    (n_batch=1). Attention and the norms work token by token either way; only the products differ."""
    cfg = make_config(dim=72, hidden_dim=172, n_heads=6, n_kv_heads=2, vocab_size=101)  # tails of 8 and of 4
    spec = spec_from_tensors(cfg, random_tensors(cfg, seed=3, tied=False))
    tokens = list(np.random.default_rng(0).integers(0, cfg.vocab_size, size=23))
    batched = Engine(spec, n_ctx=32, n_threads=n_threads, isa=isa).evaluate_all(tokens)
    alone = Engine(spec, n_ctx=32, n_threads=n_threads, isa=isa, n_batch=1).evaluate_all(tokens)
    assert np.array_equal(batched, alone), f"max diff {np.abs(batched - alone).max():.3g}"
