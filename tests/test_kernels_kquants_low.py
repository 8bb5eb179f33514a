"""Q2_K, Q3_K, IQ4_XS: their row lookup against gguf's decoder bit for bit, and the tolerance of the product
tests (test_kernels.py) against a wrong kernel."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import quants_low
from quants import GGUF_TYPES, product_reference, quantize_activations
from test_kernels import ISAS, LOW_K_TYPES, c_matvec, encode

from llmrun.engine import ffi, lib
from llmrun.spec import TENSOR_TYPES, Tensor

FP16_LARGEST, FP16_NEG_LARGEST = 0x7BFF, 0xFBFF  # +-65504
SCALE_FIELDS = {"q2_k": (0, 16), "q3_k": (96, 108), "iq4_xs": (2, 8)}  # byte range of each block's scales
D_FIELDS = {"q2_k": [80, 82], "q3_k": [108], "iq4_xs": [0]}  # byte offsets of the fp16 d (and dmin)


def c_dequantize(raw: np.ndarray, type: str) -> np.ndarray:
    """(rows, row_bytes) uint8 blocks of `type` as floats through lib.llm_dequantize (the type's get_row)."""
    rows, cols = len(raw), raw.shape[1] // TENSOR_TYPES[type].block_bytes * 256
    out = np.empty((rows, cols), dtype=np.float32)
    raw = np.ascontiguousarray(raw)
    assert lib.llm_dequantize(TENSOR_TYPES[type].code, ffi.from_buffer(raw), rows, cols,
                              ffi.from_buffer("float[]", out)) == 0
    return out


def extreme_blocks(type: str, rng: np.random.Generator) -> np.ndarray:
    """(n, block_bytes) super-blocks: random bytes (every bit pattern of values, hmask and scales), an
    all-zero block, the largest fp16 d and dmin of either sign, every value of a scale field in every
    sub-block, hmask all set and all clear, and a nan/inf scale."""
    bb = TENSOR_TYPES[type].block_bytes
    blocks = [rng.integers(0, 256, (64, bb), dtype=np.uint8), np.zeros((1, bb), dtype=np.uint8)]
    big = rng.integers(0, 256, (5, bb), dtype=np.uint8)
    for i, (a, b) in enumerate([(FP16_LARGEST, FP16_LARGEST), (FP16_NEG_LARGEST, FP16_NEG_LARGEST),
                                (FP16_LARGEST, FP16_NEG_LARGEST), (0x7C00, 0), (0x7E00, 0x7E00)]):  # inf, nan
        for off, h in zip(D_FIELDS[type], (a, b)[: len(D_FIELDS[type])], strict=True):
            big[i, off:off + 2] = np.array([h], dtype="<u2").view(np.uint8)
    blocks.append(big)
    every = rng.integers(0, 256, (64, bb), dtype=np.uint8)  # scale field value k in block k, every sub-block
    lo, hi = SCALE_FIELDS[type]
    k = np.arange(64, dtype=np.uint8)
    if type == "q2_k":  # scale k % 16, min k // 4
        every[:, lo:hi] = ((k % 16) | (k // 4) << 4)[:, None]
    elif type == "q3_k":
        every[:, lo:hi] = quants_low.pack_q3_k_scales(np.repeat(k[:, None], 16, axis=1))
    else:
        every[:, lo:hi] = quants_low.pack_iq4_xs_scales(np.repeat(k[:, None], 8, axis=1))
    blocks.append(every)
    if type == "q3_k":
        hmask = rng.integers(0, 256, (2, bb), dtype=np.uint8)
        hmask[0, :32], hmask[1, :32] = 0xFF, 0x00
        blocks.append(hmask)
    for off in D_FIELDS[type]:  # finite, moderate scales in the random blocks
        blocks[0][:, off:off + 2] = rng.uniform(-2, 2, (64, 1)).astype("<f2").view(np.uint8)
    return np.concatenate(blocks)


@pytest.mark.parametrize("type", LOW_K_TYPES)
def test_low_k_row_lookup_equals_gguf_bit_for_bit(type: str) -> None:
    """get_row (through llm_dequantize) gives exactly gguf.quants.dequantize's float32 bits, nan where it
    has nan: the same expressions in the same order, for every field's every value."""
    rng = np.random.default_rng(17)
    blocks = extreme_blocks(type, rng)
    # rows of one super-block each, and the random ones also as rows of four (row and block offsets)
    for raw in (blocks, blocks[:64].reshape(16, -1)):
        got = c_dequantize(raw, type)
        with np.errstate(invalid="ignore", over="ignore"):
            want = gguf.quants.dequantize(raw, GGUF_TYPES[type]).astype(np.float32).reshape(got.shape)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_array_equal(got[ok].view(np.uint32), want[ok].view(np.uint32))
        if raw is blocks:  # the extremes are in
            assert np.isnan(want).any() and np.isinf(want).any() and (want == 0).any()


def shifted_scales(raw: np.ndarray, type: str) -> np.ndarray:
    """The blocks with each sub-block's scale taken from the next sub-block (the last from the first): what
    a kernel with an off-by-one in its scale index reads."""
    lo, hi = SCALE_FIELDS[type]
    blocks = raw.reshape(-1, TENSOR_TYPES[type].block_bytes).copy()
    if type == "q2_k":
        blocks[:, lo:hi] = np.roll(blocks[:, lo:hi], -1, axis=1)
    elif type == "q3_k":
        blocks[:, lo:hi] = quants_low.pack_q3_k_scales(np.roll(quants_low.unpack_q3_k_scales(blocks[:, lo:hi]), -1, 1))
    else:
        blocks[:, lo:hi] = quants_low.pack_iq4_xs_scales(
            np.roll(quants_low.unpack_iq4_xs_scales(blocks[:, lo:hi]), -1, 1))
    return blocks.reshape(raw.shape)


@pytest.mark.parametrize("type", LOW_K_TYPES)
def test_low_k_tolerance_catches_a_wrong_scale_index(type: str) -> None:
    """The kernels agree with the reference within the tolerance of test_matvec_matches_reference, and a
    reference that reads each sub-block's scale one sub-block off lies far outside it on every level: the
    tolerance is tight enough to see the mistake a kernel is most likely to make."""
    rng = np.random.default_rng(23)
    rows, cols = 32, 1024
    t = encode(rng.standard_normal((rows, cols)), type)
    x = rng.standard_normal(cols).astype(np.float32)
    want = product_reference(t, x)
    wrong = product_reference(Tensor(shifted_scales(t.data, type), type), x)
    scale = max(1.0, float(np.abs(want).max()))
    atol = 1e-5 * np.sqrt(cols) * scale
    for isa in ISAS:
        got = c_matvec(t, x, isa)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=atol, err_msg=f"{type} {isa}")
        outside = np.abs(got - wrong) > atol + 1e-5 * np.abs(wrong)
        assert outside.mean() > 0.9, f"{type} {isa}: only {outside.mean():.0%} of the rows tell the two apart"


def probe_q2_k_rows(cols: int) -> np.ndarray:
    """Q2_K rows that read one byte of the quantized input each: row p (p < cols) is 1 at column p and 0
    elsewhere (d = 1, scale 1, q = 1), so its product is d_x * q_x[p] exactly; then, per 16 columns i, a row
    with min 1 over those 16 columns only (d = 0, dmin = 1, q = 0), whose product is -d_x * bsums[i]."""
    nb = cols // 256
    blocks = np.zeros((cols + cols // 16, nb, 84), dtype=np.uint8)
    one = np.array([1.0], dtype="<f2").view(np.uint8)
    for p in range(cols):
        sb, j = divmod(p, 256)
        n, jj, lane = j // 128, j % 128 // 32, j % 32
        blocks[p, sb, 16 + 32 * n + lane] = 1 << (2 * jj)  # qs
        blocks[p, sb, j // 16] = 1  # scale 1, min 0
        blocks[p, sb, 80:82] = one  # d
    for i in range(cols // 16):
        sb, sub = divmod(i, 16)
        blocks[cols + i, sb, sub] = 0x10  # scale 0, min 1
        blocks[cols + i, sb, 82:84] = one  # dmin
    return blocks.reshape(len(blocks), -1)


def test_q8k_activations_are_the_same_bytes_on_every_level() -> None:
    """The 256-value activation quantizer of every level writes the scalar one's bytes (values, scales, sums
    per 16), read back exactly through Q2_K rows that each pick one of them, and they are the numpy rule's
    (quants.quantize_activations): the kernels' tolerance assumes that one quantization."""
    cols = 512
    rng = np.random.default_rng(31)
    t = Tensor(probe_q2_k_rows(cols), "q2_k")
    x = (rng.standard_normal(cols) * np.repeat([1.0, 1e-3], 256)).astype(np.float32)
    x[7] = 0.5 * (x[7] + x[8])  # some ties and a large value, where rounding differs most easily
    d, q = quantize_activations(x, 256)
    want = np.concatenate([np.repeat(d, 256) * q.reshape(-1), -np.repeat(d, 16) * q.reshape(-1, 16).sum(axis=1)])
    for isa in ISAS:
        np.testing.assert_array_equal(c_matvec(t, x, isa), want.astype(np.float32), err_msg=isa)
