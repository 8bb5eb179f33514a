"""ModelSpec: what every format reader returns and the engine consumes.

A spec is the model's hyperparameters plus its named tensors, each a numpy array that is usually a
memory map of the model file (no copy), plus what the file says about using the model (its tokenizer,
special ids, chat template ...) as typed fields. The format readers (llmrun/formats/) fill it in and
check it; the engine hands its arrays to C as borrowed pointers; nothing above reads a format module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._library import ffi, lib

if TYPE_CHECKING:
    from .tokenizer import Tokenizer


@dataclass(frozen=True)
class TensorType:
    """How one weight type is stored: rows of `block_bytes`-byte blocks of `block_elems` values each.
    Block layouts are GGUF's (ggml-common.h), so GGUF tensors are used in place."""

    name: str
    code: int  # the C library's llm_type value (csrc/llmrun.h)
    block_elems: int
    block_bytes: int
    dtype: np.dtype  # numpy dtype of a row's storage: the values for float types, raw bytes for blocks
    repacked_from: str | None = None  # a repacked type ("q4_0_r8", llmrun.h's _R8 types): its file type

    def row_bytes(self, cols: int) -> int:
        return cols // self.block_elems * self.block_bytes


# How numpy holds a row of each float type: the one thing about a type the C library cannot say. numpy has
# no bfloat16, so bf16 rows are their raw 16-bit patterns. Block types are raw bytes.
_FLOAT_STORAGE = {"f32": np.dtype("<f4"), "f16": np.dtype("<f2"), "bf16": np.dtype("<u2")}


def _tensor_type(code: int) -> TensorType:
    """The C library's description of weight type `code` (its name and block layout: csrc/llmrun.h)."""
    elems, nbytes = ffi.new("int64_t *"), ffi.new("int64_t *")
    if lib.llm_type_layout(code, elems, nbytes) != 0:
        raise ImportError(f"the llmrun C library has no layout for its weight type {code}")
    name = ffi.string(lib.llm_type_name(code)).decode()
    # the repacked types are named after the type they are repacked from: "q4_0_r8" from "q4_0"
    repacked_from = name.removesuffix("_r8") if name.endswith("_r8") else None
    if elems[0] == 1 and (repacked_from or name) not in _FLOAT_STORAGE:
        raise ImportError(f"the llmrun C library has a weight type {name!r} that llmrun/spec.py cannot hold")
    storage = _FLOAT_STORAGE[repacked_from or name] if elems[0] == 1 else np.dtype("u1")
    return TensorType(name, code, int(elems[0]), int(nbytes[0]), storage, repacked_from)


# Built from the C library, which defines the codes and block layouts (one definition for C and Python).
TENSOR_TYPES: dict[str, TensorType] = {t.name: t for t in map(_tensor_type, range(lib.LLM_TYPE_COUNT))}
# The types a model file holds: all but the repacked forms, which exist only in memory (llmrun.load(repack=)).
FILE_TYPES: dict[str, TensorType] = {name: t for name, t in TENSOR_TYPES.items() if t.repacked_from is None}
# Each file type that has a repacked form -> that form's name ("q4_0" -> "q4_0_r8").
REPACKED_FORMS: dict[str, str] = {t.repacked_from: name for name, t in TENSOR_TYPES.items() if t.repacked_from}

ROPE_STYLES = {"interleaved": 0, "halves": 1}
# The C library holds the family options as float32: a reader refuses a value outside (F32_MIN, F32_MAX), which
# would reach it as inf or 0.
F32_MAX, F32_MIN = float(np.finfo(np.float32).max), float(np.finfo(np.float32).tiny)
LAYER_ROPES = {"global": 0, "local": 1, "none": 2}  # csrc/llmrun.h llm_layer_rope
FFN_ACTIVATIONS = {"silu": 0, "gelu_tanh": 1}  # csrc/llmrun.h llm_ffn_activation

# Bounds on the attention's shape, far beyond real models (Gemma 3 270M: width 640 in 4 heads of 256; Qwen3
# 0.6B: 1024 in 16 x 128; Llama 3 8B: 4096 in 32 x 128; the widest heads in use are 256). A file beyond
# them is not a model: its header would reserve a KV cache out of all proportion to its weights.
MAX_HEAD_DIM = 1024
MAX_QUERY_WIDTH_RATIO = 16  # n_heads * head_dim over dim


def attention_shape_problem(dim: int, n_heads: int, head_dim: int) -> str | None:
    """Why an attention of `n_heads` heads of `head_dim` in a model of width `dim` is not plausible, or None.
    The readers refuse such a file (ModelFormatError naming it)."""
    if head_dim > MAX_HEAD_DIM:
        return f"head_dim = {head_dim} is larger than {MAX_HEAD_DIM}: not a plausible model"
    if n_heads * head_dim > MAX_QUERY_WIDTH_RATIO * dim:
        return (f"{n_heads} heads x {head_dim} = {n_heads * head_dim} query dimensions, more than "
                f"{MAX_QUERY_WIDTH_RATIO} times the model width {dim}: not a plausible model")
    return None


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
    # The options of the families beyond Llama (csrc/llmrun.h's llm_config says what each does); the
    # defaults are Llama's.
    rope_dim: int = 0  # RoPE rotates the first rope_dim dims of each head (partial rotary); 0: all of them
    rope_theta_local: float = 0.0  # RoPE base of the layers whose layer_ropes entry is "local" (Gemma 3)
    layer_ropes: tuple[str, ...] = ()  # per layer one of LAYER_ROPES; (): all "global"
    layer_windows: tuple[int, ...] = ()  # per layer its sliding attention window, 0 for none; (): none
    ffn_activation: str = "silu"  # one of FFN_ACTIVATIONS: act(x W_gate) * (x W_up)
    embed_scale: float = 1.0  # the embedding rows times this (Gemma: sqrt(dim); Granite's multiplier)
    attn_scale: float | None = None  # q . k times this; None: 1 / sqrt(head_dim)
    attn_softcap: float = 0.0  # Gemma 2: attention scores s -> cap * tanh(s / cap); 0: none
    final_softcap: float = 0.0  # Gemma 2: the same on the logits; 0: none
    residual_scale: float = 1.0  # Granite: x += residual_scale * block output
    logit_scale: float = 1.0  # Granite: logits times this (1 / logits_scaling)

    @property
    def rotary_dim(self) -> int:
        """The dims of each head that RoPE rotates."""
        return self.rope_dim or self.head_dim

    @property
    def sliding_window(self) -> int | None:
        """The widest sliding window of any layer, None where every layer attends to the whole context."""
        return max(self.layer_windows, default=0) or None

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


ROPE_SCALING_KINDS = ("linear", "llama3", "yarn", "longrope", "divisors")


@dataclass(frozen=True)
class RopeScaling:
    """How a model rescales its global RoPE table, as its file says; llmrun/rope.py turns it into numbers.

    kind:
    - "linear": every frequency divided by `factor`.
    - "llama3" (Llama 3.1): long wavelengths divided by `factor`, short ones kept, a blend between, by
      `low_freq_factor`, `high_freq_factor` and `original_context`.
    - "yarn": frequencies blended between plain and divided by `factor` over the dimension pairs that the
      correction range of `beta_fast` / `beta_slow` rotations within `original_context` picks (`truncate`:
      that range rounded outwards to whole pairs, as llama.cpp always does); cos and sin times
      `attention_factor` (None: 0.1 ln(factor) + 1).
    - "longrope" (Phi-3): frequencies divided per pair by `short_factor`, or by `long_factor` when the
      context is longer than `original_context`; cos and sin times `attention_factor` (None:
      sqrt(1 + ln(factor) / ln(original_context))).
    - "divisors" (llama.cpp's GGUF `rope_freqs` tensor): frequencies divided per pair by `divisors`, and
      all of them by `factor`.
    Per-pair tuples have rotary_dim / 2 entries."""

    kind: str
    factor: float = 1.0
    original_context: int = 0  # the context the model was pretrained with (llama3, yarn, longrope)
    low_freq_factor: float = 1.0  # llama3
    high_freq_factor: float = 4.0  # llama3
    beta_fast: float = 32.0  # yarn
    beta_slow: float = 1.0  # yarn
    truncate: bool = True  # yarn
    attention_factor: float | None = None  # yarn, longrope: None for the kind's default
    short_factor: tuple[float, ...] = ()  # longrope
    long_factor: tuple[float, ...] = ()  # longrope
    divisors: tuple[float, ...] = ()  # divisors

    def __post_init__(self) -> None:
        if self.kind not in ROPE_SCALING_KINDS:
            raise ValueError(f"unknown RoPE scaling kind {self.kind!r} (one of {', '.join(ROPE_SCALING_KINDS)})")


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
    projections: bq (q_dim,), bk and bv (kv_dim,); other models have none. Qwen3 and Gemma 3 norm each
    query and key head: q_norm, k_norm (head_dim,); Gemma 2 and 3 norm each block's output before it joins
    the residual: attn_post_norm, ffn_post_norm (dim,). Fused projections (Phi-3's qkv_proj and
    gate_up_proj) are given as row views of the one fused matrix: wq/wk/wv and w_gate/w_up then share its
    memory, and the C library computes them in one pass over it (llm_products_run)."""

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
    q_norm: Tensor | None = None
    k_norm: Tensor | None = None
    attn_post_norm: Tensor | None = None
    ffn_post_norm: Tensor | None = None

    OPTIONAL = ("bq", "bk", "bv", "q_norm", "k_norm", "attn_post_norm", "ffn_post_norm")

    def tensors(self) -> list[Tensor]:
        optional = [t for t in (getattr(self, name) for name in self.OPTIONAL) if t is not None]
        return [self.attn_norm, self.wq, self.wk, self.wv, self.wo, self.ffn_norm, self.w_gate,
                self.w_down, self.w_up, *optional]


@dataclass
class ModelSpec:
    """A loaded model file: config, weights and what the file says about using the model."""

    path: Path
    format: str  # e.g. "llama2.c v0"
    config: ModelConfig
    token_embd: Tensor
    output_norm: Tensor
    output: Tensor | None  # None: the classifier is tied to token_embd
    layers: list[LayerWeights]
    file_size: int
    rope_scaling: RopeScaling | None = None  # how the model rescales RoPE (llmrun/rope.py); None: plain RoPE
    architecture: str = "llama"  # llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3, smollm3, granite
    name: str | None = None  # the model's name (GGUF general.name, a Hugging Face folder's name)
    tokenizer: Tokenizer | None = None  # the file's own tokenizer, when it has one llmrun can use
    tokenizer_problem: str = ""  # why `tokenizer` is None, for the error a caller gets when it needs one
    add_bos_token: bool = True  # whether encoding a prompt starts it with BOS (llama.cpp's default: True)
    add_eos_token: bool = False
    chat_template: str | None = None  # the model's own Jinja chat template
    eog_token_ids: tuple[int, ...] = ()  # ids that end generation besides the tokenizer's EOS (end of turn ...)
    group_size: int | None = None  # llama2.c v2: values per quantization group of the file's int8 weights
    metadata: dict[str, Any] = field(default_factory=dict)  # GGUF: every metadata key and value, as read
    metadata_types: dict[str, int] = field(default_factory=dict)  # GGUF: each key's stored value type

    @property
    def max_context(self) -> int:
        """The longest context the model was trained for (sliding-window layers attend to their window of it:
        config.layer_windows)."""
        return self.config.max_seq_len

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
            if t.data.ndim == 2:  # a repacked matrix counts as the file's type it was repacked from
                name = TENSOR_TYPES[t.type].repacked_from or t.type
                elements[name] = elements.get(name, 0) + t.n_elements
        ranked = sorted(elements, key=elements.get, reverse=True) or ["f32"]
        return ranked[0] + (f" (+ {', '.join(ranked[1:])})" if len(ranked) > 1 else "")
