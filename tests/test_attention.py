"""The attention kernels (csrc/kernels.h llm_vec_ops.attention: a tile of queries of consecutive tokens times the
query heads of one key/value head, over the KV cache's blocks with an online softmax) against a float64 numpy
reference, on every instruction set, through llm_attention (llmrun.h), which lays the keys and values out in
blocks as the KV cache does, in reverse order of the positions (the kernels must follow the block table).

Tolerance: |C - reference| <= 2e-6 * (1 + max |score|) * max |v|, elementwise. The output is a convex combination
of value rows: a float32 score off by e (its dot product: ~1e-7 * sqrt(dim) * |q||k| relative) moves its weight
by a factor e^e, and the exponentials (exp8: 2e-7 relative) and the float32 sums add ~1e-7 each: the bound has
~10x room for the rounding, and none for a mistake (a key missing from the window or one seen too many shifts
the output by ~1/n of max |v|, n <= 200 here: 5e-3, 2500 times the bound).

Exactness: a query's arithmetic does not depend on the other queries of its tile, so the output of token t of a
tile of any size, and of any of its heads, is bit for bit the output of that token alone (n_tok 1) and of that
head alone (n_head 1): a prompt evaluated in one batch attends exactly as the same tokens one at a time.
"""

from __future__ import annotations

import numpy as np
import pytest

from llmrun.engine import ISA_NAMES, available_isas, ffi, lib

ISAS = available_isas()
B = 32  # LLM_KV_BLOCK


def reference(q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, window: int, scale: float,
              softcap: float) -> np.ndarray:
    """(n_tok, n_head, dim) outputs in float64: token t at position pos + t sees pos + t - window + 1 .. pos + t."""
    n_tok, n_head, _ = q.shape
    out = np.zeros(q.shape)
    for t in range(n_tok):
        last = pos + t
        first = max(0, last - window + 1) if window else 0
        s = q[t].astype(np.float64) @ k[first:last + 1].T.astype(np.float64) * scale  # (n_head, n)
        if softcap:
            s = softcap * np.tanh(s / softcap)
        p = np.exp(s - s.max(axis=1, keepdims=True))
        out[t] = (p / p.sum(axis=1, keepdims=True)) @ v[first:last + 1].astype(np.float64)
    return out


def run(isa: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, window: int, scale: float,
        softcap: float) -> np.ndarray:
    n_tok, n_head, dim = q.shape
    q, k, v = (np.ascontiguousarray(a, dtype=np.float32) for a in (q, k, v))
    out = np.full(q.shape, np.nan, dtype=np.float32)
    rc = lib.llm_attention(ISA_NAMES[isa], ffi.from_buffer("float[]", q), n_tok, n_head, dim,
                           ffi.from_buffer("float[]", k), ffi.from_buffer("float[]", v), k.shape[0], pos, window,
                           scale, softcap, ffi.from_buffer("float[]", out))
    assert rc == 0
    return out


def case(seed: int, n_tok: int, group: int, dim: int, pos: int, spread: float = 1.0, window: int = 0) -> tuple:
    """Queries of n_tok tokens x group heads, keys and values of positions 0 .. pos + n_tok - 1 and 5 more. The
    positions that no query sees (those 5, and before the first query's window) hold NaN: a kernel that let them
    into a result would show it (the stale rows of the KV cache's blocks can hold anything)."""
    rng = np.random.default_rng(seed)
    n_pos = pos + n_tok + 5
    q = rng.standard_normal((n_tok, group, dim)) * spread
    k = rng.standard_normal((n_pos, dim))
    v = rng.standard_normal((n_pos, dim))
    unseen = np.r_[0:max(0, pos - window + 1) if window else 0, pos + n_tok:n_pos]
    k[unseen] = v[unseen] = np.nan
    return q, k, v


def check(isa: str, q: np.ndarray, k: np.ndarray, v: np.ndarray, pos: int, window: int, softcap: float,
          scale: float) -> np.ndarray:
    got = run(isa, q, k, v, pos, window, scale, softcap)
    want = reference(q, k, v, pos, window, scale, softcap)
    s = np.nanmax(np.abs(q.reshape(-1, q.shape[-1]) @ k.T * scale))
    bound = 2e-6 * (1 + (min(s, softcap) if softcap else s)) * np.nanmax(np.abs(v))
    err = np.abs(got - want).max()
    assert err <= bound, f"{isa}: error {err:.3g} > {bound:.3g}"
    return got


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("dim", [64, 128, 80, 256])
@pytest.mark.parametrize("group", [1, 4, 8])
def test_against_reference(isa: str, dim: int, group: int) -> None:
    """Tiles of 1..17 tokens at positions that start at 0, within a block and across blocks, with no window,
    windows shorter and longer than a block, and Gemma 2's soft-cap (scores spread wide enough that it bites)."""
    for n_tok, pos, window, softcap in [(1, 0, 0, 0.0), (17, 0, 0, 0.0), (5, 29, 0, 0.0), (16, 64, 0, 0.0),
                                        (3, 100, 7, 0.0), (9, 61, 40, 0.0), (17, 90, 33, 0.0), (2, 31, 1, 0.0),
                                        (8, 40, 0, 5.0), (11, 70, 20, 3.0)]:
        spread = 4.0 if softcap else 1.0
        q, k, v = case(n_tok * 1000 + pos, n_tok, group, dim, pos, spread, window)
        check(isa, q, k, v, pos, window, softcap, 1 / np.sqrt(dim))


@pytest.mark.parametrize("isa", ISAS)
def test_every_tile_size(isa: str) -> None:
    """Tile sizes 1..17 at a position that makes the tile cross a block boundary (or two)."""
    for n_tok in range(1, 18):
        q, k, v = case(n_tok, n_tok, 4, 64, 50 - n_tok // 2)
        check(isa, q, k, v, 50 - n_tok // 2, 0, 0.0, 0.125)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("window,softcap", [(0, 0.0), (37, 0.0), (0, 4.0)])
def test_a_token_in_a_tile_is_the_token_alone(isa: str, window: int, softcap: float) -> None:
    """Bit for bit: each token of a tile of 13 (and each head of a group of 6) as alone."""
    pos, n_tok, group, dim = 55, 13, 6, 80
    q, k, v = case(7, n_tok, group, dim, pos, 3.0, window)
    tile = run(isa, q, k, v, pos, window, 0.1, softcap)
    for t in range(n_tok):
        alone = run(isa, q[t:t + 1], k[:pos + t + 1], v[:pos + t + 1], pos + t, window, 0.1, softcap)
        assert np.array_equal(tile[t], alone[0]), f"token {t}"
        for h in (0, 3, 5):
            head = run(isa, q[t:t + 1, h:h + 1], k[:pos + t + 1], v[:pos + t + 1], pos + t, window, 0.1, softcap)
            assert np.array_equal(tile[t, h], head[0, 0]), f"token {t} head {h}"


@pytest.mark.parametrize("isa", ISAS)
def test_large_scores_do_not_overflow(isa: str) -> None:
    """Scores of several hundred (e^s would overflow float32): the running maximum keeps every exponent <= 0."""
    q, k, v = case(3, 9, 2, 64, 60, spread=60.0)
    got = check(isa, q, k, v, 60, 0, 0.0, 0.125)
    assert np.isfinite(got).all()


def test_refuses_bad_arguments() -> None:
    q = np.zeros((2, 1, 8), dtype=np.float32)
    kv = np.zeros((4, 8), dtype=np.float32)  # 4 positions
    out = np.zeros_like(q)
    buf = [ffi.from_buffer("float[]", a) for a in (q, kv, kv, out)]
    ok = dict(isa=lib.LLM_ISA_SCALAR, n_tok=2, n_head=1, dim=8, n_pos=4, pos=2, window=0)
    for bad in [dict(isa=99), dict(n_tok=0), dict(n_head=0), dict(dim=0), dict(pos=3), dict(pos=-1),
                dict(window=-1)]:
        a = {**ok, **bad}
        assert lib.llm_attention(a["isa"], buf[0], a["n_tok"], a["n_head"], a["dim"], buf[1], buf[2], a["n_pos"],
                                 a["pos"], a["window"], 1.0, 0.0, buf[3]) == lib.LLM_ERR_INVALID, bad
    assert lib.llm_attention(ok["isa"], buf[0], 2, 1, 8, buf[1], buf[2], 4, 2, 0, 1.0, 0.0, buf[3]) == 0


@pytest.mark.parametrize("isa", ISAS)
def test_huge_windows_are_no_window(isa: str) -> None:
    """A window up to INT32_MAX holds every position: the same result as no window on every level (the x86 tile's
    bound on the tokens that see a block once overflowed int32 there and left NaN); a position range that
    overflows int32 is refused."""
    q, k, v = case(5, 3, 2, 8, 4)
    want = run(isa, q, k, v, 4, 0, 0.3, 0.0)
    for window in (2**31 - 1, 2**31 - 20, 10**9):
        np.testing.assert_array_equal(run(isa, q, k, v, 4, window, 0.3, 0.0), want, err_msg=f"window {window}")
    out = np.zeros_like(q, dtype=np.float32)
    f = [ffi.from_buffer("float[]", np.ascontiguousarray(a, dtype=np.float32)) for a in (q, k, v)]
    assert lib.llm_attention(ISA_NAMES[isa], f[0], 3, 2, 8, f[1], f[2], k.shape[0], 2**31 - 2, 0, 0.3, 0.0,
                             ffi.from_buffer("float[]", out)) == lib.LLM_ERR_INVALID
