"""A token's float product is bit for bit the same alone (the matrix-vector kernel, n = 1) or batched with
others (the matrix-matrix kernel's tiles, n > 1; for the quantized types, batches of n <= 8), on every
instruction set (issue 16: users' decode steps batched into one forward pass must each get exactly the greedy
tokens they get alone). The x86 float kernels sum every (row, token) in one order per level, which the
one-token kernel (several rows at a time) and the batch tiles (RM rows x RN tokens, a tile's sums reduced
jointly) share: one accumulator of the level's width over k, then a fixed tree over its lanes
(csrc/kernels_x86_float.c). For the float types this holds for every batch size, with no tolerance. The
quantized types' small-batch paths (csrc/kernels_x86_int8.c) follow the one-token kernel up to a batch size
per type. The scalar level has no batch kernel and runs a batch token by token."""

from __future__ import annotations

import numpy as np
import pytest

from builders import make_config, random_tensors, spec_from_tensors
from llmrun.engine import ISA_NAMES, Engine, available_isas, ffi, lib
from llmrun.quantize import quantize_blocks
from llmrun.spec import TENSOR_TYPES

ISAS = available_isas()
FLOAT_TYPES = {"f32": lib.LLM_F32, "f16": lib.LLM_F16, "bf16": lib.LLM_BF16}
# whole 32-value steps, leftover 8-value steps and a scalar tail, alone and together
COLS = [8, 31, 64, 72, 100, 2048 + 3]
# every tail of AVX-512's 16-value and AVX2's 8-value steps, with and without whole steps before it
ODD_COLS = [1, 7, 9, 15, 16, 17, 23, 33, 47, 128 + 5, 768 + 13]


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
@pytest.mark.parametrize("type", FLOAT_TYPES)
def test_every_batch_size_equals_tokens_alone(type: str, isa: str) -> None:
    """n = 1..40 tokens (every remainder of the tiles' token counts, several token tiles) with row counts
    around the tiles' heights and the one-token kernel's groups of rows (1..9, 37), and cols with every kind
    of tail: each token's row of the batch's output is bit for bit its product alone."""
    rng = np.random.default_rng(18)
    for cols in ODD_COLS:
        for rows in (1, 3, 4, 5, 8, 9, 37):
            w = stored(rng.standard_normal((rows, cols)).astype(np.float32), type)
            x = rng.standard_normal((40, cols)).astype(np.float32)
            alone = np.stack([product(type, w, x[i], isa)[0] for i in range(40)])
            for n in range(1, 41):
                batched = product(type, w, x[:n], isa)
                assert np.array_equal(batched, alone[:n]), f"{type} {isa} rows={rows} cols={cols} n={n}: " \
                    f"max diff {np.abs(batched - alone[:n]).max():.3g}"


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


# The quantized types whose small batches (batched decode steps) take the matrix-vector kernel's arithmetic
# per token, and up to how many tokens; larger batches (prompts) may sum differently.
SMALL_BATCH_TYPES = {"q8_0": 8, "q4_0": 8, "q4_1": 8, "q5_0": 8, "q5_1": 8, "iq4_nl": 8, "q4_k": 8, "q5_k": 8,
                     "q6_k": 8, "q2_k": 4, "q3_k": 4, "iq4_xs": 3}
# whole groups of eight blocks, and a tail of blocks (cols not a multiple of 256); for the 256-value
# super-blocks, four at a time (Q6_K's 512-bit kernel) and a tail
QUANT_COLS = [32, 224, 256, 288, 768, 1024, 2048 + 96, 2048 + 256]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", SMALL_BATCH_TYPES)
def test_small_quantized_batches_equal_tokens_alone(type: str, isa: str) -> None:
    block = TENSOR_TYPES[type].block_elems
    rng = np.random.default_rng(16)
    for cols in QUANT_COLS:
        if cols % block:
            continue
        for rows in (1, 5, 37):
            w = quantize_blocks(rng.standard_normal((rows, cols)).astype(np.float32), type)
            x = rng.standard_normal((8, cols)).astype(np.float32)
            alone = np.stack([quantized_product(type, w, cols, x[i], isa)[0] for i in range(8)])
            for n in range(2, SMALL_BATCH_TYPES[type] + 1):
                batched = quantized_product(type, w, cols, x[:n], isa)
                assert np.array_equal(batched, alone[:n]), f"{type} {isa} rows={rows} cols={cols} n={n}: " \
                    f"max diff {np.abs(batched - alone[:n]).max():.3g}"


def quantized_product(type: str, w: np.ndarray, cols: int, x: np.ndarray, isa: str) -> np.ndarray:
    """out (n, rows) through llm_matmul for `type`'s blocks w (rows, row bytes) and n = len(x) tokens."""
    rows = len(w)
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    out = np.empty((len(x), rows), dtype=np.float32)
    assert lib.llm_matmul(TENSOR_TYPES[type].code, ISA_NAMES[isa], ffi.from_buffer(np.ascontiguousarray(w)), rows,
                          cols, ffi.from_buffer("float[]", x), len(x), ffi.from_buffer("float[]", out)) == 0
    return out
