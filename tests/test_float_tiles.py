"""The float batch products' blocking (csrc/kernels_x86_float.c, matmul): rows cut into panels of KC = 512 values,
tokens into blocks sized from the L2 cache, and, in blocks of 8 token tiles or more, a panel's first tile keeping
the rows' values as f32 in a copy that the block's other tiles read, while each tile prefetches a slice of the
next panel. None of it may change a sum: each token's row of a batch is bit for bit its product alone (the
one-token kernel), across several panels (with every kind of tail in the last one), several token blocks (the
last one partial), tail rows outside the 4-row tiles, and each weight type. test_kernels_exact.py covers n <= 40
and rows of at most 2051 values; here the batches are long enough for the copy and for several blocks. The
products are also checked against numpy in float64, within the first-order bound of their f32 rounding: each of
a level's 8 or 16 lanes adds at most cols / 8 products (each itself one rounding, fused), then 4 levels of the
tree, so the error is at most (cols / 8 + 5) * 2^-24 times the sum of |w * x|. The avx512bf16 level's bfloat16
products (csrc/kernels_x86_bf16.c, their own panels of 1024 values and token blocks) multiply by the input rounded
to bfloat16: against that input, the same bound holds (pairs summed in 16 lanes)."""

from __future__ import annotations

import numpy as np
import pytest
from quants import bf16_rounded, rounds_input_to_bf16
from test_kernels_exact import FLOAT_TYPES, product, stored

from llmrun.engine import available_isas

ISAS = [isa for isa in available_isas() if isa != "scalar"]
# (rows, cols, n): one panel with a tail; two panels, the second short with a tail; rows 4 KiB apart (f32) in
# 4 panels; 11 panels with a tail and blocks of few tokens; rows not a multiple of the tiles' 4
SHAPES = [(9, 500, 70), (37, 768 + 13, 150), (12, 2048, 100), (6, 5632 + 7, 90), (21, 1024 + 9, 131),
          (5, 4096 + 33, 67)]


def widened(w: np.ndarray, type: str) -> np.ndarray:
    if type == "bf16":
        return (w.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return w.astype(np.float64)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", FLOAT_TYPES)
def test_long_batches_equal_tokens_alone(type: str, isa: str) -> None:
    rng = np.random.default_rng(6)
    for rows, cols, n in SHAPES:
        w = stored(rng.standard_normal((rows, cols)).astype(np.float32), type)
        x = rng.standard_normal((n, cols)).astype(np.float32)
        batched = product(type, w, x, isa)
        alone = np.stack([product(type, w, x[i], isa)[0] for i in range(n)])
        assert np.array_equal(batched, alone), f"{type} {isa} rows={rows} cols={cols} n={n}: " \
            f"max diff {np.abs(batched - alone).max():.3g}"
        w64 = widened(w, type)
        x64 = (bf16_rounded(x) if rounds_input_to_bf16(type, isa) else x).astype(np.float64)
        exact = x64 @ w64.T
        scale = np.abs(x64) @ np.abs(w64).T
        bound = (cols / 8 + 5) * 2.0**-24 * scale
        assert np.all(np.abs(batched - exact) <= bound), f"{type} {isa} rows={rows} cols={cols} n={n}"

