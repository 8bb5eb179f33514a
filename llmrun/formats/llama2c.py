"""karpathy/llama2.c checkpoints (.bin).

Two layouts are read:
- legacy ("v0"): a header of 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
  seq_len), then f32 tensors in run.c's order: token embedding, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3,
  rms_final, freq_cis_real, freq_cis_imag (unused: RoPE is computed), and the classifier when
  vocab_size is negative (llama2.c's way of saying "not shared with the embedding").
- versioned: magic "ak42" (uint32 0x616b3432), int32 version, the same 7 int32 (vocab_size positive),
  uint8 shared_classifier, zero padding to 256 bytes. Version 1 is f32: norms first (rms_att, rms_ffn,
  rms_final), then token embedding, wq, wk, wv, wo, w1, w2, w3, then the classifier if not shared.
  Version 2 (Q8_0) needs the quantized kernels and is refused for now.

Tensors are views of one read-only memory map of the file: nothing is copied. `write_llama2c` writes
either layout (tests and benchmarks build their models with it; run.c reads v0).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from ..spec import LayerWeights, ModelConfig, ModelSpec, Tensor

MAGIC = 0x616B3432  # "ak42"
LEGACY_HEADER_BYTES = 7 * 4
VERSIONED_HEADER_BYTES = 256
HEADER_FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")

# Generous upper bounds: they reject garbage headers before any size arithmetic, not real models.
LIMITS = {"dim": 1 << 16, "hidden_dim": 1 << 20, "n_layers": 1 << 10, "n_heads": 1 << 12,
          "n_kv_heads": 1 << 12, "vocab_size": 1 << 24, "seq_len": 1 << 24}


def load_llama2c(path: str | os.PathLike) -> ModelSpec:
    """Reads a llama2.c checkpoint; raises ModelFormatError naming the file and field at fault."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(VERSIONED_HEADER_BYTES)
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read model file: {e.strerror or e}") from None

    if len(head) >= 8 and struct.unpack_from("<I", head)[0] == MAGIC:
        version = struct.unpack_from("<i", head, 4)[0]
        if version == 2:
            raise ModelFormatError(
                f"{path}: llama2.c version 2 (Q8_0) checkpoints are not supported yet; "
                "export version 0 or 1 (fp32), or convert the model to GGUF")
        if version != 1:
            raise ModelFormatError(f"{path}: unknown llama2.c checkpoint version {version} (expected 1)")
        if len(head) < VERSIONED_HEADER_BYTES:
            raise ModelFormatError(f"{path}: truncated header: {len(head)} bytes, expected "
                                   f"{VERSIONED_HEADER_BYTES}")
        fields = dict(zip(HEADER_FIELDS, struct.unpack_from("<7i", head, 8), strict=True))
        shared = head[36]
        if shared not in (0, 1):
            raise ModelFormatError(f"{path}: shared_classifier must be 0 or 1, got {shared}")
        return _build(path, file_size, fields, bool(shared), version=1, offset=VERSIONED_HEADER_BYTES)

    if len(head) < LEGACY_HEADER_BYTES:
        raise ModelFormatError(f"{path}: truncated header: {len(head)} bytes, expected {LEGACY_HEADER_BYTES}")
    fields = dict(zip(HEADER_FIELDS, struct.unpack_from("<7i", head), strict=True))
    shared = fields["vocab_size"] > 0  # a negative vocab_size flags a separate classifier
    fields["vocab_size"] = abs(fields["vocab_size"])
    return _build(path, file_size, fields, shared, version=0, offset=LEGACY_HEADER_BYTES)


def _check_header(path: Path, f: dict[str, int]) -> None:
    for name in HEADER_FIELDS:
        value = f[name]
        if not 0 < value <= LIMITS[name]:
            raise ModelFormatError(f"{path}: header field {name} = {value} is out of range "
                                   f"(expected 1..{LIMITS[name]})")
    if f["dim"] % f["n_heads"]:
        raise ModelFormatError(f"{path}: dim {f['dim']} is not divisible by n_heads {f['n_heads']}")
    if f["n_heads"] % f["n_kv_heads"]:
        raise ModelFormatError(
            f"{path}: n_heads {f['n_heads']} is not divisible by n_kv_heads {f['n_kv_heads']}")
    if (f["dim"] // f["n_heads"]) % 2:
        raise ModelFormatError(f"{path}: head size {f['dim'] // f['n_heads']} (dim / n_heads) must be even")


def _build(path: Path, file_size: int, f: dict[str, int], shared: bool, version: int,
           offset: int) -> ModelSpec:
    _check_header(path, f)
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

    data = np.memmap(path, dtype="<f4", mode="r", offset=offset, shape=(n_floats,))
    arrays: dict[str, np.ndarray] = {}
    start = 0
    for name in order:
        count = int(np.prod(shapes[name]))
        arrays[name] = data[start:start + count].reshape(shapes[name])
        start += count

    def t(a: np.ndarray) -> Tensor:
        return Tensor(a, "f32")

    layers = [
        LayerWeights(attn_norm=t(arrays["rms_att"][i]), wq=t(arrays["wq"][i]), wk=t(arrays["wk"][i]),
                     wv=t(arrays["wv"][i]), wo=t(arrays["wo"][i]), ffn_norm=t(arrays["rms_ffn"][i]),
                     w_gate=t(arrays["w1"][i]), w_down=t(arrays["w2"][i]), w_up=t(arrays["w3"][i]))
        for i in range(n_layers)
    ]
    config = ModelConfig(dim=dim, hidden_dim=hidden, n_layers=n_layers, n_heads=f["n_heads"],
                         n_kv_heads=f["n_kv_heads"], head_dim=head_dim, vocab_size=vocab, max_seq_len=seq_len,
                         rope_theta=10000.0, norm_eps=1e-5, rope_style="interleaved")
    return ModelSpec(path=path, format=f"llama2.c v{version}", config=config, token_embd=t(arrays["token_embd"]),
                     output_norm=t(arrays["rms_final"]), output=None if shared else t(arrays["output"]),
                     layers=layers, file_size=file_size)


# llama2.c's tensor names -> ours (the keys write_llama2c takes)
WRITE_NAMES = {"token_embd": "token_embd", "rms_att": "attn_norm", "wq": "wq", "wk": "wk", "wv": "wv",
               "wo": "wo", "rms_ffn": "ffn_norm", "w1": "w_gate", "w2": "w_down", "w3": "w_up",
               "rms_final": "output_norm", "output": "output"}


def write_llama2c(path: str | os.PathLike, config: ModelConfig, tensors: dict[str, np.ndarray],
                  version: int = 0) -> None:
    """Writes an f32 llama2.c checkpoint. `tensors` maps token_embd (vocab, dim), attn_norm (L, dim),
    wq (L, dim, dim), wk and wv (L, kv_dim, dim), wo (L, dim, dim), ffn_norm (L, dim), w_gate and w_up
    (L, hidden, dim), w_down (L, dim, hidden), output_norm (dim,) and, for an untied classifier,
    output (vocab, dim). The format cannot express head_dim != dim / n_heads or other RoPE settings."""
    c = config
    if c.head_dim * c.n_heads != c.dim or c.rope_style != "interleaved" or c.rope_theta != 10000.0:
        raise ValueError("llama2.c files need head_dim = dim / n_heads and interleaved RoPE with theta 10000")
    if version not in (0, 1):
        raise ValueError(f"version must be 0 or 1, got {version}")
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
        header = struct.pack("<Ii7iB", MAGIC, 1, *fields, c.vocab_size, c.max_seq_len, int(shared))
        header += bytes(VERSIONED_HEADER_BYTES - len(header))
        order = ["rms_att", "rms_ffn", "rms_final", "token_embd", "wq", "wk", "wv", "wo", "w1", "w2", "w3"]
        rope = []
    arrays = [tensors[WRITE_NAMES[name]] for name in order] + rope
    if not shared:
        arrays.append(tensors["output"])
    with open(path, "wb") as f:
        f.write(header)
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype="<f4").tobytes())
