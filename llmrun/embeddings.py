"""Embeddings: which pooling a model asks for, and pooling the final hidden states into one vector per text.

A text's embedding comes from the final hidden states after the final norm (what the classifier would read;
the C library's llm_forward_hidden), pooled over its tokens:

- "mean": the average of every token's state (BOS included when the tokenizer adds one, as
  sentence-transformers and llama.cpp average every token they were given);
- "last": the last token's state (decoder embedding models: Qwen3-Embedding, e5-mistral; their tokenizers
  end a text with EOS, which `Model.tokenize` adds where the model file says so);
- "cls": the first token's state (BOS, for models that pool on it);
- "none": no pooling, one row per token.

The default comes from the model: a GGUF's `<arch>.pooling_type` (llama.cpp's enum: 0 none, 1 mean, 2 cls,
3 last; 4 rank, a reranker's classification head, is refused), else a sentence-transformers folder's pooling
module (modules.json's `sentence_transformers.models.Pooling`, else `1_Pooling/config.json`:
pooling_mode_mean_tokens, pooling_mode_cls_token, pooling_mode_lasttoken), else "mean": a base model has no
trained pooling, and the average of its states is the usual choice for them (llama.cpp instead gives a base
model's per-token states).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .errors import InvalidArgumentError, ModelFormatError
from .spec import ModelSpec

POOLINGS = ("mean", "last", "cls", "none")
GGUF_POOLING = {0: "none", 1: "mean", 2: "cls", 3: "last"}  # llama.cpp's enum llama_pooling_type; 4 is rank
ST_POOLING = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_lasttoken": "last"}
ST_UNSUPPORTED = ("pooling_mode_max_tokens", "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens")


def default_pooling(spec: ModelSpec) -> str:
    """The pooling the model file asks for (see the module's docstring); InvalidArgumentError (param "pooling")
    for one llmrun cannot do (rank, max ...), ModelFormatError for an unreadable pooling config."""
    arch = spec.metadata.get("general.architecture")
    key = f"{arch}.pooling_type"
    if arch is not None and key in spec.metadata:
        value = spec.metadata[key]
        if isinstance(value, (int, np.integer)) and int(value) in GGUF_POOLING:
            return GGUF_POOLING[int(value)]
        what = "rank (a reranker's classification head)" if value == 4 else f"the unknown value {value!r}"
        raise InvalidArgumentError(f"{spec.path}: {key} is {what}, which llmrun cannot pool; pass pooling= one of "
                                   f"{', '.join(POOLINGS)}", param="pooling")
    config = _sentence_transformers_pooling(Path(spec.path))
    if config is None:
        return "mean"
    try:
        flags = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{config}: cannot read the pooling config: {e}") from None
    if not isinstance(flags, dict):
        raise ModelFormatError(f"{config}: the pooling config must be a JSON object")
    chosen = [mode for name, mode in ST_POOLING.items() if flags.get(name) is True]
    others = [name for name in ST_UNSUPPORTED if flags.get(name) is True]
    if len(chosen) != 1 or others:
        on = [n for n in (*ST_POOLING, *ST_UNSUPPORTED) if flags.get(n) is True]
        raise InvalidArgumentError(f"{config}: llmrun pools one way of mean, cls or last token, but the config turns "
                                   f"on {', '.join(on) or 'none'}; pass pooling= one of {', '.join(POOLINGS)}",
                                   param="pooling")
    return chosen[0]


def _sentence_transformers_pooling(folder: Path) -> Path | None:
    """The pooling module's config.json of a sentence-transformers folder, or None."""
    if not folder.is_dir():
        return None
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            entries = json.loads(modules.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ModelFormatError(f"{modules}: cannot read the module list: {e}") from None
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and str(entry.get("type", "")).endswith(".Pooling"):
                path = folder / str(entry.get("path", "")) / "config.json"
                return path if path.is_file() else None
    path = folder / "1_Pooling" / "config.json"
    return path if path.is_file() else None


def check_pooling(pooling: object) -> str:
    if pooling not in POOLINGS:
        raise InvalidArgumentError(f"pooling must be one of {', '.join(POOLINGS)} or None, got {pooling!r}",
                                   param="pooling")
    assert isinstance(pooling, str)
    return pooling


def pool(states: np.ndarray, pooling: str) -> np.ndarray:
    """(dim,) from a text's states (n_tokens, dim), or the states themselves for "none"."""
    if pooling == "mean":
        return states.mean(axis=0, dtype=np.float64).astype(np.float32)
    if pooling == "last":
        return states[-1].copy()
    if pooling == "cls":
        return states[0].copy()
    return states


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Each row (the last axis) divided by its L2 norm; a zero row stays zero."""
    norm = np.linalg.norm(x.astype(np.float64), axis=-1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)
