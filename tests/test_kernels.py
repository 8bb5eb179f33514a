"""The C kernels of every weight type against numpy references, and the instruction sets against each
other. Stored weights come from the official `gguf` package's encoders (tests/quants.py); it has none for
the K-quants, whose weights are random super-blocks, decoded by the same package.

Tolerances: the reference reproduces exactly what the C product computes (the stored weights; for block
types also the 8-bit quantization of the input, per 32 values or per 256 for the K-quants), in float64.
The C code accumulates in float32, so the results agree to ~1e-6 of the result's scale; rtol 1e-5 plus
atol 1e-5 * sqrt(cols) * scale leaves room for the accumulation order and nothing more: a wrong nibble
order or scale is off by O(1) (test_product_tolerance_catches_an_off_by_one_scale shows it for one sub-block
taking its neighbour's scale).
"""

from __future__ import annotations

import zlib

import gguf
import numpy as np
import pytest
from quants import GGUF_TYPES, decode, product_reference, quantize_activations
from quants import encode as gguf_encode

from llmrun.engine import ISA_NAMES, available_isas, best_isa, ffi, lib
from llmrun.spec import TENSOR_TYPES, Tensor

ISAS = available_isas()
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_k", "q5_k", "q6_k"]
K_QUANTS = ["q4_k", "q5_k", "q6_k"]

# Where each K-quant super-block keeps its fp16 d (and dmin): csrc/kernels.h, ggml-common.h.
K_FP16_FIELDS = {"q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,)}


def random_super_blocks(rng: np.random.Generator, rows: int, cols: int, type: str,
                        d_scale: float = 2e-3) -> Tensor:
    """Random K-quant super-blocks: every bit random (all scale, min, and high-bit patterns occur) except the
    fp16 d and dmin, which are finite, of either sign, and about d_scale, so that the values stay O(1)."""
    tt = TENSOR_TYPES[type]
    raw = rng.integers(0, 256, size=(rows, cols // tt.block_elems, tt.block_bytes), dtype=np.uint8)
    for offset in K_FP16_FIELDS[type]:
        d = (rng.uniform(0.5, 1.0, raw.shape[:2]) * rng.choice([-d_scale, d_scale], raw.shape[:2]))
        raw[:, :, offset:offset + 2] = d.astype(np.float16).view(np.uint8).reshape(raw.shape[:2] + (2,))
    return Tensor(raw.reshape(rows, -1), type)


def encode(a: np.ndarray, type: str) -> Tensor:
    """`a` (rows, cols) stored as `type` through the gguf package's encoder; the package cannot encode the
    K-quants, so theirs are random super-blocks of the same shape (seeded by `a`: reproducible)."""
    if type not in K_QUANTS:
        return gguf_encode(a, type)
    rng = np.random.default_rng(zlib.crc32(np.ascontiguousarray(a, dtype=np.float32).tobytes()))
    return random_super_blocks(rng, *a.shape, type)


def block_cols(type: str, cols: int) -> int:
    """cols rounded up to whole blocks of `type`."""
    block = TENSOR_TYPES[type].block_elems
    return -(-cols // block) * block


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


def shapes_for(type: str) -> list[tuple[int, int]]:
    if TENSOR_TYPES[type].block_elems == 32:
        return [(1, 32), (3, 64), (17, 96), (64, 288), (5, 1024)]
    if TENSOR_TYPES[type].block_elems == 256:  # 1280: a batch kernel's chunks of four super-blocks and one more
        return [(1, 256), (3, 512), (17, 768), (64, 256), (9, 1280), (5, 2048)]
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


@pytest.mark.parametrize("type", ["q8_0", "q4_0", *K_QUANTS])
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
        cols = block_cols(type, 320)
        t = encode(rng.standard_normal((48, cols)), type)
        x = rng.standard_normal(cols).astype(np.float32)
        for isa in ISAS[1:]:
            np.testing.assert_allclose(c_matvec(t, x, isa), c_matvec(t, x, "scalar"), rtol=1e-5, atol=1e-4,
                                       err_msg=f"{type} {isa}")


def test_special_values_in_blocks() -> None:
    """All-zero blocks (scale 0), a block of one large value, and fp16 subnormal scales."""
    cols = 96
    w = np.zeros((4, cols), dtype=np.float32)
    w[1, 40] = 1000.0
    w[2, :] = 1e-6  # scale 1e-6 / 127: an fp16 subnormal
    w[3, ::2] = -3.0
    x = np.linspace(-1, 1, cols).astype(np.float32)
    x[:32] = 0.0  # an all-zero input block
    for type in TYPES:
        if type in K_QUANTS:  # they cannot be encoded from values: test_k_quant_extreme_super_blocks
            continue
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
        cols = block_cols(type, 96)
        x = rng.standard_normal((5, cols)).astype(np.float32)
        x[2, cols - 56] = bad  # token 2, its last block
        t = encode(rng.standard_normal((24, cols)), type)
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
# K-quants: dequantization to the bit, extreme super-blocks, the 256-value activation quantizer


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
