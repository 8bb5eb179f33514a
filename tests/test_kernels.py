"""The C kernels of every weight type against numpy references, and the instruction sets against each
other. Stored weights come from the official `gguf` package's encoders (tests/quants.py); it has none for
the K-quants, whose weights are random super-blocks, decoded by the same package.

Tolerances: the reference reproduces exactly what the C product computes (the stored weights; for block
types also the 8-bit quantization of the input, per 32 values or per 256 for the K-quants), in float64.
The C code accumulates in float32, so the results agree to ~1e-6 of the result's scale; rtol 1e-5 plus
atol 1e-5 * sqrt(cols) * scale leaves room for the accumulation order and nothing more: a wrong nibble
order or scale is off by O(1) (test_kernels_kquants.py shows it for one sub-block
taking its neighbour's scale).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from quants import bf16_rounded, decode, product_reference, rounds_input_to_bf16
from quants import encode as gguf_encode

from llmrun.engine import ISA_NAMES, available_isas, best_isa, ffi, lib
from llmrun.spec import TENSOR_TYPES, Tensor

ISAS = available_isas()
LEGACY_TYPES = ["q4_1", "q5_0", "q5_1", "iq4_nl"]  # the other 32-value blocks: more in test_kernels_q32.py
K_QUANTS = ["q4_k", "q5_k", "q6_k"]  # more in test_kernels_kquants.py
LOW_K_TYPES = ["q2_k", "q3_k", "iq4_xs"]  # more in test_kernels_kquants_low.py
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", *LEGACY_TYPES, *K_QUANTS, *LOW_K_TYPES]

# Where each K-quant super-block keeps its fp16 d (and dmin): csrc/kernels.h, ggml-common.h.
K_FP16_FIELDS = {"q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def random_super_blocks(rng: np.random.Generator, rows: int, cols: int, type: str,
                        d_scale: float = 2e-3) -> Tensor:
    """Random K-quant super-blocks: every bit random (all scale, min, and high-bit patterns occur) except the
    fp16 d and dmin, which are finite, of either sign, and about d_scale, so that the values stay O(1)."""
    tt = TENSOR_TYPES[type]
    raw = rng.integers(0, 256, size=(rows, cols // tt.block_elems, tt.block_bytes), dtype=np.uint8)
    for offset in K_FP16_FIELDS[type]:
        d = (rng.uniform(0.5, 1.0, raw.shape[:2]) * rng.choice([-d_scale, d_scale], raw.shape[:2]))
        raw[:, :, offset:offset + 2] = d.astype(np.float16).view(np.uint8).reshape(raw.shape[:2] + (2,))
    return Tensor(raw.reshape(rows, -1), type)


def encode(a: np.ndarray, type: str) -> Tensor:
    """`a` (rows, cols) stored as `type` through the gguf package's encoder; the package cannot encode the
    K-quants, so theirs are random super-blocks of the same shape (seeded by `a`: reproducible)."""
    if type not in K_QUANTS:
        return gguf_encode(a, type)
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(a, dtype=np.float32).tobytes()))
    return random_super_blocks(rng, *a.shape, type)


def block_cols(type: str, cols: int) -> int:
    """cols rounded up to whole blocks of `type`."""
    block = TENSOR_TYPES[type].block_elems
    return -(-cols // block) * block


def c_matmul(t, x: np.ndarray, isa: str) -> np.ndarray:
    """out (n, rows) = x (n, cols) @ w^T through llm_matmul; n == 1 is the matrix-vector kernel."""
    rows, cols = t.shape
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    out = np.empty((len(x), rows), dtype=np.float32)
    rc = lib.llm_matmul(TENSOR_TYPES[t.type].code, ISA_NAMES[isa], ffi.from_buffer(t.data), rows, cols,
                        ffi.from_buffer("float[]", x), len(x), ffi.from_buffer("float[]", out))
    assert rc == 0
    return out


def c_matvec(t, x: np.ndarray, isa: str) -> np.ndarray:
    return c_matmul(t, x[None, :], isa)[0]


def input_block(type: str) -> int:
    """Values per block of the type's quantized input: 32 for the float types too, so that tests of special
    inputs keep their shapes."""
    return max(32, TENSOR_TYPES[type].block_elems)


def shapes_for(type: str) -> list[tuple[int, int]]:
    if TENSOR_TYPES[type].block_elems == 32:
        return [(1, 32), (3, 64), (17, 96), (64, 288), (5, 1024)]
    if TENSOR_TYPES[type].block_elems == 256:  # 1280: a batch kernel's chunks of four super-blocks and one more
        return [(1, 256), (3, 512), (17, 768), (64, 256), (64, 1280), (9, 1280), (5, 2048)]
    return [(1, 1), (3, 7), (4, 8), (17, 33), (64, 288), (5, 1000)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", TYPES)
def test_matvec_matches_reference(type: str, isa: str) -> None:
    for rows, cols in shapes_for(type):
        rng = np.random.default_rng(rows * 1000 + cols)
        t = encode(rng.standard_normal((rows, cols)), type)
        x = rng.standard_normal(cols).astype(np.float32)
        want = product_reference(t, x, isa)
        got = c_matvec(t, x, isa)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(cols) * scale,
                                   err_msg=f"{type} {isa} ({rows}, {cols})")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", TYPES)
def test_matmul_matches_reference(type: str, isa: str) -> None:
    """A batch of tokens through the matrix-matrix kernels: every tile shape and tail (token counts that
    are not multiples of the tile widths, rows that are not multiples of the tile heights), against the
    reference for each token, and equal to the matrix-vector kernel token by token."""
    for rows, cols in shapes_for(type):
        for n in (2, 3, 7, 13):
            rng = np.random.default_rng(rows * 1000 + cols + n)
            t = encode(rng.standard_normal((rows, cols)), type)
            x = rng.standard_normal((n, cols)).astype(np.float32)
            want = np.stack([product_reference(t, row, isa) for row in x])
            got = c_matmul(t, x, isa)
            scale = max(1.0, float(np.abs(want).max()))
            tol = {"rtol": 1e-5, "atol": 1e-5 * np.sqrt(cols) * scale}
            np.testing.assert_allclose(got, want, **tol, err_msg=f"{type} {isa} ({rows}, {cols}) x {n}")
            by_token = np.stack([c_matvec(t, row, isa) for row in x])
            np.testing.assert_allclose(got, by_token, **tol, err_msg=f"{type} {isa} ({rows}, {cols}) x {n}")


FLOAT_TYPES = ["f32", "f16", "bf16"]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", FLOAT_TYPES)
def test_float_products_with_tails_match_reference(type: str, isa: str) -> None:
    """The float kernels with cols that leave every kind of tail of their 16- and 8-value steps (masked on
    AVX-512, value by value on AVX2), rows around the tiles' heights, and n = 1..40 tokens (every remainder of
    the tiles' widths), against the float64 reference."""
    for rows, cols in [(1, 1), (5, 15), (9, 17), (4, 31), (37, 47), (8, 129), (13, 768 + 13)]:
        rng = np.random.default_rng(rows * 1000 + cols)
        t = encode(rng.standard_normal((rows, cols)), type)
        x = rng.standard_normal((40, cols)).astype(np.float32)
        want = np.stack([product_reference(t, row, isa) for row in x])
        scale = max(1.0, float(np.abs(want).max()))
        for n in range(1, 41):
            np.testing.assert_allclose(c_matmul(t, x[:n], isa), want[:n], rtol=1e-5, atol=1e-5 * np.sqrt(cols) * scale,
                                       err_msg=f"{type} {isa} ({rows}, {cols}) x {n}")


def test_matmul_large_batch_crosses_token_tiles() -> None:
    """Enough tokens that the kernels work through several token tiles of a weight chunk."""
    rng = np.random.default_rng(11)
    for type in TYPES:
        t = encode(rng.standard_normal((40, 2048)), type)
        x = rng.standard_normal((150, 2048)).astype(np.float32)
        for isa in ISAS:  # the scalar level on the input the level multiplies by
            xi = bf16_rounded(x) if rounds_input_to_bf16(type, isa) else x
            want = np.stack([c_matvec(t, row, "scalar") for row in xi])
            np.testing.assert_allclose(c_matmul(t, x, isa), want, rtol=1e-5, atol=1e-3, err_msg=f"{type} {isa}")


@pytest.mark.parametrize("type", ["q8_0", "q4_0", *LEGACY_TYPES, *K_QUANTS])
def test_quantized_products_are_close_to_exact(type: str) -> None:
    """Quantizing the input to 8 bits costs little: the product stays within 1% (of the result's scale)
    of the exact product of the stored weights with the unquantized input."""
    rng = np.random.default_rng(7)
    t = encode(rng.standard_normal((256, 512)), type)
    x = rng.standard_normal(512).astype(np.float32)
    exact = decode(t).reshape(t.shape) @ x.astype(np.float64)
    got = c_matvec(t, x, best_isa())
    assert np.abs(got - exact).max() / np.abs(exact).max() < 1e-2


def test_instruction_sets_agree() -> None:
    if len(ISAS) < 2:
        pytest.skip("only the scalar kernels exist on this CPU")
    rng = np.random.default_rng(3)
    for type in TYPES:
        cols = 10 * input_block(type)
        t = encode(rng.standard_normal((48, cols)), type)
        x = rng.standard_normal(cols).astype(np.float32)
        for isa in ISAS[1:]:
            xi = bf16_rounded(x) if rounds_input_to_bf16(type, isa) else x
            np.testing.assert_allclose(c_matvec(t, x, isa), c_matvec(t, xi, "scalar"), rtol=1e-5, atol=1e-4,
                                       err_msg=f"{type} {isa}")


def test_special_values_in_blocks() -> None:
    """All-zero blocks (scale 0), a block of one large value, and fp16 subnormal scales."""
    for type in TYPES:
        if type in K_QUANTS:  # they cannot be encoded from values: test_k_quant_extreme_super_blocks
            continue
        block = input_block(type)
        cols = 3 * block
        w = np.zeros((4, cols), dtype=np.float32)
        w[1, block + 8] = 1000.0
        w[2, :] = 1e-6  # scale 1e-6 / 127: an fp16 subnormal
        w[3, ::2] = -3.0
        x = np.linspace(-1, 1, cols).astype(np.float32)
        x[:block] = 0.0  # an all-zero input block
        t = encode(w, type)
        for isa in ISAS:
            want = product_reference(t, x, isa)
            np.testing.assert_allclose(c_matvec(t, x, isa), want, rtol=1e-5, atol=1e-6, err_msg=f"{type} {isa}")


def test_vanishing_input_blocks_give_zero_on_every_level() -> None:
    """An input block whose largest magnitude is below ~3.7e-37 has no finite 127 / max: it quantizes to
    zeros on every level, so its products are exactly 0 (the SIMD levels once turned inf * x into -128 for
    every value, a product of the wrong sign, and the scalar one converted inf to int8, undefined in C)."""
    rng = np.random.default_rng(9)
    for type in (t for t in TYPES if TENSOR_TYPES[t].block_elems > 1):
        block = input_block(type)
        x = np.zeros((2, 2 * block), dtype=np.float32)
        x[:, : block // 2] = 1e-37  # half of the first block tiny, the rest zero
        t = encode(rng.standard_normal((9, 2 * block)), type)
        for isa in ISAS:
            for got in (c_matvec(t, x[0], isa), c_matmul(t, x, isa)):
                assert not got.any(), f"{type} {isa}: {got}"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_reaches_the_output_on_every_level(bad: float) -> None:
    """A NaN or inf in a token's input makes that token's products NaN or inf (so the sampler rejects the logits)
    on every instruction set, one token or a batch; the other tokens of the batch are untouched. The 8-bit
    activation quantizer once passed NaN over (max ignores it) and turned it into garbage."""
    rng = np.random.default_rng(5)
    for type in TYPES:
        block = input_block(type)
        x = rng.standard_normal((5, 3 * block)).astype(np.float32)
        x[2, block + 8] = bad  # token 2, its second block
        t = encode(rng.standard_normal((24, 3 * block)), type)
        for isa in ISAS:
            for got in (c_matvec(t, x[2], isa), c_matmul(t, x, isa)[2]):
                assert not np.isfinite(got).any(), f"{type} {isa}: {got}"
            xi = bf16_rounded(x) if rounds_input_to_bf16(type, isa) else x
            clean = [c_matvec(t, xi[i], "scalar") for i in (0, 1, 3, 4)]
            batch = c_matmul(t, x, isa)[[0, 1, 3, 4]]
            np.testing.assert_allclose(batch, clean, rtol=1e-5, atol=1e-4, err_msg=f"{type} {isa}")


def test_matmul_rejects_bad_arguments() -> None:
    w = np.zeros((2, 64), dtype=np.uint8)
    x = np.zeros(64, dtype=np.float32)
    out = np.zeros(2, dtype=np.float32)
    args = (ffi.from_buffer(w), 2, 64, ffi.from_buffer("float[]", x), 1, ffi.from_buffer("float[]", out))
    assert lib.llm_matmul(99, lib.LLM_ISA_SCALAR, *args) == lib.LLM_ERR_INVALID
    assert lib.llm_matmul(lib.LLM_F32, 99, *args) == lib.LLM_ERR_INVALID
    # 48 columns is not a whole number of 32-value blocks
    assert lib.llm_matmul(lib.LLM_Q8_0, lib.LLM_ISA_SCALAR, ffi.from_buffer(w), 2, 48,
                          ffi.from_buffer("float[]", x), 1, ffi.from_buffer("float[]", out)) == lib.LLM_ERR_INVALID
    assert lib.llm_matmul(lib.LLM_F32, lib.LLM_ISA_SCALAR, *args[:4], 0, args[5]) == lib.LLM_ERR_INVALID
