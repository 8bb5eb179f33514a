"""Writes a ModelSpec as a GGUF v3 file that llama.cpp and the `gguf` package read, under its family's llama.cpp
architecture (llama for Llama and Mistral, qwen2 for any model with q/k/v biases, qwen3, gemma2, gemma3, phi3,
smollm3, granite), tensor names and keys (family_metadata): Phi-3's q/k/v and gate/up written fused, RoPE
scaling as llama.cpp's keys and tensors (linear and YaRN keys, Llama 3.1's as per-pair divisors in rope_freqs,
LongRoPE's factors). An option the architecture has no key for is refused (ValueError), except: Gemma's
query scale when it differs from llama.cpp's rule and the sliding windows of llama/qwen2/qwen3/phi3 files,
written as keys that llmrun reads and llama.cpp ignores.

Layout (docs/gguf.md in ggml): a header (magic "GGUF", version 3, tensor count, metadata count), the
metadata key/value pairs, one info record per tensor (name, dimensions innermost first, ggml type, offset
into the data section), zero padding to the alignment (32), then the tensor data, each tensor starting at
a multiple of the alignment. All integers are little-endian.

Tensor data is streamed: each tensor is converted in row chunks (llmrun.quantize.convert_rows) and written
as it is produced, so a model is never held in memory twice. The file is written under a temporary name
and renamed at the end, so a failed or interrupted run leaves no half-written file (and writing over the
input file is safe: its memory map keeps the old data).
"""

from __future__ import annotations

import math
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..presets import ModelShape, Preset, find_preset, tensor_type
from ..quantize import CHUNK_VALUES, convert_rows
from ..rope import rope_divisors, rope_tables, yarn_mscale
from ..spec import TENSOR_TYPES, LayerWeights, ModelSpec, Tensor
from ..tokenizer import BPETokenizer, SentencePieceTokenizer, Tokenizer, TokenType
from .gguf import FIXED_DTYPES, SUPPORTED_GGML_TYPES, StringArray, ValueType
from .gguf_model import ARCHITECTURES, FAMILY_TENSORS, FUSED_TENSORS, GEMMA, LAYER_TENSORS, NEOX_ARCHITECTURES

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
ALIGNMENT = 32  # GGUF's default; files that use it need no general.alignment key
QUANTIZATION_VERSION = 2  # ggml's GGML_QNT_VERSION: the block layouts of ggml-common.h

# Our tensor types -> ggml_type numbers (ggml.h).
GGML_TYPES = {name: code for code, name in SUPPORTED_GGML_TYPES.items()}


@dataclass(frozen=True)
class Metadata:
    """One key/value pair. An ARRAY value is a sequence of `item_type` values (item_type ARRAY nests)."""

    key: str
    type: ValueType
    value: object
    item_type: ValueType | None = None


# --- encoding -------------------------------------------------------------------------------------------

def encode_string(text: str | bytes) -> bytes:
    """A GGUF string: uint64 byte length, then the bytes (UTF-8, no terminator)."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    return struct.pack("<Q", len(data)) + data


def encode_value(vtype: ValueType, value: object, item_type: ValueType | None = None) -> bytes:
    """The bytes of a value of type `vtype` (without the type tag)."""
    if vtype == ValueType.STRING:
        return encode_string(value)  # type: ignore[arg-type]
    if vtype == ValueType.ARRAY:
        if item_type is None:
            raise ValueError("an ARRAY value needs its item_type")
        items = list(value) if not isinstance(value, np.ndarray) else value  # type: ignore[call-overload]
        head = struct.pack("<IQ", int(item_type), len(items))
        if item_type in FIXED_DTYPES:
            # One numpy conversion for the whole array (a vocabulary has 32k-256k scores and types).
            return head + _scalars(item_type, items).tobytes()
        if item_type == ValueType.STRING:
            return head + b"".join(encode_string(s) for s in items)
        raise ValueError("nested arrays are not supported by this writer")
    if vtype in FIXED_DTYPES:
        return _scalars(vtype, [value]).tobytes()
    raise ValueError(f"unknown GGUF value type {vtype!r}")


def _scalars(vtype: ValueType, values: object) -> np.ndarray:
    """Values as a little-endian array of `vtype`, refusing any that would not fit (no silent wrap)."""
    if vtype == ValueType.BOOL:
        values = [bool(v) for v in values]  # type: ignore[attr-defined]
    array = np.asarray(values)
    dtype = np.dtype(FIXED_DTYPES[vtype])
    if dtype.kind in "iu":
        if array.size and array.dtype.kind not in "biu":
            raise ValueError(f"{vtype.name} values must be integers, got {array.dtype}")
        info = np.iinfo(dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"a value does not fit {vtype.name}: range {array.min()}..{array.max()}")
    return array.astype(dtype)


def encode_metadata(item: Metadata) -> bytes:
    return encode_string(item.key) + struct.pack("<I", int(item.type)) + encode_value(
        item.type, item.value, item.item_type)


# --- tensors --------------------------------------------------------------------------------------------

@dataclass
class TensorPlan:
    """One tensor as it will be written: its GGUF name, source, output type and place in the file."""

    name: str
    source: Tensor
    type: str
    is_vector: bool  # GGUF dims (cols,) instead of (cols, rows)
    row_order: np.ndarray | None = None  # rows of `source` to write, in this order (None: as they are)
    offset: int = 0  # from the start of the data section
    parts: tuple[Tensor, ...] = ()  # a fused tensor: these matrices' rows one after the other (source: the first)

    @property
    def rows(self) -> int:
        return sum(p.shape[0] for p in self.parts) if self.parts else self.source.shape[0]

    @property
    def cols(self) -> int:
        return self.source.shape[1]

    @property
    def nbytes(self) -> int:
        return self.rows * TENSOR_TYPES[self.type].row_bytes(self.cols)

    def info(self) -> bytes:
        """The tensor info record: name, dimensions (innermost first), ggml type, offset."""
        dims = (self.cols,) if self.is_vector else (self.cols, self.rows)
        return (encode_string(self.name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims)
                + struct.pack("<IQ", GGML_TYPES[self.type], self.offset))

    def chunks(self) -> Iterable[np.ndarray]:
        """The tensor's data in the output type, as consecutive chunks of rows; a conversion error names the
        tensor."""
        try:
            yield from self._chunks()
        except ValueError as e:
            raise ValueError(f"tensor {self.name}: {e}") from None

    def _chunks(self) -> Iterable[np.ndarray]:
        if self.parts:
            for part in self.parts:
                if part.type != self.source.type or part.shape[1] != self.cols:
                    raise ValueError("the parts of a fused tensor must share their type and width")
                yield from convert_rows(part, self.type)
            return
        if self.row_order is None:
            yield from convert_rows(self.source, self.type)
            return
        data = self.source.data.reshape(self.rows, -1)
        step = max(1, CHUNK_VALUES // self.cols)
        for start in range(0, self.rows, step):
            picked = Tensor(np.ascontiguousarray(data[self.row_order[start:start + step]]), self.source.type)
            yield from convert_rows(picked, self.type)


def _pad(n: int, alignment: int = ALIGNMENT) -> int:
    return -n % alignment


def write_gguf(path: str | os.PathLike, metadata: Sequence[Metadata], tensors: Sequence[TensorPlan],
               on_tensor: Callable[[int, int, TensorPlan], None] | None = None) -> int:
    """Writes a GGUF v3 file; assigns each plan its offset. `on_tensor(i, n, plan)` is called after tensor i
    of n is written (for progress reports). Returns the file size in bytes."""
    offset = 0
    for plan in tensors:
        plan.offset = offset
        offset += plan.nbytes + _pad(plan.nbytes)
    head = bytearray(GGUF_MAGIC + struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(metadata)))
    for item in metadata:
        head += encode_metadata(item)
    for plan in tensors:
        head += plan.info()
    head += bytes(_pad(len(head)))

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(head)
            for i, plan in enumerate(tensors):
                _write_tensor(f, plan)
                if on_tensor is not None:
                    on_tensor(i, len(tensors), plan)
            size = f.tell()
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return size


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_tensor(f: BinaryIO, plan: TensorPlan) -> None:
    written = 0
    for chunk in plan.chunks():
        data = np.ascontiguousarray(chunk)
        f.write(memoryview(data).cast("B"))
        written += data.nbytes
    if written != plan.nbytes:  # a bug in a converter, not a user error
        raise AssertionError(f"{plan.name}: wrote {written} bytes, planned {plan.nbytes}")
    f.write(bytes(_pad(written)))


# --- a ModelSpec as a GGUF of its llama.cpp architecture ------------------------------------------------

NORMS = ("attn_norm", "ffn_norm", "q_norm", "k_norm", "attn_post_norm", "ffn_post_norm")
# llama.cpp architectures that take a rope_freqs tensor (the others' graphs pass no frequency factors)
ROPE_FREQS_ARCHITECTURES = ("llama", "granite", "phi3")


def plan_tensors(spec: ModelSpec, wanted: str) -> list[TensorPlan]:
    """Every tensor of `spec` with its GGUF name and output type, in the order llama.cpp's converter
    writes them (token embedding, the blocks, final norm, classifier). `wanted` names a preset
    (llmrun.presets: "q8_0", "Q4_K_M" ...): 1-D tensors stay f32, each matrix gets the type llama-quantize
    would give it (presets.tensor_type)."""
    preset = find_preset(wanted)
    cfg = spec.config
    arch = gguf_architecture(spec)
    shape = ModelShape(cfg.n_layers, cfg.n_heads, cfg.n_kv_heads, tied=spec.output is None, architecture=arch)
    # GGUF `llama` (and smollm3, granite) pairs adjacent dimensions in RoPE; Hugging Face weights rotate halves.
    # Reordering the rows of wq and wk within each head turns one into the other (llama.cpp's
    # convert_hf_to_gguf permute). The NEOX architectures rotate halves themselves: nothing to reorder.
    qk_order = (_halves_to_interleaved(cfg.head_dim) if cfg.rope_style == "halves" and arch not in NEOX_ARCHITECTURES
                else None)

    def plan(name: str, tensor: Tensor, is_norm: bool = False, rotate: bool = False,
             parts: tuple[Tensor, ...] = ()) -> TensorPlan:
        order = None
        if rotate and qk_order is not None:
            order = (np.arange(tensor.shape[0]).reshape(-1, cfg.head_dim)[:, qk_order]).ravel()
        cols = tensor.shape[1]
        ttype = "f32" if is_norm else tensor_type(preset, name, cols, shape)
        return TensorPlan(name, tensor, ttype, is_vector=is_norm, row_order=order, parts=parts)

    plans = [plan("token_embd.weight", spec.token_embd)]
    plans += _rope_tensor_plans(spec, arch, plan)
    names = {**LAYER_TENSORS, **FAMILY_TENSORS.get(arch, {})}
    for i, layer in enumerate(spec.layers):
        for field, gguf_name in names.items():
            if arch == "phi3" and field in ("wq", "wk", "wv", "w_gate", "w_up"):
                fused = "attn_qkv" if field == "wq" else "ffn_up" if field == "w_gate" else None
                if fused is not None:  # written fused, as llama.cpp's converter does
                    parts = tuple(getattr(layer, f) for f in FUSED_TENSORS[fused])
                    plans.append(plan(f"blk.{i}.{fused}.weight", parts[0], parts=parts))
                continue
            tensor = getattr(layer, field)
            if tensor is None:
                raise ValueError(f"layer {i} has no {field}, which a GGUF {arch} needs")
            plans.append(plan(f"blk.{i}.{gguf_name}.weight", tensor, is_norm=field in NORMS,
                              rotate=field in ("wq", "wk")))
            bias = getattr(layer, BIAS_FIELDS.get(field, ""), None)
            if bias is not None:
                plans.append(plan(f"blk.{i}.{gguf_name}.bias", bias, is_norm=True))
        extra = [f for f in LayerWeights.OPTIONAL if getattr(layer, f) is not None and f not in names
                 and f not in BIAS_FIELDS.values()]
        if extra:
            raise ValueError(f"layer {i} has {', '.join(extra)}, which a GGUF {arch} has no tensor for")
    plans.append(plan("output_norm.weight", spec.output_norm, is_norm=True))
    if spec.output is not None:
        plans.append(plan("output.weight", spec.output))
    return plans


def _rope_tensor_plans(spec: ModelSpec, arch: str, plan: Callable[..., TensorPlan]) -> list[TensorPlan]:
    """llama.cpp's RoPE tensors for spec.rope_scaling: per-pair divisors (`rope_freqs`, Llama 3.1's scaling)
    or Phi-3's LongRoPE factors."""
    s = spec.rope_scaling
    if s is None or s.kind in ("linear", "yarn"):  # keys only (model_metadata)
        return []
    if s.kind == "longrope":
        if arch not in ROPE_FREQS_ARCHITECTURES:
            raise ValueError(f"LongRoPE cannot be written as GGUF {arch}: llama.cpp applies its factors for "
                             f"{', '.join(ROPE_FREQS_ARCHITECTURES)} only")
        return [plan(f"rope_factors_{k}.weight", Tensor(np.asarray(v, dtype=np.float32)), is_norm=True)
                for k, v in (("long", s.long_factor), ("short", s.short_factor))]
    if arch not in ROPE_FREQS_ARCHITECTURES:
        raise ValueError(f"RoPE scaling {s.kind} cannot be written as GGUF {arch}: llama.cpp takes per-pair "
                         f"frequency divisors for {', '.join(ROPE_FREQS_ARCHITECTURES)} only")
    return [plan("rope_freqs.weight", Tensor(rope_divisors(spec, spec.config.max_seq_len)), is_norm=True)]


BIAS_FIELDS = {"wq": "bq", "wk": "bk", "wv": "bv"}
# llmrun architectures (ModelSpec.architecture) written under another llama.cpp name
_GGUF_NAMES = {"mistral": "llama"}


def gguf_architecture(spec: ModelSpec) -> str:
    """general.architecture for `spec`: its family's llama.cpp name ("qwen2" for any model with q/k/v biases,
    "llama" for Llama and Mistral)."""
    if spec.architecture == "qwen2" or any(layer.bq is not None for layer in spec.layers):
        arch = "qwen2"
    else:
        arch = _GGUF_NAMES.get(spec.architecture, spec.architecture)
    if arch not in ARCHITECTURES:
        raise ValueError(f"no GGUF architecture for a {spec.architecture} model")
    if arch in NEOX_ARCHITECTURES and spec.config.rope_style != "halves":
        raise ValueError(f"GGUF {arch} rotates halves in RoPE; this model pairs adjacent dimensions")
    return arch


def _halves_to_interleaved(head_dim: int) -> np.ndarray:
    """Row order within one head: output row 2i + h is input row h * head_dim / 2 + i."""
    half = head_dim // 2
    return np.arange(head_dim).reshape(2, half).T.ravel()


def model_metadata(spec: ModelSpec, wanted: str, tokenizer: Tokenizer | None, name: str) -> list[Metadata]:
    """general.*, <arch>.* and (with a tokenizer) tokenizer.ggml.* metadata for `spec`."""
    cfg = spec.config
    u32, f32 = ValueType.UINT32, ValueType.FLOAT32
    a = gguf_architecture(spec)
    preset: Preset = find_preset(wanted)
    items = [
        Metadata("general.architecture", ValueType.STRING, a),
        Metadata("general.name", ValueType.STRING, name),
        Metadata("general.file_type", u32, preset.file_type),
        Metadata(f"{a}.context_length", u32, cfg.max_seq_len),
        Metadata(f"{a}.embedding_length", u32, cfg.dim),
        Metadata(f"{a}.block_count", u32, cfg.n_layers),
        Metadata(f"{a}.feed_forward_length", u32, cfg.hidden_dim),
        Metadata(f"{a}.attention.head_count", u32, cfg.n_heads),
        Metadata(f"{a}.attention.head_count_kv", u32, cfg.n_kv_heads),
        Metadata(f"{a}.rope.dimension_count", u32, cfg.rotary_dim),
        Metadata(f"{a}.attention.layer_norm_rms_epsilon", f32, cfg.norm_eps),
        Metadata(f"{a}.rope.freq_base", f32, cfg.rope_theta),
        Metadata(f"{a}.vocab_size", u32, cfg.vocab_size),
    ]
    if cfg.head_dim * cfg.n_heads != cfg.dim:  # llama.cpp assumes dim / n_heads unless told
        items += [Metadata(f"{a}.attention.key_length", u32, cfg.head_dim),
                  Metadata(f"{a}.attention.value_length", u32, cfg.head_dim)]
    items += _rope_scaling_metadata(spec, a) + family_metadata(spec, a)
    if TENSOR_TYPES[preset.base].block_elems > 1:
        items.append(Metadata("general.quantization_version", u32, QUANTIZATION_VERSION))
    if isinstance(tokenizer, BPETokenizer):
        items += bpe_tokenizer_metadata(tokenizer, spec)
    elif tokenizer is not None:
        items += tokenizer_metadata(tokenizer)
    if tokenizer is not None and not spec.metadata:  # a GGUF input carries its own (carried_metadata)
        if spec.chat_template is not None:
            items.append(Metadata("tokenizer.chat_template", ValueType.STRING, spec.chat_template))
        eot = [i for i in spec.eog_token_ids if i != tokenizer.eos_id]
        if eot:  # GGUF has no list of end-of-generation ids: the first other one is the end of a turn
            items.append(Metadata("tokenizer.ggml.eot_token_id", u32, eot[0]))
    return items


def _rope_scaling_metadata(spec: ModelSpec, a: str) -> list[Metadata]:
    """<arch>.rope.scaling.* for spec.rope_scaling, as llama.cpp reads them (its tensors: _rope_tensor_plans)."""
    s = spec.rope_scaling
    f32, u32 = ValueType.FLOAT32, ValueType.UINT32
    if s is None or s.kind in ("llama3", "divisors"):
        return []
    if s.kind == "linear":
        return [Metadata(f"{a}.rope.scaling.type", ValueType.STRING, "linear"),
                Metadata(f"{a}.rope.scaling.factor", f32, s.factor)]
    orig = Metadata(f"{a}.rope.scaling.original_context_length", u32, s.original_context)
    _, attn = rope_tables(spec, spec.config.max_seq_len)
    if s.kind == "longrope":  # llama.cpp multiplies cos and sin by rope.scaling.attn_factor
        return [orig, Metadata(f"{a}.rope.scaling.attn_factor", f32, attn)]
    if not s.truncate:
        raise ValueError("YaRN without truncation (truncate = false) cannot be written as GGUF: llama.cpp always "
                         "rounds the correction range")
    items = [Metadata(f"{a}.rope.scaling.type", ValueType.STRING, "yarn"),
             Metadata(f"{a}.rope.scaling.factor", f32, s.factor), orig]
    # llama.cpp multiplies cos and sin by (0.1 ln(factor) + 1) * rope.scaling.attn_factor
    if attn != yarn_mscale(s.factor):
        items.append(Metadata(f"{a}.rope.scaling.attn_factor", f32, attn / yarn_mscale(s.factor)))
    if (s.beta_fast, s.beta_slow) != (32.0, 1.0):  # llama.cpp reads them for some architectures only
        items += [Metadata(f"{a}.rope.scaling.yarn_beta_fast", f32, s.beta_fast),
                  Metadata(f"{a}.rope.scaling.yarn_beta_slow", f32, s.beta_slow)]
    return items


def family_metadata(spec: ModelSpec, a: str) -> list[Metadata]:
    """The keys of the family options (soft-caps, windows, scales ...) under llama.cpp's names; a ValueError
    for an option GGUF `a` cannot say."""
    cfg = spec.config
    f32, u32 = ValueType.FLOAT32, ValueType.UINT32
    items: list[Metadata] = []
    ropes = cfg.layer_ropes or ("global",) * cfg.n_layers
    windows = cfg.layer_windows or (0,) * cfg.n_layers
    if any(windows):
        sizes = {w for w in windows if w}
        if len(sizes) > 1:
            raise ValueError(f"layers with different sliding windows ({sorted(sizes)}) cannot be written as GGUF")
        items += [Metadata(f"{a}.attention.sliding_window", u32, sizes.pop()),
                  Metadata(f"{a}.attention.sliding_window_pattern", ValueType.ARRAY, [bool(w) for w in windows],
                           ValueType.BOOL)]
    elif a == "gemma3" or a == "phi3":
        items.append(Metadata(f"{a}.attention.sliding_window", u32, 0))
    elif a == "gemma2":
        raise ValueError("a Gemma 2 model without sliding windows cannot be written as GGUF gemma2")
    if a in GEMMA:
        if cfg.ffn_activation != "gelu_tanh":
            raise ValueError(f"GGUF {a} computes GeGLU; this model's feed-forward is {cfg.ffn_activation}")
        big = cfg.n_layers == (46 if a == "gemma2" else 62)
        llama_cpp_scale = 1.0 / math.sqrt(cfg.dim // cfg.n_heads if big else cfg.head_dim)
        if cfg.attn_scale is not None and not math.isclose(cfg.attn_scale, llama_cpp_scale, rel_tol=1e-6):
            # llama.cpp ignores this key for Gemma (its rule is llama_cpp_scale); llmrun reads it
            items.append(Metadata(f"{a}.attention.scale", f32, cfg.attn_scale))
        if a == "gemma2" and not cfg.final_softcap:
            raise ValueError("llama.cpp's gemma2 always soft-caps the final logits (a cap of 0 gives NaN logits); "
                             "this model does not")
        if cfg.final_softcap:
            items.append(Metadata(f"{a}.final_logit_softcapping", f32, cfg.final_softcap))
        if a == "gemma2":
            if not cfg.attn_softcap:
                raise ValueError("llama.cpp's gemma2 always soft-caps attention; this model does not")
            items.append(Metadata(f"{a}.attn_logit_softcapping", f32, cfg.attn_softcap))
        elif cfg.attn_softcap:
            raise ValueError("llama.cpp's gemma3 has no attention soft-capping")
        local_on_windows = tuple(ropes) == tuple("local" if w else "global" for w in windows)
        if "local" in ropes:
            if not local_on_windows:
                raise ValueError("GGUF gemma models use the local RoPE base exactly on the sliding-window layers")
            if a == "gemma2" and spec.rope_scaling is not None:
                raise ValueError("llama.cpp's gemma2 scales the sliding layers' RoPE like the global layers'; this "
                                 "model's sliding layers use plain RoPE of another base with a scaled global RoPE")
            items.append(Metadata(f"{a}.rope.freq_base_swa", f32, cfg.rope_theta_local))
        elif a == "gemma3" and any(windows):  # llama.cpp's default local base is 10000
            if spec.rope_scaling is not None:
                raise ValueError("llama.cpp's gemma3 runs the sliding layers with plain RoPE (freq scale 1); this "
                                 "model scales RoPE on its sliding layers too (layer_ropes not 'local' there)")
            items.append(Metadata(f"{a}.rope.freq_base_swa", f32, cfg.rope_theta))
        return items
    if a == "granite":
        items += [Metadata(f"{a}.logit_scale", f32, 1.0 / cfg.logit_scale),
                  Metadata(f"{a}.embedding_scale", f32, cfg.embed_scale),
                  Metadata(f"{a}.residual_scale", f32, cfg.residual_scale),
                  Metadata(f"{a}.attention.scale", f32,
                           cfg.attn_scale if cfg.attn_scale is not None else cfg.head_dim ** -0.5)]
        if set(ropes) == {"none"}:
            items.append(Metadata(f"{a}.rope.scaling.finetuned", ValueType.BOOL, False))
            ropes = ("global",) * cfg.n_layers
    expected_ropes = tuple("none" if a == "smollm3" and (i + 1) % 4 == 0 else "global" for i in range(cfg.n_layers))
    if tuple(ropes) != expected_ropes:
        raise ValueError(f"GGUF {a} cannot say which layers go without RoPE (llama.cpp: "
                         f"{'every fourth' if a == 'smollm3' else 'none'}); this model: {list(ropes)}")
    unsaid = [name for name, value, default in (
        ("ffn_activation", cfg.ffn_activation, "silu"), ("attn_softcap", cfg.attn_softcap, 0.0),
        ("final_softcap", cfg.final_softcap, 0.0)) if value != default]
    if a != "granite":
        unsaid += [name for name, value, default in (
            ("embed_scale", cfg.embed_scale, 1.0), ("residual_scale", cfg.residual_scale, 1.0),
            ("logit_scale", cfg.logit_scale, 1.0), ("attn_scale", cfg.attn_scale, None)) if value != default]
    if unsaid:
        raise ValueError(f"GGUF {a} has no key for this model's {', '.join(unsaid)}")
    return items


def tokenizer_metadata(tok: SentencePieceTokenizer) -> list[Metadata]:
    """A SentencePiece vocabulary as tokenizer.ggml.* (model "llama"): pieces in SentencePiece's spelling
    ('▁' for spaces, control tokens by their bare name), scores, token types and special ids."""
    arr, u32, b = ValueType.ARRAY, ValueType.UINT32, ValueType.BOOL
    items = [
        Metadata("tokenizer.ggml.model", ValueType.STRING, "llama"),
        Metadata("tokenizer.ggml.tokens", arr, gguf_pieces(tok), ValueType.STRING),
        Metadata("tokenizer.ggml.scores", arr, np.asarray(tok.scores, dtype=np.float32), ValueType.FLOAT32),
        Metadata("tokenizer.ggml.token_type", arr, np.asarray(tok.token_types, dtype=np.int32), ValueType.INT32),
    ]
    if tok.bos_id is not None:
        items.append(Metadata("tokenizer.ggml.bos_token_id", u32, tok.bos_id))
    if tok.eos_id is not None:
        items.append(Metadata("tokenizer.ggml.eos_token_id", u32, tok.eos_id))
    items += [
        Metadata("tokenizer.ggml.unknown_token_id", u32, tok.unk_id),
        Metadata("tokenizer.ggml.add_bos_token", b, tok.bos_id is not None),
        Metadata("tokenizer.ggml.add_eos_token", b, False),
        Metadata("tokenizer.ggml.add_space_prefix", b, tok.add_dummy_prefix),
    ]
    return items


def gguf_pieces(tok: SentencePieceTokenizer) -> list[bytes]:
    """The pieces as GGUF stores them. Ours keep llama2.c's spelling: b' ' for '▁', and BOS/EOS as
    "\\n<s>\\n" / "\\n</s>\\n" (control pieces are written bare, as sentencepiece names them). User-defined
    pieces keep plain spaces, as llama.cpp's converter writes them: llama.cpp finds them in the text before
    it turns spaces into '▁' (Gemma's whitespace runs). Pieces stay bytes: a vocabulary may hold pieces that
    are not valid UTF-8, and they must survive unchanged."""
    space = "\u2581".encode()
    out = []
    for piece, kind in zip(tok.pieces, tok.token_types, strict=True):
        if kind == TokenType.USER_DEFINED:
            out.append(piece)
        else:
            out.append((piece.strip() if kind == TokenType.CONTROL else piece).replace(b" ", space))
    return out


def bpe_tokenizer_metadata(tok: BPETokenizer, spec: ModelSpec) -> list[Metadata]:
    """A byte-level BPE vocabulary as tokenizer.ggml.* (model "gpt2"): tokens, token types (control for
    special tokens, user-defined for other added tokens, unused for padding), merges "a b", the pre-tokenizer
    name and the special ids."""
    if tok.pre_name is None:
        raise ValueError("the tokenizer's pre-tokenizer is not one GGUF can name (tokenizer.ggml.pre), so the "
                         "file would tokenize differently; llmrun names llama-bpe, qwen2, smollm, gpt-2 and gpt-4o "
                         "(a ByteLevel pre-tokenizer that adds a prefix space has no name in llama.cpp)")
    arr, u32, b = ValueType.ARRAY, ValueType.UINT32, ValueType.BOOL
    tokens, types = [], []
    vocab = tok.vocab
    for i in range(tok.vocab_size):
        piece = tok.id_to_piece(i)
        if not piece:
            tokens.append(f"[PAD{i}]")
            types.append(TokenType.UNUSED)
        else:
            tokens.append(piece)
            added = vocab.get(piece) != i
            types.append(TokenType.CONTROL if i in tok.special_ids else
                         TokenType.USER_DEFINED if added else TokenType.NORMAL)
    items = [
        Metadata("tokenizer.ggml.model", ValueType.STRING, "gpt2"),
        Metadata("tokenizer.ggml.pre", ValueType.STRING, tok.pre_name),
        Metadata("tokenizer.ggml.tokens", arr, tokens, ValueType.STRING),
        Metadata("tokenizer.ggml.token_type", arr, np.asarray(types, dtype=np.int32), ValueType.INT32),
        Metadata("tokenizer.ggml.merges", arr, [f"{x} {y}" for x, y in tok.merges], ValueType.STRING),
    ]
    for key, value in (("bos_token_id", tok.bos_id), ("eos_token_id", tok.eos_id), ("unknown_token_id", tok.unk_id)):
        if value is not None:
            items.append(Metadata(f"tokenizer.ggml.{key}", u32, value))
    items += [Metadata("tokenizer.ggml.add_bos_token", b, spec.add_bos_token),
              Metadata("tokenizer.ggml.add_eos_token", b, spec.add_eos_token)]
    return items


def sentencepiece_from_bpe(tok: BPETokenizer) -> SentencePieceTokenizer:
    """A SentencePiece-style BPE (tokenizer.json with '▁' and byte fallback) as a `SentencePieceTokenizer`
    for GGUF model "llama". SentencePiece merges by piece score, not by pair rank: each piece scores minus the
    rank of the first merge that makes it (pieces no merge makes score below all), which encodes the same
    as the ranks whenever each piece's best merge is the only way to build it (true of vocabularies converted
    from SentencePiece, like Llama 2's; tests/test_hf_quantize.py checks the fixtures)."""
    first_rank: dict[str, int] = {}
    for rank, (x, y) in enumerate(tok.merges):
        first_rank.setdefault(x + y, rank)
    floor = -float(len(first_rank) + 1)
    pieces, scores, types = [], [], []
    vocab = tok.vocab
    added = set(tok.user_defined_tokens.values())
    for i in range(tok.vocab_size):
        piece = tok.id_to_piece(i)
        pieces.append(piece.replace("\u2581", " ").encode("utf-8") if piece else f"[PAD{i}]".encode())
        scores.append(-float(first_rank[piece]) if piece in first_rank else floor)
        if i == tok.unk_id:
            types.append(TokenType.UNKNOWN)
        elif i in tok.special_ids or not piece:
            types.append(TokenType.CONTROL if piece else TokenType.UNUSED)
        elif tok.byte_fallback and re.fullmatch(r"<0x[0-9A-F]{2}>", piece):
            types.append(TokenType.BYTE)
        elif vocab.get(piece) != i or i in added:  # an added token: matched whole in any text
            types.append(TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    return SentencePieceTokenizer(pieces, scores, bos_id=tok.bos_id, eos_id=tok.eos_id,
                     unk_id=tok.unk_id if tok.unk_id is not None else 0, byte_fallback=tok.byte_fallback,
                     add_dummy_prefix=tok.add_dummy_prefix, token_types=types)


# Keys that describe the old file's tensor data, not the model: never carried over from a GGUF input.
STALE_KEYS = frozenset({"general.file_type", "general.quantization_version", "general.alignment"})


def carried_metadata(spec: ModelSpec, generated: Iterable[str], keep_tokenizer: bool) -> list[Metadata]:
    """The metadata of a GGUF input that its converted copy keeps: every key write_model does not write
    itself (chat template, merges, pre-tokenizer, special ids, general.* facts ...), each with the value
    type it had (llama.cpp checks key types), except STALE_KEYS and, unless `keep_tokenizer`, tokenizer.*.
    The source's `<arch>.*` hyperparameters are not carried: model_metadata writes them from the spec.
    Nested arrays are dropped: no Llama metadata uses them and their item types are not kept by the reader.
    Nothing for other formats (their spec has no metadata)."""
    value_types = spec.metadata_types  # as the reader found them: no second parse of the input
    skip = set(generated) | STALE_KEYS
    # the model's hyperparameters come from the spec alone: an old key the writer does not repeat (a YaRN
    # yarn_attn_factor folded into rope.scaling.attn_factor, a window pattern as a number) would say it twice
    arch = spec.metadata.get("general.architecture")
    items = []
    for key, value in spec.metadata.items():
        if key in skip or (key.startswith("tokenizer.") and not keep_tokenizer) or key.startswith(f"{arch}."):
            continue
        vtype = ValueType(value_types[key])
        if vtype != ValueType.ARRAY:
            items.append(Metadata(key, vtype, value))
        elif isinstance(value, StringArray):
            items.append(Metadata(key, vtype, [value.raw(i) for i in range(len(value))], ValueType.STRING))
        elif isinstance(value, np.ndarray):
            items.append(Metadata(key, vtype, value, _ITEM_TYPES[value.dtype.str[1:] if value.dtype != np.bool_
                                                                   else "bool"]))
    return items


# numpy dtype (without byte order) of an array the GGUF reader returns -> GGUF item type
_ITEM_TYPES = {"u1": ValueType.UINT8, "i1": ValueType.INT8, "u2": ValueType.UINT16, "i2": ValueType.INT16,
               "u4": ValueType.UINT32, "i4": ValueType.INT32, "f4": ValueType.FLOAT32, "bool": ValueType.BOOL,
               "u8": ValueType.UINT64, "i8": ValueType.INT64, "f8": ValueType.FLOAT64}


def write_model(path: str | os.PathLike, spec: ModelSpec, wanted: str, tokenizer: object | None = None,
                name: str | None = None, on_tensor: Callable[[int, int, TensorPlan], None] | None = None
                ) -> list[TensorPlan]:
    """Writes `spec` as a GGUF of its family (gguf_architecture) with its matrices in preset `wanted`
    (llmrun.presets.PRESETS: F32, F16, BF16, Q8_0, Q4_0, Q4_K_M ..., any case; each matrix gets the type
    llama-quantize gives it). Returns the tensor plans (names, types, sizes) in file order.

    The vocabulary: a GGUF input keeps its own tokenizer.* metadata verbatim (whatever its tokenizer
    model), unless `tokenizer` is given; otherwise `tokenizer` (default: the spec's own) is written as
    tokenizer.ggml.*: a `SentencePieceTokenizer` or a SentencePiece-style BPE as model "llama", a byte-level
    BPE as model "gpt2"; None writes no vocabulary. A GGUF input's other metadata is kept too (see
    carried_metadata)."""
    tok = spec.tokenizer if tokenizer is None else tokenizer
    source_has_vocab = "tokenizer.ggml.model" in spec.metadata
    keep_source_vocab = tokenizer is None and source_has_vocab
    if keep_source_vocab:
        tok = None
    if isinstance(tok, BPETokenizer) and not tok.byte_level:
        tok = sentencepiece_from_bpe(tok)  # GGUF stores SentencePiece-style vocabularies as "llama"
    if tok is not None and not isinstance(tok, (SentencePieceTokenizer, BPETokenizer)):
        raise ValueError(f"cannot write a {type(tok).__name__} vocabulary to GGUF")
    if tok is not None and tok.vocab_size != spec.config.vocab_size:
        raise ValueError(f"the tokenizer has {tok.vocab_size} tokens but the model a vocabulary of "
                         f"{spec.config.vocab_size}")
    plans = plan_tensors(spec, wanted)
    metadata = model_metadata(spec, wanted, tok, name or spec.name or Path(spec.path).stem)
    metadata += carried_metadata(spec, (m.key for m in metadata), keep_tokenizer=keep_source_vocab)
    write_gguf(path, metadata, plans, on_tensor)
    return plans
