"""GGUF model files as llmrun runs them: the architectures (llama.cpp's names, keys and tensors) on top of
the container that llmrun/formats/gguf.py parses.

What `load_gguf` accepts beyond the container:
- `general.architecture` llama, qwen2, qwen3, gemma2, gemma3, phi3, smollm3 or granite with the `<arch>.*`
  hyperparameters, read as llama.cpp reads them (src/models/<arch>.cpp): the family options of the
  ModelConfig (Gemma's soft-caps, sliding-window layers from attention.sliding_window(_pattern), local RoPE
  base rope.freq_base_swa, query scale by llama.cpp's rule unless attention.scale says; SmolLM3's RoPE-less
  every fourth layer; Granite's logit_scale, embedding_scale, residual_scale, attention.scale), partial
  rotary (rope.dimension_count, NEOX architectures), and RoPE scaling as a spec.RopeScaling: linear, yarn
  (factor, original context, beta values, attention factor), a `rope_freqs` tensor (llama.cpp's per-pair
  divisors for Llama 3.1's scaling), Phi-3's rope_factors_short/long (LongRoPE). Unknown scaling types,
  mixtures of experts and other architectures are refused naming them. Hostile values (a negative or
  non-finite soft-cap or scale, a window pattern of another length than the layers, factors of the wrong
  length ...) are refused naming the key and value; a window larger than the context is full attention.
  Gemma files store their norms as the multiplier (w + 1), as llama.cpp's converter writes them.
- exactly the tensors the architecture uses (`token_embd`, `output_norm`, optional `output` -- absent means
  tied to the embedding --, nine per block, qwen2's q/k/v biases, qwen3/gemma3's attn_q_norm/attn_k_norm,
  gemma's post_attention_norm/post_ffw_norm, phi3's fused attn_qkv and ffn_up of 2 * n_ff -- given to the
  spec as row views --, optional `rope_freqs`, `rope_factors_*`) in F32, F16,
  BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K or IQ4_XS (each tensor its own:
  what llama-quantize's presets write), norms and biases in F32. Any other tensor is refused rather than ignored: other
  biases or expert tensors change the model's math, so running without them would compute something else.
- RoPE: GGUF `llama`, `smollm3` and `granite` files pair adjacent dimensions (llama.cpp's converter permutes
  Hugging Face's Q/K rows into that order), exactly like llama2.c, so the config says
  rope_style="interleaved"; qwen2, qwen3, gemma2, gemma3 and phi3 files rotate halves (NEOX),
  rope_style="halves" (llama.cpp's llama_model_rope_type).
- windows: llama.cpp reads attention.sliding_window for Gemma only (it disables Phi-3's); llmrun reads it
  for every architecture (the writer records Mistral, Qwen2/3 and Phi-3 windows there, as transformers
  applies them), so such a file gives llama.cpp's logits only where the windows do not bite.
- the tokenizer when `tokenizer.ggml.model` is "llama" (SentencePiece BPE) or "gpt2" (byte-level BPE,
  hf_tokenizer.gguf_bpe_tokenizer, split rules by the `tokenizer.ggml.pre` name). Any other tokenizer
  model, or a gpt2 vocabulary llmrun cannot use (an unknown pre-tokenizer name), still loads the model
  for `logits()`: spec.tokenizer is None and spec.tokenizer_problem says why.

The spec also gets: `metadata` / `metadata_types` (every key, as `read_gguf` returns it, and its stored
value type), `name` (`general.name`), `add_bos_token` / `add_eos_token` (the file's defaults for encoding;
llama.cpp's defaults when absent: True / False for a SentencePiece vocabulary, False / False for gpt2),
`chat_template` (`tokenizer.chat_template`) and `eog_token_ids` (`tokenizer.ggml.eot_token_id`, when valid).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from ..errors import ModelFormatError, TokenizerError
from ..rope import scaling_problem, yarn_mscale
from ..spec import F32_MIN, LayerWeights, ModelConfig, ModelSpec, RopeScaling, Tensor, attention_shape_problem
from ..tokenizer import END_OF_TURN_TEXTS, BPETokenizer, SentencePieceTokenizer, TokenType
from .gguf import (
    FLOAT_TYPES,
    GGML_TYPE_NAMES,
    INT_TYPES,
    MAX_DIMS,
    MAX_SCALE,
    GGUFFile,
    Metadata,
    StringArray,
    ValueType,
    read_gguf_model,
    value_type_of,
)
from .hf_tokenizer import gguf_bpe_tokenizer

# ------------------------------------------------------------------------------------------------
# The architectures: hyperparameters, tensors, RoPE scaling
# ------------------------------------------------------------------------------------------------

# Generous bounds: they reject garbage before any size arithmetic, not real models.
LIMITS = {"embedding_length": 1 << 16, "feed_forward_length": 1 << 20, "block_count": 1 << 10,
          "attention.head_count": 1 << 12, "attention.head_count_kv": 1 << 12, "attention.key_length": 1 << 12,
          "attention.value_length": 1 << 12, "rope.dimension_count": 1 << 12, "vocab_size": 1 << 20,
          "context_length": (1 << 31) - 1, "attention.sliding_window": (1 << 31) - 1,
          "attention.sliding_window_pattern": 1 << 10, "rope.scaling.original_context_length": (1 << 31) - 1}
MAX_SOFTCAP = 1e6  # a cap this large caps nothing; beyond it the value is not a model's

# Our LayerWeights field -> GGUF tensor name inside `blk.N.`, in the order llama.cpp's converter writes
# them (the writer keeps it). FAMILY_TENSORS adds each family's own.
LAYER_TENSORS = {"attn_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
                 "ffn_norm": "ffn_norm", "w_gate": "ffn_gate", "w_down": "ffn_down", "w_up": "ffn_up"}
_QK_NORMS = {"q_norm": "attn_q_norm", "k_norm": "attn_k_norm"}
_POST_NORMS = {"attn_post_norm": "post_attention_norm", "ffn_post_norm": "post_ffw_norm"}
FAMILY_TENSORS = {"gemma2": _POST_NORMS, "gemma3": {**_QK_NORMS, **_POST_NORMS}, "qwen3": _QK_NORMS}
# Fused tensors (phi3): GGUF name inside `blk.N.` -> our fields, row views of it in row order
FUSED_TENSORS = {"attn_qkv": ("wq", "wk", "wv"), "ffn_up": ("w_gate", "w_up")}

# Our bias fields -> GGUF tensor names inside `blk.N.` (Qwen2)
BIAS_TENSORS = {"bq": "attn_q", "bk": "attn_k", "bv": "attn_v"}
# general.architecture values llmrun runs (the prefix of their hyperparameter keys)
ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma2", "gemma3", "phi3", "smollm3", "granite")
# llama.cpp's RoPE pairing per architecture (llama_model_rope_type): NORM pairs adjacent dims (its converter
# permutes Hugging Face's q/k rows for it), NEOX rotates halves
NEOX_ARCHITECTURES = ("qwen2", "qwen3", "gemma2", "gemma3", "phi3")
GEMMA = ("gemma2", "gemma3")
# Architectures people try that llmrun does not run, and why
REFUSED_ARCHITECTURES = {"gemma3n": "Gemma 3n (per-layer embeddings, AltUp)", "gemma": "Gemma 1",
                         "qwen2moe": "a mixture of experts", "qwen3moe": "a mixture of experts",
                         "phimoe": "a mixture of experts", "granitemoe": "a mixture of experts"}

# Hints for tensors Llama-family files may carry that llmrun cannot run yet.
_EXTRA_TENSOR_HINTS = {
    "_exps": "mixture-of-experts layers are not supported yet",
    "ffn_gate_inp": "mixture-of-experts layers are not supported yet",
    ".bias": "bias tensors are read for qwen2's q/k/v projections only",
}


def load_gguf(path: str | os.PathLike) -> ModelSpec:
    """Reads a GGUF file of one of ARCHITECTURES; raises ModelFormatError naming the file and field at fault."""
    f = read_gguf_model(path)
    meta = Metadata(f)
    arch = meta.string("general.architecture")
    if arch not in ARCHITECTURES:
        why = f": {REFUSED_ARCHITECTURES[arch]}" if arch in REFUSED_ARCHITECTURES else ""
        raise ModelFormatError(f"{f.path}: architecture {arch!r} is not supported yet{why} (llmrun runs "
                               f"{', '.join(map(repr, ARCHITECTURES))})")
    meta.arch = arch
    config = _llama_config(f, meta)
    spec = _llama_weights(f, config, arch)
    spec.rope_scaling = _rope_scaling(f, meta, config)
    spec.architecture = arch
    _read_tokenizer(f, meta, spec)
    return spec


def _rope_scaling(f: GGUFFile, meta: Metadata, c: ModelConfig) -> RopeScaling | None:
    """_read_rope_scaling, refusing values that make the tables non-finite (naming the key at fault)."""
    s = _read_rope_scaling(f, meta, c)
    problem = None if s is None else scaling_problem(s, c.rope_theta, c.rotary_dim)
    if problem is not None:
        a, (field, why) = meta.arch, problem
        tensor = {"short_factor": "rope_factors_short.weight", "long_factor": "rope_factors_long.weight",
                  "divisors": "rope_freqs.weight"}.get(field)
        if tensor is not None:
            raise meta.fail(f"tensor {tensor}: RoPE scaling {s.kind} {why}")
        key = {"theta": "rope.freq_base", "factor": "rope.scaling.factor", "beta_fast": "rope.scaling.yarn_beta_fast",
               "beta_slow": "rope.scaling.yarn_beta_slow", "attention_factor": "rope.scaling.attn_factor",
               "original_context": "rope.scaling.original_context_length"}[field]
        value = c.rope_theta if field == "theta" else getattr(s, field)
        raise meta.fail(f"metadata {a}.{key} = {value!r}: RoPE scaling {s.kind} {why}")
    return s


def _read_rope_scaling(f: GGUFFile, meta: Metadata, c: ModelConfig) -> RopeScaling | None:
    """How the file rescales RoPE, as llama.cpp reads it: <arch>.rope.scaling.type "linear" (or the old
    rope.scale_linear) with its factor, "yarn" with its factor, original context, beta values and attention
    factor; a `rope_freqs` tensor of per-pair divisors (llama.cpp's form of Llama 3.1's scaling); Phi-3's
    `rope_factors_short` / `rope_factors_long` tensors (LongRoPE, with rope.scaling.attn_factor). None for
    plain RoPE."""
    a = meta.arch
    kind = meta.string(f"{a}.rope.scaling.type", "linear")
    factor = 1.0
    if meta.has(f"{a}.rope.scaling.factor"):
        factor = meta.number(f"{a}.rope.scaling.factor")
    elif meta.has(f"{a}.rope.scale_linear"):
        factor = meta.number(f"{a}.rope.scale_linear")
    if kind == "none":
        factor = 1.0  # llama.cpp: never scale
    attn = meta.bounded(f"{a}.rope.scaling.attn_factor", 1.0)  # llama.cpp multiplies cos and sin by it always
    # llama.cpp reads these two for other architectures only (DeepSeek, Grok ...); where set, they come from a
    # model whose RoPE they change (transformers' mscale_all_dim, an extrapolation mix): refused, not ignored
    if meta.has(f"{a}.rope.scaling.yarn_log_multiplier") and meta.f.metadata[f"{a}.rope.scaling.yarn_log_multiplier"]:
        raise meta.fail(f"metadata {a}.rope.scaling.yarn_log_multiplier = "
                        f"{meta.f.metadata[f'{a}.rope.scaling.yarn_log_multiplier']} is not supported")
    ext_key = f"{a}.rope.scaling.yarn_ext_factor"
    if meta.has(ext_key) and meta.f.metadata[ext_key] != (1.0 if kind == "yarn" else 0.0):
        raise meta.fail(f"metadata {ext_key} = {meta.f.metadata[ext_key]} is not supported (llmrun computes YaRN "
                        "with llama.cpp's default: 1 for yarn, 0 otherwise)")
    original = meta.integer(f"{a}.rope.scaling.original_context_length", 1,
                            LIMITS["rope.scaling.original_context_length"], c.max_seq_len)
    pairs = c.rotary_dim // 2

    def factors(name: str) -> tuple[float, ...]:
        info = f.tensors[name]
        if _padded(info.ne) != _padded((pairs,)) or info.type != "f32":
            raise meta.fail(f"tensor {name} has ne = {list(info.ne)} and type {GGML_TYPE_NAMES[info.ggml_type]}, "
                            f"expected [{pairs}] F32 (rotary dims / 2)")
        values = f.tensor_data(name, (pairs,)).astype(np.float32)
        if not np.all(np.isfinite(values) & (values > 0)):
            raise meta.fail(f"tensor {name} must hold positive finite factors")
        return tuple(float(v) for v in values)

    long_name, short_name = "rope_factors_long.weight", "rope_factors_short.weight"
    if long_name in f.tensors or short_name in f.tensors:
        if not (long_name in f.tensors and short_name in f.tensors):
            raise meta.fail("LongRoPE needs both tensors rope_factors_long.weight and rope_factors_short.weight")
        if kind == "yarn" or "rope_freqs.weight" in f.tensors or factor != 1.0:
            raise meta.fail("LongRoPE factors together with other RoPE scaling are not supported")
        return RopeScaling("longrope", original_context=original, attention_factor=attn,
                           short_factor=factors(short_name), long_factor=factors(long_name))
    if kind == "yarn":
        if "rope_freqs.weight" in f.tensors:
            raise meta.fail("YaRN together with a rope_freqs tensor is not supported")
        # llama.cpp: cos and sin times (0.1 ln(factor) + 1) * rope.scaling.attn_factor; a yarn_attn_factor
        # (the converter's copy of transformers' attention_factor) replaces the first term, as in transformers
        yarn_attn = meta.bounded(f"{a}.rope.scaling.yarn_attn_factor", yarn_mscale(factor))
        return RopeScaling("yarn", factor=factor, original_context=original, attention_factor=yarn_attn * attn,
                           beta_fast=meta.number(f"{a}.rope.scaling.yarn_beta_fast", 32.0),
                           beta_slow=meta.number(f"{a}.rope.scaling.yarn_beta_slow", 1.0))
    if kind == "longrope":
        raise meta.fail(f"{a}.rope.scaling.type = 'longrope' needs the tensors {short_name} and {long_name}")
    if kind not in ("none", "linear"):
        raise meta.fail(f"RoPE scaling {a}.rope.scaling.type = {kind!r} is not supported (llmrun reads none, linear, "
                        "yarn and longrope)")
    if attn != 1.0:
        raise meta.fail(f"{a}.rope.scaling.attn_factor = {attn} without YaRN or LongRoPE is not supported")
    if "rope_freqs.weight" in f.tensors:
        return RopeScaling("divisors", factor=factor, divisors=factors("rope_freqs.weight"))
    return RopeScaling("linear", factor=factor) if factor != 1.0 else None


def _llama_config(f: GGUFFile, meta: Metadata) -> ModelConfig:
    a = meta.arch

    def key(name: str, default: int | None = None) -> int:
        return meta.integer(f"{a}.{name}", 1, LIMITS[name], default)

    _refuse_unsupported_features(meta)
    dim = key("embedding_length")
    n_heads = key("attention.head_count")
    n_kv_heads = key("attention.head_count_kv", n_heads)
    if meta.has(f"{a}.attention.key_length") or meta.has(f"{a}.attention.value_length"):
        head_dim = key("attention.key_length", dim // n_heads or 1)
        value_dim = key("attention.value_length", head_dim)
        if value_dim != head_dim:
            raise meta.fail(f"{a}.attention.key_length = {head_dim} differs from {a}.attention.value_length "
                            f"= {value_dim}: not supported yet")
    else:
        if dim % n_heads:
            raise meta.fail(f"{a}.embedding_length = {dim} is not divisible by {a}.attention.head_count = "
                            f"{n_heads}")
        head_dim = dim // n_heads
    if n_heads % n_kv_heads:
        raise meta.fail(f"{a}.attention.head_count = {n_heads} is not divisible by "
                        f"{a}.attention.head_count_kv = {n_kv_heads}")
    if head_dim % 2:
        raise meta.fail(f"head size {head_dim} must be even for RoPE")
    problem = attention_shape_problem(dim, n_heads, head_dim)
    if problem is not None:
        raise meta.fail(problem)
    rope_dims = key("rope.dimension_count", head_dim)
    if rope_dims != head_dim and (a not in NEOX_ARCHITECTURES or rope_dims > head_dim or rope_dims % 2):
        raise meta.fail(f"{a}.rope.dimension_count = {rope_dims} with head size {head_dim}: partial rotary "
                        "embeddings are supported for even counts up to the head size of NEOX architectures")
    n_layers = key("block_count")
    vocab = _vocab_size(f, meta)
    return ModelConfig(
        dim=dim, hidden_dim=key("feed_forward_length"), n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=vocab, max_seq_len=key("context_length"),
        rope_theta=meta.number(f"{a}.rope.freq_base", 10000.0),
        norm_eps=meta.number(f"{a}.attention.layer_norm_rms_epsilon"),
        # GGUF llama files pair adjacent dimensions, as llama2.c does (llama.cpp's converter permutes the q/k
        # rows); the NEOX architectures rotate halves as Hugging Face does
        rope_style="halves" if a in NEOX_ARCHITECTURES else "interleaved",
        rope_dim=rope_dims if rope_dims != head_dim else 0, **_family_options(meta, n_layers, dim, n_heads, head_dim))


def _family_options(meta: Metadata, n_layers: int, dim: int, n_heads: int, head_dim: int) -> dict[str, Any]:
    """The ModelConfig options of the families beyond Llama, as llama.cpp reads (or hard-codes) them."""
    a = meta.arch
    windows = _windows(meta, n_layers)
    out: dict[str, Any] = {"layer_windows": windows} if any(windows) else {}

    def scale(name: str) -> float | None:
        k = f"{a}.{name}"
        if not meta.has(k):
            return None
        value = meta.number(k)
        if not 1 / MAX_SCALE <= value <= MAX_SCALE:  # granite's logit scale is divided by: both ends matter
            raise meta.fail(f"metadata {k} = {value} is out of range (expected {1 / MAX_SCALE:g}..{MAX_SCALE:g})")
        return value

    def softcap(name: str, default: float) -> float:
        k = f"{a}.{name}"
        if not meta.has(k):
            return default
        if meta.f.value_types[k] not in FLOAT_TYPES | INT_TYPES:
            raise meta.fail(f"metadata {k} must be a number, got {meta.f.value_types[k].name}")
        value = float(meta.f.metadata[k])
        if not (math.isfinite(value) and (value == 0 or F32_MIN <= value <= MAX_SOFTCAP)):
            raise meta.fail(f"metadata {k} = {value} must be 0 (no capping) or a number in "
                            f"{F32_MIN:g}..{MAX_SOFTCAP:g}")
        if value == 0 and a == "gemma2":  # llama.cpp's gemma2 always caps: tanh(x / 0) * 0 is NaN there
            raise meta.fail(f"metadata {k} = 0: llama.cpp's gemma2 always soft-caps, and computes NaN logits with 0")
        return value

    if a in GEMMA:
        # llama.cpp has no key for the query scale of Gemma: 1/sqrt(head_dim), or for the 27B models (their
        # block counts) 1/sqrt(dim / heads), as query_pre_attn_scalar says; llmrun writes attention.scale for
        # other values (llama.cpp ignores it)
        big = n_layers == (46 if a == "gemma2" else 62)
        attn_scale = scale("attention.scale") or 1.0 / math.sqrt(dim // n_heads if big else head_dim)
        out.update(ffn_activation="gelu_tanh", embed_scale=float(np.float32(math.sqrt(dim))), attn_scale=attn_scale,
                   final_softcap=softcap("final_logit_softcapping", 30.0 if a == "gemma2" else 0.0),
                   attn_softcap=softcap("attn_logit_softcapping", 50.0) if a == "gemma2" else 0.0)
        theta = meta.number(f"{a}.rope.freq_base", 10000.0)
        if a == "gemma3" and any(windows):
            # llama.cpp: the sliding layers use freq_base_swa (default 10000) with freq scale 1, whatever the
            # global layers' scaling and even where the bases are equal
            out["rope_theta_local"] = meta.number(f"{a}.rope.freq_base_swa", 10000.0)
            out["layer_ropes"] = tuple("local" if w else "global" for w in windows)
        elif any(windows) and meta.number(f"{a}.rope.freq_base_swa", theta) != theta:
            # gemma2: llama.cpp scales the sliding layers like the global ones; llmrun's local layers are plain
            # RoPE, so a local base differing from the global one is exact only without scaling
            if _has_rope_scaling(meta):
                raise meta.fail(f"metadata {a}.rope.freq_base_swa = {meta.f.metadata[f'{a}.rope.freq_base_swa']} "
                                f"differs from {a}.rope.freq_base = {theta} together with RoPE scaling: llmrun "
                                "cannot scale the sliding layers' RoPE (llama.cpp scales them like the global ones)")
            out["rope_theta_local"] = meta.number(f"{a}.rope.freq_base_swa")
            out["layer_ropes"] = tuple("local" if w else "global" for w in windows)
    elif a == "smollm3":  # llama.cpp: no RoPE on every fourth layer (hard-coded, as SmolLM3's config)
        out["layer_ropes"] = tuple("none" if (i + 1) % 4 == 0 else "global" for i in range(n_layers))
    elif a == "granite":
        logit = scale("logit_scale")
        if logit is None:
            raise meta.fail(f"missing metadata {a}.logit_scale (llama.cpp requires it for granite)")
        out.update(logit_scale=1.0 / logit, embed_scale=scale("embedding_scale") or 1.0,
                   residual_scale=scale("residual_scale") or 1.0)
        attn_scale = scale("attention.scale")
        if attn_scale is not None:
            out["attn_scale"] = attn_scale
        if not meta.boolean(f"{a}.rope.scaling.finetuned", True):  # llama.cpp: Granite's switch for RoPE
            out["layer_ropes"] = ("none",) * n_layers
    return out


def _has_rope_scaling(meta: Metadata) -> bool:
    """Whether the file scales RoPE in any of the ways _rope_scaling reads (a factor, YaRN, rope tensors)."""
    a = meta.arch
    if meta.string(f"{a}.rope.scaling.type", "linear") == "yarn":
        return True
    if any(name in meta.f.tensors for name in ("rope_freqs.weight", "rope_factors_long.weight",
                                                "rope_factors_short.weight")):
        return True
    if meta.string(f"{a}.rope.scaling.type", "linear") == "none":
        return False
    factor = meta.number(f"{a}.rope.scaling.factor", meta.number(f"{a}.rope.scale_linear", 1.0))
    return factor != 1.0


def _windows(meta: Metadata, n_layers: int) -> tuple[int, ...]:
    """Each layer's sliding window, as llama.cpp sets them: <arch>.attention.sliding_window (Gemma 2: 4096 when
    absent; others: none when absent or 0) on the layers that <arch>.attention.sliding_window_pattern marks: an
    array of one bool per layer, or a period n (layer i slides unless i % n == n - 1; 0: every layer slides;
    absent: Gemma 2 2, Gemma 3 6, others 0). llama.cpp reads these keys for Gemma only (it disables Phi-3's
    window); llmrun writes and reads them for the Mistral, Qwen2/3 and Phi-3 windows too, as transformers
    applies them."""
    a = meta.arch
    k = f"{a}.attention.sliding_window"
    window = meta.integer(k, 0, LIMITS["attention.sliding_window"], 4096 if a == "gemma2" else 0)
    if window == 0:
        if a == "gemma2":
            raise meta.fail(f"metadata {k} = 0: Gemma 2 needs a window")
        return (0,) * n_layers
    pk = f"{a}.attention.sliding_window_pattern"
    if meta.f.value_types.get(pk) == ValueType.ARRAY:
        flags = meta.f.metadata[pk]
        if isinstance(flags, (list, StringArray)) or value_type_of(flags.dtype) not in INT_TYPES | {ValueType.BOOL}:
            raise meta.fail(f"metadata {pk} must be an array of bools (one per layer)")
        if len(flags) != n_layers:
            raise meta.fail(f"metadata {pk} has {len(flags)} entries for {n_layers} layers (expected one per layer)")
        return tuple(window if flag else 0 for flag in flags.tolist())
    n = meta.integer(pk, 0, LIMITS["attention.sliding_window_pattern"], {"gemma2": 2, "gemma3": 6}.get(a, 0))
    return tuple(window if n == 0 or i % n < n - 1 else 0 for i in range(n_layers))


def _refuse_unsupported_features(meta: Metadata) -> None:
    """Metadata that changes the math in ways llmrun does not implement yet."""
    a = meta.arch
    if meta.has(f"{a}.expert_count") and meta.integer(f"{a}.expert_count", 0, 1 << 16) > 0:
        raise meta.fail(f"mixture-of-experts models ({a}.expert_count = {meta.f.metadata[f'{a}.expert_count']}) "
                        "are not supported yet")


def _vocab_size(f: GGUFFile, meta: Metadata) -> int:
    """<arch>.vocab_size, else the embedding's row count (its shape is checked against the config later)."""
    a = meta.arch
    if meta.has(f"{a}.vocab_size"):
        return meta.integer(f"{a}.vocab_size", 1, LIMITS["vocab_size"])
    embd = f.tensors.get("token_embd.weight")
    if embd is None:
        raise meta.fail("missing tensor token_embd.weight")
    if len(embd.ne) < 2 or not 1 <= embd.ne[1] <= LIMITS["vocab_size"]:
        raise meta.fail(f"tensor token_embd.weight has ne = {list(embd.ne)}: cannot tell the vocabulary size")
    return embd.ne[1]


def _llama_weights(f: GGUFFile, c: ModelConfig, arch: str) -> ModelSpec:
    """Every tensor a model of `arch` needs, shape- and type-checked, as views of the file (phi3's fused
    attn_qkv and ffn_up as row views: one matrix, read once per product)."""
    # name -> expected ne (GGUF order: innermost first, i.e. (cols, rows))
    expected: dict[str, tuple[int, ...]] = {"token_embd.weight": (c.dim, c.vocab_size), "output_norm.weight": (c.dim,)}
    if "output.weight" in f.tensors:
        expected["output.weight"] = (c.dim, c.vocab_size)
    for name in ("rope_freqs.weight", "rope_factors_long.weight", "rope_factors_short.weight"):
        if name in f.tensors:
            expected[name] = (c.rotary_dim // 2,)  # read by _rope_scaling
    rows = {"wq": c.q_dim, "wk": c.kv_dim, "wv": c.kv_dim, "w_gate": c.hidden_dim, "w_up": c.hidden_dim}
    ne = {"attn_norm": (c.dim,), "wq": (c.dim, c.q_dim), "wk": (c.dim, c.kv_dim), "wv": (c.dim, c.kv_dim),
          "wo": (c.q_dim, c.dim), "ffn_norm": (c.dim,), "w_gate": (c.dim, c.hidden_dim), "w_up": (c.dim, c.hidden_dim),
          "w_down": (c.hidden_dim, c.dim), "q_norm": (c.head_dim,), "k_norm": (c.head_dim,),
          "attn_post_norm": (c.dim,), "ffn_post_norm": (c.dim,), "bq": (c.q_dim,), "bk": (c.kv_dim,), "bv": (c.kv_dim,)}
    # per layer: GGUF name -> the fields it holds (several: a fused matrix, each field a row view of it)
    layer: dict[str, tuple[str, ...]] = {f"{g}.weight": (ours,) for ours, g in
                                         {**LAYER_TENSORS, **FAMILY_TENSORS.get(arch, {})}.items()}
    if arch == "phi3":  # fused gate/up always; q/k/v fused as llama.cpp's converter writes, or apart
        del layer["ffn_gate.weight"]
        layer["ffn_up.weight"] = FUSED_TENSORS["ffn_up"]
        if "blk.0.attn_qkv.weight" in f.tensors:
            for g in ("attn_q", "attn_k", "attn_v"):
                del layer[f"{g}.weight"]
            layer["attn_qkv.weight"] = FUSED_TENSORS["attn_qkv"]
    if arch == "qwen2":
        layer.update({f"{BIAS_TENSORS[ours]}.bias": (ours,) for ours in BIAS_TENSORS})

    def layer_ne(fields: tuple[str, ...]) -> tuple[int, ...]:
        return ne[fields[0]] if len(fields) == 1 else (c.dim, sum(rows[x] for x in fields))

    for i in range(c.n_layers):
        for g, fields in layer.items():
            expected[f"blk.{i}.{g}"] = layer_ne(fields)

    for name in f.tensors:
        if name not in expected:
            hint = next((h for k, h in _EXTRA_TENSOR_HINTS.items() if k in name), "llmrun does not know what it is for")
            raise ModelFormatError(f"{f.path}: unexpected tensor {name!r} for a {arch} model with {c.n_layers} blocks: "
                                   f"{hint}")

    def tensor(name: str) -> Tensor:
        info = f.tensors.get(name)
        if info is None:
            raise ModelFormatError(f"{f.path}: missing tensor {name}")
        want = expected[name]
        if _padded(info.ne) != _padded(want):
            raise ModelFormatError(f"{f.path}: tensor {name} has ne = {list(info.ne)}, expected {list(want)} "
                                   f"(GGUF order, innermost first) for this config")
        if len(want) == 1 and info.type != "f32":
            raise ModelFormatError(f"{f.path}: norm tensor {name} has type {GGML_TYPE_NAMES[info.ggml_type]}, "
                                   "expected F32")
        return Tensor(f.tensor_data(name, tuple(reversed(want))), info.type)

    layers = []
    for i in range(c.n_layers):
        fields: dict[str, Tensor] = {}
        for g, ours in layer.items():
            t = tensor(f"blk.{i}.{g}")
            start = 0
            for name in ours:
                if len(ours) == 1:
                    fields[name] = t
                else:  # rows are independent in every type: a row range is a view of the fused matrix
                    fields[name] = Tensor(t.data[start:start + rows[name]], t.type)
                    start += rows[name]
        layers.append(LayerWeights(**fields))
    return ModelSpec(path=f.path, format=f"GGUF v{f.version}", config=c, token_embd=tensor("token_embd.weight"),
                     output_norm=tensor("output_norm.weight"),
                     output=tensor("output.weight") if "output.weight" in f.tensors else None,
                     layers=layers, file_size=f.file_size, name=_name(f), metadata=f.metadata,
                     metadata_types={key: int(vtype) for key, vtype in f.value_types.items()})


def _name(f: GGUFFile) -> str | None:
    """general.name when it is a string (display only: a wrong type is not worth refusing the model for)."""
    return f.metadata["general.name"] if f.value_types.get("general.name") == ValueType.STRING else None


def _padded(ne: tuple[int, ...]) -> tuple[int, ...]:
    """Dims padded with 1s to four, as ggml compares shapes (a norm stored as [dim, 1] is a vector)."""
    return tuple(ne) + (1,) * (MAX_DIMS - len(ne))


# ------------------------------------------------------------------------------------------------
# The tokenizer
# ------------------------------------------------------------------------------------------------

_SPM_SPACE = "\u2581".encode()
_TOKEN_TYPE_KINDS = frozenset({ValueType.INT32, ValueType.UINT32, ValueType.INT8, ValueType.UINT8,
                               ValueType.INT16, ValueType.UINT16, ValueType.INT64, ValueType.UINT64})
MAX_TOKEN_TYPE = 6  # 0 undefined (treated as normal), 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte


def _read_tokenizer(f: GGUFFile, meta: Metadata, spec: ModelSpec) -> None:
    """Fills `spec`'s tokenizer fields: the vocabulary of a `tokenizer.ggml.model` "llama" (SentencePiece BPE)
    or "gpt2" (byte-level BPE) file, its defaults and special ids, its chat template. Other tokenizer models
    leave spec.tokenizer None and say why in spec.tokenizer_problem: the model still loads for logits()."""
    vocab = spec.config.vocab_size
    if meta.has("tokenizer.chat_template"):
        spec.chat_template = meta.string("tokenizer.chat_template")
    if not meta.has("tokenizer.ggml.model"):
        spec.tokenizer_problem = f"{f.path}: the GGUF file has no tokenizer (no tokenizer.ggml.model)"
        return
    model = meta.string("tokenizer.ggml.model")
    if model not in ("llama", "gpt2"):
        spec.tokenizer_problem = (f"{f.path}: tokenizer model {model!r} is not supported yet (llmrun reads "
                                  "'llama', SentencePiece BPE, and 'gpt2'); pass token ids to logits() instead")
        return
    eot = f.metadata.get("tokenizer.ggml.eot_token_id")
    # llmrun does not encode with the end-of-turn id, so a bad one is ignored (as llama.cpp does)
    if f.value_types.get("tokenizer.ggml.eot_token_id") in INT_TYPES and 0 <= eot < vocab:
        spec.eog_token_ids = (eot,)
    # llama.cpp's defaults: BOS for a SentencePiece vocabulary, only where the file asks for it for BPE
    spec.add_bos_token = meta.boolean("tokenizer.ggml.add_bos_token", model == "llama")
    spec.add_eos_token = meta.boolean("tokenizer.ggml.add_eos_token", False)
    if model == "llama":
        spec.tokenizer = _sentencepiece_tokenizer(f, meta, vocab)
        return
    try:
        spec.tokenizer = _gpt2_tokenizer(f, meta, vocab)
    except TokenizerError as e:  # the model still loads for logits() and requantizing; tokenizing says why not
        spec.tokenizer_problem = f"{f.path}: {e}"


def _sentencepiece_tokenizer(f: GGUFFile, meta: Metadata, vocab: int) -> SentencePieceTokenizer:
    """The SentencePiece tokenizer of a `tokenizer.ggml.model == "llama"` file."""
    tokens = meta.array("tokenizer.ggml.tokens", vocab, frozenset({ValueType.STRING}))
    scores = (meta.array("tokenizer.ggml.scores", vocab, FLOAT_TYPES) if meta.has("tokenizer.ggml.scores")
              else np.zeros(vocab, dtype=np.float32))  # llama.cpp's default too
    types = None
    if meta.has("tokenizer.ggml.token_type"):
        types = meta.array("tokenizer.ggml.token_type", vocab, _TOKEN_TYPE_KINDS)
        bad = np.flatnonzero((types < 0) | (types > MAX_TOKEN_TYPE))
        if bad.size:
            raise meta.fail(f"tokenizer.ggml.token_type[{bad[0]}] = {types[bad[0]]} is not a known token type (0..6)")
        types = types.tolist()
        for i, t in enumerate(types):  # llama.cpp's rule: a turn's end is a control token, whatever the file says
            if t == TokenType.USER_DEFINED and tokens.raw(i).decode("utf-8", "replace") in END_OF_TURN_TEXTS:
                types[i] = TokenType.CONTROL

    def token_id(name: str, default: int) -> int:
        return meta.integer(f"tokenizer.ggml.{name}", 0, vocab - 1, min(default, vocab - 1))

    ids = {"bos_id": token_id("bos_token_id", 1), "eos_id": token_id("eos_token_id", 2),
           "unk_id": token_id("unknown_token_id", 0)}
    pieces = [tokens.raw(i).replace(_SPM_SPACE, b" ") for i in range(vocab)]
    try:
        return SentencePieceTokenizer(pieces, scores, token_types=types, byte_fallback=True,
                                      add_dummy_prefix=meta.boolean("tokenizer.ggml.add_space_prefix", True),
                                      rstrip_ids=_phi3_rstrip_ids(f, pieces, types), **ids)
    except TokenizerError as e:
        raise ModelFormatError(f"{f.path}: bad tokenizer.ggml.* vocabulary: {e}") from None


def _phi3_rstrip_ids(f: GGUFFile, pieces: list[bytes], types: list[int] | None) -> list[int]:
    """The control tokens that swallow the whitespace after them in a Phi-3 file: GGUF has no field for
    tokenizer.json's rstrip, so llama.cpp decides by the model's name (general.name containing "phi-3" or
    "phi3"): every control token but <unk>, <s> and <|endoftext|> (and </s> too), as here."""
    name = (_name(f) or "").lower()
    if types is None or not ("phi-3" in name or "phi3" in name):
        return []
    keep = {b"<unk>", b"<s>", b"<|endoftext|>"}
    return [i for i, (piece, kind) in enumerate(zip(pieces, types, strict=True))
            if (kind == TokenType.CONTROL or piece == b"</s>") and piece not in keep]


def _gpt2_tokenizer(f: GGUFFile, meta: Metadata, vocab: int) -> BPETokenizer:
    """The byte-level BPE tokenizer of a `tokenizer.ggml.model == "gpt2"` file: tokens, merges, token types
    and the pre-tokenizer named by tokenizer.ggml.pre. TokenizerError for a vocabulary llmrun cannot use (an
    unknown pre-tokenizer name: never guessed; merges of tokens not in the vocabulary)."""
    tokens = meta.array("tokenizer.ggml.tokens", vocab, frozenset({ValueType.STRING}))
    merges = f.metadata.get("tokenizer.ggml.merges")
    if not isinstance(merges, StringArray):
        raise meta.fail("tokenizer.ggml.merges must be an array of strings for a gpt2 tokenizer")
    types = None
    if meta.has("tokenizer.ggml.token_type"):
        types = meta.array("tokenizer.ggml.token_type", vocab, _TOKEN_TYPE_KINDS).tolist()
    ids: dict[str, int | None] = {}
    for name in ("bos_token_id", "eos_token_id", "unknown_token_id"):
        key = f"tokenizer.ggml.{name}"
        ids[name] = meta.integer(key, 0, vocab - 1) if meta.has(key) else None
    return gguf_bpe_tokenizer(list(tokens), list(merges), types, meta.string("tokenizer.ggml.pre", "default"),
                              bos_id=ids["bos_token_id"], eos_id=ids["eos_token_id"], unk_id=ids["unknown_token_id"])
