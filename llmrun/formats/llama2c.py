"""karpathy/llama2.c checkpoints (.bin).

Three layouts are read:
- legacy ("v0"): a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len), then f32 tensors in run.c's order: token embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
  rms_final, freq_cis_real, freq_cis_imag (unused: RoPE is computed), and the classifier when
  vocab_size is negative (llama2.c's way of saying "not shared with the embedding").
- versioned: magic "ak42" (uint32 0x616b3432), int32 version, the same 7 int32 (vocab_size positive),
  uint8 shared_classifier, zero padding to 256 bytes. Version 1 is f32: norms first (rms_att, rms_ffn,
  rms_final), then token embedding, wq, wk, wv, wo, w1, w2, w3, then the classifier if not shared.
- version 2 (runq.c, export.py version2_export): the same header plus int32 group_size right after the
  shared_classifier byte; f32 norms as in version 1; then each quantized matrix (token embedding, wq, wk,
  wv, wo, w1, w2, w3 of every layer, the classifier if not shared) as its int8 values followed by its f32
  scales, one per group of group_size consecutive values of a row: x = q * scale.

v0/v1 tensors are views of one read-only memory map of the file: nothing is copied. v2 matrices are
converted at load time (a copy in memory, about the file's size, 4x that where they become f32), because
our kernels' Q8_0 blocks are 32 values with their fp16 scale stored beside them (GGUF's layout), see
_convert_q80. `write_llama2c` writes all three (tests and benchmarks build their models with it; run.c
reads v0, runq.c v2).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from ..quantize import QK
from ..spec import LayerWeights, ModelConfig, ModelSpec, Tensor, attention_shape_problem
from .mapping import map_file

MAGIC = 0x616B3432  # "ak42"
# Tensors stored once per layer (llama2.c's names).
PER_LAYER = ("rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3")
LEGACY_HEADER_BYTES = 7 * 4
VERSIONED_HEADER_BYTES = 256
HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")

# Generous upper bounds: they reject garbage headers before any size arithmetic, not real models.
LIMITS = {"dim": 1 << 16, "hidden_dim": 1 << 20, "n_layers": 1 << 10, "n_heads": 1 << 12,
          "n_kv_heads": 1 << 12, "vocab_size": 1 << 24, "seq_len": 1 << 24}


def load_llama2c(path: str | os.PathLike) -> ModelSpec:
    """Reads a llama2.c checkpoint; raises ModelFormatError naming the file and field at fault. A legacy (v0)
    checkpoint has no magic number, so any file without one is read as v0: a header that cannot be one says
    the file is of no known format."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(VERSIONED_HEADER_BYTES)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read model file: {e.strerror or e}") from None

    if len(head) >= 8 and struct.unpack_from("<I", head)[0] == MAGIC:
        version = struct.unpack_from("<i", head, 4)[0]
        if version not in (1, 2):
            raise ModelFormatError(f"{path}: unknown llama2.c checkpoint version {version} (expected 1 or 2)")
        if len(head) < VERSIONED_HEADER_BYTES:
            raise ModelFormatError(f"{path}: truncated header: {len(head)} bytes, expected "
                                   f"{VERSIONED_HEADER_BYTES}")
        fields = dict(zip(HEADER_FIELDS, struct.unpack_from("<7i", head, 8), strict=True))
        shared = head[36]
        if shared not in (0, 1):
            raise ModelFormatError(f"{path}: shared_classifier must be 0 or 1, got {shared}")
        if version == 2:
            group_size = struct.unpack_from("<i", head, 37)[0]  # packed right after the flag byte
            return _build_v2(path, file_size, fields, bool(shared), group_size)
        _check_header(path, fields)
        return _build(path, file_size, fields, bool(shared), version=1, offset=VERSIONED_HEADER_BYTES)

    if len(head) < LEGACY_HEADER_BYTES:  # the shortest header of any format
        raise ModelFormatError(f"{path}: not a GGUF / llama2.c / safetensors file: {len(head)} bytes, too short for "
                               "any of their headers (a truncated header, if it was a model)")
    fields = dict(zip(HEADER_FIELDS, struct.unpack_from("<7i", head), strict=True))
    shared = fields["vocab_size"] > 0  # a negative vocab_size flags a separate classifier
    fields["vocab_size"] = abs(fields["vocab_size"])
    problem = header_problem(fields)
    if problem is not None:
        raise ModelFormatError(f"{path}: not a GGUF / llama2.c / safetensors file: it starts with none of their "
                               f"magic numbers, and as a legacy llama2.c checkpoint (which has none) its {problem}")
    return _build(path, file_size, fields, shared, version=0, offset=LEGACY_HEADER_BYTES)


def header_problem(f: dict[str, int]) -> str | None:
    """What is wrong with a llama2.c header's fields, or None."""
    for name in HEADER_FIELDS:
        value = f[name]
        if not 0 < value <= LIMITS[name]:
            return f"header field {name} = {value} is out of range (expected 1..{LIMITS[name]})"
    if f["dim"] % f["n_heads"]:
        return f"header field dim {f['dim']} is not divisible by n_heads {f['n_heads']}"
    if f["n_heads"] % f["n_kv_heads"]:
        return f"header field n_heads {f['n_heads']} is not divisible by n_kv_heads {f['n_kv_heads']}"
    if (f["dim"] // f["n_heads"]) % 2:
        return f"head size {f['dim'] // f['n_heads']} (dim / n_heads) must be even"
    return attention_shape_problem(f["dim"], f["n_heads"], f["dim"] // f["n_heads"])


def _check_header(path: Path, f: dict[str, int]) -> None:
    problem = header_problem(f)
    if problem is not None:
        raise ModelFormatError(f"{path}: {problem}")


def _build(path: Path, file_size: int, f: dict[str, int], shared: bool, version: int,
           offset: int) -> ModelSpec:
    """A v0 or v1 checkpoint whose header fields are checked: its f32 tensors as views of the file."""
    dim, hidden, n_layers = f["dim"], f["hidden_dim"], f["n_layers"]
    vocab, seq_len = f["vocab_size"], f["seq_len"]
    head_dim = dim // f["n_heads"]
    kv_dim = f["n_kv_heads"] * head_dim

    # (name, shape) in file order; shapes are per model, the reader slices layers out of them.
    shapes = {
        "token_embd": (vocab, dim),
        "rms_att": (n_layers, dim),
        "wq": (n_layers, dim, dim),
        "wk": (n_layers, kv_dim, dim),
        "wv": (n_layers, kv_dim, dim),
        "wo": (n_layers, dim, dim),
        "rms_ffn": (n_layers, dim),
        "w1": (n_layers, hidden, dim),
        "w2": (n_layers, dim, hidden),
        "w3": (n_layers, hidden, dim),
        "rms_final": (dim,),
        "freq_cis_real": (seq_len, head_dim // 2),
        "freq_cis_imag": (seq_len, head_dim // 2),
        "output": (vocab, dim),
    }
    if version == 0:
        order = ["token_embd", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final",
                 "freq_cis_real", "freq_cis_imag"]
    else:
        order = ["rms_att", "rms_ffn", "rms_final", "token_embd", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    if not shared:
        order.append("output")

    n_floats = sum(int(np.prod(shapes[name])) for name in order)
    expected = offset + 4 * n_floats
    if file_size != expected:
        raise ModelFormatError(
            f"{path}: file size is {file_size} bytes but the header (dim={dim}, hidden_dim={hidden}, "
            f"n_layers={n_layers}, n_heads={f['n_heads']}, n_kv_heads={f['n_kv_heads']}, vocab_size={vocab}, "
            f"seq_len={seq_len}, shared_classifier={shared}) implies {expected} bytes")

    data = map_file(path, dtype="<f4", offset=offset, shape=(n_floats,))
    arrays: dict[str, np.ndarray] = {}
    start = 0
    for name in order:
        count = int(np.prod(shapes[name]))
        arrays[name] = data[start:start + count].reshape(shapes[name])
        start += count

    tensors: dict[str, Tensor | list[Tensor]] = {
        name: [Tensor(layer, "f32") for layer in a] if name in PER_LAYER else Tensor(a, "f32")
        for name, a in arrays.items()}
    return _make_spec(path, file_size, f, f"llama2.c v{version}", tensors, shared)


def _build_v2(path: Path, file_size: int, f: dict[str, int], shared: bool, group_size: int) -> ModelSpec:
    """A version 2 (Q8_0) checkpoint, converted to our tensor types (see _convert_q80)."""
    _check_header(path, f)
    dim, hidden, n_layers, vocab = f["dim"], f["hidden_dim"], f["n_layers"], f["vocab_size"]
    kv_dim = f["n_kv_heads"] * (dim // f["n_heads"])
    # runq.c quantizes every row (weights and activations) in whole groups: rows are dim or hidden_dim long.
    if not (group_size > 0 and dim % group_size == 0 and hidden % group_size == 0):
        raise ModelFormatError(
            f"{path}: header field group_size = {group_size} is invalid: expected a positive divisor of both "
            f"dim = {dim} and hidden_dim = {hidden}")

    norms = {"rms_att": (n_layers, dim), "rms_ffn": (n_layers, dim), "rms_final": (dim,)}
    # (name, number of tensors, rows, cols) in file order
    quantized = [("token_embd", 1, vocab, dim), ("wq", n_layers, dim, dim), ("wk", n_layers, kv_dim, dim),
                 ("wv", n_layers, kv_dim, dim), ("wo", n_layers, dim, dim), ("w1", n_layers, hidden, dim),
                 ("w2", n_layers, dim, hidden), ("w3", n_layers, hidden, dim)]
    if not shared:
        quantized.append(("output", 1, vocab, dim))

    norm_bytes = 4 * sum(int(np.prod(shape)) for shape in norms.values())
    # each tensor: rows * cols int8 values, then one f32 scale per group
    quant_bytes = sum(count * (rows * cols + 4 * (rows * cols // group_size)) for _, count, rows, cols in quantized)
    expected = VERSIONED_HEADER_BYTES + norm_bytes + quant_bytes
    if file_size != expected:
        raise ModelFormatError(
            f"{path}: file size is {file_size} bytes but the header (version 2, dim={dim}, hidden_dim={hidden}, "
            f"n_layers={n_layers}, n_heads={f['n_heads']}, n_kv_heads={f['n_kv_heads']}, vocab_size={vocab}, "
            f"seq_len={f['seq_len']}, shared_classifier={shared}, group_size={group_size}) implies "
            f"{expected} bytes")

    data = map_file(path)
    offset = VERSIONED_HEADER_BYTES
    tensors: dict[str, Tensor | list[Tensor]] = {}
    for name, shape in norms.items():
        n = int(np.prod(shape))
        a = data[offset:offset + 4 * n].view("<f4").reshape(shape)
        tensors[name] = [Tensor(row, "f32") for row in a] if name in PER_LAYER else Tensor(a, "f32")
        offset += 4 * n
    for name, count, rows, cols in quantized:
        converted = []
        for _ in range(count):
            n = rows * cols
            q = data[offset:offset + n].view(np.int8).reshape(rows, cols)
            scales = data[offset + n:offset + n + 4 * (n // group_size)].view("<f4").reshape(rows, cols // group_size)
            converted.append(_convert_q80(q, scales, group_size))
            offset += n + 4 * (n // group_size)
        tensors[name] = converted if name in PER_LAYER else converted[0]
    spec = _make_spec(path, file_size, f, "llama2.c v2", tensors, shared)
    spec.group_size = group_size
    return spec


# fp16's normal range: a scale in it is stored with a relative error of at most 2**-11.
_F16_MIN_NORMAL, _F16_MAX = 2.0 ** -14, 65504.0


def _convert_q80(q: np.ndarray, scales: np.ndarray, group_size: int) -> Tensor:
    """One runq.c tensor (int8 values (rows, cols), f32 scales (rows, cols / group_size)) as a Tensor our
    kernels run.

    When group_size is a multiple of 32, every 32-value block lies inside one group: it keeps its int8
    values unchanged and takes its group's scale rounded to fp16 -- a GGUF Q8_0 block. That is closer to
    the file than requantizing the dequantized values with ggml's quantizer, which would move values of a
    block whose largest |q| is below 127 onto a new grid. Scales outside fp16's normal range would lose
    precision (or overflow), so such a tensor, and any tensor with smaller groups (stories260K_q80.bin has
    group_size 4), is dequantized to f32 instead: exactly q * scale as runq.c computes it, at 4x the memory.
    """
    rows, cols = q.shape
    nonzero = scales[scales != 0]
    fits_f16 = bool(np.all(np.isfinite(scales))) and (
        nonzero.size == 0 or (np.abs(nonzero).min() >= _F16_MIN_NORMAL and np.abs(nonzero).max() <= _F16_MAX))
    if group_size % QK == 0 and fits_f16:
        blocks_per_group = group_size // QK
        d = np.repeat(scales.astype(np.float16), blocks_per_group, axis=1)  # (rows, cols / 32)
        out = np.empty((rows, cols // QK, 2 + QK), dtype=np.uint8)
        out[:, :, :2] = d.view(np.uint8).reshape(rows, cols // QK, 2)
        out[:, :, 2:] = q.view(np.uint8).reshape(rows, cols // QK, QK)
        return Tensor(out.reshape(rows, -1), "q8_0")
    out = np.empty((rows, cols // group_size, group_size), dtype=np.float32)
    np.multiply(q.reshape(out.shape), scales[:, :, None], out=out, dtype=np.float32)
    return Tensor(out.reshape(rows, cols), "f32")


def _make_spec(path: Path, file_size: int, f: dict[str, int], fmt: str, tensors: dict, shared: bool) -> ModelSpec:
    """The ModelSpec of a llama2.c checkpoint from its tensors under llama2.c's names: a Tensor each, or
    for the names in PER_LAYER a list of one Tensor per layer."""
    dim, n_layers = f["dim"], f["n_layers"]
    layers = [
        LayerWeights(attn_norm=tensors["rms_att"][i], wq=tensors["wq"][i], wk=tensors["wk"][i],
                     wv=tensors["wv"][i], wo=tensors["wo"][i], ffn_norm=tensors["rms_ffn"][i],
                     w_gate=tensors["w1"][i], w_down=tensors["w2"][i], w_up=tensors["w3"][i])
        for i in range(n_layers)
    ]
    config = ModelConfig(dim=dim, hidden_dim=f["hidden_dim"], n_layers=n_layers, n_heads=f["n_heads"],
                         n_kv_heads=f["n_kv_heads"], head_dim=dim // f["n_heads"], vocab_size=f["vocab_size"],
                         max_seq_len=f["seq_len"], rope_theta=10000.0, norm_eps=1e-5, rope_style="interleaved")
    return ModelSpec(path=path, format=fmt, config=config, token_embd=tensors["token_embd"],
                     output_norm=tensors["rms_final"], output=None if shared else tensors["output"],
                     layers=layers, file_size=file_size)


# llama2.c's tensor names -> ours (the keys write_llama2c takes)
WRITE_NAMES = {"token_embd": "token_embd", "rms_att": "attn_norm", "wq": "wq", "wk": "wk", "wv": "wv",
               "wo": "wo", "rms_ffn": "ffn_norm", "w1": "w_gate", "w2": "w_down", "w3": "w_up",
               "rms_final": "output_norm", "output": "output"}


def write_llama2c(path: str | os.PathLike, config: ModelConfig, tensors: dict[str, np.ndarray],
                  version: int = 0, group_size: int = 64) -> None:
    """Writes a llama2.c checkpoint: f32 (version 0 or 1) or Q8_0 (version 2, with `group_size`).
    `tensors` maps token_embd (vocab, dim), attn_norm (L, dim), wq (L, dim, dim), wk and wv (L, kv_dim,
    dim), wo (L, dim, dim), ffn_norm (L, dim), w_gate and w_up (L, hidden, dim), w_down (L, dim, hidden),
    output_norm (dim,) and, for an untied classifier, output (vocab, dim). The format cannot express
    head_dim != dim / n_heads or other RoPE settings."""
    c = config
    if c.head_dim * c.n_heads != c.dim or c.rope_style != "interleaved" or c.rope_theta != 10000.0:
        raise ValueError("llama2.c files need head_dim = dim / n_heads and interleaved RoPE with theta 10000")
    if version not in (0, 1, 2):
        raise ValueError(f"version must be 0, 1 or 2, got {version}")
    shared = "output" not in tensors
    fields = (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads)
    half = c.head_dim // 2
    if version == 0:
        header = struct.pack("<7i", *fields, c.vocab_size if shared else -c.vocab_size, c.max_seq_len)
        order = ["token_embd", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"]
        # run.c skips the RoPE tables but they must be there; write the real ones, as export.py does.
        angles = np.outer(np.arange(c.max_seq_len), 10000.0 ** (-np.arange(0, c.head_dim, 2)[:half] / c.head_dim))
        rope = [np.cos(angles), np.sin(angles)]
    else:
        header = struct.pack("<Ii7iB", MAGIC, version, *fields, c.vocab_size, c.max_seq_len, int(shared))
        if version == 2:
            header += struct.pack("<i", group_size)
        header += bytes(VERSIONED_HEADER_BYTES - len(header))
        order = ["rms_att", "rms_ffn", "rms_final", "token_embd", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
        rope = []
    arrays = [(name, tensors[WRITE_NAMES[name]]) for name in order] + [("rope", table) for table in rope]
    if not shared:
        arrays.append(("output", tensors["output"]))
    with open(path, "wb") as f:
        f.write(header)
        for name, array in arrays:
            a = np.asarray(array, dtype="<f4")
            if version == 2 and name not in ("rms_att", "rms_ffn", "rms_final"):
                for matrix in a if name in PER_LAYER else [a]:  # q then scales, tensor by tensor
                    q, scales = quantize_q80_export(matrix, group_size)
                    f.write(q.tobytes())
                    f.write(scales.tobytes())
            else:
                f.write(np.ascontiguousarray(a).tobytes())


def quantize_q80_export(w: np.ndarray, group_size: int) -> tuple[np.ndarray, np.ndarray]:
    """llama2.c export.py's quantize_q80: groups of `group_size` consecutive values, scale = max|w| / 127,
    q = round(w / scale) with halves to even (torch.round), all in float32. Returns (int8 q, f32 scales)."""
    groups = np.asarray(w, dtype=np.float32).reshape(-1, group_size)
    scale = np.abs(groups).max(axis=1) / np.float32(127.0)
    with np.errstate(invalid="ignore"):  # an all-zero group: 0 / 0, which becomes q = 0
        q = np.nan_to_num(np.round(groups / scale[:, None]))
    return q.astype(np.int8), scale.astype("<f4")
