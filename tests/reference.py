"""An independent numpy implementation of the Llama forward pass and its families' options: the oracle for
the C code.

It is written differently on purpose: the whole sequence at once in float64, causal attention with a
mask instead of a KV cache (a sliding window is more of the mask, not a ring), RoPE as complex
multiplication, K/V heads repeated for grouped-query attention. Agreement with the C kernels therefore
means the math is right, not that two copies of the same loop agree.
"""

from __future__ import annotations

import numpy as np

from llmrun.spec import ModelConfig


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float, style: str, freqs: np.ndarray | None = None,
         rotary_dim: int | None = None, factor: float = 1.0) -> np.ndarray:
    """x: (n, heads, head_dim). Rotates pairs of the first `rotary_dim` dimensions (default: all) by
    position-dependent angles and leaves the rest as they are (partial rotary); `freqs` (rotary_dim/2,)
    replaces the default frequencies theta^(-2j/rotary_dim) where a model rescales them. `factor` multiplies
    the rotation (YaRN's and LongRoPE's attention factor: |e^(i angle)| becomes factor)."""
    rd = rotary_dim or x.shape[-1]
    if freqs is None:
        freqs = theta ** (-np.arange(0, rd, 2) / rd)  # (rd/2,)
    rot = factor * np.exp(1j * np.outer(positions, freqs))[:, None, :]  # (n, 1, rd/2)
    part, rest = x[..., :rd], x[..., rd:]
    if style == "interleaved":
        z = (part[..., 0::2] + 1j * part[..., 1::2]) * rot
        out = np.empty_like(part)
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
    else:
        z = (part[..., : rd // 2] + 1j * part[..., rd // 2:]) * rot
        out = np.concatenate([z.real, z.imag], axis=-1)
    return np.concatenate([out, rest], axis=-1)


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU's tanh approximation, as Gemma's "gelu_pytorch_tanh" writes it."""
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def softcap(x: np.ndarray, cap: float) -> np.ndarray:
    return cap * np.tanh(x / cap) if cap else x


def attention_mask(n: int, window: int) -> np.ndarray:
    """(n, n) additive mask: query i sees keys j <= i, and with a window only the `window` latest of them
    (j > i - window: the window counts the query's own position)."""
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    visible = (j <= i) & ((j > i - window) if window else True)
    return np.where(visible, 0.0, -np.inf)


def forward(cfg: ModelConfig, t: dict[str, np.ndarray], tokens: list[int], rope_freqs: np.ndarray | None = None,
            attn_factor: float = 1.0, hidden: bool = False) -> np.ndarray:
    """Logits (len(tokens), vocab) after each position, for weights named as in tests/builders.py (with
    optional q/k/v biases "bq", "bk", "bv" of shape (n_layers, rows), QK-norm weights "q_norm", "k_norm"
    (n_layers, head_dim) and norms after the blocks "attn_post_norm", "ffn_post_norm" (n_layers, dim)), and
    every family option of `cfg` (the per-layer RoPE tables and windows, soft-caps, scales, GeGLU).
    `rope_freqs` and `attn_factor` make the global RoPE table (local layers: plain, of base rope_theta_local).
    With `hidden`, the final hidden states (len(tokens), dim) after the final norm instead (embeddings)."""
    freqs = None if rope_freqs is None else np.asarray(rope_freqs, dtype=np.float64)
    w = {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}
    n, hd, rd = len(tokens), cfg.head_dim, cfg.rotary_dim
    pos = np.arange(n)
    scale = 1 / np.sqrt(hd) if cfg.attn_scale is None else cfg.attn_scale
    x = w["token_embd"][tokens] * cfg.embed_scale
    for layer in range(cfg.n_layers):
        h = rmsnorm(x, w["attn_norm"][layer], cfg.norm_eps)
        q, k, v = (h @ w[name][layer].T + (w["b" + name[1]][layer] if "b" + name[1] in w else 0.0)
                   for name in ("wq", "wk", "wv"))
        q, k, v = q.reshape(n, cfg.n_heads, hd), k.reshape(n, cfg.n_kv_heads, hd), v.reshape(n, cfg.n_kv_heads, hd)
        if "q_norm" in w:  # each head normed on its own
            q, k = rmsnorm(q, w["q_norm"][layer], cfg.norm_eps), rmsnorm(k, w["k_norm"][layer], cfg.norm_eps)
        kind = cfg.layer_ropes[layer] if cfg.layer_ropes else "global"
        if kind == "global":
            q = rope(q, pos, cfg.rope_theta, cfg.rope_style, freqs, rd, attn_factor)
            k = rope(k, pos, cfg.rope_theta, cfg.rope_style, freqs, rd, attn_factor)
        elif kind == "local":
            q = rope(q, pos, cfg.rope_theta_local, cfg.rope_style, None, rd)
            k = rope(k, pos, cfg.rope_theta_local, cfg.rope_style, None, rd)
        group = cfg.n_heads // cfg.n_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        window = cfg.layer_windows[layer] if cfg.layer_windows else 0
        scores = softcap(np.einsum("qhd,khd->hqk", q, k) * scale, cfg.attn_softcap) + attention_mask(n, window)
        att = np.exp(scores - scores.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", att, v).reshape(n, cfg.n_heads * hd) @ w["wo"][layer].T
        if "attn_post_norm" in w:
            out = rmsnorm(out, w["attn_post_norm"][layer], cfg.norm_eps)
        x = x + cfg.residual_scale * out
        h = rmsnorm(x, w["ffn_norm"][layer], cfg.norm_eps)
        gate, up = h @ w["w_gate"][layer].T, h @ w["w_up"][layer].T
        act = gelu_tanh(gate) if cfg.ffn_activation == "gelu_tanh" else gate / (1 + np.exp(-gate))
        out = (act * up) @ w["w_down"][layer].T
        if "ffn_post_norm" in w:
            out = rmsnorm(out, w["ffn_post_norm"][layer], cfg.norm_eps)
        x = x + cfg.residual_scale * out
    x = rmsnorm(x, w["output_norm"], cfg.norm_eps)
    if hidden:
        return x
    return softcap(x @ w.get("output", w["token_embd"]).T * cfg.logit_scale, cfg.final_softcap)
