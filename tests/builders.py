"""Small random models for tests: weights as plain numpy arrays, as in-memory ModelSpecs or as files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from llmrun.formats.llama2c import write_llama2c
from llmrun.rope import plain_frequencies
from llmrun.spec import LayerWeights, ModelConfig, ModelSpec, RopeScaling, Tensor


def make_config(dim: int = 64, hidden_dim: int = 172, n_layers: int = 2, n_heads: int = 8, n_kv_heads: int = 4,
                vocab_size: int = 96, max_seq_len: int = 64, head_dim: int | None = None,
                rope_theta: float = 10000.0, rope_style: str = "interleaved", norm_eps: float = 1e-5
                ) -> ModelConfig:
    return ModelConfig(dim=dim, hidden_dim=hidden_dim, n_layers=n_layers, n_heads=n_heads, n_kv_heads=n_kv_heads,
                       head_dim=head_dim or dim // n_heads, vocab_size=vocab_size, max_seq_len=max_seq_len,
                       rope_theta=rope_theta, norm_eps=norm_eps, rope_style=rope_style)


def random_tensors(cfg: ModelConfig, seed: int = 0, tied: bool = True) -> dict[str, np.ndarray]:
    """float32 weights scaled so activations stay O(1) and logits are far from uniform."""
    rng = np.random.default_rng(seed)
    L, d, h = cfg.n_layers, cfg.dim, cfg.hidden_dim

    def mat(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) / np.sqrt(shape[-1])).astype(np.float32)

    def norm(*shape: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)

    t = {
        "token_embd": rng.standard_normal((cfg.vocab_size, d)).astype(np.float32),
        "attn_norm": norm(L, d), "wq": mat(L, cfg.q_dim, d), "wk": mat(L, cfg.kv_dim, d),
        "wv": mat(L, cfg.kv_dim, d), "wo": mat(L, d, cfg.q_dim), "ffn_norm": norm(L, d),
        "w_gate": mat(L, h, d), "w_down": mat(L, d, h), "w_up": mat(L, h, d), "output_norm": norm(d),
    }
    if not tied:
        t["output"] = mat(cfg.vocab_size, d) * 4
    return t


def spec_from_tensors(cfg: ModelConfig, t: dict[str, np.ndarray], rope_freqs: np.ndarray | None = None
                      ) -> ModelSpec:
    """An in-memory ModelSpec (no file), for configs llama2.c files cannot express (the optional layer tensors
    "bq", "bk", "bv", "q_norm", "k_norm", "attn_post_norm", "ffn_post_norm" where t has them, rescaled RoPE
    frequencies, the family options of cfg)."""
    layers = [LayerWeights(*(Tensor(np.ascontiguousarray(t[name][i])) for name in
                             ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_down", "w_up")),
                           **{b: Tensor(np.ascontiguousarray(t[b][i])) for b in LayerWeights.OPTIONAL if b in t})
              for i in range(cfg.n_layers)]
    return ModelSpec(path=Path("<memory>"), format="memory", config=cfg, token_embd=Tensor(t["token_embd"]),
                     output_norm=Tensor(t["output_norm"]),
                     output=Tensor(t["output"]) if "output" in t else None, layers=layers, file_size=0,
                     rope_scaling=None if rope_freqs is None else RopeScaling(
                         "divisors", divisors=tuple(plain_frequencies(cfg.rope_theta, cfg.rotary_dim)[:len(rope_freqs)]
                                                    / rope_freqs)))


def write_model(path: Path, cfg: ModelConfig, t: dict[str, np.ndarray], version: int = 0) -> Path:
    write_llama2c(path, cfg, t, version=version)
    return path
