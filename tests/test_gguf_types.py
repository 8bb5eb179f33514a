"""GGUF files with the K-quant and IQ4 types: what the reader maps them to, `info`'s storage rows, and files
whose tensors lie about their type or size (each a ModelFormatError naming the tensor).

The files are written by llmrun's writer, which writes llama-quantize's bytes (tests/test_quantize_golden.py),
with rows of 256 values so that every tensor gets the preset's own type."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from builders import make_config, random_tensors, spec_from_tensors
from llmrun import ModelFormatError
from llmrun.cli import tensor_type_rows
from llmrun.formats import read_model
from llmrun.formats.gguf import GGML_TYPE_NAMES, SUPPORTED_GGML_TYPES
from llmrun.formats.gguf_writer import write_model
from llmrun.spec import FILE_TYPES, TENSOR_TYPES

CFG = make_config(dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=40)


@pytest.fixture(scope="module")
def q4_k_m(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("types") / "m-q4_k_m.gguf"
    write_model(path, spec_from_tensors(CFG, random_tensors(CFG, seed=5, tied=False)), "Q4_K_M")
    return path


def test_every_llmrun_type_has_its_ggml_code() -> None:
    assert sorted(SUPPORTED_GGML_TYPES.values()) == sorted(FILE_TYPES)  # all but the in-memory _r8 forms
    for code, name in SUPPORTED_GGML_TYPES.items():  # the gguf package's numbering and block sizes agree
        q = gguf.GGMLQuantizationType(code)
        assert q.name.lower() == name == GGML_TYPE_NAMES[code].lower()
        assert gguf.GGML_QUANT_SIZES[q] == (TENSOR_TYPES[name].block_elems, TENSOR_TYPES[name].block_bytes)


def test_k_quant_file_reads_in_place(q4_k_m: Path) -> None:
    """Q4_K_M on 2 layers: attn_v and ffn_down of layer 1 are Q6_K (llama.cpp's "more bits" layers: i < n / 8
    or i >= 7 n / 8, integer division), the classifier Q6_K, the rest Q4_K; each tensor is the file's bytes,
    unconverted."""
    spec = read_model(q4_k_m)
    types = {t.name: t.tensor_type.name.lower() for t in gguf.GGUFReader(q4_k_m).tensors}
    assert types["blk.1.attn_v.weight"] == types["blk.1.ffn_down.weight"] == types["output.weight"] == "q6_k"
    assert types["blk.0.attn_v.weight"] == types["blk.0.ffn_down.weight"] == "q4_k"
    assert types["blk.0.attn_q.weight"] == types["token_embd.weight"] == "q4_k"
    layer = spec.layers[1]
    assert (layer.wq.type, layer.wv.type, layer.w_down.type, spec.output.type) == ("q4_k", "q6_k", "q6_k", "q6_k")
    assert layer.w_down.shape == (256, 512) and spec.token_embd.shape == (40, 256)
    file_bytes = {t.name: np.asarray(t.data).tobytes() for t in gguf.GGUFReader(q4_k_m).tensors}
    assert layer.w_down.data.tobytes() == file_bytes["blk.1.ffn_down.weight"]


def test_info_rows_count_types_and_bits(q4_k_m: Path) -> None:
    rows = tensor_type_rows(read_model(q4_k_m))
    text = "\n".join(f"{k} {v}" for k, v in rows)
    n = {t: 0 for t in ("q4_k", "q6_k", "f32")}
    values = {t: 0 for t in n}
    for t in gguf.GGUFReader(q4_k_m).tensors:
        name = t.tensor_type.name.lower()
        n[name] += 1
        values[name] += int(np.prod(t.shape))
    # Q4_K: 144 bytes per 256 values = 4.5 bits; Q6_K: 210 per 256 = 6.5625 bits
    overall = (4.5 * values["q4_k"] + 6.5625 * values["q6_k"] + 32 * values["f32"]) / sum(values.values())
    assert rows[0] == ("bits/weight", f"{overall:.2f} over {sum(values.values()):,} values")
    assert f"q4_k   {n['q4_k']:>4} tensors" in text and "4.50 bits/weight" in text
    assert f"q6_k   {n['q6_k']:>4} tensors" in text and "6.56 bits/weight" in text


# --- files that lie ------------------------------------------------------------------------------------

def type_field(data: bytes, name: str) -> int:
    """Where tensor `name`'s ggml type is in a GGUF file's bytes (after its name, n_dims and dimensions)."""
    key = struct.pack("<Q", len(name)) + name.encode()
    at = data.index(key) + len(key)
    (n_dims,) = struct.unpack_from("<I", data, at)
    return at + 4 + 8 * n_dims


def with_type(path: Path, name: str, code: int, out: Path) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into("<I", data, type_field(bytes(data), name), code)
    out.write_bytes(bytes(data))
    return out


def test_truncated_super_block(q4_k_m: Path, tmp_path: Path) -> None:
    """The file ends inside the classifier's last Q6_K super-block (210 bytes)."""
    data = q4_k_m.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[:-100])
    with pytest.raises(ModelFormatError, match=r"tensor 'output.weight' \(ne = \[256, 40\], Q6_K, 8400 bytes .* "
                                               r"runs past the end of the file"):
        read_model(cut)


def test_tensor_bigger_than_its_place(q4_k_m: Path, tmp_path: Path) -> None:
    """blk.0.attn_q.weight claims Q5_K (176 bytes per 256 values) where the file has its Q4_K bytes (144): its
    data would run into the next tensor's."""
    bad = with_type(q4_k_m, "blk.0.attn_q.weight", gguf.GGMLQuantizationType.Q5_K, tmp_path / "big.gguf")
    with pytest.raises(ModelFormatError, match=r"tensors 'blk.0.attn_q.weight' and '.*' overlap"):
        read_model(bad)


def test_tensor_rows_not_whole_blocks_of_its_type(tmp_path: Path) -> None:
    """A Q4_K tensor of 64-value rows (f32 in the file): no whole number of super-blocks."""
    cfg = make_config()
    path = tmp_path / "f32.gguf"
    write_model(path, spec_from_tensors(cfg, random_tensors(cfg, seed=1)), "F32")
    bad = with_type(path, "blk.1.attn_k.weight", gguf.GGMLQuantizationType.Q4_K, tmp_path / "rows.gguf")
    with pytest.raises(ModelFormatError, match=r"tensor 'blk.1.attn_k.weight' of type Q4_K has rows of 64 values, "
                                               r"not a multiple of its block size 256"):
        read_model(bad)


@pytest.mark.parametrize("code, name", [(16, "IQ2_XXS"), (19, "IQ1_S"), (21, "IQ3_S"), (34, "TQ1_0"),
                                        (39, "MXFP4"), (15, "Q8_K")])
def test_unsupported_types_are_named(q4_k_m: Path, tmp_path: Path, code: int, name: str) -> None:
    bad = with_type(q4_k_m, "blk.1.ffn_up.weight", code, tmp_path / "t.gguf")
    with pytest.raises(ModelFormatError, match=rf"tensor 'blk.1.ffn_up.weight' has type {name} \({code}\), not "
                                               r"supported yet \(supported: F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, "
                                               r"Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL, IQ4_XS, BF16\)"):
        read_model(bad)


@pytest.mark.parametrize("code", [4, 43, 1000])
def test_unknown_type_id(q4_k_m: Path, tmp_path: Path, code: int) -> None:
    bad = with_type(q4_k_m, "blk.0.ffn_gate.weight", code, tmp_path / "u.gguf")
    with pytest.raises(ModelFormatError, match=rf"tensor 'blk.0.ffn_gate.weight' has unknown ggml type {code} "
                                               r"\(not a type of ggml.h; supported: F32"):
        read_model(bad)
