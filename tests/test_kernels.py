"""The C kernels of every weight type against numpy references, and the instruction sets against each
other. Stored weights come from the official `gguf` package's encoders (tests/quants.py).

Tolerances: the reference reproduces exactly what the C product computes (the stored weights; for block
types also the Q8_0 quantization of the input), in float64. The C code accumulates in float32, so the
results agree to ~1e-6 of the result's scale; rtol 1e-5 plus atol 1e-5 * sqrt(cols) * scale leaves
room for the accumulation order and nothing more: a wrong nibble order or scale is off by O(1).
"""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import quants_low
from quants import GGUF_TYPES, decode, encode, product_reference, quantize_activations

from llmrun.engine import ISA_NAMES, available_isas, best_isa, ffi, lib
from llmrun.spec import TENSOR_TYPES, Tensor

ISAS = available_isas()
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]
LOW_K_TYPES = ["q2_k", "q3_k", "iq4_xs"]  # 256-value super-blocks, 8-bit activations with sums per 16
TYPES += LOW_K_TYPES


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
    if TENSOR_TYPES[type].block_elems == 256:
        return [(1, 256), (3, 512), (17, 768), (64, 1280), (5, 2048)]
    if TENSOR_TYPES[type].block_elems == 32:
        return [(1, 32), (3, 64), (17, 96), (64, 288), (5, 1024)]
    return [(1, 1), (3, 7), (4, 8), (17, 33), (64, 288), (5, 1000)]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", TYPES)
def test_matvec_matches_reference(type: str, isa: str) -> None:
    for rows, cols in shapes_for(type):
        rng = np.random.default_rng(rows * 1000 + cols)
        t = encode(rng.standard_normal((rows, cols)), type)
        x = rng.standard_normal(cols).astype(np.float32)
        want = product_reference(t, x)
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
            want = np.stack([product_reference(t, row) for row in x])
            got = c_matmul(t, x, isa)
            scale = max(1.0, float(np.abs(want).max()))
            tol = {"rtol": 1e-5, "atol": 1e-5 * np.sqrt(cols) * scale}
            np.testing.assert_allclose(got, want, **tol, err_msg=f"{type} {isa} ({rows}, {cols}) x {n}")
            by_token = np.stack([c_matvec(t, row, isa) for row in x])
            np.testing.assert_allclose(got, by_token, **tol, err_msg=f"{type} {isa} ({rows}, {cols}) x {n}")


def test_matmul_large_batch_crosses_token_tiles() -> None:
    """Enough tokens that the kernels work through several token tiles of a weight chunk."""
    rng = np.random.default_rng(11)
    for type in TYPES:
        t = encode(rng.standard_normal((40, 2048)), type)
        x = rng.standard_normal((150, 2048)).astype(np.float32)
        want = np.stack([c_matvec(t, row, "scalar") for row in x])
        for isa in ISAS:
            np.testing.assert_allclose(c_matmul(t, x, isa), want, rtol=1e-5, atol=1e-3, err_msg=f"{type} {isa}")


@pytest.mark.parametrize("type", ["q8_0", "q4_0"])
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
            np.testing.assert_allclose(c_matvec(t, x, isa), c_matvec(t, x, "scalar"), rtol=1e-5, atol=1e-4,
                                       err_msg=f"{type} {isa}")


def test_special_values_in_blocks() -> None:
    """All-zero blocks (scale 0), a block of one large value, and fp16 subnormal scales."""
    for type in TYPES:
        block = input_block(type)
        cols = 3 * block
        w = np.zeros((4, cols), dtype=np.float32)
        w[1, block + 8] = 1000.0
        w[2, :] = 1e-6  # scale 1e-6 / 127: an fp16 subnormal
        w[3, ::2] = -3.0
        x = np.linspace(-1, 1, cols).astype(np.float32)
        x[:block] = 0.0  # an all-zero input block
        t = encode(w, type)
        want = product_reference(t, x)
        for isa in ISAS:
            np.testing.assert_allclose(c_matvec(t, x, isa), want, rtol=1e-5, atol=1e-6, err_msg=f"{type} {isa}")


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
        clean = [c_matvec(t, x[i], "scalar") for i in (0, 1, 3, 4)]
        for isa in ISAS:
            for got in (c_matvec(t, x[2], isa), c_matmul(t, x, isa)[2]):
                assert not np.isfinite(got).any(), f"{type} {isa}: {got}"
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


# ---------------------------------------------------------------------------------------------------------
# Q2_K, Q3_K, IQ4_XS: their row lookup against gguf's decoder bit for bit, and the tolerance above against a
# wrong kernel

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
