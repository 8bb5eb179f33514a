"""llama2.c checkpoints: both layouts load and agree, and every malformed file raises ModelFormatError
that names the file and the field at fault (never a crash, a hang or a huge allocation)."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np
import pytest

from builders import make_config, random_tensors, write_model
from llmrun import ModelFormatError
from llmrun.engine import Engine
from llmrun.formats import read_model
from reference import forward as reference_forward

CFG = make_config(dim=32, hidden_dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=40, max_seq_len=16)


@pytest.mark.parametrize("version", [0, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_roundtrip_matches_reference(tmp_path: Path, version: int, tied: bool) -> None:
    t = random_tensors(CFG, seed=5, tied=tied)
    spec = read_model(write_model(tmp_path / "m.bin", CFG, t, version=version))
    assert spec.format == f"llama2.c v{version}"
    assert spec.config == CFG
    assert (spec.output is None) == tied
    assert isinstance(spec.layers[0].wq.data.base, np.memmap) or isinstance(spec.layers[0].wq.data, np.memmap)
    tokens = [1, 5, 9, 2, 7]
    got = Engine(spec, n_ctx=16, n_threads=1).evaluate_all(tokens)
    want = reference_forward(CFG, t, tokens)
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_stories260k_header(models_dir: Path) -> None:
    spec = read_model(models_dir / "stories260K.bin")
    c = spec.config
    assert (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.max_seq_len) == (
        64, 172, 5, 8, 4, 512, 512)
    assert spec.output is None and spec.n_params == 260_032


def v0_header(dim=32, hidden=48, layers=2, heads=4, kv=2, vocab=40, seq=16) -> bytes:
    return struct.pack("<7i", dim, hidden, layers, heads, kv, vocab, seq)


def good_v0(tmp_path: Path) -> bytes:
    return write_model(tmp_path / "good.bin", CFG, random_tensors(CFG, seed=1)).read_bytes()


def corrupt_cases(tmp_path: Path) -> dict[str, tuple[bytes, str]]:
    good = good_v0(tmp_path)
    body = good[28:]
    v1 = write_model(tmp_path / "good1.bin", CFG, random_tensors(CFG, seed=1), version=1).read_bytes()
    return {
        # name: (file bytes, text the message must contain)
        "empty": (b"", "truncated header"),
        "short header": (good[:20], "truncated header"),
        "truncated": (good[:-4], "file size"),
        "one byte extra": (good + b"\0", "file size"),
        "zero dim": (v0_header(dim=0) + body, "dim = 0"),
        "negative layers": (v0_header(layers=-2) + body, "n_layers = -2"),
        "zero vocab": (v0_header(vocab=0) + body, "vocab_size = 0"),
        "dim not divisible by heads": (v0_header(heads=5) + body, "not divisible by n_heads"),
        "heads not divisible by kv": (v0_header(kv=3) + body, "not divisible by n_kv_heads"),
        "odd head size": (v0_header(dim=36, heads=4, kv=4) + body, "must be even"),
        "huge dims": (v0_header(dim=1 << 30, hidden=1 << 30) + body, "out of range"),
        "huge but plausible dims": (v0_header(dim=4096, hidden=11008, layers=32, heads=32, kv=32, vocab=32000,
                                              seq=4096) + body, "file size"),
        "garbage": (np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(), "header"),
        "v1 truncated header": (v1[:100], "truncated header"),
        "v1 bad shared flag": (v1[:36] + b"\x07" + v1[37:], "shared_classifier"),
        "v1 truncated": (v1[:-8], "file size"),
        "v2 without a group size": (v1[:4] + struct.pack("<i", 2) + v1[8:], "group_size = 0"),
        "unknown version": (v1[:4] + struct.pack("<i", 9) + v1[8:], "unknown llama2.c checkpoint version 9"),
    }


def test_corrupt_files(tmp_path: Path) -> None:
    for name, (data, message) in corrupt_cases(tmp_path).items():
        path = tmp_path / f"{name.replace(' ', '_')}.bin"
        path.write_bytes(data)
        with pytest.raises(ModelFormatError) as info:
            read_model(path)
        assert str(path) in str(info.value), name
        assert message in str(info.value), f"{name}: {info.value}"


def test_missing_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError, match="no such model file"):
        read_model(tmp_path / "nope.bin")
    with pytest.raises(ModelFormatError, match="no config.json: not a Hugging Face model folder"):
        read_model(tmp_path)


def test_size_message_names_expected_and_actual(tmp_path: Path) -> None:
    good = good_v0(tmp_path)
    path = tmp_path / "t.bin"
    path.write_bytes(good[:-4])
    with pytest.raises(ModelFormatError, match=rf"file size is {len(good) - 4} bytes .* implies {len(good)} bytes"):
        read_model(path)


@pytest.mark.parametrize("data", [
    b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,  # an image
    b"Once upon a time, there was a text file that somebody took for a model.\n" * 5,
    b"\x7fELF\x02\x01\x01" + bytes(200),  # a program
])
def test_a_file_of_no_known_format_says_so(tmp_path: Path, data: bytes) -> None:
    """Not a header-field error about bytes that were never a header."""
    path = tmp_path / "model.bin"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match="not a GGUF / llama2.c / safetensors file") as info:
        read_model(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("data", [b"hello\n", b"", b"GGU"])
def test_a_file_too_short_for_any_format_says_so(tmp_path: Path, data: bytes) -> None:
    """`echo hello > x; llmrun info x` said "truncated header: 6 bytes, expected 28"."""
    path = tmp_path / "x"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=rf"^{re.escape(str(path))}: not a GGUF / llama2\.c / safetensors "
                                                rf"file: {len(data)} bytes"):
        read_model(path)


def test_a_safetensors_file_points_to_its_folder(tmp_path: Path) -> None:
    header = b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}'
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bytes(4))
    with pytest.raises(ModelFormatError, match="safetensors file: load the folder that holds it"):
        read_model(path)


def test_older_ggml_formats_are_named(tmp_path: Path) -> None:
    path = tmp_path / "old.bin"
    path.write_bytes(struct.pack("<I", 0x67676A74) + bytes(100))  # "ggjt", llama.cpp's format before GGUF
    with pytest.raises(ModelFormatError, match="GGML/GGJT"):
        read_model(path)


def test_implausible_attention_shape(tmp_path: Path) -> None:
    """dim 64 in 2 heads of 32: allowed; llama2.c derives head_dim = dim / n_heads, so only a huge head can be
    implausible there (dim 4096 in one head)."""
    path = tmp_path / "wide.bin"
    path.write_bytes(v0_header(dim=4096, hidden=48, layers=1, heads=1, kv=1, vocab=40, seq=16) + bytes(64))
    with pytest.raises(ModelFormatError, match="head_dim = 4096 is larger than 1024"):
        read_model(path)
