"""Random-weight models of real shapes, written as llama2.c checkpoints (llama2.c's run.c reads them too)."""

from __future__ import annotations

from pathlib import Path

from builders import make_config, random_tensors, write_model
from llmrun.spec import ModelConfig

SHAPES = {
    # karpathy's TinyStories models (Llama 2 vocabulary)
    "stories15M": dict(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab_size=32000,
                       max_seq_len=256),
    "stories110M": dict(dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12, vocab_size=32000,
                        max_seq_len=1024),
}


def shape_config(name: str) -> ModelConfig:
    return make_config(**SHAPES[name])


def write_random_model(path: Path, shape: str, seed: int = 0) -> Path:
    """Writes a random model whose greedy output never ends early: the embedding rows of <unk>, BOS and
    EOS (also their classifier rows: the classifier is tied) are zero, so their logits are 0 while the
    best token's is positive, and every run decodes exactly the number of steps asked for."""
    cfg = shape_config(shape)
    t = random_tensors(cfg, seed=seed, tied=True)
    t["token_embd"][:3] = 0
    return write_model(path, cfg, t)
