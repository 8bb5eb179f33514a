"""RoPE tables: the rotation frequency of each dimension pair, for a model and a context length.

The format readers record how a model scales RoPE (spec.rope_scaling, a RopeScaling); this module is the
one place that turns that into numbers, for the engine (the C library gets the frequencies and multiplies
cos and sin by the attention factor) and for the GGUF writer (llama.cpp's per-pair divisors).

The numbers are transformers' (modeling_rope_utils.py), computed the way it computes them: float32 inverse
frequencies from float32 powers, the scaling rules in float32, the correction range of YaRN in double
precision. llama.cpp's ggml computes the same rules (its YaRN ramp, corr dims and mscale agree with
transformers' truncated YaRN), up to float rounding.

LongRoPE picks its short or long factors once, by the context length the engine is created with
(n_ctx > original context: long), as llama.cpp does with its context size. transformers picks them on each
forward by the current sequence length (the largest position + 1), so it uses the short factors for a
short prompt even in a model loaded for a long context: llmrun and transformers agree when the context
and the sequence are on the same side of the original context.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ModelFormatError
from .spec import ModelSpec, RopeScaling

_F32 = np.float32
MAX_ATTENTION_FACTOR = 1e6  # cos and sin times more than this is no model's (and overflows the scores)


def plain_frequencies(theta: float, rotary_dim: int) -> np.ndarray:
    """(rotary_dim / 2,) float32: theta ** (-2j / rotary_dim), as transformers computes its default inv_freq."""
    exponents = np.arange(0, rotary_dim, 2, dtype=_F32) / _F32(rotary_dim)
    return (_F32(1.0) / (_F32(theta) ** exponents)).astype(_F32)


def rope_tables(spec: ModelSpec, n_ctx: int) -> tuple[np.ndarray | None, float]:
    """The global RoPE table of `spec` for a context of n_ctx positions: (rotary_dim / 2,) float32 frequencies
    in radians per position, None for plain RoPE (rope_theta ** (-2j / rotary_dim)), and the factor that
    multiplies cos and sin (1.0 but for YaRN and LongRoPE)."""
    scaling = spec.rope_scaling
    if scaling is None:
        return None, 1.0
    cfg = spec.config
    return scaled_frequencies(scaling, cfg.rope_theta, cfg.rotary_dim, n_ctx, where=str(spec.path))


def scaled_frequencies(s: RopeScaling, theta: float, rotary_dim: int, n_ctx: int, where: str = "model"
                       ) -> tuple[np.ndarray, float]:
    """(frequencies, attention factor) of scaling `s` on RoPE of base theta over rotary_dim dims."""
    pairs = rotary_dim // 2
    plain = plain_frequencies(theta, rotary_dim)

    def per_pair(name: str, values: tuple[float, ...]) -> np.ndarray:
        out = np.asarray(values, dtype=_F32)
        if out.shape != (pairs,) or not np.all(np.isfinite(out) & (out > 0)):
            raise ModelFormatError(f"{where}: RoPE scaling {s.kind} {name} must hold {pairs} positive numbers "
                                   f"(rotary dims / 2), got {len(values)}")
        return out

    if s.kind == "linear":
        return (plain / _F32(s.factor)).astype(_F32), 1.0
    if s.kind == "divisors":  # checked by the reader (GGUF rope_freqs); the C library refuses non-finite results
        divisors = np.asarray(s.divisors, dtype=_F32)
        if divisors.shape != (pairs,):
            raise ModelFormatError(f"{where}: RoPE divisors must hold {pairs} numbers (rotary dims / 2), got "
                                   f"{len(divisors)}")
        with np.errstate(divide="ignore", invalid="ignore"):
            return (plain / _F32(s.factor) / divisors).astype(_F32), 1.0
    if s.kind == "llama3":
        return _llama3(s, plain), 1.0
    if s.kind == "yarn":
        return _yarn(s, theta, rotary_dim)
    if s.kind == "longrope":
        long = n_ctx > s.original_context
        factors = per_pair("long_factor" if long else "short_factor", s.long_factor if long else s.short_factor)
        # transformers: 1 / (ext_factors * base ** (2j / dim)) -- the same float32 power as plain's
        base_pow = (_F32(theta) ** (np.arange(0, rotary_dim, 2, dtype=_F32) / _F32(rotary_dim))).astype(_F32)
        freqs = (_F32(1.0) / (factors * base_pow)).astype(_F32)
        attn = s.attention_factor
        if attn is None:
            attn = 1.0 if s.factor <= 1.0 else math.sqrt(1 + math.log(s.factor) / math.log(s.original_context))
        return freqs, float(attn)
    raise ModelFormatError(f"{where}: RoPE scaling kind {s.kind!r} is not supported")


def scaling_problem(s: RopeScaling, theta: float, rotary_dim: int) -> tuple[str, str] | None:
    """(field, why) for the first value of scaling `s` ("theta": the RoPE base) that would make its tables
    non-finite (or its attention factor no model's), None when they are sound: the readers check with it at
    load time and name their own key for the field, so that such a value never reaches the arithmetic above
    (ZeroDivisionError, OverflowError) or the C library (inf)."""
    if s.kind == "yarn":
        if not theta > 1:  # the correction range divides by ln(theta)
            return "theta", "must be greater than 1 for YaRN (its correction range divides by ln(theta))"
        for name in ("beta_fast", "beta_slow"):
            try:
                dim = _yarn_dim(s, getattr(s, name), theta, rotary_dim)
            except (OverflowError, ValueError, ZeroDivisionError):
                dim = math.inf
            if not math.isfinite(dim):
                return name, "gives an infinite YaRN correction range"
    if s.kind == "longrope" and s.original_context < 2:  # its default attention factor divides by ln(context)
        return "original_context", "must be at least 2 for LongRoPE"
    # the field whose values divide the frequencies: LongRoPE's short or long factors (by context), GGUF's
    # divisors, else the factor
    contexts = {"short_factor": s.original_context, "long_factor": s.original_context + 1} if s.kind == "longrope" \
        else {"divisors" if s.kind == "divisors" else "factor": 1}
    for field, n_ctx in contexts.items():
        with np.errstate(all="ignore"):
            try:
                freqs, attn = scaled_frequencies(s, theta, rotary_dim, n_ctx)
            except (OverflowError, ValueError, ZeroDivisionError):
                return field, "gives non-finite RoPE frequencies"
        if not np.all(np.isfinite(freqs)):
            return field, "gives non-finite RoPE frequencies"
        if not (math.isfinite(attn) and 0 < attn <= MAX_ATTENTION_FACTOR):
            return "attention_factor", f"gives an attention factor of {attn:g} (expected 0..{MAX_ATTENTION_FACTOR:g})"
    return None


def _llama3(s: RopeScaling, inv_freq: np.ndarray) -> np.ndarray:
    """transformers' _compute_llama3_parameters."""
    factor, low, high, old_ctx = s.factor, s.low_freq_factor, s.high_freq_factor, s.original_context
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    wavelen = _F32(2 * math.pi) / inv_freq
    scaled = np.where(wavelen > low_wavelen, inv_freq / _F32(factor), inv_freq).astype(_F32)
    smooth = ((_F32(old_ctx) / wavelen - _F32(low)) / _F32(high - low)).astype(_F32)
    smoothed = (1 - smooth) * scaled / _F32(factor) + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(_F32)


def _yarn_dim(s: RopeScaling, rotations: float, theta: float, rotary_dim: int) -> float:
    """The (fractional) dimension pair that turns `rotations` times within the original context."""
    return rotary_dim * math.log(s.original_context / (rotations * 2 * math.pi)) / (2 * math.log(theta))


def yarn_correction_range(s: RopeScaling, theta: float, rotary_dim: int) -> tuple[float, float]:
    """The dimension pairs between which YaRN blends: where `beta_fast` and `beta_slow` rotations fit in the
    original context (transformers' find_correction_range; ggml's rope_yarn_corr_dims when truncated)."""
    low, high = _yarn_dim(s, s.beta_fast, theta, rotary_dim), _yarn_dim(s, s.beta_slow, theta, rotary_dim)
    if s.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, rotary_dim - 1)


def yarn_mscale(factor: float) -> float:
    """YaRN's default attention factor: 0.1 ln(factor) + 1 (1 for factor <= 1)."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def _yarn(s: RopeScaling, theta: float, rotary_dim: int) -> tuple[np.ndarray, float]:
    """transformers' _compute_yarn_parameters."""
    pos_freqs = (_F32(theta) ** (np.arange(0, rotary_dim, 2, dtype=_F32) / _F32(rotary_dim))).astype(_F32)
    extrapolated = (_F32(1.0) / pos_freqs).astype(_F32)
    interpolated = (_F32(1.0) / (_F32(s.factor) * pos_freqs)).astype(_F32)
    low, high = yarn_correction_range(s, theta, rotary_dim)
    if low == high:
        high += 0.001  # transformers' guard against a zero-width ramp (ggml: a width of at least 0.001)
    ramp = np.clip((np.arange(rotary_dim // 2, dtype=_F32) - _F32(low)) / _F32(high - low), 0, 1).astype(_F32)
    keep = (_F32(1) - ramp).astype(_F32)  # the share of each pair's plain (extrapolated) frequency
    freqs = (interpolated * (_F32(1) - keep) + extrapolated * keep).astype(_F32)
    attn = s.attention_factor if s.attention_factor is not None else yarn_mscale(s.factor)
    return freqs, float(attn)


def rope_divisors(spec: ModelSpec, n_ctx: int) -> np.ndarray | None:
    """The scaled table of `spec` as the factors that divide plain RoPE's frequencies (llama.cpp's GGUF
    `rope_freqs.weight`), None for plain RoPE."""
    freqs, _ = rope_tables(spec, n_ctx)
    if freqs is None:
        return None
    plain = plain_frequencies(spec.config.rope_theta, spec.config.rotary_dim)
    return (plain / freqs).astype(_F32)
