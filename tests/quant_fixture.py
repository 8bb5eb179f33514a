"""A small llama GGUF whose weights every machine computes bit for bit the same, for the quantization goldens.

Random generators and libm functions may differ between numpy versions and platforms; these weights are
integers from a fixed hash (splitmix64) scaled by powers of two, so the F32 file, and therefore what
llama-quantize made of it (tests/data/llama_quantize_sha256.json), is the same everywhere. Its shape puts
every preset's choices to work: rows of 256 and 512 values (whole K-quant super-blocks), 8 layers (the
"more bits" layers of the _M presets are 0, 3, 6 and 7), 4 query heads per key/value head (the GQA rules of
Q2_K and IQ4), and an untied classifier (Q6_K in every K preset).
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

DIM, FFN, N_LAYERS, N_HEADS, N_KV_HEADS, VOCAB = 256, 512, 8, 4, 1, 256
HEAD_DIM = DIM // N_HEADS


def _splitmix64(i: np.ndarray) -> np.ndarray:
    z = i * np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_weights(rows: int, cols: int, stream: int) -> np.ndarray:
    """(rows, cols) float32 values: a sum of three 20-bit hash fields (bell-shaped, zero mean), each row
    scaled by its own power of two (rows differ in magnitude by up to 2^6), every 61st value 8 times larger
    (outliers, as real weights have), every 37th exactly zero. All steps exact in float32."""
    with np.errstate(over="ignore"):
        h = _splitmix64(np.arange(rows * cols, dtype=np.uint64) + np.uint64(stream) * np.uint64(1 << 40))
    mask = np.uint64((1 << 20) - 1)
    s = ((h & mask) + ((h >> np.uint64(20)) & mask) + ((h >> np.uint64(40)) & mask)).astype(np.int64)
    x = (s - 3 * (1 << 19)).astype(np.float32) * np.float32(2.0 ** -26)  # |x| < 2^-5, exact (21 bits)
    x = x.reshape(rows, cols) * (np.float32(2.0) ** (np.arange(rows) % 7).astype(np.float32))[:, None]
    flat = x.reshape(-1)
    flat[::61] *= np.float32(8)
    flat[::37] = 0
    return x


def write_hash_model(path: Path) -> Path:
    """The fixture model as an F32 GGUF (no vocabulary: llama-quantize does not need one)."""
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("llmrun-quant-fixture")
    w.add_file_type(0)
    w.add_context_length(128)
    w.add_embedding_length(DIM)
    w.add_block_count(N_LAYERS)
    w.add_feed_forward_length(FFN)
    w.add_head_count(N_HEADS)
    w.add_head_count_kv(N_KV_HEADS)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_vocab_size(VOCAB)
    stream = 0

    def matrix(name: str, rows: int, cols: int) -> None:
        nonlocal stream
        stream += 1
        w.add_tensor(name, hash_weights(rows, cols, stream))

    matrix("token_embd.weight", VOCAB, DIM)
    for i in range(N_LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(DIM, np.float32))
        matrix(f"blk.{i}.attn_q.weight", DIM, DIM)
        matrix(f"blk.{i}.attn_k.weight", N_KV_HEADS * HEAD_DIM, DIM)
        matrix(f"blk.{i}.attn_v.weight", N_KV_HEADS * HEAD_DIM, DIM)
        matrix(f"blk.{i}.attn_output.weight", DIM, DIM)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(DIM, np.float32))
        matrix(f"blk.{i}.ffn_gate.weight", FFN, DIM)
        matrix(f"blk.{i}.ffn_down.weight", DIM, FFN)
        matrix(f"blk.{i}.ffn_up.weight", FFN, DIM)
    w.add_tensor("output_norm.weight", np.ones(DIM, np.float32))
    matrix("output.weight", VOCAB, DIM)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
