"""Hugging Face model folders: config.json + *.safetensors (+ tokenizer.json, tokenizer_config.json,
generation_config.json, chat_template.jinja).

Architectures (config.json `architectures`): LlamaForCausalLM (Llama 2/3/3.1/3.2, TinyLlama, SmolLM),
MistralForCausalLM, Qwen2ForCausalLM (q/k/v biases), Qwen3ForCausalLM (q/k norms), Gemma2ForCausalLM,
Gemma3ForCausalLM (and the text model of Gemma3ForConditionalGeneration: its vision tower is left out),
Phi3ForCausalLM (Phi-3, Phi-3.5, Phi-4-mini), SmolLM3ForCausalLM and
GraniteForCausalLM. Anything else is refused by name (mixtures of experts, vision models, Gemma 3n ...).

Hyperparameters as transformers 4.x writes them (`rope_theta`, `rope_scaling` at the top level, whose kind
is `rope_type` or the older `type`; Gemma 3's `rope_local_base_freq`, `sliding_window_pattern`) and as 5.x
does (`rope_parameters` holding both, per layer type for Gemma 3; `layer_types`). RoPE scaling "linear",
"llama3", "yarn" and "longrope" become a spec.RopeScaling (llmrun/rope.py computes the numbers); any other
kind is refused naming it. Hugging Face checkpoints rotate the two halves of each head (rope_style
"halves"); tied embeddings leave `spec.output` None.

What each family sets in the ModelConfig (transformers' modeling files are the reference):
- Gemma 2/3: norms (1 + w) -- the reader adds the 1, every norm, q/k norms included --, embeddings times
  sqrt(hidden_size) (float32, whatever the checkpoint's dtype), q.k times query_pre_attn_scalar^-1/2, GeGLU
  with tanh GELU, norms after the attention and feed-forward blocks, soft-capping (Gemma 2), sliding windows on the
  sliding_attention layers (Gemma 2: the even ones; Gemma 3: five of every six), Gemma 3's local RoPE base
  on those layers and q/k norms.
- Qwen3: q/k norms. Phi-3: the fused qkv_proj and gate_up_proj become row views (no copy), partial rotary,
  LongRoPE, a sliding window on every layer. SmolLM3: no RoPE where no_rope_layers says 0. Granite: the
  embedding, attention, residual and logit multipliers.
- Sliding windows (Mistral, Qwen2/3 use_sliding_window, Phi-3, Gemma) become config.layer_windows; they
  do not limit the context.

Weights: f32, f16 and bf16 matrices are used in place (memory maps); norms and biases become f32. With
`quantize` the matrices are converted at load time into GGUF block layouts (q8_0, q4_0; rows that are not
whole blocks fall back to f16, as llama.cpp does), reporting progress through a callback.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelFormatError, TokenizerError
from ..quantize import convert_rows, dequantize
from ..rope import scaling_problem
from ..spec import (
    F32_MAX,
    F32_MIN,
    TENSOR_TYPES,
    LayerWeights,
    ModelConfig,
    ModelSpec,
    RopeScaling,
    Tensor,
    attention_shape_problem,
)
from .hf_tokenizer import load_folder_tokenizer, read_json
from .safetensors import SafetensorsSet, TensorEntry

ARCHITECTURES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2",
                 "Qwen3ForCausalLM": "qwen3", "Gemma2ForCausalLM": "gemma2", "Gemma3ForCausalLM": "gemma3",
                 "Phi3ForCausalLM": "phi3", "SmolLM3ForCausalLM": "smollm3", "GraniteForCausalLM": "granite"}
# Architectures people try that llmrun does not run, and why (anything else: "not supported").
REFUSED = {
    "Gemma3nForConditionalGeneration": "Gemma 3n (per-layer embeddings, AltUp and vision/audio towers)",
    "Gemma3nForCausalLM": "Gemma 3n (per-layer embeddings and AltUp)",
    "Phi3VForCausalLM": "a Phi-3 vision model", "Phi4MMForCausalLM": "Phi-4-multimodal",
    "Mistral3ForConditionalGeneration": "a vision-language model", "LlavaForConditionalGeneration": "a vision model",
}
GEMMA = ("gemma2", "gemma3")
# transformers' Qwen3Config and Gemma2/3Config give head_dim a default of their own where config.json has none
# The config classes' defaults (transformers 5.24) for keys that published config.json files leave out: the
# text_config of gemma-3-4b-it and larger names neither heads, vocabulary nor context. Where a family is absent,
# or a key, it must be in the file (head_dim: else dim / heads).
CONFIG_DEFAULTS = {
    "gemma2": {"vocab_size": 256000, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
               "max_position_embeddings": 8192, "query_pre_attn_scalar": 256, "sliding_window": 4096},
    "gemma3": {"vocab_size": 262208, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
               "max_position_embeddings": 131072, "query_pre_attn_scalar": 256, "sliding_window": 4096},
    "qwen3": {"head_dim": 128},
}
QUANTIZE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0")
# Generous bounds: they reject garbage before any size arithmetic, not real models.
LIMITS = {"hidden_size": 1 << 16, "intermediate_size": 1 << 20, "num_hidden_layers": 1 << 10,
          "num_attention_heads": 1 << 12, "num_key_value_heads": 1 << 12, "head_dim": 1 << 12,
          "vocab_size": 1 << 22, "max_position_embeddings": (1 << 31) - 1, "sliding_window": (1 << 31) - 1,
          "original_max_position_embeddings": (1 << 31) - 1, "max_window_layers": 1 << 10,
          "sliding_window_pattern": 1 << 10, "no_rope_layer_interval": 1 << 10}
# Our layer fields -> Hugging Face names inside `model.layers.N.` (Llama's; FAMILY_NAMES overrides)
LAYER_NAMES = {"attn_norm": "input_layernorm", "wq": "self_attn.q_proj", "wk": "self_attn.k_proj",
               "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
               "w_gate": "mlp.gate_proj", "w_down": "mlp.down_proj", "w_up": "mlp.up_proj"}
_GEMMA_NAMES = {**LAYER_NAMES, "attn_post_norm": "post_attention_layernorm", "ffn_norm": "pre_feedforward_layernorm",
                "ffn_post_norm": "post_feedforward_layernorm"}
_QK_NORMS = {"q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm"}
FAMILY_NAMES = {"gemma2": _GEMMA_NAMES, "gemma3": {**_GEMMA_NAMES, **_QK_NORMS}, "qwen3": {**LAYER_NAMES, **_QK_NORMS}}
BIAS_NAMES = {"bq": "self_attn.q_proj", "bk": "self_attn.k_proj", "bv": "self_attn.v_proj"}
# Phi-3's fused projections: the fused matrix, and the fields that are row views of it, in row order
FUSED = {"self_attn.qkv_proj": ("wq", "wk", "wv"), "mlp.gate_up_proj": ("w_gate", "w_up")}
NORM_FIELDS = ("attn_norm", "ffn_norm", "attn_post_norm", "ffn_post_norm", "q_norm", "k_norm")

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
    weights: SafetensorsSet | _TextWeights = SafetensorsSet(folder)
    if raw.get("architectures") == ["Gemma3ForConditionalGeneration"]:  # a Gemma 3 with vision: its text model
        raw, weights = _text_config(config_path, raw), _TextWeights(weights)
    arch, config, scaling = parse_config(config_path, raw)
    spec = _build(folder, weights, config, raw, arch, quantize, progress)
    spec.rope_scaling = scaling
    spec.architecture, spec.name = arch, folder.name
    load_folder_tokenizer(folder, spec)
    return spec


# Gemma3ForConditionalGeneration (gemma-3-4b-it and larger: text and vision): llmrun runs its text model,
# Gemma3ForCausalLM under other tensor names, and leaves the vision tower and its projector out.
_TEXT_PREFIXES = (("model.language_model.", "model."), ("language_model.model.", "model."),
                  ("language_model.lm_head.", "lm_head."))
_VISION_PREFIXES = ("vision_tower.", "model.vision_tower.", "multi_modal_projector.", "model.multi_modal_projector.")


def _text_config(path: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """A Gemma3ForConditionalGeneration config.json's text_config as a Gemma3ForCausalLM config (the dtype and
    tied embeddings are said at the top level)."""
    text = raw.get("text_config")
    if not isinstance(text, dict):
        raise ModelFormatError(f"{path}: a Gemma3ForConditionalGeneration config needs a text_config object, got "
                               f"{_short(text)}")
    inherited = {k: raw[k] for k in ("dtype", "torch_dtype", "tie_word_embeddings") if k in raw and k not in text}
    return {**text, **inherited, "architectures": ["Gemma3ForCausalLM"]}


class _TextWeights(Mapping[str, TensorEntry]):
    """The text model's tensors of a Gemma3ForConditionalGeneration folder, under Gemma3ForCausalLM's names."""

    def __init__(self, weights: SafetensorsSet) -> None:
        self._weights = weights
        self._names: dict[str, str] = {}  # our name -> the file's
        for name in weights:
            if name.startswith(_VISION_PREFIXES):
                continue
            ours = next((new + name[len(old):] for old, new in _TEXT_PREFIXES if name.startswith(old)), name)
            self._names[ours] = name

    def __getitem__(self, name: str) -> TensorEntry:
        return self._weights[self._names[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)

    def array(self, name: str) -> np.ndarray:
        return self._weights.array(self._names[name])

    @property
    def file_size(self) -> int:
        return self._weights.file_size


# ------------------------------------------------------------------------------------------------
# config.json
# ------------------------------------------------------------------------------------------------

class _Config:
    """Checked reads of config.json's values, each failure naming the file, key and value."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path, self.raw = path, raw

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {message}")

    def integer(self, key: str, default: int | None = None, source: dict[str, Any] | None = None) -> int:
        value = (self.raw if source is None else source).get(key, default)
        if value is None:
            if default is None:
                raise self.fail(f"missing {key}")
            value = default
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= LIMITS[key]:
            raise self.fail(f"{key} = {value!r} must be an integer in 1..{LIMITS[key]}")
        return value

    def number(self, key: str, default: float | None, source: dict[str, Any] | None = None, what: str = ""
               ) -> float | None:
        """A positive finite number from `source` (rope parameters), else from the top level of config.json
        (transformers 4.x keeps rope_theta there); `default` where the key is absent or null."""
        value = (source if source is not None and key in source else self.raw).get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (_finite(value) and value > 0):
            raise self.fail(f"{what}{key} = {value!r} must be a positive number")
        return float(value)

    def positive(self, key: str, default: float, source: dict[str, Any] | None = None, what: str = "") -> float:
        value = self.number(key, default, source, what)
        assert value is not None
        return value


def parse_config(path: Path, raw: dict[str, Any]) -> tuple[str, ModelConfig, RopeScaling | None]:
    """The architecture, ModelConfig and RoPE scaling of a config.json."""
    cfg = _Config(path, raw)
    archs = raw.get("architectures")
    if not isinstance(archs, list) or len(archs) != 1 or not isinstance(archs[0], str):
        raise cfg.fail(f"architectures must name one architecture, got {archs!r}")
    name = archs[0]
    if name in REFUSED or "Moe" in name or "MoE" in name or name == "MixtralForCausalLM":
        why = REFUSED.get(name, "a mixture-of-experts model")
        raise cfg.fail(f"architecture {name!r} is not supported: {why}")
    if name not in ARCHITECTURES:
        raise cfg.fail(f"architecture {name!r} is not supported (llmrun runs {', '.join(ARCHITECTURES)})")
    arch = ARCHITECTURES[name]
    raw = {**CONFIG_DEFAULTS.get(arch, {}), **raw}
    cfg = _Config(path, raw)
    _check_math(cfg, arch)

    dim = cfg.integer("hidden_size")
    n_heads = cfg.integer("num_attention_heads")
    n_kv_heads = cfg.integer("num_key_value_heads", n_heads)
    n_layers = cfg.integer("num_hidden_layers")
    if raw.get("head_dim") is not None:
        head_dim = cfg.integer("head_dim")
    elif dim % n_heads:
        raise cfg.fail(f"hidden_size {dim} is not divisible by num_attention_heads {n_heads} (and no head_dim)")
    else:
        head_dim = dim // n_heads
    if n_heads % n_kv_heads:
        raise cfg.fail(f"num_attention_heads {n_heads} is not divisible by num_key_value_heads {n_kv_heads}")
    if head_dim % 2:
        raise cfg.fail(f"head size {head_dim} must be even for RoPE")
    problem = attention_shape_problem(dim, n_heads, head_dim)
    if problem is not None:
        raise cfg.fail(problem)

    global_params, local_params = _rope_parameters(cfg)
    theta = cfg.positive("rope_theta", 1e6 if arch == "gemma3" else 10000.0, global_params)
    partial = cfg.positive("partial_rotary_factor", 1.0, global_params)
    rope_dim = int(head_dim * partial)
    if rope_dim != head_dim and (arch != "phi3" or partial > 1 or rope_dim < 2 or rope_dim % 2):
        raise cfg.fail(f"partial_rotary_factor = {partial} ({rope_dim} of {head_dim} dims) is not supported"
                       + (" for this architecture" if arch != "phi3" else ": the rotary dims must be even"))
    max_seq = cfg.integer("max_position_embeddings", 2048)
    windows = _layer_windows(cfg, arch, n_layers)
    gemma = arch in GEMMA
    options: dict[str, Any] = {}
    if gemma:
        options = dict(ffn_activation="gelu_tanh", embed_scale=_embed_scale(dim),
                       attn_scale=cfg.positive("query_pre_attn_scalar", 256.0) ** -0.5,
                       attn_softcap=_softcap(cfg, "attn_logit_softcapping", 50.0 if arch == "gemma2" else 0.0),
                       final_softcap=_softcap(cfg, "final_logit_softcapping", 30.0 if arch == "gemma2" else 0.0))
    if arch == "gemma3":
        # 5.x: rope_parameters.sliding_attention.rope_theta; 4.x: rope_local_base_freq (never the global base)
        local_base = cfg.positive("rope_local_base_freq", 10000.0)
        options["rope_theta_local"] = (cfg.positive("rope_theta", local_base, local_params)
                                       if "rope_theta" in local_params else local_base)
        options["layer_ropes"] = tuple("local" if w else "global" for w in windows)
    if arch == "smollm3":
        options["layer_ropes"] = _no_rope_layers(cfg, n_layers)
    if arch == "granite":
        options = dict(embed_scale=cfg.positive("embedding_multiplier", 1.0),
                       attn_scale=cfg.positive("attention_multiplier", 1.0),
                       residual_scale=cfg.positive("residual_multiplier", 1.0),
                       logit_scale=1.0 / cfg.positive("logits_scaling", 1.0))
    config = ModelConfig(
        dim=dim, hidden_dim=cfg.integer("intermediate_size"), n_layers=n_layers, n_heads=n_heads,
        n_kv_heads=n_kv_heads, head_dim=head_dim, vocab_size=cfg.integer("vocab_size"), max_seq_len=max_seq,
        rope_theta=theta, norm_eps=cfg.positive("rms_norm_eps", 1e-6), rope_style="halves",
        rope_dim=rope_dim if rope_dim != head_dim else 0, layer_windows=windows if any(windows) else (),
        **options)
    _check_float32(cfg, config, arch)
    scaling = _rope_scaling(cfg, arch, global_params, rope_dim, max_seq)
    if scaling is not None:
        problem = scaling_problem(scaling, theta, rope_dim)
        if problem is not None:
            field, why = problem
            key = {"theta": "rope_theta", "original_context": "original_max_position_embeddings"}.get(field, field)
            value = theta if field == "theta" else getattr(scaling, field)
            raise cfg.fail(f"rope scaling ({scaling.kind}) {key} = {_short(value)} {why}")
    return arch, config, scaling


# The config.json key each float option of the ModelConfig comes from, per architecture (the C library holds
# them as float32: a value beyond float32's range would reach it as inf or 0)
_FLOAT_KEYS = {"rope_theta": "rope_theta", "rope_theta_local": "rope_local_base_freq", "norm_eps": "rms_norm_eps",
               "attn_softcap": "attn_logit_softcapping", "final_softcap": "final_logit_softcapping"}
_FAMILY_FLOAT_KEYS = {"granite": {"embed_scale": "embedding_multiplier", "attn_scale": "attention_multiplier",
                                  "residual_scale": "residual_multiplier", "logit_scale": "logits_scaling"},
                      **{g: {"attn_scale": "query_pre_attn_scalar"} for g in GEMMA}}


def _check_float32(cfg: _Config, config: ModelConfig, arch: str) -> None:
    """Refuses an option whose value (as computed from its key) is not a normal float32 number."""
    for field, key in {**_FLOAT_KEYS, **_FAMILY_FLOAT_KEYS.get(arch, {})}.items():
        value = getattr(config, field)
        if value is not None and value != 0 and not F32_MIN <= abs(value) <= F32_MAX:
            raise cfg.fail(f"{key} = {cfg.raw.get(key, value)!r} is out of float32's range (it gives {field} = "
                           f"{value:g})")


def _check_math(cfg: _Config, arch: str) -> None:
    """Refuses options that change the math in ways llmrun does not compute."""
    raw = cfg.raw
    if arch in GEMMA:
        # transformers' Gemma 2/3 read hidden_activation only (hidden_act is Gemma 1's, ignored here)
        act = raw.get("hidden_activation") or "gelu_pytorch_tanh"
        if act not in ("gelu_pytorch_tanh", "gelu_new"):
            raise cfg.fail(f"hidden_activation = {act!r} is not supported (llmrun's Gemma feed-forward is GeGLU with "
                           "the tanh approximation: gelu_pytorch_tanh)")
        if raw.get("use_bidirectional_attention"):
            raise cfg.fail("use_bidirectional_attention = true is not supported (an embedding model: llmrun runs "
                           "causal language models)")
    else:
        act = raw.get("hidden_act", "silu")
        if act not in ("silu", "swish"):
            raise cfg.fail(f"hidden_act = {act!r} is not supported (llmrun's feed-forward is SwiGLU: silu)")
    if raw.get("mlp_bias"):
        raise cfg.fail("mlp_bias = true is not supported (feed-forward biases)")
    if arch != "qwen2" and raw.get("attention_bias"):
        raise cfg.fail("attention_bias = true is not supported for this architecture (it adds an output bias too)")


def _softcap(cfg: _Config, key: str, default: float) -> float:
    """A Gemma soft-cap: `default` (Gemma 2's) where the key is absent, none (0) where it is null."""
    if key in cfg.raw and cfg.raw[key] is None:
        return 0.0
    return cfg.positive(key, default) if default else cfg.number(key, None) or 0.0


def _embed_scale(dim: int) -> float:
    """Gemma's sqrt(hidden_size) in float32, whatever the checkpoint's dtype: transformers casts it to the dtype
    the model runs in (float32 when loaded in float32, not config.json's bfloat16), and llmrun computes in
    float32, as llama.cpp does and as the GGUF reader does, so a folder and its GGUF agree."""
    return float(np.float32(dim**0.5))


def _rope_parameters(cfg: _Config) -> tuple[dict[str, Any], dict[str, Any]]:
    """The RoPE parameters of the global (full-attention) layers and of Gemma 3's local ones: transformers
    5's rope_parameters (per layer type for Gemma 3), else 4.x's rope_scaling; {} for none."""
    def obj(key: str, value: Any) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise cfg.fail(f"{key} must be an object or null, got {value!r}")
        return value

    params = obj("rope_parameters", cfg.raw.get("rope_parameters"))
    if "full_attention" in params or "sliding_attention" in params:  # per layer type (5.x Gemma 3)
        return (obj("rope_parameters.full_attention", params.get("full_attention")),
                obj("rope_parameters.sliding_attention", params.get("sliding_attention")))
    if not params:  # 4.x: rope_scaling (for Gemma 3 the global layers'; the local base is rope_local_base_freq)
        params = obj("rope_scaling", cfg.raw.get("rope_scaling"))
    return params, {}


def _rope_scaling(cfg: _Config, arch: str, params: dict[str, Any], rope_dim: int, max_seq: int
                  ) -> RopeScaling | None:
    """The global layers' RoPE scaling, as transformers reads rope_parameters / rope_scaling."""
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return None
    if arch == "phi3" and kind in ("su", "yarn"):  # transformers' Phi3Config reads both as longrope
        kind = "longrope"
    what = f"rope scaling ({kind}) "

    def num(key: str, default: float | None = None) -> float:
        value = cfg.number(key, default, params, what)
        if value is None:
            raise cfg.fail(f"{what}needs {key}")
        return value

    def original() -> int:
        # transformers: Phi3Config's own original_max_position_embeddings field (default 4096) replaces
        # rope_parameters' (standardize_rope_params); elsewhere a top-level one wins too, then
        # rope_parameters', then max_position_embeddings. An integral float (4096.0) is that integer.
        key = "original_max_position_embeddings"
        top = cfg.raw.get(key)
        if arch == "phi3" or top is not None:
            source, default = cfg.raw, 4096 if arch == "phi3" else max_seq
        else:
            source, default = params, max_seq
        value = source.get(key)
        if isinstance(value, float) and value.is_integer():
            source = {key: int(value)}
        return cfg.integer(key, default, source)

    if kind == "linear":
        return RopeScaling("linear", factor=num("factor"))
    if kind == "llama3":
        s = RopeScaling("llama3", factor=num("factor"), low_freq_factor=num("low_freq_factor"),
                        high_freq_factor=num("high_freq_factor"), original_context=original())
        if s.high_freq_factor <= s.low_freq_factor:
            raise cfg.fail(f"rope scaling llama3 needs high_freq_factor ({s.high_freq_factor}) > low_freq_factor "
                           f"({s.low_freq_factor})")
        return s
    if kind == "yarn":
        orig = original()
        factor = num("factor", max_seq / orig)
        attention = cfg.number("attention_factor", None, params, what)
        mscale, mscale_all = cfg.number("mscale", None, params, what), cfg.number("mscale_all_dim", None, params, what)
        if attention is None and mscale and mscale_all:  # transformers' DeepSeek form
            attention = _mscale(factor, mscale) / _mscale(factor, mscale_all)
        truncate = params.get("truncate", True)
        if not isinstance(truncate, bool):
            raise cfg.fail(f"{what}truncate = {truncate!r} must be true or false")
        s = RopeScaling("yarn", factor=factor, original_context=orig, attention_factor=attention, truncate=truncate,
                        beta_fast=cfg.number("beta_fast", None, params, what) or 32.0,
                        beta_slow=cfg.number("beta_slow", None, params, what) or 1.0)
        return s
    if kind == "longrope":
        orig = original()

        def factors(key: str) -> tuple[float, ...]:
            values = params.get(key)
            if (not isinstance(values, list) or len(values) != rope_dim // 2 or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and _finite(v) and v > 0 for v in values)):
                raise cfg.fail(f"{what}{key} must be a list of {rope_dim // 2} positive numbers (rotary dims / 2), "
                               f"got {_short(values)}")
            return tuple(float(v) for v in values)

        return RopeScaling("longrope", factor=num("factor", max_seq / orig), original_context=orig,
                           attention_factor=cfg.number("attention_factor", None, params, what),
                           short_factor=factors("short_factor"), long_factor=factors("long_factor"))
    raise cfg.fail(f"rope scaling type {kind!r} is not supported (llmrun knows default, linear, llama3, yarn and "
                   "longrope)")


def _mscale(factor: float, mscale: float) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _layer_types(cfg: _Config, n_layers: int) -> list[str] | None:
    """transformers 5's `layer_types` (sliding_attention / full_attention per layer), None where absent."""
    types = cfg.raw.get("layer_types")
    if types is None:
        return None
    if not isinstance(types, list) or len(types) != n_layers or any(
            t not in ("sliding_attention", "full_attention") for t in types):
        raise cfg.fail(f"layer_types must list 'sliding_attention' or 'full_attention' for each of the {n_layers} "
                       f"layers, got {_short(types)}")
    return types


def _layer_windows(cfg: _Config, arch: str, n_layers: int) -> tuple[int, ...]:
    """Each layer's sliding window (0: none), as transformers decides which layers slide."""
    raw = cfg.raw
    if arch in ("llama", "granite"):
        return (0,) * n_layers
    if arch in ("qwen2", "qwen3", "smollm3") and not raw.get("use_sliding_window"):
        return (0,) * n_layers
    if raw.get("sliding_window") is None:  # (Gemma's default window is in CONFIG_DEFAULTS)
        return (0,) * n_layers
    else:
        window = cfg.integer("sliding_window")
    types = _layer_types(cfg, n_layers)
    if arch in ("mistral", "phi3"):  # one window on every layer
        return (window,) * n_layers
    if types is None:
        if arch == "gemma2":
            types = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)]
        elif arch == "gemma3":
            pattern = cfg.integer("sliding_window_pattern", 6)
            types = ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n_layers)]
        elif arch == "smollm3":
            no_rope = _no_rope_layers(cfg, n_layers)
            types = ["sliding_attention" if r == "none" else "full_attention" for r in no_rope]
        else:
            first = cfg.integer("max_window_layers", 28)
            types = ["sliding_attention" if i >= first else "full_attention" for i in range(n_layers)]
    return tuple(window if t == "sliding_attention" else 0 for t in types)


def _no_rope_layers(cfg: _Config, n_layers: int) -> tuple[str, ...]:
    """SmolLM3's layers without RoPE: `no_rope_layers` (1 = RoPE, 0 = none per layer), else every
    no_rope_layer_interval-th layer (4) goes without."""
    flags = cfg.raw.get("no_rope_layers")
    if flags is None:
        interval = cfg.integer("no_rope_layer_interval", 4)
        flags = [int((i + 1) % interval != 0) for i in range(n_layers)]
    if not isinstance(flags, list) or len(flags) != n_layers or any(f not in (0, 1) or isinstance(f, float)
                                                                   for f in flags):
        raise cfg.fail(f"no_rope_layers must hold 0 or 1 for each of the {n_layers} layers, got {_short(flags)}")
    return tuple("global" if f else "none" for f in flags)


# ------------------------------------------------------------------------------------------------
# Weights
# ------------------------------------------------------------------------------------------------

def _layer_tensors(c: ModelConfig, arch: str) -> dict[str, tuple[tuple[int, ...], tuple[str, ...]]]:
    """Hugging Face name inside `model.layers.N.` (without .weight / .bias) -> (shape, our fields it holds)."""
    shapes = {"attn_norm": (c.dim,), "wq": (c.q_dim, c.dim), "wk": (c.kv_dim, c.dim), "wv": (c.kv_dim, c.dim),
              "wo": (c.dim, c.q_dim), "ffn_norm": (c.dim,), "w_gate": (c.hidden_dim, c.dim),
              "w_down": (c.dim, c.hidden_dim), "w_up": (c.hidden_dim, c.dim), "attn_post_norm": (c.dim,),
              "ffn_post_norm": (c.dim,), "q_norm": (c.head_dim,), "k_norm": (c.head_dim,)}
    names = FAMILY_NAMES.get(arch, LAYER_NAMES)
    out = {f"{hf}.weight": (shapes[ours], (ours,)) for ours, hf in names.items()}
    if arch == "phi3":
        for hf, fields in FUSED.items():
            for ours in fields:
                del out[f"{names[ours]}.weight"]
            out[f"{hf}.weight"] = (((sum(shapes[f][0] for f in fields)), c.dim), fields)
    if arch == "qwen2":
        out.update({f"{hf}.bias": ((shapes["w" + ours[1]][0],), (ours,)) for ours, hf in BIAS_NAMES.items()})
    return out


def _build(folder: Path, weights: SafetensorsSet | _TextWeights, c: ModelConfig, raw: dict[str, Any], arch: str,
           quantize: str | None, progress: Progress | None) -> ModelSpec:
    tied = bool(raw.get("tie_word_embeddings", arch in (*GEMMA, "smollm3")))  # their configs default to tied
    expected: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (c.vocab_size, c.dim),
                                            "model.norm.weight": (c.dim,)}
    if not tied:
        expected["lm_head.weight"] = (c.vocab_size, c.dim)
    per_layer = _layer_tensors(c, arch)
    for i in range(c.n_layers):
        for name, (shape, _) in per_layer.items():
            expected[f"model.layers.{i}.{name}"] = shape

    ignorable = ("rotary_emb.inv_freq",)  # a buffer some old checkpoints saved; recomputed here
    for name in weights:
        if name not in expected and not name.endswith(ignorable) and not (tied and name == "lm_head.weight"):
            raise ModelFormatError(f"{folder}: unexpected tensor {name!r} for a {raw['architectures'][0]} with "
                                   f"{c.n_layers} layers")
    total = len(expected)
    done = 0
    plus_one = arch in GEMMA  # Gemma's RMSNorm multiplies by (1 + w): the spec holds the multiplier

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
            values = np.ascontiguousarray(dequantize(t.data, t.type), dtype=np.float32)
            if plus_one and name.endswith("norm.weight"):
                values = (values + np.float32(1.0)).astype(np.float32)
            t = Tensor(values, "f32")
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
        fields: dict[str, Tensor] = {}
        for name, (shape, ours) in per_layer.items():
            t = tensor(prefix + name, is_vector=len(shape) == 1)
            if len(ours) == 1:
                fields[ours[0]] = t
            else:  # a fused projection: each field a row view of it (rows are independent in every type)
                start = 0
                for field in ours:
                    rows = per_layer_rows(c, field)
                    fields[field] = Tensor(t.data[start:start + rows], t.type)
                    start += rows
        layers.append(LayerWeights(**fields))
    output_norm = tensor("model.norm.weight", is_vector=True)
    output = None if tied else tensor("lm_head.weight")
    fmt = f"Hugging Face {raw['architectures'][0]}" + (f" ({quantize} at load)" if quantize else "")
    return ModelSpec(path=folder, format=fmt, config=c, token_embd=token_embd, output_norm=output_norm,
                     output=output, layers=layers, file_size=weights.file_size)


def per_layer_rows(c: ModelConfig, field: str) -> int:
    """The rows of one projection of a layer (a part of a fused matrix)."""
    return {"wq": c.q_dim, "wk": c.kv_dim, "wv": c.kv_dim, "w_gate": c.hidden_dim, "w_up": c.hidden_dim}[field]


def _convert(t: Tensor, wanted: str) -> Tensor:
    """A matrix in `wanted` (f16 where its rows are not whole blocks), converted chunk by chunk."""
    rows, cols = t.shape
    target = wanted if cols % TENSOR_TYPES[wanted].block_elems == 0 else "f16"
    if target == t.type:
        return t
    return Tensor(np.ascontiguousarray(np.concatenate(list(convert_rows(t, target)), axis=0)), target)
