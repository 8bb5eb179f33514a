"""Conversions between f32 and the stored weight types: f16, bf16 and GGUF's block types (Q8_0 ... IQ4_XS).

Every conversion writes the bytes llama.cpp writes for the same f32 values: f16 rounds to nearest even and
bf16 as ggml_compute_fp32_to_bf16 (numpy, here), and the block types go through csrc/quantize.c
(llm_quantize), which follows ggml's reference quantizers operation for operation in float32 (it is built
without FMA contraction for that reason). Reading block types back uses the C library's row lookup
(llm_dequantize), the code the engine's embedding uses.

Inputs with inf or NaN, or blocks whose scale has no finite float32 reciprocal (largest magnitude below
about 1e-37), are outside the block quantizers' contract: ggml's C code converts inf or NaN to an integer
there, which is undefined behaviour. f16 and bf16 handle every input (bf16 quiets NaNs as ggml does).

Large tensors are converted in row chunks (`convert_rows`), so memory stays bounded by a chunk, not by the
model.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._library import ffi, lib
from .spec import FILE_TYPES, TENSOR_TYPES, Tensor, TensorType

QK = 32  # values per block of Q8_0, Q4_0 and the other 32-value types

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


# --- block types ---------------------------------------------------------------------------------------

# Values one thread quantizes at least: below this, starting threads costs more than it saves.
THREAD_VALUES = 1 << 16
CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
_pool: ThreadPoolExecutor | None = None


def _threads() -> ThreadPoolExecutor:
    """One pool for the process, a thread per usable core (cffi releases the GIL around the C quantizer)."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=CORES, thread_name_prefix="llmrun-quantize")
    return _pool


def _check_blocks(cols: int, type: str) -> TensorType:
    t = TENSOR_TYPES[type]
    if cols % t.block_elems:
        raise ValueError(f"row length {cols} is not a multiple of the {type} block size {t.block_elems}")
    return t


def quantize_blocks(x: np.ndarray, type: str) -> np.ndarray:
    """float32 (..., cols) -> `type`'s blocks as uint8 (..., row_bytes): csrc/quantize.c, which writes the
    bytes of ggml's reference quantizers. Large inputs are split by rows among threads."""
    x = np.ascontiguousarray(x, dtype=_F32)
    shape = x.shape
    t = _check_blocks(shape[-1], type)
    cols = shape[-1]
    rows = x.size // cols if cols else 0
    x2 = x.reshape(rows, cols)
    if not np.isfinite(x2).all():  # ggml's quantizers convert inf and NaN to integers: undefined behaviour
        row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(x2)))
        raise ValueError(f"cannot quantize to {type}: row {row} holds {x2[row, col]} at column {col} (the "
                         f"quantizers need finite weights)")
    out = np.empty((rows, t.row_bytes(cols)), dtype=np.uint8)

    def run(start: int, stop: int) -> None:
        if lib.llm_quantize(t.code, ffi.from_buffer("float[]", x2[start:stop]), stop - start, cols,
                            ffi.from_buffer(out[start:stop])) != 0:
            raise ValueError(f"the C library refused to quantize {stop - start} rows of {cols} values as {type}")

    parts = max(1, min(CORES, x.size // THREAD_VALUES, rows))
    if parts == 1:
        if rows:
            run(0, rows)
    else:
        bounds = [rows * i // parts for i in range(parts + 1)]
        for job in [_threads().submit(run, a, b) for a, b in itertools.pairwise(bounds)]:
            job.result()
    return out.reshape(*shape[:-1], out.shape[-1])


def dequantize_blocks(data: np.ndarray, type: str) -> np.ndarray:
    """`type`'s blocks (..., n * block_bytes) uint8 -> float32 (..., n * block_elems): the C library's row
    lookup (llm_dequantize), the same code the embedding uses."""
    t = TENSOR_TYPES[type]
    raw = np.ascontiguousarray(data).view(np.uint8)
    shape = raw.shape
    if shape[-1] % t.block_bytes:
        raise ValueError(f"rows of {shape[-1]} bytes are not whole {type} blocks of {t.block_bytes} bytes")
    cols = shape[-1] // t.block_bytes * t.block_elems
    rows = raw.size // shape[-1] if shape[-1] else 0
    out = np.empty((rows, cols), dtype=_F32)
    if rows and lib.llm_dequantize(t.code, ffi.from_buffer(raw), rows, cols, ffi.from_buffer("float[]", out)) != 0:
        raise ValueError(f"the C library cannot read {type} values back (no row lookup for the type)")
    return out.reshape(*shape[:-1], cols)


# --- any type -------------------------------------------------------------------------------------------

def quantize(x: np.ndarray, type: str) -> np.ndarray:
    """float32 values (..., cols) -> their storage in `type` (TENSOR_TYPES; the dtype Tensor.data has)."""
    if type == "f32":
        return np.asarray(x, dtype=_F32)
    if type == "f16":
        return f32_to_f16(x)
    if type == "bf16":
        return f32_to_bf16(x)
    if type in FILE_TYPES:  # not the in-memory repacked forms (llm_repack makes those from these)
        return quantize_blocks(x, type)
    raise ValueError(f"unknown tensor type {type!r} (expected one of {', '.join(FILE_TYPES)})")


def dequantize(data: np.ndarray, type: str) -> np.ndarray:
    """Storage of `type` -> float32 values (exact: every stored value is a float32)."""
    if type == "f32":
        return np.asarray(data, dtype=_F32)
    if type == "f16":
        return np.asarray(data, dtype=np.float16).astype(_F32)
    if type == "bf16":
        return bf16_to_f32(data)
    if type in TENSOR_TYPES:
        return dequantize_blocks(data, type)
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
