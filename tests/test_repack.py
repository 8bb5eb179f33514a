"""Weights repacked at load time (llm_repack, the _R8 types of csrc/llmrun.h; llmrun.load(repack=)).

Oracles: the rows a repacked matrix reads back (llm_dequantize through its get_row) must be exactly its
source's; on the scalar level its products must be bit for bit the source type's (the scalar reference reads
each block back and runs the source's arithmetic); on every level its products must match the float64
reference of the source type (tests/quants.py's product_reference) with test_kernels.py's tolerance
(rtol 1e-5, atol 1e-5 * sqrt(cols) * scale: room for the float32 accumulation order, none for a wrong value,
scale or row); and a token's result must not depend on its batch: bit for bit the same for every n 1..40.
A model loaded with repack=True must pick the same greedy tokens as with repack=False and give logits within
1e-4 of the logits' scale (the same quantized products, summed in another order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quants import encode, product_reference

import llmrun
from llmrun.engine import ISA_NAMES, available_isas, ffi, lib, repack_candidates
from llmrun.errors import InvalidArgumentError
from llmrun.spec import TENSOR_TYPES, Tensor

ISAS = available_isas()
TYPES = ["q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]
FLOATS = ["f32", "f16", "bf16"]  # repacked too (tests/test_float_repack.py)


def repack(t: Tensor) -> Tensor:
    rows, cols = t.shape
    out = np.empty_like(t.data)
    out_type = ffi.new("int32_t *")
    assert lib.llm_repack(TENSOR_TYPES[t.type].code, ffi.from_buffer(t.data), rows, cols, ffi.from_buffer(out),
                          out_type) == 0
    return Tensor(out, ffi.string(lib.llm_type_name(out_type[0])).decode())


def dequantize(t: Tensor) -> np.ndarray:
    rows, cols = t.shape
    out = np.empty((rows, cols), dtype=np.float32)
    assert lib.llm_dequantize(TENSOR_TYPES[t.type].code, ffi.from_buffer(t.data), rows, cols,
                              ffi.from_buffer("float[]", out)) == 0
    return out


def c_matmul(t: Tensor, x: np.ndarray, isa: str) -> np.ndarray:
    rows, cols = t.shape
    x = np.ascontiguousarray(np.atleast_2d(x), dtype=np.float32)
    out = np.empty((len(x), rows), dtype=np.float32)
    assert lib.llm_matmul(TENSOR_TYPES[t.type].code, ISA_NAMES[isa], ffi.from_buffer(t.data), rows, cols,
                          ffi.from_buffer("float[]", x), len(x), ffi.from_buffer("float[]", out)) == 0
    return out


def weights(type: str, rows: int, cols: int, seed: int) -> Tensor:
    rng = np.random.default_rng(seed)
    return encode(rng.standard_normal((rows, cols)), type)


@pytest.mark.parametrize("type", TYPES)
def test_repack_keeps_every_value_and_size(type: str) -> None:
    for rows, cols in ((8, 32), (24, 288), (40, 1024)):
        t = weights(type, rows, cols, rows + cols)
        r = repack(t)
        assert r.type == f"{type}_r8" and TENSOR_TYPES[r.type].repacked_from == type
        assert r.data.shape == t.data.shape and r.shape == t.shape
        assert (TENSOR_TYPES[r.type].block_elems, TENSOR_TYPES[r.type].block_bytes) == (
            TENSOR_TYPES[type].block_elems, TENSOR_TYPES[type].block_bytes)
        assert not np.array_equal(r.data, t.data)  # interleaved: another byte order
        np.testing.assert_array_equal(dequantize(r), dequantize(t), err_msg=f"{type} ({rows}, {cols})")


@pytest.mark.parametrize("type", TYPES)
def test_scalar_level_is_the_source_types_arithmetic(type: str) -> None:
    t = weights(type, 24, 288, 7)
    r = repack(t)
    x = np.random.default_rng(8).standard_normal((3, 288)).astype(np.float32)
    for n in (1, 3):
        np.testing.assert_array_equal(c_matmul(r, x[:n], "scalar"), c_matmul(t, x[:n], "scalar"))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", TYPES)
def test_products_match_reference(type: str, isa: str) -> None:
    # 40 rows: two 16-row chunks (the 512-bit tiles) and one of 8 (the 256-bit tile); n crosses the tiles of
    # 12, 4 and 1 tokens
    for rows, cols in ((8, 32), (40, 288), (16, 1024)):
        t = weights(type, rows, cols, rows * 1000 + cols)
        r = repack(t)
        for n in (1, 5, 13, 29):
            x = np.random.default_rng(n + cols).standard_normal((n, cols)).astype(np.float32)
            want = np.stack([product_reference(t, row) for row in x])
            got = c_matmul(r, x, isa)
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.sqrt(cols) * scale,
                                       err_msg=f"{type}_r8 {isa} ({rows}, {cols}) x {n}")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", ["q4_0", "q4_1", "q5_0", "q5_1"])
def test_largest_values_do_not_overflow_the_integer_sums(type: str, isa: str) -> None:
    # every value at its largest code (all bits set: 15 or 31) and every activation at +-127, the largest sums
    # the kernels' 16-bit partial sums hold (AVX2 adds eight 4-bit or four 5-bit steps before widening them)
    rows, cols = 16, 256
    info = TENSOR_TYPES[type]
    blocks = np.full((rows * cols // info.block_elems, info.block_bytes), 0xFF, dtype=np.uint8)
    blocks[:, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), dtype=np.uint8)  # d
    if type.endswith("_1"):
        blocks[:, 2:4] = 0  # m
    t = Tensor(blocks.reshape(rows, -1), type)
    r = repack(t)
    for sign in (1.0, -1.0):
        x = np.full((5, cols), sign, dtype=np.float32)
        want = np.stack([product_reference(t, row) for row in x])
        np.testing.assert_allclose(c_matmul(r, x, isa), want, rtol=1e-6, err_msg=f"{type}_r8 {isa} sign {sign}")


def test_repacked_types_need_whole_groups_of_rows() -> None:
    """A repacked matrix is read in groups of 8 rows: llm_matmul and llm_dequantize refuse one whose row count is
    not a multiple of 8 (LLM_ERR_INVALID, as llm_create's tensor checks do) instead of reading past its end."""
    r = repack(weights("q4_0", 16, 64, 5))
    code, w = TENSOR_TYPES[r.type].code, ffi.from_buffer(r.data)
    x, out = np.ones((1, 64), dtype=np.float32), np.empty(64 * 16, dtype=np.float32)
    xb, ob = ffi.from_buffer("float[]", x), ffi.from_buffer("float[]", out)
    for rows in (12, 15, 9):
        assert lib.llm_matmul(code, lib.LLM_ISA_SCALAR, w, rows, 64, xb, 1, ob) == lib.LLM_ERR_INVALID
        assert lib.llm_dequantize(code, w, rows, 64, ob) == lib.LLM_ERR_INVALID
    assert lib.llm_matmul(code, lib.LLM_ISA_SCALAR, w, 16, 64, xb, 1, ob) == 0


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", TYPES)
def test_a_tokens_result_does_not_depend_on_its_batch(type: str, isa: str) -> None:
    rows, cols = 40, 320
    r = repack(weights(type, rows, cols, 11))
    x = np.random.default_rng(12).standard_normal((40, cols)).astype(np.float32)
    alone = np.stack([c_matmul(r, row, isa)[0] for row in x])
    for n in range(1, 41):
        np.testing.assert_array_equal(c_matmul(r, x[:n], isa), alone[:n], err_msg=f"{type}_r8 {isa} n={n}")


def test_repack_refuses_what_it_cannot_repack() -> None:
    t = weights("q4_0", 16, 64, 3)
    src, out, out_type = ffi.from_buffer(t.data), ffi.from_buffer(np.empty_like(t.data)), ffi.new("int32_t *")
    out_type[0] = -7
    code = TENSOR_TYPES["q4_0"].code
    for rows in (0, -8, 4, 12):  # rows not a positive multiple of 8
        assert lib.llm_repack(code, src, rows, 64, out, out_type) == lib.LLM_ERR_INVALID
    for cols in (0, 48, -32):  # not whole blocks
        assert lib.llm_repack(code, src, 16, cols, out, out_type) == lib.LLM_ERR_INVALID
    for name in ("q4_k", "q6_k", "iq4_xs", "q4_0_r8", "q8_0_r8", "f32_r8", "bf16_r8"):  # no repacked form
        assert lib.llm_repack(TENSOR_TYPES[name].code, src, 16, 256, out, out_type) == lib.LLM_ERR_INVALID
    for bad in (-1, lib.LLM_TYPE_COUNT, 1000):
        assert lib.llm_repack(bad, src, 16, 64, out, out_type) == lib.LLM_ERR_INVALID
    assert lib.llm_repack(code, ffi.NULL, 16, 64, out, out_type) == lib.LLM_ERR_INVALID
    assert lib.llm_repack(code, src, 16, 64, ffi.NULL, out_type) == lib.LLM_ERR_INVALID
    assert lib.llm_repack(code, src, 16, 64, out, ffi.NULL) == lib.LLM_ERR_INVALID
    assert out_type[0] == -7  # untouched on failure
    assert lib.llm_repack(code, src, 16, 64, out, out_type) == 0 and out_type[0] == TENSOR_TYPES["q4_0_r8"].code


@pytest.mark.parametrize("name", ["stories260K-q8_0.gguf", "stories260K-q4_0.gguf"])
def test_repacked_model_generates_the_same(models_dir: Path, name: str) -> None:
    path = models_dir / name
    plain = llmrun.load(path, repack=False, n_threads=2)
    packed = llmrun.load(path, repack=True, n_threads=2)
    try:
        assert plain.info.repacked == 0 and packed.info.repacked > 0
        assert packed.info.dtype == plain.info.dtype  # the file's types, whatever the layout in memory
        ids = plain.tokenize("Once upon a time, there was a little")
        want, got = np.asarray(plain.logits(ids)), np.asarray(packed.logits(ids))
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
        a = plain.generate("Once upon a time", max_tokens=24, temperature=0.0)
        b = packed.generate("Once upon a time", max_tokens=24, temperature=0.0)
        assert a == b and a
    finally:
        plain.close()
        packed.close()


def test_repack_candidates_skip_the_embedding_and_odd_rows(models_dir: Path) -> None:
    model = llmrun.load(models_dir / "stories260K-q8_0.gguf", repack=True, n_threads=1)
    try:
        spec = model._spec
        assert TENSOR_TYPES[spec.token_embd.type].repacked_from is None
        for layer in spec.layers:
            for name in ("wq", "wk", "wv", "wo", "w_gate", "w_down", "w_up"):
                t = getattr(layer, name)
                rows = t.shape[0]
                repacked = TENSOR_TYPES[t.type].repacked_from is not None
                source = t.type.removesuffix("_r8")
                assert repacked == (rows % 8 == 0 and source in TYPES + FLOATS), (name, t.type, rows)
        assert model.info.repacked == sum(TENSOR_TYPES[t.type].repacked_from is not None for t in spec.tensors())
        assert repack_candidates(spec) == []  # nothing left to repack
    finally:
        model.close()


@pytest.mark.parametrize("bad", [1, 0, "yes", "true", 1.0, []])
def test_bad_repack_values_raise(models_dir: Path, bad: object) -> None:
    with pytest.raises(InvalidArgumentError, match="repack") as err:
        llmrun.load(models_dir / "stories260K-q8_0.gguf", repack=bad)
    assert err.value.param == "repack"


def test_default_repacks_only_what_fits_beside_the_kv_cache(models_dir: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    """repack=None: the copy and the KV cache together under half of the memory the process may use (its cgroup's
    limit counts, not only the machine's RAM), and only on levels that have kernels for the repacked layout."""
    import llmrun.model as model_module
    import llmrun.system as system
    from llmrun.engine import context_bytes, repack_bytes
    from llmrun.formats import read_model

    path = models_dir / "stories260K-q8_0.gguf"
    spec = read_model(path)
    copy = repack_bytes(spec, model_module._repacks_floats(None))  # what load copies on this machine's level
    small = context_bytes(spec.config, 64, 64, 2, n_seq=model_module._sequences(1), n_kv=64)
    big = context_bytes(spec.config, 256, 256, 2, n_seq=model_module._sequences(8), n_kv=8192)
    assert copy > 0 and small is not None and big is not None and big > 4 * (copy + small)
    enough = 2 * (copy + small) + 4096  # room for the copy beside the small cache, not beside the big one

    def load(**kw: object) -> int:
        with llmrun.load(path, n_threads=2, **kw) as m:
            return m.info.repacked

    monkeypatch.setattr(system, "_cgroup_limit", lambda: None)
    monkeypatch.setattr(system, "physical_memory", lambda: enough)
    assert load(n_ctx=64, parallel=1) > 0
    assert load(n_ctx=256, parallel=8, kv_size=8192, n_batch=256) == 0  # the KV cache takes the room
    monkeypatch.setattr(system, "physical_memory", lambda: 64 << 30)
    monkeypatch.setattr(system, "_cgroup_limit", lambda: enough - 8192)  # a container: its limit counts
    assert load(n_ctx=64, parallel=1) == 0
    monkeypatch.setattr(system, "_cgroup_limit", lambda: None)
    monkeypatch.setenv("LLMRUN_ISA", "scalar")  # no repacked kernels there: keep the file's layout
    assert load(n_ctx=64, parallel=1) == 0
    assert model_module.REPACKING_LEVELS <= set(llmrun.engine.ISA_NAMES)


def test_cgroup_limit_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import llmrun.system as system

    assert system._cgroup_limit() is None or system._cgroup_limit() > 0
    assert system.memory_limit() is None or system.memory_limit() <= (system.physical_memory() or 1 << 62)
