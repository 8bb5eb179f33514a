"""The family options of the forward pass (llm_config / llm_layer: Gemma, Qwen3, Phi, SmolLM3, Granite,
sliding windows) in the C library against the numpy oracle (tests/reference.py), each option alone and in
the combinations of the families; the KV blocks of windowed layers (batches and decoding past the window, the
blocks given back, the resume rule); the refusal of bad options; the memory a window saves; the accuracy of each
level's SwiGLU and GeGLU kernels against float64.

Tolerance: as tests/test_forward.py, max |C - oracle| <= 1e-4 of max |oracle| (float32 against float64 over a
few layers: measured errors are ~1e-6), with f32 weights. Every case's prompt (26 tokens) is longer than its
windows, and each option is shown to move the oracle's logits by more than 100 times the tolerance, so a C
pass that ignored it would fail.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pytest

import llmrun.engine
from builders import make_config, random_tensors, spec_from_tensors
from llmrun import KernelError
from llmrun.engine import Engine, available_isas, context_bytes, ffi, lib
from llmrun.spec import ModelConfig
from reference import forward as reference_forward

RTOL = 1e-4
ISAS = available_isas()
N_CTX = 40
TOKENS = [int(i) for i in np.random.default_rng(7).integers(0, 64, size=26)]


@dataclass
class Case:
    """A random model with some family options, and the global RoPE table the engine is to use."""

    cfg: ModelConfig
    t: dict[str, np.ndarray]
    freqs: np.ndarray | None = None  # (rotary_dim / 2,) global RoPE frequencies; None: plain
    factor: float = 1.0  # the global table's attention factor
    off: dict[str, Case] = field(default_factory=dict)  # the same model with one option switched off

    def oracle(self, tokens: list[int]) -> np.ndarray:
        return reference_forward(self.cfg, self.t, tokens, self.freqs, self.factor)

    def without(self, name: str, drop: tuple[str, ...] = (), freqs: bool = False, factor: bool = False,
                **cfg: object) -> Case:
        """Records the model with option `name` off: tensors dropped, config fields reset, or the table plain."""
        self.off[name] = Case(replace(self.cfg, **cfg), {k: v for k, v in self.t.items() if k not in drop},
                              None if freqs else self.freqs, 1.0 if factor else self.factor)
        return self


def model(seed: int = 1, n_layers: int = 3, tied: bool = False, qk_norm: bool = False, post_norms: bool = False,
          **options: object) -> Case:
    """dim 48 with 4 query heads of 16 (q_dim 64 != dim) on 2 KV heads, RoPE halves as Hugging Face's; the
    options are ModelConfig fields."""
    cfg = replace(make_config(dim=48, hidden_dim=80, n_layers=n_layers, n_heads=4, n_kv_heads=2, head_dim=16,
                              vocab_size=64, max_seq_len=64, rope_style="halves"), **options)
    t = random_tensors(cfg, seed=seed, tied=tied)
    rng = np.random.default_rng(seed + 100)
    if qk_norm:
        for name in ("q_norm", "k_norm"):
            t[name] = (1 + 0.5 * rng.standard_normal((n_layers, cfg.head_dim))).astype(np.float32)
    if post_norms:
        for name in ("attn_post_norm", "ffn_post_norm"):
            t[name] = (1 + 0.5 * rng.standard_normal((n_layers, cfg.dim))).astype(np.float32)
    return Case(cfg, t)


def scaled_freqs(rotary_dim: int, theta: float, factors: np.ndarray) -> np.ndarray:
    """theta^(-2j / rotary_dim) / factors: linear scaling, LongRoPE's per-pair factors."""
    return (theta ** (-np.arange(0, rotary_dim, 2) / rotary_dim) / factors).astype(np.float32)


def options_alone() -> dict[str, Case]:
    cases = {
        "embed_scale": model(embed_scale=4.0).without("embed_scale", embed_scale=1.0),
        "attn_scale": model(attn_scale=0.6).without("attn_scale", attn_scale=None),
        "attn_softcap": model(attn_scale=1.0, attn_softcap=1.5).without("attn_softcap", attn_softcap=0.0),
        "final_softcap": model(final_softcap=2.0).without("final_softcap", final_softcap=0.0),
        "residual_scale": model(residual_scale=0.4).without("residual_scale", residual_scale=1.0),
        "logit_scale": model(logit_scale=0.3).without("logit_scale", logit_scale=1.0),
        "qk_norm": model(qk_norm=True).without("qk_norm", drop=("q_norm", "k_norm")),
        "post_norms": model(post_norms=True).without("post_norms", drop=("attn_post_norm", "ffn_post_norm")),
        "gelu_tanh": model(ffn_activation="gelu_tanh").without("gelu_tanh", ffn_activation="silu"),
        "rope_dim_halves": model(rope_dim=10).without("rope_dim", rope_dim=0),
        "rope_dim_interleaved": model(rope_dim=6, rope_style="interleaved").without("rope_dim", rope_dim=0),
        "local_rope": model(layer_ropes=("local", "global", "local"), rope_theta_local=30.0)
        .without("local", layer_ropes=()),
        "no_rope": model(layer_ropes=("global", "none", "global")).without("none", layer_ropes=()),
        "windows": model(layer_windows=(4, 0, 6)).without("windows", layer_windows=()),
        "window_of_one": model(layer_windows=(1, 1, 1)).without("windows", layer_windows=()),
    }
    factor = model()
    factor.factor = 1.3
    cases["attn_factor"] = factor.without("attn_factor", factor=True)
    partial = model(rope_dim=12)
    partial.freqs = scaled_freqs(12, 10000.0, np.linspace(1, 6, 6))
    cases["rope_freqs_partial"] = partial.without("rope_freqs", freqs=True)
    # gates spread over +-10: GeGLU's far tails, where its SIMD form must keep its accuracy
    wide = model(ffn_activation="gelu_tanh")
    wide.t["w_gate"] = wide.t["w_gate"] * 6
    cases["gelu_tanh_wide"] = wide.without("gelu_tanh", ffn_activation="silu")
    return cases


def families() -> dict[str, Case]:
    hd = 16
    gemma2 = model(n_layers=4, post_norms=True, ffn_activation="gelu_tanh", embed_scale=48**0.5,
                   attn_scale=24**-0.5, attn_softcap=2.0, final_softcap=3.0, layer_windows=(5, 0, 5, 0), tied=True)
    gemma2.without("attn_softcap", attn_softcap=0.0).without("final_softcap", final_softcap=0.0)
    gemma2.without("windows", layer_windows=()).without("post_norms", drop=("attn_post_norm", "ffn_post_norm"))
    gemma2.without("gelu_tanh", ffn_activation="silu").without("embed_scale", embed_scale=1.0)
    gemma2.without("attn_scale", attn_scale=None)

    # 5 sliding layers (local RoPE base 10k) to 1 global (base 1M, linearly scaled by 8)
    gemma3 = model(n_layers=6, qk_norm=True, post_norms=True, ffn_activation="gelu_tanh", embed_scale=48**0.5,
                   attn_scale=hd**-0.5, rope_theta=1e6, rope_theta_local=10000.0,
                   layer_ropes=("local",) * 5 + ("global",), layer_windows=(4,) * 5 + (0,), tied=True)
    gemma3.freqs = scaled_freqs(hd, 1e6, np.full(hd // 2, 8.0))
    gemma3.without("qk_norm", drop=("q_norm", "k_norm")).without("windows", layer_windows=())
    gemma3.without("local_rope", layer_ropes=()).without("linear_scaling", freqs=True)

    qwen3 = model(qk_norm=True, rope_theta=1e6, tied=True).without("qk_norm", drop=("q_norm", "k_norm"))
    qwen3_untied = model(seed=2, qk_norm=True, rope_theta=1e6).without("qk_norm", drop=("q_norm", "k_norm"))

    # Phi-4-mini: 3/4 of each head rotated, LongRoPE factors and attention factor; Phi-3-mini's window
    phi = model(rope_dim=12, layer_windows=(7, 7, 7))
    phi.freqs, phi.factor = scaled_freqs(12, 10000.0, np.linspace(1, 3, 6)), 1.19
    phi.without("rope_dim", rope_dim=0, freqs=True).without("longrope", freqs=True)
    phi.without("attn_factor", factor=True).without("windows", layer_windows=())

    smollm3 = model(n_layers=4, layer_ropes=("global", "global", "global", "none"), tied=True)
    smollm3.without("no_rope", layer_ropes=())

    granite = model(embed_scale=6.0, attn_scale=1 / hd, residual_scale=0.22, logit_scale=1 / 8)
    granite.without("embed_scale", embed_scale=1.0).without("attn_scale", attn_scale=None)
    granite.without("residual_scale", residual_scale=1.0).without("logit_scale", logit_scale=1.0)

    mistral = model(layer_windows=(6, 6, 6)).without("windows", layer_windows=())
    return {"gemma2": gemma2, "gemma3": gemma3, "qwen3": qwen3, "qwen3_untied": qwen3_untied, "phi": phi,
            "smollm3": smollm3, "granite": granite, "mistral": mistral}


CASES = {**options_alone(), **families()}
# Options whose effect vanishes, checked against the oracle only: caps far above the scores and logits make
# soft-capping the identity, which the SIMD forms must keep (tanh's cancellation near 0 once made every logit
# under a cap of 1e6 exactly 0)
IDENTITIES = {"huge_softcaps": model(attn_scale=1.0, attn_softcap=1e4, final_softcap=1e6)}
WINDOWED = sorted(name for name, case in CASES.items() if any(case.cfg.layer_windows))


@pytest.fixture
def engine_for(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201 (a factory)
    """Engines for a Case: the case's global RoPE table is what the engine gets from llmrun.rope."""
    made: list[Engine] = []

    def make(case: Case, n_batch: int = 3, isa: str | None = None, n_ctx: int = N_CTX, n_threads: int = 2) -> Engine:
        monkeypatch.setattr(llmrun.engine, "rope_tables", lambda spec, n: (case.freqs, case.factor))
        made.append(Engine(spec_from_tensors(case.cfg, case.t), n_ctx=n_ctx, n_threads=n_threads, isa=isa,
                           n_batch=n_batch))
        return made[-1]

    yield make
    for engine in made:
        engine.close()


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def assert_close(got: np.ndarray, want: np.ndarray) -> None:
    err = relative_error(got, want)
    assert err <= RTOL, f"max abs error is {err:.2e} of the logits' scale (allowed {RTOL:.0e})"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n_batch", [1, 3, 64])
@pytest.mark.parametrize("name", sorted({**CASES, **IDENTITIES}))
def test_logits_match_oracle(name: str, n_batch: int, isa: str, engine_for) -> None:  # noqa: ANN001
    """The whole prompt (evaluate_all) in batches of 1, of 3 (batches wrap the windowed layers' rings) and of
    the whole context (rings as long as the context)."""
    case = {**CASES, **IDENTITIES}[name]
    assert_close(engine_for(case, n_batch=n_batch, isa=isa).evaluate_all(TOKENS), case.oracle(TOKENS))


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_option_matters(name: str) -> None:
    """With its option off, each model's logits move by far more than the tolerance: the comparisons above
    would catch a C pass that ignored it."""
    case = CASES[name]
    assert case.off, name
    want = case.oracle(TOKENS)
    for option, other in case.off.items():
        assert relative_error(other.oracle(TOKENS), want) > 100 * RTOL, f"{name} without {option}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("name", WINDOWED)
def test_decode_past_the_window(name: str, isa: str, engine_for) -> None:  # noqa: ANN001
    """A prompt, then a token at a time (evaluate: the last position's logits) far past the windows."""
    case = CASES[name]
    want = case.oracle(TOKENS)
    engine = engine_for(case, n_batch=3, isa=isa)
    assert_close(engine.evaluate(TOKENS[:8]), want[7])
    for i in range(8, len(TOKENS)):
        assert_close(engine.evaluate(TOKENS[: i + 1]), want[i])
    assert engine.tokens_computed == len(TOKENS)  # each position once: the cache was reused every step


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
def test_activation_kernels_are_accurate(activation: str, isa: str) -> None:
    """Each level's SwiGLU / GeGLU step against float64 on gates over [-12, 12]: within 1e-6 relative (the
    scalar GeGLU, computed in double, within 1e-7). A float32 GeGLU computes e^(-2u) of a float32 argument 2u,
    whose rounding (2^-24 of |2u|) the exponential turns into a relative error |2u| times as large: the SIMD
    levels are held to 1e-6 plus 4 such roundings (that is 1e-6 up to gate -3, 2e-5 of a result below 1e-30 at
    gate -10). Below 1e-36 (gates under -10) an absolute floor, where floats underflow anyway."""
    rng = np.random.default_rng(3)
    gate = np.concatenate([np.linspace(-12, 12, 2001), rng.uniform(-12, 12, 999)]).astype(np.float32)
    up = rng.uniform(-2, 2, gate.size).astype(np.float32)
    x, u = gate.astype(np.float64), up.astype(np.float64)
    if activation == "gelu_tanh":
        # 0.5 x (1 + tanh(v)) as x / (1 + e^(-2v)): the same function, but 1 + tanh(v) cancels to nothing in
        # float64 too for x below -5 (checked against the tanh form where that one is well conditioned)
        v2 = 2 * np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)
        act = x / (1 + np.exp(-v2))
        tanh_form = 0.5 * x * (1 + np.tanh(v2 / 2))
        assert np.allclose(act[x > -3], tanh_form[x > -3], rtol=1e-12, atol=0)
        allowed = 1e-7 if isa == "scalar" else 1e-6 + np.abs(v2) * 2.0**-22
    else:
        act, allowed = x / (1 + np.exp(-x)), 1e-6
    want = act * u
    got = gate.copy()
    code = lib.LLM_FFN_GELU_TANH if activation == "gelu_tanh" else lib.LLM_FFN_SILU
    assert lib.llm_ffn_activate(code, llmrun.engine.ISA_NAMES[isa], ffi.from_buffer("float[]", got),
                                ffi.from_buffer("float[]", up), got.size) == 0
    err = np.abs(got - want) / (allowed * np.abs(want) + 1e-36)
    assert err.max() <= 1, f"{activation} on {isa}: {err.max():.2f} of the bound at gate {gate[err.argmax()]}"
    assert lib.llm_ffn_activate(7, lib.LLM_ISA_SCALAR, ffi.from_buffer("float[]", got),
                                ffi.from_buffer("float[]", up), got.size) == lib.LLM_ERR_INVALID


def test_window_beyond_the_context_is_full_attention(engine_for) -> None:  # noqa: ANN001
    """A window at least as long as the context never masks anything: the layer attends to everything and keeps
    a row per position, as without a window (not an error: a 4096 window with n_ctx 2048 is ordinary)."""
    wide, full = model(layer_windows=(1000, N_CTX, 2**31 - 1)), model()
    assert_close(engine_for(wide).evaluate_all(TOKENS), full.oracle(TOKENS))
    assert context_bytes(wide.cfg, N_CTX, 3, 2) == context_bytes(full.cfg, N_CTX, 3, 2)


# --- the resume rule ----------------------------------------------------------------------------------------

LONG = [int(i) for i in np.random.default_rng(8).integers(0, 64, size=80)]


def windowed(window: int = 4) -> Case:
    return model(layer_windows=(window, 0, window), max_seq_len=128)


def test_resume_min_follows_the_blocks(engine_for) -> None:  # noqa: ANN001
    """Window 4: after each batch the windowed layers give back the blocks of 32 positions whose every position is
    below length - 3. After 34 positions they hold everything; after 35 block 0 (0..31) goes, so a forward may
    continue from 35 on (its window reaches back to 32); after 67 block 1 goes too (from 67 on). A model without
    windows may continue anywhere."""
    engine = engine_for(windowed(), n_batch=3, n_ctx=128)
    assert lib.llm_seq_resume_min(engine._ctx, 0) == 0
    engine.evaluate(LONG[:34])
    assert lib.llm_seq_resume_min(engine._ctx, 0) == 0  # nothing dropped yet
    engine.evaluate(LONG[:35])
    assert lib.llm_seq_resume_min(engine._ctx, 0) == 35
    engine.evaluate(LONG[:66])
    assert lib.llm_seq_resume_min(engine._ctx, 0) == 35
    engine.evaluate(LONG[:67])
    assert lib.llm_seq_resume_min(engine._ctx, 0) == 67
    plain = engine_for(model(), n_batch=3)
    plain.evaluate(TOKENS)
    assert lib.llm_seq_resume_min(plain._ctx, 0) == 0


def test_prefix_reuse_after_the_blocks_were_dropped(engine_for) -> None:  # noqa: ANN001
    """A shorter shared prefix than the windowed layers can continue is not reused: the engine starts over, and the
    logits are those of the text computed from scratch; a prefix they can continue is reused."""
    case = windowed()
    engine = engine_for(case, n_batch=3, n_ctx=128)
    engine.evaluate(LONG[:70])  # the windowed layers hold 64.. : continue from 67 on
    other = LONG[:40] + [1, 2, 3]
    assert engine.reusable_prefix(other) == 0
    computed = engine.tokens_computed
    assert_close(engine.evaluate(other), case.oracle(other)[-1])
    assert engine.tokens_computed - computed == len(other)  # from scratch

    engine.evaluate(LONG[:70])
    near = LONG[:68] + [5]
    assert engine.reusable_prefix(near) == 68
    computed = engine.tokens_computed
    assert_close(engine.evaluate(near), case.oracle(near)[-1])
    assert engine.tokens_computed - computed == 1
    # Rewriting position 68 did not bring back what was dropped before: 66 still cannot be continued
    back = LONG[:66] + [9, 9]
    assert engine.reusable_prefix(back) == 0
    assert_close(engine.evaluate(back), case.oracle(back)[-1])

    # evaluate_all keeps rows it returned, and recomputes what the windowed layers cannot continue
    engine.evaluate_all(LONG[:70])
    assert_close(engine.evaluate_all(other), case.oracle(other))
    assert_close(engine.evaluate_all(LONG[:12]), case.oracle(LONG[:12]))


def test_c_refuses_a_dropped_or_missing_position(engine_for) -> None:  # noqa: ANN001
    engine = engine_for(windowed(), n_batch=3, n_ctx=128)
    engine.evaluate(LONG[:70])
    logits = ffi.new("float[]", 64)
    one = ffi.new("int32_t[]", [1])
    assert lib.llm_forward(engine._ctx, one, 1, 5, logits, 0) == lib.LLM_ERR_INVALID
    message = ffi.string(lib.llm_last_error(engine._ctx)).decode()
    assert "position 5 needs keys that the sliding-window layers' caches have dropped" in message
    assert "continue from position 67" in message
    assert lib.llm_forward(engine._ctx, one, 1, 71, logits, 0) == lib.LLM_ERR_INVALID  # a gap after 0..69
    assert "past the cache" in ffi.string(lib.llm_last_error(engine._ctx)).decode()
    for pos in (67, 68, 0):  # continuing within what is held, at the end (0..67 now), or starting over
        assert lib.llm_forward(engine._ctx, one, 1, pos, logits, 0) == 0
    engine.reset()


# --- memory ---------------------------------------------------------------------------------------------

def test_windowed_layers_cost_window_memory() -> None:
    """A windowed layer's pool holds ceil((window + n_batch - 1) / 32) + 2 blocks of 32 positions per sequence,
    whatever the context: the count llm_ctx_bytes gives (and load checks against the machine's memory) drops by the
    positions saved, less the second layer group's block tables and free list (a few KiB)."""
    n_ctx, n_batch, window = 32768, 512, 1024
    full = model(n_layers=6).cfg
    sliding = replace(full, layer_windows=(window,) * 5 + (0,))
    blocks = -(-(window + n_batch - 1) // 32) + 2
    saved = 5 * (n_ctx - 32 * blocks) * 2 * full.kv_dim * 4  # keys and values, float32
    overhead = context_bytes(full, n_ctx, n_batch, 2) - context_bytes(sliding, n_ctx, n_batch, 2) - saved
    assert -16384 < overhead <= 0
    all_sliding = replace(full, layer_windows=(window,) * 6)  # what remains is mostly the RoPE tables
    assert context_bytes(all_sliding, n_ctx, n_batch, 2) < context_bytes(full, n_ctx, n_batch, 2) / 8
    # with 4 sequences the windowed pool holds 4 times as much, still far below the full one
    assert context_bytes(all_sliding, n_ctx, n_batch, 2, n_seq=4) < context_bytes(full, n_ctx, n_batch, 2) / 4


# --- refusals -------------------------------------------------------------------------------------------

BAD_OPTIONS = [
    ({"attn_softcap": -1.0}, "attn_softcap is -1; it must be finite and >= 0"),
    ({"final_softcap": float("nan")}, "final_softcap is nan"),
    ({"final_softcap": 1e-40}, r"soft-caps 0 \(attention\) and [0-9.e-]+ \(final\) must be 0 or at least"),
    ({"embed_scale": float("inf")}, "embed_scale is inf"),
    ({"logit_scale": -0.5}, "logit_scale is -0.5"),
    ({"residual_scale": -1.0}, "residual_scale is -1"),
    ({"attn_scale": -0.1}, "attn_scale is -0.1"),
    ({"layer_windows": (4, -3, 0)}, r"layer_windows\[1\] is -3"),
    ({"rope_dim": 7}, "rope_dim 7 .head_dim 16.: RoPE rotates an even number"),
    ({"rope_dim": 18}, "rope_dim 18"),
    ({"rope_dim": -2}, "rope_dim -2"),
    ({"layer_ropes": ("global", "local", "global")}, "layer 1 uses the local RoPE table, whose base "
                                                     "rope_theta_local 0 must be finite and > 0"),
    ({"layer_ropes": ("local",) * 3, "rope_theta_local": float("inf")}, "rope_theta_local inf"),
    ({"layer_ropes": ("global", "sideways", "none")}, "layer_ropes 'sideways' is not one of global, local, none"),
    ({"layer_ropes": ("global",) * 4}, "layer_ropes has 4 entries for 3 layers"),  # longer than the layers
    ({"layer_windows": (4, 4)}, "layer_windows has 2 entries for 3 layers"),
    ({"layer_windows": (4, 2**31, 4)}, "each window must be an int32"),
    ({"ffn_activation": "relu"}, "ffn_activation 'relu' is not one of silu, gelu_tanh"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_options_are_refused(options: dict, message: str) -> None:
    case = model()
    with pytest.raises(KernelError, match=message):
        Engine(spec_from_tensors(replace(case.cfg, **options), case.t), n_ctx=8, n_threads=1)
    assert context_bytes(replace(case.cfg, **options), 8, 1, 1) is None  # nothing counted for a bad config


def test_bad_attention_factor_is_refused(engine_for) -> None:  # noqa: ANN001
    case = model()
    case.factor = -1.0
    with pytest.raises(KernelError, match="rope_attn_factor is -1"):
        engine_for(case)


@pytest.mark.parametrize(("name", "shape", "message"), [
    ("q_norm", (3, 15), "layer 0 q_norm: shape .1, 15., expected .1, 16."),
    ("k_norm", (3, 48), "layer 0 k_norm: shape"),
    ("attn_post_norm", (3, 16), "layer 0 attn_post_norm: shape .1, 16., expected .1, 48."),
    ("ffn_post_norm", (3, 47), "layer 0 ffn_post_norm: shape"),
])
def test_bad_optional_tensors_are_refused(name: str, shape: tuple[int, int], message: str) -> None:
    case = model(qk_norm=True, post_norms=True)
    case.t[name] = np.ones(shape, dtype=np.float32)
    with pytest.raises(KernelError, match=message):
        Engine(spec_from_tensors(case.cfg, case.t), n_ctx=8, n_threads=1)
    case = model(qk_norm=True)
    spec = spec_from_tensors(case.cfg, case.t)
    spec.layers[1].k_norm.data = spec.layers[1].k_norm.data.astype(np.float16)
    spec.layers[1].k_norm.type = "f16"
    with pytest.raises(KernelError, match="layer 1 k_norm: unsupported type 1"):
        Engine(spec, n_ctx=8, n_threads=1)


def test_c_checks_the_option_codes_itself() -> None:
    """Values Python never sends (it maps names) are still refused by the C library, with a message."""
    config, _keep = llmrun.engine._c_config(model().cfg, "test")
    params = ffi.new("llm_ctx_params *", {"n_ctx": 8, "n_batch": 1, "n_threads": 1, "isa": lib.LLM_ISA_AUTO})
    err = ffi.new("char[]", 256)
    out = ffi.new("llm_ctx **")
    weights = ffi.new("llm_weights *")  # never looked at: the config is checked first
    for field_name, values, message in [
        ("layer_ropes", [0, 7, 0], "layer_ropes[1] is 7, not an llm_layer_rope"),
        ("layer_ropes", [0, -1, 0], "layer_ropes[1] is -1"),
        ("layer_windows", [0, 0, -5], "layer_windows[2] is -5"),
    ]:
        array = ffi.new("int32_t[]", values)
        setattr(config, field_name, array)
        assert lib.llm_ctx_bytes(config, params) == lib.LLM_ERR_INVALID
        assert lib.llm_create(config, weights, params, out, err, len(err)) == lib.LLM_ERR_INVALID
        assert ffi.string(err).decode().startswith(message)
        setattr(config, field_name, ffi.NULL)
    config.ffn_activation = 5
    assert lib.llm_create(config, weights, params, out, err, len(err)) == lib.LLM_ERR_INVALID
    assert ffi.string(err).decode() == "unknown ffn_activation 5"
