"""GGUF files for tests.

Two writers on purpose:
- `write_llama_gguf` uses the official `gguf` package (ggml's own Python writer) for well-formed files, so
  llmrun's reader is checked against an implementation it shares no code with;
- `RawGGUF` assembles files byte by byte, like llama.cpp's tests/test-gguf.cpp "handcrafted" files, so a
  test can corrupt exactly one field (a count, a length, an offset) that a correct writer never would.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace
from pathlib import Path

import gguf
import numpy as np

from llmrun.spec import ModelConfig

U = gguf.GGUFValueType
Q = gguf.GGMLQuantizationType

# Our LayerWeights names (tests/builders.py) -> GGUF names inside blk.N.
LAYER_NAMES = {"attn_norm": "attn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v", "wo": "attn_output",
               "ffn_norm": "ffn_norm", "w_gate": "ffn_gate", "w_up": "ffn_up", "w_down": "ffn_down"}
NORMS = {"attn_norm", "ffn_norm", "output_norm"}
GGML_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "q4_1": Q.Q4_1,
              "q5_0": Q.Q5_0, "q5_1": Q.Q5_1, "iq4_nl": Q.IQ4_NL, "q2_k": Q.Q2_K, "q3_k": Q.Q3_K, "q4_k": Q.Q4_K,
              "q5_k": Q.Q5_K, "q6_k": Q.Q6_K, "iq4_xs": Q.IQ4_XS}

# Byte offsets, within a block, of the fp16 fields that scale the whole block (d, and dmin or m): ggml-common.h.
BLOCK_SCALE_FIELDS = {"q8_0": (0,), "q4_0": (0,), "q4_1": (0, 2), "q5_0": (0,), "q5_1": (0, 2), "iq4_nl": (0,),
                      "q2_k": (80, 82), "q3_k": (108,), "q4_k": (0, 2), "q5_k": (0, 2), "q6_k": (208,),
                      "iq4_xs": (0,)}


def random_blocks(rows: int, cols: int, ttype: str, rng: np.random.Generator, std: float) -> np.ndarray:
    """(rows, row bytes) uint8: random blocks of a block type, for the types the gguf package cannot encode.
    Every byte is random but the block-wide fp16 scales, which are set to one value of random sign per block,
    chosen so the decoded values have about standard deviation `std`. Random bytes reach every bit pattern of
    the packed quants and sub-block scales, which values of a real quantizer may never do."""
    qtype = GGML_TYPES[ttype]
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows, cols // block_elems, block_bytes), dtype=np.uint8)
    sign = rng.choice(np.array([1.0, -1.0], dtype=np.float16), size=raw.shape[:2])

    def set_scales(value: float) -> None:
        half = (sign * np.float16(value)).astype(np.float16).view(np.uint8).reshape(*raw.shape[:2], 2)
        for offset in BLOCK_SCALE_FIELDS[ttype]:
            raw[:, :, offset:offset + 2] = half

    set_scales(1.0)
    unit = gguf.quants.dequantize(raw.reshape(rows, -1), qtype)
    set_scales(std / max(float(unit.std()), 1e-30))
    return raw.reshape(rows, -1)


# ------------------------------------------------------------------------------------------------
# A small SentencePiece-style vocabulary
# ------------------------------------------------------------------------------------------------

def make_vocab(size: int) -> tuple[list[str], list[float], list[int]]:
    """`size` pieces in SentencePiece spelling: <unk>, <s>, </s>, then single characters and merges
    (no byte pieces: they alone would take 256 ids), with decreasing scores for the merges."""
    specials = ["<unk>", "<s>", "</s>"]
    chars = list("\u2581etaoinshrdlucmwfgypbvk.,TOLI")
    merges = ["\u2581t", "he", "\u2581a", "in", "er", "an", "\u2581the", "on", "re", "\u2581s", "at", "en",
              "\u2581w", "nd", "ed", "\u2581o", "es", "or", "it", "\u2581and", "ing", "\u2581to", "is", "ar"]
    pieces = (specials + chars + merges)[:size]
    pieces += [f"x{i}" for i in range(size - len(pieces))]
    scores = [0.0] * len(specials) + [0.0] * len(chars) + [-float(i) for i in range(len(merges))]
    scores = (scores + [-100.0] * size)[:size]
    types = [2, 3, 3] + [1] * (size - 3)
    return pieces, scores, types


# ------------------------------------------------------------------------------------------------
# Well-formed files through the official writer
# ------------------------------------------------------------------------------------------------

def encode_tensor(values: np.ndarray, ttype: str) -> np.ndarray:
    """The array GGUFWriter stores for `values` (float32, row-major) in type `ttype`: float16 values for
    f16, raw uint8 rows for bf16 and the block types."""
    if ttype == "f32":
        return np.ascontiguousarray(values, dtype=np.float32)
    if ttype == "f16":
        return values.astype(np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(values, dtype=np.float32), GGML_TYPES[ttype])


def decode_tensor(stored: np.ndarray, ttype: str) -> np.ndarray:
    """float32 values of an array made by `encode_tensor` (the dequantized weights a model computes with)."""
    if ttype in ("f32", "f16"):
        return stored.astype(np.float32)
    return gguf.quants.dequantize(stored, GGML_TYPES[ttype]).astype(np.float32)


def gguf_tensor_names(cfg: ModelConfig, tied: bool) -> list[tuple[str, str, int | None]]:
    """(GGUF name, our name, layer or None) of every tensor of a llama model."""
    names = [("token_embd.weight", "token_embd", None), ("output_norm.weight", "output_norm", None)]
    if not tied:
        names.append(("output.weight", "output", None))
    for i in range(cfg.n_layers):
        names += [(f"blk.{i}.{theirs}.weight", ours, i) for ours, theirs in LAYER_NAMES.items()]
    return names


def write_llama_gguf(path: Path, cfg: ModelConfig, tensors: dict[str, np.ndarray], ttype: str = "f32",
                     types: dict[str, str] | None = None, version: int = 3, alignment: int | None = None,
                     vocab: tuple[list[str], list[float], list[int]] | None = None,
                     extra_kv: dict[str, tuple[object, gguf.GGUFValueType]] | None = None,
                     tokenizer_model: str = "llama", stored: dict[str, tuple[np.ndarray, str]] | None = None
                     ) -> dict[str, np.ndarray]:
    """Writes a llama GGUF with weights `tensors` (tests/builders.py names, float32) stored as `ttype`
    (norms stay f32; `types` overrides per GGUF tensor name; `stored` gives GGUF names already encoded, as
    (raw uint8 rows, type)). The tokenizer is `vocab` (default make_vocab(cfg.vocab_size)). Returns GGUF
    name -> the exact array written (for byte comparisons)."""
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(cfg.max_seq_len)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_head_count_kv(cfg.n_kv_heads)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_vocab_size(cfg.vocab_size)
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        w.add_key_length(cfg.head_dim)
        w.add_value_length(cfg.head_dim)
    if alignment is not None:
        w.add_custom_alignment(alignment)
    pieces, scores, token_types = vocab or make_vocab(cfg.vocab_size)
    w.add_tokenizer_model(tokenizer_model)
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(token_types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    for key, (value, vtype) in (extra_kv or {}).items():
        w.add_key_value(key, value, vtype)

    written: dict[str, np.ndarray] = {}
    for name, ours, layer in gguf_tensor_names(cfg, tied="output" not in tensors):
        values = tensors[ours] if layer is None else tensors[ours][layer]
        kind = "f32" if ours in NORMS else (types or {}).get(name, ttype)
        array, kind = (stored or {}).get(name) or (encode_tensor(values, kind), kind)
        raw_dtype = None if kind in ("f32", "f16") else GGML_TYPES[kind]
        w.add_tensor(name, array, raw_dtype=raw_dtype)
        written[name] = array
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version != 3:
        set_version(path, version)
    return written


def set_version(path: Path, version: int) -> None:
    """Overwrites the version field (v2 and v3 little-endian files have the same layout)."""
    data = bytearray(path.read_bytes())
    data[4:8] = struct.pack("<I", version)
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------------
# Handcrafted files: every field under the test's control
# ------------------------------------------------------------------------------------------------

def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(text: str | bytes, length: int | None = None) -> bytes:
    """A GGUF string; `length` overrides the stored length field."""
    raw = text.encode() if isinstance(text, str) else text
    return u64(len(raw) if length is None else length) + raw


def kv(key: str | bytes, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, U.UINT32, u32(value))


def kv_f32(key: str, value: float) -> bytes:
    return kv(key, U.FLOAT32, struct.pack("<f", value))


def kv_str(key: str, value: str) -> bytes:
    return kv(key, U.STRING, gstr(value))


def kv_bool(key: str, value: bool) -> bytes:
    return kv(key, U.BOOL, bytes([value]))


def array_payload(etype: int, items: list[bytes], count: int | None = None) -> bytes:
    """An array value (element type, count, the encoded items); `count` overrides the stored count."""
    return u32(etype) + u64(len(items) if count is None else count) + b"".join(items)


def kv_array(key: str, etype: int, items: list[bytes], count: int | None = None) -> bytes:
    return kv(key, U.ARRAY, array_payload(etype, items, count))


@dataclass
class RawTensor:
    name: str | bytes
    ne: list[int]
    ggml_type: int
    data: bytes
    offset: int | None = None  # None: right after the previous tensor, aligned
    n_dims: int | None = None  # overrides len(ne) in the file


@dataclass
class RawGGUF:
    """A GGUF file as its parts. `build()` lays it out exactly as written here: counts default to the real
    ones, tensor data is placed at the offsets given or computed."""

    kvs: list[bytes]
    tensors: list[RawTensor]
    version: int = 3
    alignment: int = 32  # how build() pads and places data (the general.alignment key is up to `kvs`)
    n_tensors: int | None = None
    n_kv: int | None = None
    magic: bytes = b"GGUF"

    def offsets(self) -> list[int]:
        out, end = [], 0
        for t in self.tensors:
            start = _align_up(end, self.alignment) if t.offset is None else t.offset
            out.append(start)
            if t.offset is None:
                end = start + len(t.data)
        return out

    def build(self) -> bytes:
        offsets = self.offsets()
        head = bytearray(self.magic + u32(self.version))
        head += u64(len(self.tensors) if self.n_tensors is None else self.n_tensors)
        head += u64(len(self.kvs) if self.n_kv is None else self.n_kv)
        head += b"".join(self.kvs)
        for t, off in zip(self.tensors, offsets, strict=True):
            name = t.name.encode() if isinstance(t.name, str) else t.name
            head += gstr(name) + u32(len(t.ne) if t.n_dims is None else t.n_dims)
            head += b"".join(u64(d) for d in t.ne) + u32(t.ggml_type) + u64(off)
        head += bytes(_align_up(len(head), self.alignment) - len(head))
        placed = [(t, off) for t, off in zip(self.tensors, offsets, strict=True) if t.offset is None]
        size = max((off + len(t.data) for t, off in placed), default=0)
        data = bytearray(size)
        for t, off in zip(self.tensors, offsets, strict=True):
            if off + len(t.data) <= size:
                data[off:off + len(t.data)] = t.data
        return bytes(head + data)

    def write(self, path: Path) -> Path:
        path.write_bytes(self.build())
        return path


def _align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def raw_llama(cfg: ModelConfig, tensors: dict[str, np.ndarray], tied: bool = True) -> RawGGUF:
    """A complete, valid f32 llama model (with a small tokenizer) as a RawGGUF, ready to be corrupted."""
    pieces, scores, types = make_vocab(cfg.vocab_size)
    kvs = [
        kv_str("general.architecture", "llama"),
        kv_str("general.name", "raw"),
        kv_u32("llama.context_length", cfg.max_seq_len),
        kv_u32("llama.embedding_length", cfg.dim),
        kv_u32("llama.block_count", cfg.n_layers),
        kv_u32("llama.feed_forward_length", cfg.hidden_dim),
        kv_u32("llama.attention.head_count", cfg.n_heads),
        kv_u32("llama.attention.head_count_kv", cfg.n_kv_heads),
        kv_u32("llama.rope.dimension_count", cfg.head_dim),
        kv_f32("llama.attention.layer_norm_rms_epsilon", cfg.norm_eps),
        kv_f32("llama.rope.freq_base", cfg.rope_theta),
        kv_str("tokenizer.ggml.model", "llama"),
        kv_array("tokenizer.ggml.tokens", U.STRING, [gstr(p) for p in pieces]),
        kv_array("tokenizer.ggml.scores", U.FLOAT32, [struct.pack("<f", s) for s in scores]),
        kv_array("tokenizer.ggml.token_type", U.INT32, [struct.pack("<i", t) for t in types]),
        kv_u32("tokenizer.ggml.bos_token_id", 1),
        kv_u32("tokenizer.ggml.eos_token_id", 2),
        kv_bool("tokenizer.ggml.add_bos_token", True),
    ]
    raw_tensors = []
    for name, ours, layer in gguf_tensor_names(cfg, tied):
        values = np.ascontiguousarray(tensors[ours] if layer is None else tensors[ours][layer], dtype="<f4")
        raw_tensors.append(RawTensor(name, list(reversed(values.shape)), Q.F32, values.tobytes()))
    return RawGGUF(kvs=kvs, tensors=raw_tensors)


def with_kv(raw: RawGGUF, key: str, entry: bytes | None) -> RawGGUF:
    """A copy with `key`'s entry replaced by `entry` (None: removed; a new key is appended)."""
    prefix = gstr(key)
    kvs = [e for e in raw.kvs if not e.startswith(prefix)]
    if entry is not None:
        at = next((i for i, e in enumerate(raw.kvs) if e.startswith(prefix)), len(kvs))
        kvs.insert(at, entry)
    return replace(raw, kvs=kvs)


def with_tensor(raw: RawGGUF, which: str, /, **changes: object) -> RawGGUF:
    """A copy with tensor `which` changed (fields of RawTensor, its name included)."""
    tensors = [replace(t, **changes) if t.name == which else t for t in raw.tensors]
    return replace(raw, tensors=tensors)
