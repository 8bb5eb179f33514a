"""Random-weight Llama models of real shapes, written as GGUF files with the official `gguf` package.

    from gguf_models import cached_gguf, write_random_gguf
    path = cached_gguf("110m", "q8_0")          # /tmp/llmrun-bench/110m-q8_0-s0.gguf, written once
    write_random_gguf("x.gguf", "15m", "f16")   # always writes

Speed does not depend on the weights' values, so these stand in for the real models in benchmarks: the
file has the real shape, tensor names, types and metadata (llama architecture, Llama 2 SentencePiece
vocabulary), so llama.cpp and llmrun both load it as they would a converted checkpoint.

- Weights: N(0, 1) / sqrt(cols), float32, then converted to the requested type (f32, f16, q8_0, q4_0)
  with `gguf.quants.quantize`; norms are 1.0 and always F32; `token_embd` and an untied `output` are in
  the requested type.
- Greedy decoding never ends early: the `output.weight` rows of <unk>, BOS and EOS (ids 0, 1, 2) are
  zero, so their logits are 0 while the best token's is positive.
- Tensors are generated and written one at a time (tensor infos first, data afterwards), so the 4.4 GB
  tinyllama-1.1b f32 file never has to fit in memory. Each tensor has its own random stream (seeded from
  the seed and its name), so the values do not depend on the order they are written in.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import gguf
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SP_MODEL = ROOT.parent / "shared" / "models" / "tokenizer.model"
CACHE_DIR = Path(os.environ.get("LLMRUN_BENCH_CACHE", "/tmp/llmrun-bench"))
FORMAT_VERSION = 1  # part of the cache key: bump when the files written here change

SHAPES: dict[str, dict[str, int]] = {
    "tinyllama-1.1b": dict(dim=2048, ffn=5632, n_layers=22, n_heads=32, n_kv_heads=4, vocab=32000, ctx=2048),
    "110m": dict(dim=768, ffn=2048, n_layers=12, n_heads=12, n_kv_heads=12, vocab=32000, ctx=1024),
    "15m": dict(dim=288, ffn=768, n_layers=6, n_heads=6, n_kv_heads=6, vocab=32000, ctx=256),
    # Llama-2-70B's matrix widths in two layers: wide products (8192 x 28672) at a size a small machine holds
    "70b-width": dict(dim=8192, ffn=28672, n_layers=2, n_heads=64, n_kv_heads=8, vocab=32000, ctx=4096),
}

Q = gguf.GGMLQuantizationType
TYPES: dict[str, tuple[gguf.GGMLQuantizationType, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}

# SentencePiece piece kinds as GGUF token types
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_BYTE = 1, 2, 3, 6
NO_END_IDS = (0, 1, 2)  # <unk>, BOS, EOS: zero classifier rows, so greedy decoding never picks them


def tensor_plan(shape: str) -> list[tuple[str, tuple[int, int] | tuple[int], bool]]:
    """(GGUF name, numpy shape (rows, cols) or (n,), is_norm) of every tensor, in file order."""
    s = SHAPES[shape]
    dim, ffn, vocab = s["dim"], s["ffn"], s["vocab"]
    head_dim = dim // s["n_heads"]
    kv_dim = s["n_kv_heads"] * head_dim
    plan: list[tuple[str, tuple[int, int] | tuple[int], bool]] = [("token_embd.weight", (vocab, dim), False)]
    for i in range(s["n_layers"]):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (dim,), True),
            (b + "attn_q.weight", (dim, dim), False),
            (b + "attn_k.weight", (kv_dim, dim), False),
            (b + "attn_v.weight", (kv_dim, dim), False),
            (b + "attn_output.weight", (dim, dim), False),
            (b + "ffn_norm.weight", (dim,), True),
            (b + "ffn_gate.weight", (ffn, dim), False),
            (b + "ffn_down.weight", (dim, ffn), False),
            (b + "ffn_up.weight", (ffn, dim), False),
        ]
    plan += [("output_norm.weight", (dim,), True), ("output.weight", (vocab, dim), False)]
    return plan


def _stored_nbytes(shape: tuple[int, ...], qtype: gguf.GGMLQuantizationType) -> int:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    return n // block_elems * block_bytes


def _make_tensor(name: str, shape: tuple[int, ...], is_norm: bool, qtype: gguf.GGMLQuantizationType,
                 seed: int) -> np.ndarray:
    """The tensor's data as it is stored: float32/float16 values or uint8 blocks (rows, row_bytes)."""
    if is_norm:
        return np.ones(shape, dtype=np.float32)
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= np.float32(1.0 / np.sqrt(shape[-1]))
    if name == "output.weight":
        w[list(NO_END_IDS)] = 0.0
    if qtype == Q.F32:
        return w
    if qtype == Q.F16:
        return w.astype(np.float16)
    return gguf.quants.quantize(w, qtype)


def _tokenizer_vocab(sp_model: Path) -> tuple[list[str], list[float], list[int]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(sp_model))
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        if sp.is_unknown(i):
            types.append(TOKEN_UNKNOWN)
        elif sp.is_control(i):
            types.append(TOKEN_CONTROL)
        elif sp.is_byte(i):
            types.append(TOKEN_BYTE)
        else:
            types.append(TOKEN_NORMAL)
    return tokens, scores, types


def write_random_gguf(path: str | os.PathLike, shape: str, type: str, seed: int = 0,
                      sp_model: str | os.PathLike = DEFAULT_SP_MODEL) -> Path:
    """Writes a random-weight llama GGUF model of `shape` (a SHAPES key) with weights of `type` (a
    TYPES key) to `path` and returns the path. The file is written under a temporary name and renamed
    into place, so an interrupted write never leaves a truncated model behind."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; one of {sorted(SHAPES)}")
    if type not in TYPES:
        raise ValueError(f"unknown type {type!r}; one of {sorted(TYPES)}")
    s = SHAPES[shape]
    qtype, ftype = TYPES[type]
    head_dim = s["dim"] // s["n_heads"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")

    tokens, scores, types = _tokenizer_vocab(Path(sp_model))
    if len(tokens) != s["vocab"]:
        raise ValueError(f"{sp_model} has {len(tokens)} pieces, shape {shape} needs {s['vocab']}")

    w = gguf.GGUFWriter(tmp, "llama")
    try:
        w.add_name(f"llmrun-random-{shape}-{type}-seed{seed}")
        w.add_file_type(int(ftype))
        if qtype not in (Q.F32, Q.F16):
            w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        w.add_context_length(s["ctx"])
        w.add_embedding_length(s["dim"])
        w.add_block_count(s["n_layers"])
        w.add_feed_forward_length(s["ffn"])
        w.add_head_count(s["n_heads"])
        w.add_head_count_kv(s["n_kv_heads"])
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(10000.0)
        w.add_rope_dimension_count(head_dim)
        w.add_vocab_size(s["vocab"])
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_add_bos_token(True)
        w.add_add_eos_token(False)

        plan = tensor_plan(shape)
        for name, tshape, is_norm in plan:
            t = Q.F32 if is_norm else qtype
            if t in (Q.F32, Q.F16):
                w.add_tensor_info(name, tshape, np.dtype(np.float32 if t == Q.F32 else np.float16),
                                  _stored_nbytes(tshape, t))
            else:
                block_elems, block_bytes = gguf.GGML_QUANT_SIZES[t]
                byte_shape = (*tshape[:-1], tshape[-1] // block_elems * block_bytes)
                w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), _stored_nbytes(tshape, t), raw_dtype=t)
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_ti_data_to_file()
        for name, tshape, is_norm in plan:
            data = _make_tensor(name, tshape, is_norm, qtype, seed)
            w.write_tensor_data(data)
            del data
        w.close()
    except BaseException:
        w.close()
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)
    return path


def cached_path(shape: str, type: str, seed: int = 0) -> Path:
    return CACHE_DIR / f"{shape}-{type}-s{seed}-v{FORMAT_VERSION}.gguf"


def cached_gguf(shape: str, type: str, seed: int = 0) -> Path:
    """The cached random model for (shape, type, seed), written on first use under CACHE_DIR
    (/tmp/llmrun-bench, or $LLMRUN_BENCH_CACHE)."""
    path = cached_path(shape, type, seed)
    if not path.is_file():
        write_random_gguf(path, shape, type, seed)
    return path


def weight_bytes_per_token(shape: str, type: str) -> int:
    """Bytes of weights a decode step reads: every matrix and norm except token_embd (of which only one
    row is read per token; that row is counted). KV-cache reads are not included."""
    qtype, _ = TYPES[type]
    total = 0
    for name, tshape, is_norm in tensor_plan(shape):
        t = Q.F32 if is_norm else qtype
        if name == "token_embd.weight":
            total += _stored_nbytes(tshape[1:], t)
        else:
            total += _stored_nbytes(tshape, t)
    return total


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Write (or find cached) random GGUF models.")
    ap.add_argument("--shapes", default="15m")
    ap.add_argument("--types", default="f32,f16,q8_0,q4_0")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for sh in args.shapes.split(","):
        for ty in args.types.split(","):
            p = cached_gguf(sh, ty, args.seed)
            print(f"{p}  {p.stat().st_size:,} bytes")
