"""ModelSpec: what every format reader returns and the engine consumes.

A spec is the model's hyperparameters plus its named tensors, each a numpy array that is usually a
memory map of the model file (no copy). The format readers (llmrun/formats/) fill it in and check it;
the engine hands its arrays to C as borrowed pointers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class TensorType:
    """How one weight type is stored: rows of `block_bytes`-byte blocks of `block_elems` values each.
    Block layouts are GGUF's (ggml-common.h), so GGUF tensors are used in place."""

    name: str
    code: int  # the C library's llm_type value (csrc/llmrun.h)
    block_elems: int
    block_bytes: int
    dtype: np.dtype  # numpy dtype of a row's storage: the values for float types, raw bytes for blocks

    def row_bytes(self, cols: int) -> int:
        return cols // self.block_elems * self.block_bytes


TENSOR_TYPES: dict[str, TensorType] = {t.name: t for t in (
    TensorType("f32", 0, 1, 4, np.dtype("<f4")),
    TensorType("f16", 1, 1, 2, np.dtype("<f2")),
    TensorType("bf16", 2, 1, 2, np.dtype("<u2")),  # numpy has no bfloat16: the raw 16-bit patterns
    TensorType("q8_0", 3, 32, 34, np.dtype("u1")),  # fp16 scale d, 32 x int8 q: x = d * q
    TensorType("q4_0", 4, 32, 18, np.dtype("u1")),  # fp16 scale d, 16 bytes of nibbles: x = d * (q - 8)
)}

ROPE_STYLES = {"interleaved": 0, "halves": 1}


@dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a Llama-family transformer."""

    dim: int
    hidden_dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    vocab_size: int
    max_seq_len: int  # the context length the model was trained for
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    rope_style: str = "interleaved"  # llama2.c / GGUF pair adjacent dims; Hugging Face rotates halves

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


@dataclass
class Tensor:
    """A row-major weight matrix of `rows` x `cols` values (a vector is one row).

    `data` holds it in its storage type (TENSOR_TYPES[type]): for float types an array of shape
    (rows, cols) or (cols,) of that dtype; for block types a uint8 array of shape (rows, row_bytes)."""

    data: np.ndarray
    type: str = "f32"

    @property
    def shape(self) -> tuple[int, int]:
        t = TENSOR_TYPES[self.type]
        rows = self.data.shape[0] if self.data.ndim == 2 else 1
        width = self.data.shape[-1]
        cols = width if t.block_elems == 1 else width // t.block_bytes * t.block_elems
        return rows, cols

    @property
    def n_elements(self) -> int:
        rows, cols = self.shape
        return rows * cols


@dataclass
class LayerWeights:
    """One transformer block. Shapes: norms (dim,); wq (q_dim, dim); wk, wv (kv_dim, dim); wo (dim, q_dim);
    w_gate, w_up (hidden_dim, dim); w_down (dim, hidden_dim). Qwen2 adds f32 biases to the q, k and v
    projections: bq (q_dim,), bk and bv (kv_dim,); other models have none."""

    attn_norm: Tensor
    wq: Tensor
    wk: Tensor
    wv: Tensor
    wo: Tensor
    ffn_norm: Tensor
    w_gate: Tensor
    w_down: Tensor
    w_up: Tensor
    bq: Tensor | None = None
    bk: Tensor | None = None
    bv: Tensor | None = None

    def tensors(self) -> list[Tensor]:
        biases = [b for b in (self.bq, self.bk, self.bv) if b is not None]
        return [self.attn_norm, self.wq, self.wk, self.wv, self.wo, self.ffn_norm, self.w_gate,
                self.w_down, self.w_up, *biases]


@dataclass
class ModelSpec:
    """A loaded model file: config, weights and (when the file has one) its tokenizer."""

    path: Path
    format: str  # e.g. "llama2.c v0"
    config: ModelConfig
    token_embd: Tensor
    output_norm: Tensor
    output: Tensor | None  # None: the classifier is tied to token_embd
    layers: list[LayerWeights]
    file_size: int
    tokenizer: object | None = None  # llmrun.tokenizer.Tokenizer when the file carries one
    extra: dict = field(default_factory=dict)
    # (head_dim // 2,) float32: RoPE frequency of each dimension pair where the model rescales them
    # (rope_scaling "llama3" / "linear", GGUF rope_freqs); None: config.rope_theta ** (-2j / head_dim)
    rope_freqs: np.ndarray | None = None

    def tensors(self) -> list[Tensor]:
        out = [self.token_embd, self.output_norm]
        if self.output is not None:
            out.append(self.output)
        for layer in self.layers:
            out.extend(layer.tensors())
        return out

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors())

    @property
    def weight_bytes(self) -> int:
        return sum(t.data.nbytes for t in self.tensors())

    @property
    def dtype(self) -> str:
        """The type holding most of the weights, then any others the matrices use (norms are f32 always),
        e.g. "q4_0 (+ q8_0, f16)" for a llama.cpp Q4_0 file."""
        elements: dict[str, int] = {}
        for t in self.tensors():
            if t.data.ndim == 2:
                elements[t.type] = elements.get(t.type, 0) + t.n_elements
        ranked = sorted(elements, key=elements.get, reverse=True) or ["f32"]
        return ranked[0] + (f" (+ {', '.join(ranked[1:])})" if len(ranked) > 1 else "")
