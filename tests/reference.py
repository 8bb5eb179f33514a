"""An independent numpy implementation of the Llama forward pass: the oracle for the C code.

It is written differently on purpose: the whole sequence at once in float64, causal attention with a
mask instead of a KV cache, RoPE as complex multiplication, K/V heads repeated for grouped-query
attention. Agreement with the C kernels therefore means the math is right, not that two copies of the
same loop agree.
"""

from __future__ import annotations

import numpy as np

from llmrun.spec import ModelConfig


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rope(x: np.ndarray, positions: np.ndarray, theta: float, style: str, freqs: np.ndarray | None = None
         ) -> np.ndarray:
    """x: (n, heads, head_dim). Rotates pairs of dimensions by position-dependent angles; `freqs` (hd/2,)
    replaces the default frequencies theta^(-2j/hd) where a model rescales them."""
    hd = x.shape[-1]
    if freqs is None:
        freqs = theta ** (-np.arange(0, hd, 2) / hd)  # (hd/2,)
    rot = np.exp(1j * np.outer(positions, freqs))[:, None, :]  # (n, 1, hd/2)
    if style == "interleaved":
        z = (x[..., 0::2] + 1j * x[..., 1::2]) * rot
        out = np.empty_like(x)
        out[..., 0::2], out[..., 1::2] = z.real, z.imag
        return out
    z = (x[..., : hd // 2] + 1j * x[..., hd // 2:]) * rot
    return np.concatenate([z.real, z.imag], axis=-1)


def forward(cfg: ModelConfig, t: dict[str, np.ndarray], tokens: list[int], rope_freqs: np.ndarray | None = None
            ) -> np.ndarray:
    """Logits (len(tokens), vocab) after each position, for weights named as in tests/builders.py (with
    optional q/k/v biases "bq", "bk", "bv" of shape (n_layers, rows))."""
    freqs = None if rope_freqs is None else np.asarray(rope_freqs, dtype=np.float64)
    w = {k: np.asarray(v, dtype=np.float64) for k, v in t.items()}
    n, hd = len(tokens), cfg.head_dim
    pos = np.arange(n)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    x = w["token_embd"][tokens]
    for layer in range(cfg.n_layers):
        h = rmsnorm(x, w["attn_norm"][layer], cfg.norm_eps)
        q, k, v = (h @ w[name][layer].T + (w["b" + name[1]][layer] if "b" + name[1] in w else 0.0)
                   for name in ("wq", "wk", "wv"))
        q, k, v = q.reshape(n, cfg.n_heads, hd), k.reshape(n, cfg.n_kv_heads, hd), v.reshape(n, cfg.n_kv_heads, hd)
        q = rope(q, pos, cfg.rope_theta, cfg.rope_style, freqs)
        k = rope(k, pos, cfg.rope_theta, cfg.rope_style, freqs)
        group = cfg.n_heads // cfg.n_kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + mask
        att = np.exp(scores - scores.max(axis=-1, keepdims=True))
        att /= att.sum(axis=-1, keepdims=True)
        out = np.einsum("hqk,khd->qhd", att, v).reshape(n, cfg.n_heads * hd)
        x = x + out @ w["wo"][layer].T
        h = rmsnorm(x, w["ffn_norm"][layer], cfg.norm_eps)
        gate, up = h @ w["w_gate"][layer].T, h @ w["w_up"][layer].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w["w_down"][layer].T
    x = rmsnorm(x, w["output_norm"], cfg.norm_eps)
    return x @ w.get("output", w["token_embd"]).T
