"""Q4_1, Q5_0, Q5_1, IQ4_NL (32-value blocks): their rows through llm_dequantize against gguf's dequantizer bit
for bit, and their products on raw blocks (every nibble, every fifth bit, negative scales and mins), where gguf's
quantizer would only ever write the blocks of smooth data. The products of ordinary data are in test_kernels.py."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
from quants import GGUF_TYPES, product_reference
from test_kernels import ISAS, LEGACY_TYPES, c_matmul, c_matvec, encode

from llmrun.engine import ffi, lib
from llmrun.spec import TENSOR_TYPES, Tensor


def kernel_tolerance(want: np.ndarray, cols: int) -> dict[str, float]:
    """The tolerance of the product tests above (the module docstring derives it)."""
    return {"rtol": 1e-5, "atol": 1e-5 * np.sqrt(cols) * max(1.0, float(np.abs(want).max()))}


def has_min(type: str) -> bool:
    return type in ("q4_1", "q5_1")


def random_blocks(rng: np.random.Generator, type: str, rows: int, cols: int, scale: float = 0.05) -> np.ndarray:
    """Raw blocks (rows, row_bytes) of random bytes, their fp16 scale (and min) random normal * scale."""
    t = TENSOR_TYPES[type]
    raw = rng.integers(0, 256, (rows, cols // 32, t.block_bytes), dtype=np.uint8)
    for field in range(2 if has_min(type) else 1):  # d, then m: the first two or four bytes
        raw[:, :, 2 * field:2 * field + 2] = (rng.standard_normal((rows, cols // 32, 1)) * scale).astype("<f2").view(
            np.uint8)
    return raw.reshape(rows, -1)


def fp16_field(raw: np.ndarray, type: str, field: int) -> np.ndarray:
    """The fp16 scale (field 0) or min (field 1) of every block of raw (rows, row_bytes), writable in place."""
    return raw.reshape(raw.shape[0], -1, TENSOR_TYPES[type].block_bytes)[:, :, 2 * field:2 * field + 2].view("<f2")[
        ..., 0]


def qh_field(raw: np.ndarray, type: str) -> np.ndarray:
    """The 32 fifth bits (qh, a little-endian uint32) of every block of a Q5 type's raw rows, writable in place."""
    start = 4 if has_min(type) else 2
    return raw.reshape(raw.shape[0], -1, TENSOR_TYPES[type].block_bytes)[:, :, start:start + 4].view("<u4")[..., 0]


def qs_field(raw: np.ndarray, type: str) -> np.ndarray:
    """The 16 nibble bytes of every block of raw rows, writable in place."""
    return raw.reshape(raw.shape[0], -1, TENSOR_TYPES[type].block_bytes)[:, :, -16:]


def c_dequantize(raw: np.ndarray, type: str) -> np.ndarray:
    rows = raw.shape[0]
    cols = raw.shape[1] // TENSOR_TYPES[type].block_bytes * 32
    out = np.empty((rows, cols), dtype=np.float32)
    assert lib.llm_dequantize(TENSOR_TYPES[type].code, ffi.from_buffer(raw), rows, cols,
                              ffi.from_buffer("float[]", out)) == 0
    return out


def gguf_dequantize(raw: np.ndarray, type: str) -> np.ndarray:
    return gguf.quants.dequantize(raw, GGUF_TYPES[type]).astype(np.float32).reshape(raw.shape[0], -1)


def extreme_blocks(type: str) -> np.ndarray:
    """One row per extreme: all zero; the largest fp16 scales (and mins) of both signs with every value; the
    smallest subnormal scale; negative mins; each single fifth bit, all of them, none."""
    rows, cols = 8, 32 * 32
    raw = np.zeros((rows, cols // 32 * TENSOR_TYPES[type].block_bytes), dtype=np.uint8)  # row 0: all zero
    every_nibble = np.arange(16, dtype=np.uint8)
    qs = qs_field(raw, type)
    qs[1:] = every_nibble | (every_nibble[::-1] << 4)  # values 0..15, then 15..0
    fp16_field(raw, type, 0)[1] = np.float16(65504.0)
    fp16_field(raw, type, 0)[2] = np.float16(-65504.0)
    fp16_field(raw, type, 0)[3] = np.float16(2.0**-24)  # the smallest subnormal
    fp16_field(raw, type, 0)[4:] = np.float16(0.37)
    if has_min(type):
        fp16_field(raw, type, 1)[1] = np.float16(65504.0)
        fp16_field(raw, type, 1)[2] = np.float16(-65504.0)
        fp16_field(raw, type, 1)[4:] = -np.linspace(0.01, 1000, 32).astype(np.float16)  # negative mins
    if type in ("q5_0", "q5_1"):
        qh = qh_field(raw, type)
        qh[4] = np.uint32(1) << np.arange(32, dtype=np.uint32)  # block j: bit j alone
        qh[5] = 0xffffffff
        qh[6] = 0x55555555
        qh[7] = 0xaaaaaaaa
    return raw


@pytest.mark.parametrize("type", LEGACY_TYPES)
def test_legacy_dequantize_matches_gguf_bit_for_bit(type: str) -> None:
    """Rows of random blocks (scales over the whole finite fp16 range: subnormals, huge, negative) and of
    extreme blocks equal gguf.quants.dequantize in every bit: the same fp16 conversion (subnormals included),
    the same values in the same places, the same float operations."""
    rng = np.random.default_rng(12)
    raw = random_blocks(rng, type, 16, 256)
    for field in range(2 if has_min(type) else 1):
        bits = rng.integers(0, 1 << 16, fp16_field(raw, type, field).shape, dtype=np.uint16)
        bits[(bits & 0x7c00) == 0x7c00] &= 0xbfff  # no inf or NaN: clear the exponent's top bit
        fp16_field(raw, type, field)[...] = bits.view("<f2")
    for blocks in (raw, extreme_blocks(type)):
        got, want = c_dequantize(blocks, type), gguf_dequantize(blocks, type)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), f"{type}: {np.argwhere(got != want)[:5]}"


@pytest.mark.parametrize("type", ["q5_0", "q5_1"])
def test_legacy_fifth_bits_land_on_their_own_values(type: str) -> None:
    """The extreme blocks hold what they claim (else the bit-for-bit test compares little): in the row whose
    block j has bit j of qh alone, clearing qh lowers value j of block j by 16 d and nothing else."""
    raw = extreme_blocks(type)[4:5]
    cleared = raw.copy()
    qh_field(cleared, type)[...] = 0
    raised = (c_dequantize(raw, type) - c_dequantize(cleared, type)).reshape(32, 32)
    d = float(np.float16(0.37))
    np.testing.assert_allclose(raised, 16 * d * np.eye(32), atol=1e-3)  # the mins (to -1000) round the difference


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", LEGACY_TYPES)
def test_legacy_products_on_raw_blocks(type: str, isa: str) -> None:
    """Matrix-vector and matrix-matrix products of random raw blocks (every nibble and fifth-bit pattern, scales
    and mins of both signs) and of the extreme blocks, against the numpy reference, on every level."""
    rng = np.random.default_rng(121)
    for raw in (random_blocks(rng, type, 37, 1024), extreme_blocks(type)):
        t = Tensor(raw, type)
        cols = raw.shape[1] // TENSOR_TYPES[type].block_bytes * 32
        x = rng.standard_normal((13, cols)).astype(np.float32)
        want = np.stack([product_reference(t, row) for row in x])
        got, got_one = c_matmul(t, x, isa), c_matvec(t, x[0], isa)
        for r in range(len(raw)):  # row by row: the extreme rows' scales are 10^5 times the others'
            np.testing.assert_allclose(got[:, r], want[:, r], **kernel_tolerance(want[:, r], cols),
                                       err_msg=f"{type} {isa} row {r}")
            np.testing.assert_allclose(got_one[r], want[0, r], **kernel_tolerance(want[:, r], cols),
                                       err_msg=f"{type} {isa} row {r}, one token")


def mutated(raw: np.ndarray, type: str, bug: str) -> np.ndarray:
    """Blocks whose correct product is what a kernel with `bug` computes on raw: reading bit j + 1 of qh for
    value j is the correct product of qh >> 1; a kernel that drops the min is correct on m = 0; one that swaps
    the nibble halves (values j and j + 16) is correct on swapped nibbles; one that takes block b's scale from
    block b + 1 is correct on scales moved one block down."""
    raw = raw.copy()
    if bug == "scale index off by one":
        d = fp16_field(raw, type, 0)
        d[:, :-1] = d[:, 1:].copy()
    elif bug == "qh bit off by one":
        qh_field(raw, type)[...] >>= 1
    elif bug == "min dropped":
        fp16_field(raw, type, 1)[...] = 0
    elif bug == "nibble halves swapped":
        qs = qs_field(raw, type)
        qs[...] = (qs >> 4) | (qs << 4)
    else:
        raise ValueError(f"no such bug: {bug}")
    return raw


LEGACY_BUGS = [("q4_1", "min dropped"), ("q4_1", "nibble halves swapped"), ("q4_1", "scale index off by one"),
               ("q5_0", "qh bit off by one"), ("q5_0", "scale index off by one"), ("q5_1", "qh bit off by one"),
               ("q5_1", "min dropped"), ("iq4_nl", "nibble halves swapped"), ("iq4_nl", "scale index off by one")]


@pytest.mark.parametrize(("type", "bug"), LEGACY_BUGS)
def test_legacy_tolerance_catches_a_wrong_kernel(type: str, bug: str) -> None:
    """The tolerance of the product tests is tight enough to fail a kernel with a plausible bug: the product such
    a kernel computes (the correct product of mutated blocks, see mutated) lies outside it on the data of
    test_legacy_products_on_raw_blocks and of the gguf-encoded tests, while the real kernels lie inside."""
    rng = np.random.default_rng(5)
    encoded = encode(rng.standard_normal((64, 288)), type).data
    for raw in (random_blocks(rng, type, 37, 1024), encoded):
        cols = raw.shape[1] // TENSOR_TYPES[type].block_bytes * 32
        x = rng.standard_normal(cols).astype(np.float32)
        want = product_reference(Tensor(raw, type), x)
        wrong = product_reference(Tensor(mutated(raw, type, bug), type), x)
        tol = kernel_tolerance(want, cols)
        assert np.any(np.abs(wrong - want) > tol["atol"] + tol["rtol"] * np.abs(want)), f"{type}: {bug} passes"
        for isa in ISAS:
            np.testing.assert_allclose(c_matvec(Tensor(raw, type), x, isa), want, **tol, err_msg=f"{type} {isa}")
