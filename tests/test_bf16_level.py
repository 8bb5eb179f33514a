"""The avx512bf16 level (csrc/kernels_x86_bf16.c): bfloat16 weights multiply in the CPU's bfloat16 dot product
(vdpbf16ps), their input rounded to bfloat16 to nearest with ties to even; everything else is the avx512vnni
level's code, compiled once more.

Tolerances: against the float64 product of the stored weights with the input as the gguf package rounds it to
bfloat16 (tests/quants.py bf16_rounded), the result differs by f32 accumulation only: each of 16 lanes rounds twice
per instruction (cols / 16 roundings) and the tree 4 times, (cols / 16 + 5) * 2^-24 of sum |w| |x|. Against the
exact input, each value's rounding costs at most 2^-8 of it: the error stays within 2^-8 of sum |w| |x|. On a CPU
without AVX512_BF16 the level must be refused by name instead; on one with it (Linux reports avx512_bf16), a build
that left the level out fails here (gcc >= 10 and clang >= 9 build it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quants import bf16_rounded
from test_kernels import c_matmul as product
from test_kernels import encode  # the gguf package's encoders, random super-blocks for the K-quants

import llmrun
from llmrun.engine import Engine, available_isas

HAS_LEVEL = "avx512bf16" in available_isas()


def cpu_reports_bf16() -> bool:
    """Whether Linux says this CPU (and kernel) has AVX512_BF16; False where there is no /proc/cpuinfo."""
    info = Path("/proc/cpuinfo")
    return info.exists() and " avx512_bf16" in info.read_text()


def test_the_level_runs_here_or_is_refused_by_name() -> None:
    """Where the CPU has AVX512_BF16 (and the compiler knew -mavx512bf16) the level is the best; elsewhere forcing
    it is an error that names it, never a crash."""
    if HAS_LEVEL:
        assert llmrun.engine.best_isa() == "avx512bf16"
        return
    assert not cpu_reports_bf16(), "the CPU has AVX512_BF16 but the build left the avx512bf16 level out"
    from builders import make_config, random_tensors, spec_from_tensors
    cfg = make_config(dim=64, hidden_dim=192, n_heads=8, n_kv_heads=4, vocab_size=96)
    spec = spec_from_tensors(cfg, random_tensors(cfg, seed=1, tied=False))
    with pytest.raises(llmrun.InvalidArgumentError, match="avx512bf16"):
        Engine(spec, n_ctx=16, n_threads=1, isa="avx512bf16")


needs_level = pytest.mark.skipif(not HAS_LEVEL, reason="the CPU has no AVX512_BF16: "
                                 "test_the_level_runs_here_or_is_refused_by_name checks the refusal")


@needs_level
def test_input_rounds_to_nearest_with_ties_to_even() -> None:
    """One weight 1.0 (and 2^-100, 2^100: the product is exact in f32): out = the input as rounded. 1 + 2^-8 lies
    halfway between 1 and 1 + 2^-7 and goes to the even 1; 1 + 3 * 2^-8 goes to the even 1 + 2^-6; just above
    halfway goes up; a negative tie mirrors a positive one; infinities stay."""
    x = np.array([1 + 2**-8, 1 + 3 * 2**-8, 1 + 2**-8 + 2**-20, -(1 + 2**-8), 3.0e38, -np.inf, 0.0, -0.0, 0.1],
                 dtype=np.float32)
    want = np.array([1.0, 1 + 2**-6, 1 + 2**-7, -1.0, 3.0040553e38, -np.inf, 0.0, 0.0, 0.10009765625],
                    dtype=np.float32)
    for scale in (1.0, 2.0**-100, 2.0**100):
        w = encode(np.array([[scale]], dtype=np.float32), "bf16")
        got = np.array([product(w, v[None], "avx512bf16")[0, 0] for v in x])
        with np.errstate(over="ignore"):  # 3e38 * 2^100: inf, as the product is
            np.testing.assert_array_equal(got, want * np.float32(scale))
    np.testing.assert_array_equal(bf16_rounded(x), want)  # the reference rounds alike


@needs_level
@pytest.mark.parametrize("cols", [1, 2, 3, 15, 16, 17, 31, 32, 33, 63, 64, 65, 100, 1023, 1024, 1025, 2048 + 7,
                                  8192, 8192 + 33])
def test_products_against_the_rounded_input_and_the_exact_one(cols: int) -> None:
    """Every tail of the 32-value steps and of the 1024-value panels, one to 40 tokens (every tile width), rows
    around the tiles' heights: within f32 accumulation of the rounded input's product, within 2^-8 of the exact
    input's, and the same bit for bit whatever the batch. Up to 8192 values a token alone is rounded once on the
    stack, beyond on the way (8192 + 33)."""
    rng = np.random.default_rng(cols)
    for rows in (1, 4, 9, 37):
        t = encode(rng.standard_normal((rows, cols)), "bf16")
        w = _bf16_values(t.data)
        x = rng.standard_normal((40, cols)).astype(np.float32)
        got = product(t, x, "avx512bf16")
        xr = bf16_rounded(x).astype(np.float64)
        size = np.abs(xr) @ np.abs(w).T
        bound = (cols / 16 + 5) * 2.0**-24 * size
        assert np.all(np.abs(got - xr @ w.T) <= bound + 1e-30), f"rows={rows} cols={cols}"
        exact_size = np.abs(x.astype(np.float64)) @ np.abs(w).T
        assert np.all(np.abs(got - x.astype(np.float64) @ w.T) <= 2.0**-8 * exact_size * (1 + 1e-5) + 1e-30)
        alone = np.stack([product(t, x[i], "avx512bf16")[0] for i in range(40)])
        for n in (1, 2, 5, 6, 7, 13, 40):
            assert np.array_equal(product(t, x[:n], "avx512bf16"), alone[:n]), f"rows={rows} cols={cols} n={n}"


def _bf16_values(raw: np.ndarray) -> np.ndarray:
    """bfloat16 bits (uint16) as float64 values: the upper half of a float32."""
    return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


@needs_level
def test_every_other_type_is_the_avx512vnni_code() -> None:
    """The level changes the bfloat16 products only: every other type's products are avx512vnni's, bit for bit."""
    rng = np.random.default_rng(5)
    for type in ["f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl", "q2_k", "q3_k", "q4_k", "q5_k",
                 "q6_k", "iq4_xs"]:
        t = encode(rng.standard_normal((24, 512)), type)
        x = rng.standard_normal((11, 512)).astype(np.float32)
        for n in (1, 11):
            assert np.array_equal(product(t, x[:n], "avx512bf16"), product(t, x[:n], "avx512vnni")), type
