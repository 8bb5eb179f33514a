"""llama.cpp's quantization presets (`llama-quantize ... Q4_K_M`): for each, the type of every weight matrix.

A preset is a base type plus llama.cpp's per-tensor choices (src/llama-quant.cpp, llama_tensor_get_type, as
it decides for the dense Llama-family models llmrun runs, without an importance matrix):
- 1-D tensors (norms, biases) are not quantized;
- the classifier (`output.weight`, or the token embedding when it is tied to it) gets Q6_K, or Q8_0 when its
  rows are not whole blocks of the base type;
- the `_S/_M/_L` mixtures give some attn_v, ffn_down and attn_output matrices more bits (Q4_K/Q5_K/Q6_K),
  by layer (`more_bits_layer`) and by how many query heads share a key/value head, and Phi-3's fused
  attn_qkv one step more (Q4_K_M: Q5_K);
- a matrix whose rows are not whole blocks of its type falls back to a 32-value type (Q4_K -> Q5_0, Q6_K ->
  Q8_0 ...), or to f16 when not even that fits.
Following these choices is what makes `llmrun quantize` write the same file as `llama-quantize`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .spec import TENSOR_TYPES

FLOAT_TYPES = ("f32", "f16", "bf16")


@dataclass(frozen=True)
class Preset:
    """A `--type` of `llmrun quantize`: its name, the type most matrices get, and llama.cpp's llama_ftype
    number for it (GGUF general.file_type)."""

    name: str
    base: str
    file_type: int


PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("F32", "f32", 0), Preset("F16", "f16", 1), Preset("BF16", "bf16", 32),
    Preset("Q4_0", "q4_0", 2), Preset("Q4_1", "q4_1", 3), Preset("Q8_0", "q8_0", 7),
    Preset("Q5_0", "q5_0", 8), Preset("Q5_1", "q5_1", 9), Preset("Q2_K", "q2_k", 10),
    Preset("Q3_K_S", "q3_k", 11), Preset("Q3_K_M", "q3_k", 12), Preset("Q3_K_L", "q3_k", 13),
    Preset("Q4_K_S", "q4_k", 14), Preset("Q4_K_M", "q4_k", 15), Preset("Q5_K_S", "q5_k", 16),
    Preset("Q5_K_M", "q5_k", 17), Preset("Q6_K", "q6_k", 18), Preset("IQ4_NL", "iq4_nl", 25),
    Preset("IQ4_XS", "iq4_xs", 30),
]}

# llama-quantize's presets that llmrun does not write, and why.
NEEDS_IMATRIX = ("IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ3_XXS", "Q2_K_S")
NOT_WRITTEN = {"TQ1_0": "ternary models only", "TQ2_0": "ternary models only",
               "MXFP4_MOE": "mixture-of-experts models only", **{
                   name: "its IQ3_S blocks are not a type llmrun has" for name in ("IQ3_XS", "IQ3_S", "IQ3_M")}}
# llama-quantize's short names for the _M mixtures
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}

# A matrix whose rows are not whole blocks of its type gets this one (llama.cpp's tensor_type_fallback).
FALLBACK = {"iq4_xs": "iq4_nl", "q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def find_preset(name: str) -> Preset:
    """The preset called `name` (any case), or a ValueError that says what is offered and why not `name`."""
    key = name.upper()
    key = ALIASES.get(key, key)
    if key in PRESETS:
        return PRESETS[key]
    if key in NEEDS_IMATRIX:
        raise ValueError(f"{key} needs an importance matrix, which llmrun does not compute: llama.cpp makes the "
                         f"IQ1 and IQ2 types, IQ3_XXS and Q2_K_S from one (llama-imatrix, then llama-quantize "
                         f"--imatrix); llmrun writes {', '.join(PRESETS)}")
    why = f" ({NOT_WRITTEN[key]})" if key in NOT_WRITTEN else ""
    raise ValueError(f"unknown quantization type {name!r}{why}: llmrun writes {', '.join(PRESETS)}")


@dataclass(frozen=True)
class ModelShape:
    """What the presets' choices depend on besides a tensor's name and width."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    tied: bool  # no output.weight: the token embedding is also the classifier
    architecture: str = "llama"

    @property
    def n_gqa(self) -> int:
        """Query heads per key/value head (llama.cpp's n_gqa, integer division)."""
        return self.n_heads // self.n_kv_heads

    @property
    def is_70b(self) -> bool:
        """llama.cpp's LLM_TYPE_70B: 80 layers with grouped-query attention (Llama 2/3 70B, Qwen2 72B); no other
        architecture llmrun writes has that type."""
        return self.n_layers == 80 and (self.architecture == "qwen2" or (
            self.architecture == "llama" and self.n_heads != self.n_kv_heads))


def more_bits_layer(i: int, n: int) -> bool:
    """llama.cpp's use_more_bits: the first and last eighth of the layers, and every third one between."""
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def fits(cols: int, type: str) -> bool:
    return cols % TENSOR_TYPES[type].block_elems == 0


def tensor_type(preset: Preset, name: str, cols: int, model: ModelShape) -> str:
    """The type llama-quantize gives the 2-D weight `name` (GGUF name, rows of `cols` values) in `preset`."""
    if preset.base in FLOAT_TYPES:
        return preset.base
    chosen = _mixture_type(preset, name, cols, model)
    if fits(cols, chosen):
        return chosen
    chosen = FALLBACK.get(chosen, chosen)
    return chosen if fits(cols, chosen) else "f16"


def _layer(name: str) -> int:
    """The layer of a `blk.N.` tensor: llama.cpp counts attn_v and ffn_down tensors in layer order, so its
    counters are the layer index."""
    return int(name.split(".")[1])


def _mixture_type(preset: Preset, name: str, cols: int, model: ModelShape) -> str:
    p, new = preset.name, preset.base
    if name == "output.weight" or (model.tied and name == "token_embd.weight"):
        if not fits(cols, new):
            return "q8_0"
        return new if new == "q8_0" else "q6_k"
    if name.endswith("attn_v.weight"):
        i, n = _layer(name), model.n_layers
        if p == "Q2_K":
            new = "q4_k" if model.n_gqa >= 4 else "q3_k"
        elif p == "Q3_K_M":
            new = "q5_k" if i < 2 else "q4_k"
        elif p == "Q3_K_L":
            new = "q5_k"
        elif p in ("IQ4_NL", "IQ4_XS") and model.n_gqa >= 4:
            new = "q5_k"
        elif p in ("Q4_K_M", "Q5_K_M") and more_bits_layer(i, n):
            new = "q6_k"
        elif p == "Q4_K_S" and i < 4:
            new = "q5_k"
        if model.is_70b and new in ("q3_k", "q4_k"):
            new = "q5_k"
        return new
    if name.endswith("ffn_down.weight"):
        i, n = _layer(name), model.n_layers
        if p == "Q2_K":
            new = "q3_k"
        elif p == "Q3_K_M":
            new = "q5_k" if i < n // 16 else "q4_k"
        elif p == "Q3_K_L":
            new = "q5_k"
        elif p == "Q4_K_M":
            new = "q6_k" if more_bits_layer(i, n) else new
        elif i < n // 8 and p in ("IQ4_NL", "IQ4_XS"):
            new = "q5_k"
        elif p == "Q5_K_M" and more_bits_layer(i, n):
            new = "q6_k"
        elif p == "Q4_K_S" and i < n // 8:
            new = "q5_k"
        return new
    if name.endswith("attn_output.weight"):
        return {"Q2_K": "q3_k", "Q3_K_M": "q4_k", "Q3_K_L": "q5_k"}.get(p, new)
    if name.endswith("attn_qkv.weight"):  # fused q/k/v (Phi-3): llama-quantize's rule for ATTENTION_QKV
        return {"Q3_K_M": "q4_k", "Q3_K_L": "q4_k", "Q4_K_M": "q5_k", "Q5_K_M": "q6_k"}.get(p, new)
    return new
