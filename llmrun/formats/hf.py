"""Hugging Face model folders: config.json + *.safetensors (+ tokenizer.json, tokenizer_config.json,
generation_config.json, chat_template.jinja).

Architectures (config.json `architectures`): LlamaForCausalLM (Llama 2/3/3.1/3.2, TinyLlama, SmolLM),
MistralForCausalLM and Qwen2ForCausalLM (q/k/v biases). Anything else is refused by name.

Hyperparameters as transformers 4.x writes them (`rope_theta`, `rope_scaling` at the top level, whose kind
is `rope_type` or the older `type`) and as 5.x does (`rope_parameters` holding both). RoPE scaling
"default"/absent, "linear" (every frequency divided by `factor`) and "llama3" (transformers'
`_compute_llama3_parameters`: long wavelengths divided by `factor`, short ones kept, a smooth blend
between) become `spec.rope_freqs`; any other kind is refused. Hugging Face checkpoints rotate the two halves
of each head (rope_style "halves"); tied embeddings leave `spec.output` None. Mistral's and Qwen2's
sliding-window attention is recorded as `spec.sliding_window`: `llmrun.load` refuses a context longer than
the window, since llmrun attends to the whole context.

Weights: f32, f16 and bf16 matrices are used in place (memory maps); norms and biases become f32. With
`quantize` the matrices are converted at load time into GGUF block layouts (q8_0, q4_0; rows that are not
whole blocks fall back to f16, as llama.cpp does), reporting progress through a callback.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, TokenizerError
from ..quantize import convert_rows, dequantize
from ..spec import TENSOR_TYPES, LayerWeights, ModelConfig, ModelSpec, Tensor, attention_shape_problem
from .hf_tokenizer import load_folder_tokenizer, read_json
from .safetensors import SafetensorsSet

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
QUANTIZE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# Generous bounds: they reject garbage before any size arithmetic, not real models.
LIMITS = {"hidden_size": 1 << 16, "intermediate_size": 1 << 20, "num_hidden_layers": 1 << 10,
          "num_attention_heads": 1 << 12, "num_key_value_heads": 1 << 12, "head_dim": 1 << 12,
          "vocab_size": 1 << 22, "max_position_embeddings": (1 << 31) - 1}
# Our layer fields -> Hugging Face names inside `model.layers.N.`
LAYER_NAMES = {"attn_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
               "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "w_gate": "mlp.gate_proj", "w_down": "mlp.down_proj", "w_up": "mlp.up_proj"}
BIAS_NAMES = {"bq": "self_attn.q_proj", "bk": "self_attn.k_proj", "bv": "self_attn.v_proj"}

Progress = Callable[[int, int, str], None]  # (tensors done, tensors in all, name of the tensor just done)


def _finite(value: float) -> bool:
    """math.isfinite, also for integers too large for a float (OverflowError there)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def load_hf(folder: str | os.PathLike, quantize: str | None = None, progress: Progress | None = None) -> ModelSpec:
    """Reads a Hugging Face model folder; raises ModelFormatError (or TokenizerError for the tokenizer files)
    naming the file and field at fault."""
    folder = Path(folder)
    if quantize is not None and quantize not in QUANTIZE_TYPES:
        raise ModelFormatError(f"quantize must be one of {', '.join(QUANTIZE_TYPES)} or None, got {quantize!r}")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelFormatError(f"{folder}: no config.json: not a Hugging Face model folder")
    try:
        raw = read_json(config_path)
    except TokenizerError as e:
        raise ModelFormatError(str(e)) from None
    if not isinstance(raw, dict):
        raise ModelFormatError(f"{config_path}: must be a JSON object")
    arch, config, window = parse_config(config_path, raw)
    weights = SafetensorsSet(folder)
    spec = _build(folder, weights, config, raw, arch, quantize, progress)
    spec.rope_freqs = rope_frequencies(config_path, raw, config.head_dim, config.rope_theta)
    spec.architecture, spec.name, spec.sliding_window = arch, folder.name, window
    load_folder_tokenizer(folder, spec)
    return spec


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------

def parse_config(path: Path, raw: dict[str, Any]) -> tuple[str, ModelConfig, int | None]:
    """The architecture, ModelConfig and sliding attention window (None: attention to the whole context) of
    a config.json."""
    def fail(message: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: {message}")

    archs = raw.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise fail(f"architectures must name one architecture, got {archs!r}")
    if archs[0] not in ARCHITECTURES:
        raise fail(f"architecture {archs[0]!r} is not supported (llmrun runs {', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[archs[0]]

    def integer(key: str, default: int | None = None) -> int:
        value = raw.get(key, default)
        if value is None:
            if default is None:
                raise fail(f"missing {key}")
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMITS[key]:
            raise fail(f"{key} = {value!r} must be an integer in 1..{LIMITS[key]}")
        return value

    def number(key: str, default: float, params: dict[str, Any] | None = None) -> float:
        source = params if params is not None and key in params else raw
        value = source.get(key, default)
        if value is None:
            value = default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (_finite(value) and value > 0):
            raise fail(f"{key} = {value!r} must be a positive number")
        return float(value)

    act = raw.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise fail(f"hidden_act = {act!r} is not supported (llmrun's feed-forward is SwiGLU: silu)")
    if raw.get("mlp_bias"):
        raise fail("mlp_bias = true is not supported (feed-forward biases)")
    if arch != "qwen2" and raw.get("attention_bias"):
        raise fail("attention_bias = true is not supported for this architecture (it adds an output bias too)")
    dim = integer("hidden_size")
    n_heads = integer("num_attention_heads")
    n_kv_heads = integer("num_key_value_heads", n_heads)
    if raw.get("head_dim") is not None:
        head_dim = integer("head_dim")
    elif dim % n_heads:
        raise fail(f"hidden_size {dim} is not divisible by num_attention_heads {n_heads} (and no head_dim)")
    else:
        head_dim = dim // n_heads
    if n_heads % n_kv_heads:
        raise fail(f"num_attention_heads {n_heads} is not divisible by num_key_value_heads {n_kv_heads}")
    if head_dim % 2:
        raise fail(f"head size {head_dim} must be even for RoPE")
    problem = attention_shape_problem(dim, n_heads, head_dim)
    if problem is not None:
        raise fail(problem)
    params = raw.get("rope_parameters")
    if params is not None and not isinstance(params, dict):
        raise fail(f"rope_parameters must be an object, got {params!r}")
    if params is not None and raw.get("partial_rotary_factor", params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise fail("partial_rotary_factor other than 1 is not supported")
    max_seq = integer("max_position_embeddings", 2048)
    config = ModelConfig(
        dim=dim, hidden_dim=integer("intermediate_size"), n_layers=integer("num_hidden_layers"), n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=integer("vocab_size"), max_seq_len=max_seq,
        rope_theta=number("rope_theta", 10000.0, params), norm_eps=number("rms_norm_eps", 1e-6),
        rope_style="halves")
    window = raw.get("sliding_window")
    uses_window = arch == "mistral" or (arch == "qwen2" and raw.get("use_sliding_window"))
    if not uses_window or window is None:
        return arch, config, None
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise fail(f"sliding_window = {window!r} must be a positive integer or null")
    return arch, config, window


def _rope_scaling(path: Path, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The rope scaling parameters (4.x `rope_scaling`, 5.x `rope_parameters`), None for plain RoPE."""
    scaling = raw.get("rope_parameters") if raw.get("rope_parameters") is not None else raw.get("rope_scaling")
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise ModelFormatError(f"{path}: rope_scaling must be an object or null, got {scaling!r}")
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind in (None, "default"):
        return None
    return {**scaling, "rope_type": kind}


def rope_frequencies(path: Path, raw: dict[str, Any], head_dim: int, theta: float) -> np.ndarray | None:
    """(head_dim / 2,) float32 RoPE frequencies for a scaled RoPE, None for plain RoPE; computed as
    transformers does (float32 inverse frequencies, the scaling rules in float32 too). theta is the
    config's checked rope_theta."""
    scaling = _rope_scaling(path, raw)
    if scaling is None:
        return None
    kind = scaling["rope_type"]

    def param(key: str, default: float | None = None) -> float:
        value = scaling.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or value <= 0:
            raise ModelFormatError(f"{path}: rope scaling ({kind}) {key} = {value!r} must be a positive number")
        return float(value)

    base = np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim))
    inv_freq = (np.float32(1.0) / base).astype(np.float32)
    if kind == "linear":
        return (inv_freq / np.float32(param("factor"))).astype(np.float32)
    if kind == "llama3":
        factor = param("factor")
        low, high = param("low_freq_factor"), param("high_freq_factor")
        old_ctx = param("original_max_position_embeddings")
        if high <= low:
            raise ModelFormatError(f"{path}: rope scaling llama3 needs high_freq_factor ({high}) > low_freq_factor "
                                   f"({low})")
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = np.float32(2 * math.pi) / inv_freq
        scaled = np.where(wavelen > low_wavelen, inv_freq / np.float32(factor), inv_freq).astype(np.float32)
        smooth = ((np.float32(old_ctx) / wavelen - np.float32(low)) / np.float32(high - low)).astype(np.float32)
        smoothed = (1 - smooth) * scaled / np.float32(factor) + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ModelFormatError(f"{path}: rope scaling type {kind!r} is not supported (llmrun knows default, linear "
                           "and llama3)")


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------

def _build(folder: Path, weights: SafetensorsSet, c: ModelConfig, raw: dict[str, Any], arch: str,
           quantize: str | None, progress: Progress | None) -> ModelSpec:
    tied = bool(raw.get("tie_word_embeddings", False))
    expected: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.dim),
                                            "model.norm.weight": (c.dim,)}
    if not tied:
        expected["lm_head.weight"] = (c.vocab_size, c.dim)
    layer_shapes = {"attn_norm": (c.dim,), "wq": (c.q_dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim),
                    "wo": (c.dim, c.q_dim), "ffn_norm": (c.dim,), "w_gate": (c.hidden_dim, c.dim),
                    "w_down": (c.dim, c.hidden_dim), "w_up": (c.hidden_dim, c.dim)}
    bias_shapes = {"bq": (c.q_dim,), "bk": (c.kv_dim,), "bv": (c.kv_dim,)}
    for i in range(c.n_layers):
        for field, name in LAYER_NAMES.items():
            expected[f"model.layers.{i}.{name}.weight"] = layer_shapes[field]
        if arch == "qwen2":
            for field, name in BIAS_NAMES.items():
                expected[f"model.layers.{i}.{name}.bias"] = bias_shapes[field]

    ignorable = ("rotary_emb.inv_freq",)  # a buffer some old checkpoints saved; recomputed here
    for name in weights:
        if name not in expected and not name.endswith(ignorable) and not (tied and name == "lm_head.weight"):
            raise ModelFormatError(f"{folder}: unexpected tensor {name!r} for a {raw['architectures'][0]} with "
                                   f"{c.n_layers} layers")
    total = len(expected)
    done = 0

    def tensor(name: str, is_vector: bool = False) -> Tensor:
        nonlocal done
        if name not in weights:
            raise ModelFormatError(f"{folder}: missing tensor {name}")
        entry = weights[name]
        if entry.shape != expected[name]:
            raise ModelFormatError(f"{folder}: tensor {name} has shape {list(entry.shape)}, expected "
                                   f"{list(expected[name])} for this config.json")
        t = Tensor(weights.array(name), entry.type)
        if is_vector:
            t = Tensor(np.ascontiguousarray(dequantize(t.data, t.type), dtype=np.float32), "f32")
        elif quantize is not None:
            t = _convert(t, quantize)
        done += 1
        if progress is not None:
            progress(done, total, name)
        return t

    token_embd = tensor("model.embed_tokens.weight")
    layers = []
    for i in range(c.n_layers):
        prefix = f"model.layers.{i}."
        fields = {f: tensor(f"{prefix}{n}.weight", is_vector=f in ("attn_norm", "ffn_norm"))
                  for f, n in LAYER_NAMES.items()}
        if arch == "qwen2":
            fields.update({f: tensor(f"{prefix}{n}.bias", is_vector=True) for f, n in BIAS_NAMES.items()})
        layers.append(LayerWeights(**fields))
    output_norm = tensor("model.norm.weight", is_vector=True)
    output = None if tied else tensor("lm_head.weight")
    fmt = f"Hugging Face {raw['architectures'][0]}" + (f" ({quantize} at load)" if quantize else "")
    return ModelSpec(path=folder, format=fmt, config=c, token_embd=token_embd, output_norm=output_norm,
                     output=output, layers=layers, file_size=weights.file_size)


def _convert(t: Tensor, wanted: str) -> Tensor:
    """A matrix in `wanted` (f16 where its rows are not whole blocks), converted chunk by chunk."""
    rows, cols = t.shape
    target = wanted if cols % TENSOR_TYPES[wanted].block_elems == 0 else "f16"
    if target == t.type:
        return t
    return Tensor(np.ascontiguousarray(np.concatenate(list(convert_rows(t, target)), axis=0)), target)

