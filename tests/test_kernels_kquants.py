"""The K-quants Q4_K, Q5_K, Q6_K: dequantization to the bit, extreme super-blocks, the 256-value activation
quantizer. The products of ordinary data are in test_kernels.py."""

from __future__ import annotations

import zlib

import gguf
import numpy as np
import pytest
from quants import GGUF_TYPES, decode, product_reference, quantize_activations
from test_kernels import ISAS, K_FP16_FIELDS, K_QUANTS, c_matmul, c_matvec, random_super_blocks

from llmrun.engine import ffi, lib
from llmrun.spec import TENSOR_TYPES, Tensor


def pack_k4_scales(sc: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Q4_K's and Q5_K's 12 bytes from eight 6-bit scales and mins per super-block ((n, 8) each): sub-blocks
    0-3 in the low six bits of bytes 0-3 (scales) and 4-7 (mins); 4-7's low four bits in the nibbles of bytes
    8-11, their top two bits in the top bits of bytes 0-3 and 4-7 (ggml-common.h)."""
    sc, m = sc.astype(np.uint8), m.astype(np.uint8)
    return np.concatenate([sc[:, :4] | ((sc[:, 4:] >> 4) << 6), m[:, :4] | ((m[:, 4:] >> 4) << 6),
                           (sc[:, 4:] & 15) | ((m[:, 4:] & 15) << 4)], axis=1)


def fp16_bytes(values: float | list[float]) -> np.ndarray:
    return np.atleast_1d(np.asarray(values, dtype=np.float16)).view(np.uint8).reshape(-1, 2)


def extreme_super_blocks(type: str) -> np.ndarray:
    """Super-blocks (n, block_bytes) at the edges of `type`'s format: all zero; the largest fp16 d and dmin
    of both signs with the largest and smallest stored values and scales; subnormal d; every 6-bit scale and
    min value (Q4_K, Q5_K) or every 8-bit scale (Q6_K); every bit of qh set alone."""
    rng = np.random.default_rng(zlib.crc32(type.encode()))
    tt = TENSOR_TYPES[type]
    blocks = []

    def block(fp16: list[float], **fields: np.ndarray | int) -> None:
        b = rng.integers(0, 256, tt.block_bytes, dtype=np.uint8) if fields.pop("random", True) else \
            np.zeros(tt.block_bytes, dtype=np.uint8)
        for offset, value in zip(K_FP16_FIELDS[type], fp16, strict=True):
            b[offset:offset + 2] = fp16_bytes(value)[0]
        for name, value in fields.items():
            start, size = layout[name]
            b[start:start + size] = value
        blocks.append(b)

    if type == "q6_k":  # ql (128), qh (64), scales (16 int8), d
        layout = {"ql": (0, 128), "qh": (128, 64), "scales": (192, 16)}
        block([0.0], random=False)
        for d in (65504.0, -65504.0):
            for q, sc in ((0xFF, 127), (0xFF, -128), (0x00, 127), (0x00, -128)):
                block([d], ql=q, qh=q, scales=np.uint8(sc & 0xFF))
        block([6e-8])  # the smallest fp16 subnormal
        for i in range(16):  # scales -128 .. 127
            block([1e-3], scales=(np.arange(-128, 128)[16 * i:16 * i + 16] & 0xFF).astype(np.uint8))
        for bit in range(8):
            block([1e-3], qh=1 << bit)
    else:  # d, dmin, scales (12), [qh (32),] qs (128)
        layout = {"scales": (4, 12), "qh": (16, 32) if type == "q5_k" else (0, 0),
                  "qs": (48, 128) if type == "q5_k" else (16, 128)}
        block([0.0, 0.0], random=False)
        top = pack_k4_scales(np.full((1, 8), 63), np.full((1, 8), 63))[0]
        for d, dmin in ((65504.0, 65504.0), (-65504.0, 65504.0), (65504.0, -65504.0)):
            for q in (0xFF, 0x00):
                block([d, dmin], scales=top, qs=q, qh=q)
        block([6e-8, -6e-8])
        values = np.arange(64).reshape(8, 8)  # every 6-bit value as a scale and as a min
        for sc, m in zip(pack_k4_scales(values, values[::-1]), pack_k4_scales(values[::-1], values), strict=True):
            block([1e-3, 2e-3], scales=sc)
            block([1e-3, -2e-3], scales=m)
        if type == "q5_k":
            for bit in range(8):
                block([1e-3, 1e-3], qh=1 << bit)
    return np.stack(blocks)


def c_dequantize(t: Tensor) -> np.ndarray:
    rows, cols = t.shape
    out = np.empty((rows, cols), dtype=np.float32)
    assert lib.llm_dequantize(TENSOR_TYPES[t.type].code, ffi.from_buffer(t.data), rows, cols,
                              ffi.from_buffer("float[]", out)) == 0
    return out


def test_k4_scale_packing_is_ggmls() -> None:
    """The test's packer of 6-bit scales and mins is the inverse of gguf's unpacking."""
    rng = np.random.default_rng(1)
    sc, m = rng.integers(0, 64, (100, 8)), rng.integers(0, 64, (100, 8))
    got_sc, got_m = gguf.quants.Q4_K.get_scale_min(pack_k4_scales(sc, m))
    np.testing.assert_array_equal(got_sc, sc)
    np.testing.assert_array_equal(got_m, m)


@pytest.mark.parametrize("type", K_QUANTS)
def test_k_quant_dequantize_is_gguf_bit_for_bit(type: str) -> None:
    """The row lookup (llm_dequantize, the scalar get_row) equals gguf.quants.dequantize to the bit, on
    random super-blocks and on the format's extremes."""
    rng = np.random.default_rng(2)
    for t in (random_super_blocks(rng, 7, 1024, type),
              Tensor(extreme_super_blocks(type).reshape(1, -1), type),
              Tensor(extreme_super_blocks(type), type)):  # one super-block per row, and all in one row
        want = gguf.quants.dequantize(t.data, GGUF_TYPES[type]).astype(np.float32)
        got = c_dequantize(t)
        np.testing.assert_array_equal(got.view(np.uint32), want.reshape(got.shape).view(np.uint32), err_msg=type)


@pytest.mark.parametrize("type", K_QUANTS)
def test_k_quant_extreme_super_blocks_in_products(type: str) -> None:
    """Every level's products over the extreme super-blocks, one per row, against the reference row by row
    (each row against its own scale: the rows' results span 20 orders of magnitude)."""
    rows = extreme_super_blocks(type)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 256)).astype(np.float32)
    for i, raw in enumerate(rows):
        t = Tensor(np.stack([raw] * 9), type)  # nine rows: the batch kernels' eight-row groups and a tail
        want = np.stack([product_reference(t, row) for row in x])
        scale = max(1e-30, float(np.abs(want).max()))
        for isa in ISAS:
            np.testing.assert_allclose(c_matmul(t, x, isa), want, rtol=1e-5, atol=1e-5 * 16 * scale,
                                       err_msg=f"{type} {isa} block {i}")
            np.testing.assert_allclose(c_matvec(t, x[0], isa), want[0], rtol=1e-5, atol=1e-5 * 16 * scale,
                                       err_msg=f"{type} {isa} block {i}")


def q6_k_identity(n: int) -> Tensor:
    """The n x n identity matrix in Q6_K (d = 1, every scale 1): its product is the input as quantized."""
    raw = np.zeros((n, n // 256, 210), dtype=np.uint8)
    raw[:, :, 128:192] = 0xAA  # every value's top two bits 2: stored 32, the real value 0
    raw[:, :, 192:208] = 1
    raw[:, :, 208:210] = fp16_bytes(1.0)[0]
    for r in range(n):
        v = r % 256
        half, quarter, lane = v // 128, v % 128 // 32, v % 32
        raw[r, r // 256, 64 * half + 32 * (quarter & 1) + lane] |= 1 << (4 * (quarter >> 1))  # stored 33: 1
    t = Tensor(raw.reshape(n, -1), "q6_k")
    np.testing.assert_array_equal(decode(t), np.eye(n))
    return t


def test_q8k_quantizer_is_the_scalar_rule_on_every_level() -> None:
    """Each level's 256-value activation quantizer gives what the scalar one (and numpy's statement of the
    rule, quantize_activations) gives: through the Q6_K identity the product is d * q per value, exactly
    enough (float error ~1e-6 of d) that one step of q (d) shows; the offset 32 of Q6_K's values goes through
    the bsums, so those are checked too. Blocks: ties (max 127: x * 127 / max = x, halves round to even),
    normal, all zero, and a wide dynamic range."""
    rng = np.random.default_rng(4)
    ties = np.concatenate([[127.0, -127.0], np.arange(-127, 127) + 0.5])
    wide = rng.standard_normal(256) * 10.0 ** rng.uniform(-6, 3, 256)
    x0 = np.concatenate([ties, rng.standard_normal(256), np.zeros(256), wide]).astype(np.float32)
    x = np.stack([x0, -x0, x0[::-1], 3 * x0, x0 * 1e-3]).astype(np.float32)
    t = q6_k_identity(x.shape[1])
    for isa in ISAS:
        for got in (c_matmul(t, x, isa), np.stack([c_matvec(t, row, isa) for row in x])):
            for token, row in enumerate(x):
                d, q = quantize_activations(row, 256)
                want = np.repeat(d.astype(np.float64), 256) * q.reshape(-1)
                off = np.abs(got[token] - want) > 0.01 * np.repeat(d, 256)
                assert not off.any(), f"{isa} token {token}: values {np.flatnonzero(off)[:8]} differ"


def wrong_scale_index(t: Tensor) -> np.ndarray:
    """The weights as a kernel with one off-by-one scale index would see them: sub-block 1 scaled with
    sub-block 0's scale."""
    raw = t.data.reshape(-1, TENSOR_TYPES[t.type].block_bytes).copy()
    if t.type == "q6_k":
        raw[:, 193] = raw[:, 192]
    else:
        sc, m = gguf.quants.Q4_K.get_scale_min(raw[:, 4:16])
        sc = sc.copy()
        sc[:, 1] = sc[:, 0]
        raw[:, 4:16] = pack_k4_scales(sc, m)
    return gguf.quants.dequantize(raw, GGUF_TYPES[t.type]).astype(np.float64).reshape(t.shape)


@pytest.mark.parametrize("type", K_QUANTS)
def test_product_tolerance_catches_an_off_by_one_scale(type: str) -> None:
    """The products' tolerance (rtol 1e-5, atol 1e-5 * sqrt(cols) * scale, as above) separates the right
    reference from one computed with sub-block 1 using sub-block 0's scale, on every level, one token and a
    batch: a kernel with that bug fails the tests above."""
    rng = np.random.default_rng(6)
    rows, cols = 16, 512
    t = random_super_blocks(rng, rows, cols, type)
    x = rng.standard_normal((3, cols)).astype(np.float32)
    d, q = zip(*(quantize_activations(row, 256) for row in x), strict=True)
    xq = np.stack([(dd[:, None] * qq).reshape(-1) for dd, qq in zip(d, q, strict=True)]).astype(np.float64)
    want, wrong = xq @ decode(t).reshape(rows, cols).T, xq @ wrong_scale_index(t).T
    scale = max(1.0, float(np.abs(want).max()))
    tol = {"rtol": 1e-5, "atol": 1e-5 * np.sqrt(cols) * scale}
    for isa in ISAS:
        for got in (c_matmul(t, x, isa), c_matvec(t, x[0], isa)[None, :]):
            np.testing.assert_allclose(got, want[:len(got)], **tol, err_msg=f"{type} {isa}")
            with pytest.raises(AssertionError):
                np.testing.assert_allclose(got, wrong[:len(got)], **tol)
