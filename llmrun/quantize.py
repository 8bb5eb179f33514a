"""Conversions between f32 and the stored weight types: f16, bf16 and GGUF's Q8_0 and Q4_0 blocks.

The quantizers reproduce ggml's reference C code bit for bit (`quantize_row_q8_0_ref`,
`quantize_row_q4_0_ref` in ggml-quants.c, `ggml_compute_fp32_to_bf16` in ggml-impl.h, and the
round-to-nearest-even fp32 -> fp16 conversion), so a file quantized here holds the same bytes as one made
by llama.cpp from the same f32 weights. Every step is done in float32, as the C code does; doing any of
it in float64 would round differently near the rounding boundaries. (The C code compiled with FMA
contraction can differ in rare last-bit cases; the reference semantics are the uncontracted ones, which
is also what the `gguf` Python package implements.)

Inputs with inf or NaN, or blocks whose scale has no finite float32 reciprocal (largest magnitude below
about 1e-37), are outside the quantizers' contract: the C code converts inf or NaN to an integer there,
which is undefined behaviour. f16 and bf16 handle every input (bf16 quiets NaNs as ggml does).

Large tensors are converted in row chunks (`convert_rows`), so memory stays bounded by a chunk, not by the
model.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .spec import TENSOR_TYPES, Tensor

QK = 32  # values per Q8_0 / Q4_0 block
Q8_0_BLOCK_BYTES = 2 + QK  # fp16 d, 32 x int8
Q4_0_BLOCK_BYTES = 2 + QK // 2  # fp16 d, 16 bytes of nibbles

# Values converted per chunk: 4 MiB of float32. Small enough that the temporaries are reused from the
# allocator's cache instead of being mapped (and page-faulted) afresh for every chunk.
CHUNK_VALUES = 1 << 20

_F32 = np.float32


# --- f16 / bf16 -----------------------------------------------------------------------------------------

def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """float32 -> float16, rounding to nearest even (inf on overflow), as ggml's GGML_FP32_TO_FP16."""
    with np.errstate(over="ignore"):  # overflow to inf is the defined result, not a problem to report
        return np.asarray(x, dtype=_F32).astype(np.float16)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), as ggml_compute_fp32_to_bf16: round to nearest even,
    NaN kept a NaN (made quiet) rather than rounded into an infinity."""
    bits = np.ascontiguousarray(x, dtype=_F32).view(np.uint32)
    is_nan = (bits & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    # Adding 0x7fff plus the lowest kept bit rounds ties to even; the sum fits in uint32 for every
    # non-NaN pattern (the largest, 0xff800000 = -inf, gains at most 0x8000).
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    quiet_nan = (bits >> np.uint32(16)) | np.uint32(64)
    return np.where(is_nan, quiet_nan, rounded).astype(np.uint16)


def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32 (exact)."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(_F32)


# --- Q8_0 -----------------------------------------------------------------------------------------------

# The largest float32 below 0.5. trunc(y + copysign(_JUST_BELOW_HALF, y)) equals C's roundf(y) (halves
# away from zero) for every float32 |y| < 2**24, checked exhaustively; plain y + 0.5 would round
# 0.49999997 up to 1. numpy's rint rounds halves to even, which is not what ggml does.
_JUST_BELOW_HALF = np.nextafter(_F32(0.5), _F32(0))


def _round_half_away(y: np.ndarray) -> np.ndarray:
    """C's roundf for |y| < 2**24 (quantized values are within +-127.x)."""
    return np.trunc(y + np.copysign(_JUST_BELOW_HALF, y))


def _blocks(x: np.ndarray) -> np.ndarray:
    """(rows, cols) float32 -> (rows * cols / 32, 32), checking that rows are whole blocks."""
    x = np.asarray(x, dtype=_F32)
    if x.shape[-1] % QK:
        raise ValueError(f"row length {x.shape[-1]} is not a multiple of the block size {QK}")
    return x.reshape(-1, QK)


def _reciprocal(d: np.ndarray) -> np.ndarray:
    """1/d in float32, 0 where d is 0 (an all-zero block quantizes to zeros)."""
    safe = np.where(d == 0, _F32(1), d)
    return np.where(d == 0, _F32(0), _F32(1) / safe)


def quantize_q8_0(x: np.ndarray) -> np.ndarray:
    """float32 (..., cols) -> Q8_0 blocks as uint8 (..., cols / 32 * 34): per 32 values d = amax / 127
    (stored as fp16), q = roundf(x / d) computed as x * (1 / d), as quantize_row_q8_0_ref."""
    shape = np.shape(x)
    blocks = _blocks(x)
    d = np.abs(blocks).max(axis=1, keepdims=True) / _F32(127)
    q = _round_half_away(blocks * _reciprocal(d)).astype(np.int8)
    out = np.empty((blocks.shape[0], Q8_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = f32_to_f16(d).view(np.uint8)
    out[:, 2:] = q.view(np.uint8)
    return out.reshape(*shape[:-1], shape[-1] // QK * Q8_0_BLOCK_BYTES)


def dequantize_q8_0(data: np.ndarray) -> np.ndarray:
    """Q8_0 blocks (..., n * 34) uint8 -> float32 (..., n * 32): x = d * q."""
    shape = np.shape(data)
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, Q8_0_BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(_F32)
    q = blocks[:, 2:].view(np.int8).astype(_F32)
    return (q * d).reshape(*shape[:-1], shape[-1] // Q8_0_BLOCK_BYTES * QK)


# --- Q4_0 -----------------------------------------------------------------------------------------------

def quantize_q4_0(x: np.ndarray) -> np.ndarray:
    """float32 (..., cols) -> Q4_0 blocks as uint8 (..., cols / 32 * 18), as quantize_row_q4_0_ref:
    d = m / -8 where m is the first value of largest magnitude (sign kept, so m maps to q = 0 exactly),
    q = min(15, trunc(x / d + 8.5)); value j in the low nibble of byte j, value j + 16 in its high nibble."""
    shape = np.shape(x)
    blocks = _blocks(x)
    first_max = np.abs(blocks).argmax(axis=1)[:, None]  # argmax returns the first of equal maxima, as C
    d = np.take_along_axis(blocks, first_max, axis=1) / _F32(-8)
    q = np.trunc(blocks * _reciprocal(d) + _F32(8.5))
    q = np.clip(q, 0, 15).astype(np.uint8)
    out = np.empty((blocks.shape[0], Q4_0_BLOCK_BYTES), dtype=np.uint8)
    out[:, :2] = f32_to_f16(d).view(np.uint8)
    out[:, 2:] = q[:, :QK // 2] | (q[:, QK // 2:] << np.uint8(4))
    return out.reshape(*shape[:-1], shape[-1] // QK * Q4_0_BLOCK_BYTES)


def dequantize_q4_0(data: np.ndarray) -> np.ndarray:
    """Q4_0 blocks (..., n * 18) uint8 -> float32 (..., n * 32): x = d * (q - 8)."""
    shape = np.shape(data)
    blocks = np.ascontiguousarray(data, dtype=np.uint8).reshape(-1, Q4_0_BLOCK_BYTES)
    d = blocks[:, :2].copy().view(np.float16).astype(_F32)
    packed = blocks[:, 2:]
    q = np.concatenate([packed & np.uint8(0x0F), packed >> np.uint8(4)], axis=1).astype(np.int8) - np.int8(8)
    return (q.astype(_F32) * d).reshape(*shape[:-1], shape[-1] // Q4_0_BLOCK_BYTES * QK)


# --- any type -------------------------------------------------------------------------------------------

def quantize(x: np.ndarray, type: str) -> np.ndarray:
    """float32 values (..., cols) -> their storage in `type` (TENSOR_TYPES; the dtype Tensor.data has)."""
    if type == "f32":
        return np.asarray(x, dtype=_F32)
    if type == "f16":
        return f32_to_f16(x)
    if type == "bf16":
        return f32_to_bf16(x)
    if type == "q8_0":
        return quantize_q8_0(x)
    if type == "q4_0":
        return quantize_q4_0(x)
    raise ValueError(f"unknown tensor type {type!r} (expected one of {', '.join(TENSOR_TYPES)})")


def dequantize(data: np.ndarray, type: str) -> np.ndarray:
    """Storage of `type` -> float32 values (exact: every stored value is a float32)."""
    if type == "f32":
        return np.asarray(data, dtype=_F32)
    if type == "f16":
        return np.asarray(data, dtype=np.float16).astype(_F32)
    if type == "bf16":
        return bf16_to_f32(data)
    if type == "q8_0":
        return dequantize_q8_0(data)
    if type == "q4_0":
        return dequantize_q4_0(data)
    raise ValueError(f"unknown tensor type {type!r} (expected one of {', '.join(TENSOR_TYPES)})")


def can_store(cols: int, type: str) -> bool:
    """Whether rows of `cols` values fit `type`'s blocks."""
    return cols % TENSOR_TYPES[type].block_elems == 0


def convert_rows(tensor: Tensor, type: str, chunk_values: int = CHUNK_VALUES) -> Iterator[np.ndarray]:
    """`tensor` converted to `type`, as consecutive chunks of whole rows of storage (2-D arrays; a 1-D
    tensor is one row). A tensor already of that type passes through unchanged (no requantization);
    otherwise each chunk is dequantized to float32 and quantized again, so memory stays about one chunk."""
    rows, cols = tensor.shape
    if not can_store(cols, type):
        raise ValueError(f"rows of {cols} values cannot be stored as {type} (blocks of "
                         f"{TENSOR_TYPES[type].block_elems})")
    data = tensor.data.reshape(rows, -1)
    step = max(1, chunk_values // max(cols, 1))
    for start in range(0, rows, step):
        chunk = data[start:start + step]
        if tensor.type == type:
            yield chunk
        else:
            yield quantize(dequantize(chunk, tensor.type), type)
