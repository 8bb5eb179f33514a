"""The C forward pass against the numpy reference (tests/reference.py), for several model shapes,
both instruction sets and several thread counts; and the C kernels against numpy.

Tolerance: the C code computes in float32 and the reference in float64. Over these depths and widths
float32 rounding moves logits by ~1e-6 of their scale, so max |C - ref| <= 1e-4 * max |ref| (a relative
1e-4) leaves a wide margin while any real mistake (a wrong RoPE pair, a missing residual, a wrong KV
head) moves logits by 1e-2 or more of their scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from quants import decode, encode, rounds_input_to_bf16

from builders import make_config, random_tensors, spec_from_tensors
from llmrun import ContextOverflowError, KernelError, ModelFormatError
from llmrun.engine import Engine, available_isas, ffi, lib
from reference import forward as reference_forward

RTOL = 1e-4
ISAS = available_isas()

SHAPES = {
    # name: (config, tied)
    "gqa-tied": (make_config(dim=64, hidden_dim=172, n_heads=8, n_kv_heads=4, vocab_size=96), True),
    "mha-untied": (make_config(dim=48, hidden_dim=100, n_layers=3, n_heads=6, n_kv_heads=6, vocab_size=70), False),
    # head_dim != dim / n_heads, multi-query attention, Hugging Face RoPE halves, Llama 3's theta
    "mqa-halves": (make_config(dim=40, hidden_dim=77, n_heads=5, n_kv_heads=1, head_dim=12, vocab_size=33,
                               rope_style="halves", rope_theta=500000.0), False),
    # odd sizes everywhere: every SIMD loop has a scalar tail
    "odd-dims": (make_config(dim=37, hidden_dim=51, n_layers=2, n_heads=3, n_kv_heads=1, head_dim=10,
                             vocab_size=29), True),
}


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= rtol, f"max abs error is {err:.2e} of the logits' scale (allowed {rtol:.0e})"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_threads", [1, 2, 3])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_logits_match_reference(shape: str, n_threads: int, isa: str) -> None:
    cfg, tied = SHAPES[shape]
    t = random_tensors(cfg, seed=1, tied=tied)
    tokens = list(np.random.default_rng(2).integers(0, cfg.vocab_size, size=20))
    want = reference_forward(cfg, t, tokens)
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=32, n_threads=n_threads, isa=isa)
    assert engine.isa == isa
    assert_close(engine.evaluate_all(tokens), want)
    # token by token through the KV cache gives the same logits as the whole sequence
    engine.close()
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=32, n_threads=n_threads, isa=isa)
    for i in range(len(tokens)):
        assert_close(engine.evaluate(tokens[: i + 1]), want[i])


def qwen2_style(seed: int = 3) -> tuple:
    """A Qwen2-like shape: q/k/v biases, RoPE halves, and rescaled frequencies (as rope_scaling gives)."""
    cfg = make_config(dim=48, hidden_dim=96, n_heads=6, n_kv_heads=2, vocab_size=50, rope_style="halves")
    t = random_tensors(cfg, seed=seed, tied=False)
    rng = np.random.default_rng(seed)
    for name, rows in (("bq", cfg.q_dim), ("bk", cfg.kv_dim), ("bv", cfg.kv_dim)):
        t[name] = rng.standard_normal((cfg.n_layers, rows)).astype(np.float32)
    freqs = (cfg.rope_theta ** (-np.arange(0, cfg.head_dim, 2) / cfg.head_dim) / np.linspace(1, 8, cfg.head_dim // 2))
    return cfg, t, freqs.astype(np.float32)


@pytest.mark.parametrize("isa", ISAS)
def test_biases_and_rope_frequencies_match_reference(isa: str) -> None:
    cfg, t, freqs = qwen2_style()
    tokens = list(np.random.default_rng(4).integers(0, cfg.vocab_size, size=24))
    want = reference_forward(cfg, t, tokens, rope_freqs=freqs)
    got = Engine(spec_from_tensors(cfg, t, rope_freqs=freqs), n_ctx=32, n_threads=2, isa=isa).evaluate_all(tokens)
    assert_close(got, want)
    # each of the four features changes the logits by far more than the tolerance, so each is tested
    for without in ("bq", "bk", "bv", "rope_freqs"):
        reduced = {k: v for k, v in t.items() if k != without}
        other = reference_forward(cfg, reduced, tokens, rope_freqs=None if without == "rope_freqs" else freqs)
        assert np.max(np.abs(other - want)) / np.max(np.abs(want)) > 100 * RTOL, without


def test_bad_biases_and_frequencies_are_refused() -> None:
    cfg, t, freqs = qwen2_style()
    short = dict(t, bk=t["bk"][:, :-1])
    with pytest.raises(KernelError, match="layer 0 bk: shape"):
        Engine(spec_from_tensors(cfg, short, rope_freqs=freqs), n_ctx=8, n_threads=1)
    bad = freqs.copy()
    bad[2] = np.nan
    with pytest.raises(KernelError, match=r"rope_freqs\[2\]"):
        Engine(spec_from_tensors(cfg, t, rope_freqs=bad), n_ctx=8, n_threads=1)
    with pytest.raises(ModelFormatError, match="RoPE divisors must hold 4 numbers"):  # rope.py checks the table
        Engine(spec_from_tensors(cfg, t, rope_freqs=freqs[:-1]), n_ctx=8, n_threads=1)


def test_logits_are_not_trivially_close() -> None:
    """The tolerance means something: logits differ between positions by far more than RTOL."""
    cfg, tied = SHAPES["gqa-tied"]
    want = reference_forward(cfg, random_tensors(cfg, seed=1, tied=tied), [3, 5, 7])
    assert np.max(np.abs(want[1] - want[2])) / np.max(np.abs(want)) > 100 * RTOL


def test_wrong_rope_style_is_caught() -> None:
    """A model run with the other RoPE pairing must fail the comparison (the oracle can see RoPE)."""
    cfg, tied = SHAPES["gqa-tied"]
    t = random_tensors(cfg, seed=1, tied=tied)
    tokens = [1, 2, 3, 4, 5, 6]
    want = reference_forward(cfg, t, tokens)
    other = make_config(dim=64, hidden_dim=172, n_heads=8, n_kv_heads=4, vocab_size=96, rope_style="halves")
    got = Engine(spec_from_tensors(other, t), n_ctx=8, n_threads=1).evaluate_all(tokens)
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) > 100 * RTOL


def test_cache_reuse_and_divergence() -> None:
    """evaluate() reuses the cached prefix and recomputes after the first differing token."""
    cfg, tied = SHAPES["gqa-tied"]
    t = random_tensors(cfg, seed=3, tied=tied)
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=32, n_threads=2)
    a, b = [1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 8]
    engine.evaluate(a)
    assert engine.reusable_prefix(b) == 3
    assert_close(engine.evaluate(b).copy(), reference_forward(cfg, t, b)[-1])
    assert engine.cached_tokens == b
    assert engine.reusable_prefix(b) == len(b) - 1  # the last token always runs again


def test_bad_tokens_and_overflow() -> None:
    cfg, tied = SHAPES["gqa-tied"]
    engine = Engine(spec_from_tensors(cfg, random_tensors(cfg, tied=tied)), n_ctx=8, n_threads=1)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.evaluate([1, cfg.vocab_size])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.evaluate([-1])
    with pytest.raises(ContextOverflowError):
        engine.evaluate(list(range(9)))
    with pytest.raises(ValueError):
        engine.evaluate([])
    engine.close()
    with pytest.raises(KernelError, match="closed"):
        engine.evaluate([1])


def test_c_rejects_bad_arguments_itself() -> None:
    """The C library checks its own bounds: Python's checks are not the only line of defence."""
    cfg, tied = SHAPES["gqa-tied"]
    engine = Engine(spec_from_tensors(cfg, random_tensors(cfg, tied=tied)), n_ctx=8, n_threads=1)
    logits = ffi.new("float[]", cfg.vocab_size)
    for tokens, pos in [([1, 2], 7), ([1], -1), ([cfg.vocab_size], 0), ([-5], 0)]:
        ids = ffi.new("int32_t[]", tokens)
        assert lib.llm_forward(engine._ctx, ids, len(tokens), pos, logits, 0) == lib.LLM_ERR_INVALID
        assert ffi.string(lib.llm_last_error(engine._ctx))
    assert lib.llm_forward(engine._ctx, ffi.new("int32_t[]", [1]), 0, 0, logits, 0) == lib.LLM_ERR_INVALID


def test_c_rejects_inconsistent_shapes() -> None:
    cfg, tied = SHAPES["gqa-tied"]
    t = random_tensors(cfg, tied=tied)
    t["wk"] = t["wk"][:, :-1, :]  # one row short
    with pytest.raises(KernelError, match="layer 0 wk: shape"):
        Engine(spec_from_tensors(cfg, t), n_ctx=8, n_threads=1)
    with pytest.raises(KernelError, match="n_threads"):
        Engine(spec_from_tensors(cfg, random_tensors(cfg, tied=tied)), n_ctx=8, n_threads=0)
    with pytest.raises(KernelError, match="n_ctx"):
        Engine(spec_from_tensors(cfg, random_tensors(cfg, tied=tied)), n_ctx=0, n_threads=1)


def test_thread_count_does_not_change_the_logits() -> None:
    """Each output row is computed whole by one thread, so the thread count cannot change the result:
    the same seed and prompt give the same tokens on any number of threads."""
    cfg, tied = SHAPES["mha-untied"]
    t = random_tensors(cfg, seed=4, tied=tied)
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    results = [Engine(spec_from_tensors(cfg, t), n_ctx=16, n_threads=n).evaluate_all(tokens) for n in (1, 2, 5)]
    for other in results[1:]:
        np.testing.assert_array_equal(results[0], other)


def test_forward_c_stays_readable() -> None:
    """csrc/forward.c is the readable heart of the library: about 500 lines (DESIGN.md)."""
    path = Path(__file__).resolve().parents[1] / "csrc" / "forward.c"
    if not path.exists():
        pytest.skip("sources not available")
    assert len(path.read_text().splitlines()) <= 550


QUANT_TOLERANCE = {"f16": RTOL, "bf16": RTOL, "q8_0": 5e-2, "q4_0": 5e-2}


def typed_model(type: str, vocab_size: int = 96) -> tuple:
    """(config, spec with every matrix stored as `type`, the f32 values those weights hold)."""
    cfg = make_config(dim=64, hidden_dim=192, n_heads=8, n_kv_heads=4, vocab_size=vocab_size)
    t = random_tensors(cfg, seed=11, tied=False)
    spec = spec_from_tensors(cfg, t)
    stored = {}
    if type != "f32":
        for name in ("wq", "wk", "wv", "wo", "w_gate", "w_down", "w_up"):
            for i, layer in enumerate(spec.layers):
                setattr(layer, name, encode(t[name][i], type))
            stored[name] = np.stack([decode(getattr(layer, name)) for layer in spec.layers])
        spec.token_embd, spec.output = encode(t["token_embd"], type), encode(t["output"], type)
        stored["token_embd"], stored["output"] = decode(spec.token_embd), decode(spec.output)
    return cfg, spec, {**t, **stored}


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", ["f32", *sorted(QUANT_TOLERANCE)])
def test_batches_equal_token_by_token(type: str, isa: str) -> None:
    """A prompt processed in batches (matrix-matrix kernels, batched attention) gives the logits of the
    same prompt processed one token at a time (n_batch=1), for every weight type. The two differ in float
    summation order only: RTOL for float weights. For block weights that rounding can move an activation
    across an 8-bit quantization boundary (one step, 1/127 of its block's largest value) in a later layer:
    1e-2 of the logits' scale bounds that (measured up to 8e-3), while a wrong tile or block is off by O(1).
    The vocabulary of 100 leaves the classifier a last group of rows that is not a multiple of the tiles."""
    tolerance = 1e-2 if type in ("q8_0", "q4_0") else RTOL
    cfg, spec, _ = typed_model(type, vocab_size=100)
    tokens = list(np.random.default_rng(5).integers(0, cfg.vocab_size, size=30))
    by_token = Engine(spec, n_ctx=32, n_threads=2, isa=isa, n_batch=1).evaluate_all(tokens)
    for n_batch in (2, 7, 32):
        engine = Engine(spec, n_ctx=32, n_threads=2, isa=isa, n_batch=n_batch)
        assert_close(engine.evaluate_all(tokens), by_token, tolerance)
        engine.reset()
        assert_close(engine.evaluate(tokens), by_token[-1], tolerance)  # only the last position's logits
        assert_close(engine.evaluate(tokens + [1]), Engine(spec, n_ctx=32, n_threads=1, isa=isa, n_batch=1)
                     .evaluate(tokens + [1]), tolerance)  # a batch of one after the cached prompt


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("type", sorted(QUANT_TOLERANCE))
def test_typed_weights_match_reference(type: str, isa: str) -> None:
    """A model whose matrices (embedding and classifier included) are stored as `type`, against the
    reference run on the values those weights hold. f16/bf16 products are exact f32 arithmetic on the
    stored values (RTOL as above). Q8_0/Q4_0 products also quantize their input vectors to 8 bits, a
    relative rounding error of up to 1/254 per element that accumulates over 2 layers; 5e-2 of the
    logits' scale bounds it (measured: 1.5e-2), while a wrong block layout is off by O(1). BF16 products at the
    avx512bf16 level round their input to bfloat16 (up to 2^-8 relative per element, as the 8-bit blocks do):
    2e-2 (measured: 4.3e-3)."""
    cfg, spec, ref = typed_model(type)
    tokens = [5, 17, 3, 88, 42, 0, 9]
    want = reference_forward(cfg, ref, tokens)
    got = Engine(spec, n_ctx=16, n_threads=2, isa=isa).evaluate_all(tokens)
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    tolerance = 2e-2 if rounds_input_to_bf16(type, isa) else QUANT_TOLERANCE[type]
    assert err <= tolerance, f"{type}: error {err:.2e} of the logits' scale"
