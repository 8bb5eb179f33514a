"""Reference encodings of the weight types for tests, via the official `gguf` package (the format's own
reference implementation), plus the 8-bit quantization of activations the C products use."""

from __future__ import annotations

import gguf
import numpy as np
from quants_low import ENCODERS as LOW_ENCODERS

from llmrun.spec import TENSOR_TYPES, Tensor

QT = gguf.GGMLQuantizationType
GGUF_TYPES = {"f32": QT.F32, "f16": QT.F16, "bf16": QT.BF16, "q8_0": QT.Q8_0, "q4_0": QT.Q4_0, "q4_1": QT.Q4_1,
              "q5_0": QT.Q5_0, "q5_1": QT.Q5_1, "iq4_nl": QT.IQ4_NL, "q2_k": QT.Q2_K, "q3_k": QT.Q3_K,
              "q4_k": QT.Q4_K, "q5_k": QT.Q5_K, "q6_k": QT.Q6_K, "iq4_xs": QT.IQ4_XS}


def encode(a: np.ndarray, type: str) -> Tensor:
    """A float32 matrix (or vector) stored as `type`, in llmrun's Tensor layout."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if type == "f32":
        return Tensor(a, "f32")
    if type in LOW_ENCODERS:  # gguf cannot encode these (tests/quants_low.py)
        raw = LOW_ENCODERS[type](np.atleast_2d(a)).reshape(a.shape[:-1] + (-1,))
    elif type == "iq4_nl":
        raw = encode_iq4_nl(a)
    else:
        raw = gguf.quants.quantize(a, GGUF_TYPES[type])  # uint8 (rows, row_bytes)
    return Tensor(np.ascontiguousarray(raw.view(TENSOR_TYPES[type].dtype)), type)


def encode_iq4_nl(a: np.ndarray) -> np.ndarray:
    """IQ4_NL blocks of a (gguf has no IQ4_NL quantizer): per 32 values the scale that puts the value of largest
    magnitude on the level -127, each value on its nearest level. Simpler than llama.cpp's search over scales,
    and as good for testing products: any valid blocks are. Returns uint8 (rows, row_bytes)."""
    levels = np.array(gguf.quants.IQ4_NL.kvalues, dtype=np.float32)
    blocks = a.reshape(-1, 32)
    peak = np.take_along_axis(blocks, np.abs(blocks).argmax(axis=1)[:, None], axis=1)[:, 0]
    d = (peak / np.float32(-127)).astype(np.float16)
    d32 = d.astype(np.float32)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(d32 != 0, blocks / d32, 0)
    q = np.abs(scaled[..., None] - levels).argmin(axis=-1).astype(np.uint8)
    qs = q[:, :16] | (q[:, 16:] << 4)  # value j in the low nibble of byte j, value j + 16 in the high one
    raw = np.concatenate([d.view(np.uint8).reshape(-1, 2), qs], axis=1)
    return raw.reshape(a.shape[:-1] + (-1,))


def decode(t: Tensor) -> np.ndarray:
    """The values a stored tensor holds, as float64."""
    if t.type == "f32":
        return t.data.astype(np.float64)
    raw = t.data.view(np.uint8)
    return gguf.quants.dequantize(raw, GGUF_TYPES[t.type]).astype(np.float64).reshape(t.data.shape[:-1] + (-1,))


def quantize_activations(x: np.ndarray, block: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """x (cols,) as the C library quantizes it for the products of block weights: per block of 32 (Q8_0 to
    IQ4_NL weights) or 256 (the K-quants, IQ4_XS), d = max|x| / 127 (kept in float32) and
    q = x * (127 / max|x|) rounded to nearest even. Returns (d, q as int8)."""
    blocks = x.astype(np.float32).reshape(-1, block)
    amax = np.abs(blocks).max(axis=1)
    d = amax / np.float32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(amax > 0, np.float32(127) / amax, np.float32(0)).astype(np.float32)
    q = np.rint(blocks * inv[:, None]).astype(np.int8)
    return d, q


def rounds_input_to_bf16(type: str, isa: str | None) -> bool:
    """Whether the products of `type` weights at level `isa` multiply by their input rounded to bfloat16: bfloat16
    weights at the avx512bf16 level, whose products run in the CPU's bfloat16 dot product (vdpbf16ps,
    csrc/kernels_x86_bf16.c)."""
    return type == "bf16" and isa == "avx512bf16"


def bf16_rounded(x: np.ndarray) -> np.ndarray:
    """x (float32) rounded to bfloat16, to nearest with ties to even, as float32: the gguf package's own
    conversion (the format's reference), there and back. (The CPU's conversion also flushes f32 subnormals, under
    1.2e-38, to zero, which this keeps.)"""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return gguf.quants.dequantize(gguf.quants.quantize(x, QT.BF16), QT.BF16).astype(np.float32).reshape(x.shape)


def product_reference(t: Tensor, x: np.ndarray, isa: str | None = None) -> np.ndarray:
    """What the C product of weights `t` and vector `x` computes (at level `isa`), in float64: float types multiply
    the stored values by x (bfloat16 weights at avx512bf16: by x rounded to bfloat16); block types multiply them by
    x's Q8_0 quantization (as the C code does)."""
    w = decode(t).reshape(t.shape)
    block = TENSOR_TYPES[t.type].block_elems
    if block > 1:
        d, q = quantize_activations(x, block)
        return w @ (d[:, None] * q).reshape(-1).astype(np.float64)
    if rounds_input_to_bf16(t.type, isa):
        x = bf16_rounded(x)
    return w @ x.astype(np.float64)
