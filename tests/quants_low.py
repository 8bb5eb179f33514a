"""Test encoders of Q2_K, Q3_K and IQ4_XS, which the `gguf` package decodes but cannot encode.

They are simple (one scale per sub-block from its range, values rounded to the nearest level), not ggml's
quantizers: the kernel tests need weights in the layout whose values gguf.quants.dequantize reads back,
not the best such weights. Each returns the blocks as raw bytes, (rows, cols / 256 * block_bytes) uint8.
The bit layouts are the ones csrc/kernels.h describes (ggml-common.h).
"""

from __future__ import annotations

import numpy as np

QK_K = 256
IQ4NL_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.float32)


def _fp16(v: np.ndarray) -> np.ndarray:
    return v.astype(np.float16)


def _divide(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a / b, 0 where b is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), 0)


def _pack_2bit(q: np.ndarray) -> np.ndarray:
    """(n, 256) values 0..3 to the 64 bytes of Q2_K/Q3_K's qs: value 128 n + 32 j + l at bits 2j of byte 32 n + l."""
    q = q.astype(np.uint8).reshape(-1, 2, 4, 32)
    return (q << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(axis=2, dtype=np.uint8).reshape(-1, 64)


def pack_q3_k_scales(stored: np.ndarray) -> np.ndarray:
    """(n, 16) six-bit scales (value + 32) to Q3_K's 12 bytes: low nibbles in bytes 0-7 (scale i in byte i % 8,
    high nibble for i >= 8), top two bits in bytes 8-11 (scale i in byte 8 + i % 4 at bit 2 (i // 4))."""
    packed = np.zeros((len(stored), 12), dtype=np.uint8)
    for i in range(16):
        packed[:, i % 8] |= (stored[:, i] & 15) << (4 * (i // 8))
        packed[:, 8 + i % 4] |= (stored[:, i] >> 4) << (2 * (i // 4))
    return packed


def unpack_q3_k_scales(packed: np.ndarray) -> np.ndarray:
    """The inverse of pack_q3_k_scales: (n, 12) bytes to (n, 16) six-bit scales."""
    i = np.arange(16)
    low = (packed[:, i % 8] >> (4 * (i // 8))) & 15
    return (low | ((packed[:, 8 + i % 4] >> (2 * (i // 4))) & 3) << 4).astype(np.uint8)


def pack_iq4_xs_scales(stored: np.ndarray) -> np.ndarray:
    """(n, 8) six-bit scales (value + 32) to IQ4_XS's scales_h (uint16: top two bits of scale i at bit 2 i) and
    scales_l (4 bytes: low nibbles, scale i in byte i // 2, high nibble for odd i): (n, 6) bytes."""
    stored = stored.astype(np.uint16)
    scales_h = (((stored >> 4) & 3) << (2 * np.arange(8, dtype=np.uint16))).sum(axis=1, dtype=np.uint16)
    scales_l = ((stored[:, 0::2] & 15) | ((stored[:, 1::2] & 15) << 4)).astype(np.uint8)
    return np.concatenate([scales_h.reshape(-1, 1).view(np.uint8), scales_l], axis=1)


def unpack_iq4_xs_scales(packed: np.ndarray) -> np.ndarray:
    """The inverse of pack_iq4_xs_scales: (n, 6) bytes to (n, 8) six-bit scales."""
    scales_h = packed[:, :2].copy().view(np.uint16)  # (n, 1)
    i = np.arange(8)
    low = (packed[:, 2 + i // 2] >> (4 * (i % 2))) & 15
    return (low | ((scales_h >> (2 * i)) & 3).astype(np.uint8) << 4).astype(np.uint8)


def encode_q2_k(a: np.ndarray) -> np.ndarray:
    rows, cols = a.shape
    x = a.astype(np.float32).reshape(-1, QK_K // 16, 16)  # (super-blocks, sub-blocks, values)
    lo, hi = np.minimum(x.min(axis=2), 0), np.maximum(x.max(axis=2), 0)
    scale, mn = (hi - lo) / 3, -lo
    d, dmin = _fp16(scale.max(axis=1) / 15), _fp16(mn.max(axis=1) / 15)
    sc = np.clip(np.rint(_divide(scale, d.astype(np.float32)[:, None])), 0, 15)
    m = np.clip(np.rint(_divide(mn, dmin.astype(np.float32)[:, None])), 0, 15)
    step = (d.astype(np.float32)[:, None] * sc)[:, :, None]
    q = np.clip(np.rint(_divide(x + (dmin.astype(np.float32)[:, None] * m)[:, :, None], step)), 0, 3)
    blocks = np.concatenate([(sc + 16 * m).astype(np.uint8), _pack_2bit(q.reshape(-1, QK_K)),
                             d.reshape(-1, 1).view(np.uint8), dmin.reshape(-1, 1).view(np.uint8)], axis=1)
    return blocks.reshape(rows, -1)


def encode_q3_k(a: np.ndarray) -> np.ndarray:
    rows, cols = a.shape
    x = a.astype(np.float32).reshape(-1, QK_K // 16, 16)
    scale = np.abs(x).max(axis=2) / 4
    d = _fp16(scale.max(axis=1) / 31)
    sc = np.clip(np.rint(_divide(scale, d.astype(np.float32)[:, None])), 0, 31).astype(np.int32)
    q = np.clip(np.rint(_divide(x, (d.astype(np.float32)[:, None] * sc)[:, :, None])), -4, 3).astype(np.int32)
    q = (q + 4).reshape(-1, 2, 4, 32)  # the stored 3 bits: value + 4
    hmask = ((q >> 2) << np.arange(8).reshape(1, 2, 4, 1)).sum(axis=(1, 2)).astype(np.uint8)  # bit 4n + j of byte l
    packed = pack_q3_k_scales((sc + 32).astype(np.uint8))
    blocks = np.concatenate([hmask, _pack_2bit((q & 3).reshape(-1, QK_K)), packed, d.reshape(-1, 1).view(np.uint8)],
                            axis=1)
    return blocks.reshape(rows, -1)


def encode_iq4_xs(a: np.ndarray) -> np.ndarray:
    rows, cols = a.shape
    x = a.astype(np.float32).reshape(-1, QK_K // 32, 32)
    scale = np.abs(x).max(axis=2) / 127
    d = _fp16(scale.max(axis=1) / 31)
    ls = np.clip(np.rint(_divide(scale, d.astype(np.float32)[:, None])), 0, 31).astype(np.uint16)
    levels = _divide(x, (d.astype(np.float32)[:, None] * ls)[:, :, None])
    idx = np.abs(levels[..., None] - IQ4NL_VALUES).argmin(axis=-1).astype(np.uint8)  # (super-blocks, 8, 32)
    qs = (idx[:, :, :16] | (idx[:, :, 16:] << 4)).reshape(-1, 128)
    blocks = np.concatenate([d.reshape(-1, 1).view(np.uint8), pack_iq4_xs_scales((ls + 32).astype(np.uint8)), qs],
                            axis=1)
    return blocks.reshape(rows, -1)


ENCODERS = {"q2_k": encode_q2_k, "q3_k": encode_q3_k, "iq4_xs": encode_iq4_xs}
