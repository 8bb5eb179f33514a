"""Float weights repacked at load time (llm_repack's F32_R8, F16_R8, BF16_R8: csrc/kernels.h; llmrun.load(repack=)).

Each group of 8 rows is stored transposed, so that the products keep a row's sum in one vector lane: every row's
product with a token is one chain of fused multiply-adds in increasing k. Oracles:
- the rows a repacked matrix reads back (llm_dequantize through its get_row) are exactly its source's;
- every level's products are bit for bit the scalar reference's (kernels_scalar.c: that chain with fmaf), for a
  token alone and in every batch n = 1..40 (the tiles of 16 rows x 6 tokens, their remainders, the panels of
  256 values: cols up to 1027);
- they match the float64 product of the stored values with test_kernels.py's tolerance (rtol 1e-5, atol 1e-5 *
  sqrt(cols) * scale: room for float32 rounding, none for a wrong value, row or token);
- a model loaded with repack=True picks the same greedy tokens as with repack=False, logits within 1e-4 of
  their scale (the same products, summed in another order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quants import decode
from test_kernels import c_matmul
from test_kernels_exact import stored
from test_repack import dequantize, repack

import llmrun
from llmrun.engine import available_isas, ffi, lib, repack_candidates
from llmrun.spec import TENSOR_TYPES, Tensor

ISAS = available_isas()
FLOATS = ["f32", "f16", "bf16"]
SHAPES = ((8, 1), (8, 7), (24, 300), (40, 1027), (48, 256))


def weights(type: str, rows: int, cols: int, seed: int) -> Tensor:
    """Random values stored as `type` (bf16: the top 16 bits of each float32, any pattern is a valid weight)."""
    return Tensor(stored(np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32), type), type)


def sequential_fma(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Each row's chain sum = fma(w[k], x[k], sum) in increasing k, in float32. numpy has no fma: the product of
    two float32 values is exact in float64, and the float64 sum rounded to float32 is fma's single rounding unless
    the float64 rounding lands on a float32 tie (vanishingly rare; none in these data, the test is deterministic)."""
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    total = np.zeros(w.shape[0], dtype=np.float32)
    for k in range(w.shape[1]):
        total = (w64[:, k] * x64[k] + total.astype(np.float64)).astype(np.float32)
    return total


@pytest.mark.parametrize("type", FLOATS)
def test_repack_keeps_every_value_and_size(type: str) -> None:
    for rows, cols in SHAPES:
        t = weights(type, rows, cols, rows + cols)
        r = repack(t)
        assert r.type == f"{type}_r8" and TENSOR_TYPES[r.type].repacked_from == type
        assert r.data.shape == t.data.shape and r.data.dtype == t.data.dtype
        if cols > 1:
            assert not np.array_equal(r.data, t.data)  # transposed groups: another order
        np.testing.assert_array_equal(dequantize(r), dequantize(t), err_msg=f"{type} ({rows}, {cols})")
        # the layout itself: value k of row 8 g + l at 8 k + l of group g
        groups = t.data.reshape(rows // 8, 8, cols).transpose(0, 2, 1).reshape(rows, cols)
        np.testing.assert_array_equal(r.data, groups)


@pytest.mark.parametrize("type", FLOATS)
def test_scalar_level_is_one_fused_chain_per_row(type: str) -> None:
    # the scalar reference against numpy's emulation of the chain, bit for bit (the oracle of every level below)
    t = weights(type, 24, 300, 5)
    x = np.random.default_rng(6).standard_normal((3, 300)).astype(np.float32)
    w = decode(t).astype(np.float32)
    got = c_matmul(repack(t), x, "scalar")
    for j in range(3):
        np.testing.assert_array_equal(got[j], sequential_fma(w, x[j]), err_msg=f"{type} token {j}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", FLOATS)
def test_every_level_is_the_scalar_chain_alone_and_in_any_batch(type: str, isa: str) -> None:
    for rows, cols in SHAPES:
        r = repack(weights(type, rows, cols, rows * 7 + cols))
        x = np.random.default_rng(cols).standard_normal((40, cols)).astype(np.float32)
        want = c_matmul(r, x, "scalar")
        alone = np.stack([c_matmul(r, row, isa)[0] for row in x])
        np.testing.assert_array_equal(alone, want, err_msg=f"{type}_r8 {isa} ({rows}, {cols}) alone")
        for n in (1, 2, 5, 6, 7, 13, 29, 40):
            np.testing.assert_array_equal(c_matmul(r, x[:n], isa), want[:n],
                                          err_msg=f"{type}_r8 {isa} ({rows}, {cols}) n={n}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", FLOATS)
def test_products_match_the_float64_reference(type: str, isa: str) -> None:
    for rows, cols in ((16, 1027), (40, 768), (8, 33)):
        t = weights(type, rows, cols, rows + 3 * cols)
        x = np.random.default_rng(rows).standard_normal((13, cols)).astype(np.float32)
        want = x.astype(np.float64) @ decode(t).T
        got = c_matmul(repack(t), x, isa)
        scale = max(1.0, float(np.abs(want).max()))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(cols) * scale,
                                   err_msg=f"{type}_r8 {isa} ({rows}, {cols})")


def test_a_large_batch_crosses_token_blocks_and_panels() -> None:
    # 200 tokens: blocks of 96 and a remainder, 600 values: panels of 256, 256 and 88; 56 rows: 3 tiles + 1 group
    t = weights("f32", 56, 600, 9)
    r = repack(t)
    x = np.random.default_rng(10).standard_normal((200, 600)).astype(np.float32)
    want = c_matmul(r, x, "scalar")
    for isa in ISAS:
        np.testing.assert_array_equal(c_matmul(r, x, isa), want, err_msg=isa)


def test_repacked_float_types_need_whole_groups_of_rows() -> None:
    r = repack(weights("f32", 16, 64, 5))
    code, w = TENSOR_TYPES[r.type].code, ffi.from_buffer(r.data)
    x, out = np.ones((1, 64), dtype=np.float32), np.empty(64 * 16, dtype=np.float32)
    xb, ob = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out)
    for rows in (12, 15, 9):
        assert lib.llm_matmul(code, lib.LLM_ISA_SCALAR, w, rows, 64, xb, 1, ob) == lib.LLM_ERR_INVALID
        assert lib.llm_dequantize(code, w, rows, 64, ob) == lib.LLM_ERR_INVALID
    src, dst, out_type = ffi.from_buffer(r.data), ffi.from_buffer(np.empty_like(r.data)), ffi.new("int32_t *")
    for rows in (0, 4, 12):
        assert lib.llm_repack(TENSOR_TYPES["f32"].code, src, rows, 64, dst, out_type) == lib.LLM_ERR_INVALID
    assert lib.llm_repack(TENSOR_TYPES["f32"].code, src, 16, 0, dst, out_type) == lib.LLM_ERR_INVALID
    assert lib.llm_repack(code, src, 16, 64, dst, out_type) == lib.LLM_ERR_INVALID  # already repacked


def test_repacked_float_model_generates_the_same(models_dir: Path) -> None:
    path = models_dir / "stories260K-f32.gguf"
    plain = llmrun.load(path, repack=False, n_threads=2)
    packed = llmrun.load(path, repack=True, n_threads=2)
    try:
        assert plain.info.repacked == 0 and packed.info.repacked > 0
        assert packed.info.dtype == plain.info.dtype == "f32"
        assert any(t.type == "f32_r8" for t in packed._spec.tensors())
        ids = plain.tokenize("Once upon a time, there was a little")
        want, got = np.asarray(plain.logits(ids)), np.asarray(packed.logits(ids))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
        a = plain.generate("Once upon a time", max_tokens=24, temperature=0.0)
        b = packed.generate("Once upon a time", max_tokens=24, temperature=0.0)
        assert a == b and a
    finally:
        plain.close()
        packed.close()


def test_default_repacks_floats_only_on_the_levels_that_gain(models_dir: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """repack=None repacks float matrices only on FLOAT_REPACKING_LEVELS (AVX2: the outer products beat the
    file layout's tiles there; AVX-512's tiles of the file's layout are wider), the block types on every level
    with repacked kernels; repack=True repacks both anywhere."""
    import llmrun.model as model_module
    import llmrun.system as system
    from llmrun.engine import isa_for

    path = models_dir / "stories260K-f32.gguf"
    monkeypatch.setattr(system, "_cgroup_limit", lambda: None)
    monkeypatch.setattr(system, "physical_memory", lambda: 64 << 30)

    def repacked(**kw: object) -> int:
        with llmrun.load(path, n_threads=1, **kw) as m:
            return m.info.repacked

    assert model_module.FLOAT_REPACKING_LEVELS <= model_module.REPACKING_LEVELS
    level = isa_for(None)
    forced = repacked(repack=True)
    assert forced > 0
    monkeypatch.setattr(model_module, "FLOAT_REPACKING_LEVELS", frozenset())
    assert repacked() == 0
    monkeypatch.setattr(model_module, "FLOAT_REPACKING_LEVELS", frozenset({level}))
    assert repacked() == (forced if level in model_module.REPACKING_LEVELS else 0)


def test_candidates_without_floats_skip_the_float_matrices(models_dir: Path) -> None:
    from llmrun.formats import read_model

    spec = read_model(models_dir / "stories260K-f32.gguf")
    with_floats = repack_candidates(spec)
    assert with_floats and all(getattr(o, n).type == "f32" for o, n in with_floats)
    assert all(getattr(o, n).shape[0] % 8 == 0 for o, n in with_floats)
    assert repack_candidates(spec, floats=False) == []
