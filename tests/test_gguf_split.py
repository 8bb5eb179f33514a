"""Split GGUF models (llama.cpp's NAME-00001-of-0000N.gguf): loaded as one model from any part, and refused
with a ModelFormatError naming the part where one is missing or does not belong. The parts are written by
the official `gguf` package (tests/gguf_split.py)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import llmrun
from gguf_split import split_gguf
from llmrun.formats.gguf import read_gguf, read_gguf_model

PROMPT = [1, 403, 407, 261, 378]  # "Once upon a time"


@pytest.fixture
def parts(models_dir: Path, tmp_path: Path) -> list[Path]:
    return split_gguf(models_dir / "stories260K-f32.gguf", tmp_path, 3, stem="stories260K-F32")


def test_parts_are_what_llama_cpp_writes(parts: list[Path]) -> None:
    """Each part a GGUF file of its own with a share of the tensors; split.* keys in all, the rest in the first."""
    files = [read_gguf(p) for p in parts]
    assert [p.name for p in parts] == [f"stories260K-F32-0000{i}-of-00003.gguf" for i in (1, 2, 3)]
    assert [f.metadata["split.no"] for f in files] == [0, 1, 2]
    assert {f.metadata["split.count"] for f in files} == {3}
    assert sum(len(f.tensors) for f in files) == files[0].metadata["split.tensors.count"] == 47
    assert all(len(f.tensors) > 0 for f in files)
    assert "general.architecture" in files[0].metadata and "general.architecture" not in files[1].metadata


@pytest.mark.parametrize("which", [0, 1, 2])
def test_split_model_equals_the_unsplit_file(models_dir: Path, parts: list[Path], which: int) -> None:
    """From any of its parts, the model computes exactly what the one file does (the same weights, read from
    three memory maps) and writes the same text."""
    with llmrun.load(models_dir / "stories260K-f32.gguf") as whole, llmrun.load(parts[which]) as split:
        np.testing.assert_array_equal(split.logits(PROMPT), whole.logits(PROMPT))
        assert split.generate("Once upon a time", max_tokens=60, temperature=0) == \
            whole.generate("Once upon a time", max_tokens=60, temperature=0)
        assert split.info.path == str(parts[0])
        assert split.info.file_size == sum(p.stat().st_size for p in parts)
        assert split.info.n_params == whole.info.n_params


def test_joined_metadata_has_no_split_keys(parts: list[Path]) -> None:
    """split.* describe the files, not the model: a tool that rewrites the model (quantize) must not copy them."""
    f = read_gguf_model(parts[0])
    assert not [k for k in f.metadata if k.startswith("split.")]
    assert len(f.tensors) == 47


def test_missing_part(parts: list[Path]) -> None:
    parts[1].unlink()
    with pytest.raises(llmrun.ModelFormatError, match=r"part 2 of this split GGUF model \(3 files\) is missing: .*"
                                                      r"stories260K-F32-00002-of-00003.gguf"):
        llmrun.load(parts[0])


def test_part_of_another_split(models_dir: Path, parts: list[Path], tmp_path: Path) -> None:
    """A part in the place of another (here the third renamed as the second): its split.no says so."""
    shutil.copy(parts[2], parts[1])
    with pytest.raises(llmrun.ModelFormatError, match=r"00002-of-00003.gguf: expected part 2 of 3 .* split.no = 2"):
        llmrun.load(parts[0])


def test_part_of_a_split_into_another_count(models_dir: Path, parts: list[Path], tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = split_gguf(models_dir / "stories260K-f32.gguf", tmp_path / "other", 2, stem="x")
    shutil.copy(other[1], parts[1])
    with pytest.raises(llmrun.ModelFormatError, match=r"expected part 2 of 3 .* split.count = 2"):
        llmrun.load(parts[0])


def test_renamed_part(parts: list[Path]) -> None:
    """The parts are found by name, as llama.cpp finds them: a renamed first part cannot lead to the others."""
    renamed = parts[0].with_name("model.gguf")
    parts[0].rename(renamed)
    with pytest.raises(llmrun.ModelFormatError, match=r"model.gguf: part of a split GGUF model \(3 files\) by its "
                                                      r"split.count, .* NAME-00001-of-00003.gguf"):
        llmrun.load(renamed)


def test_tensor_in_two_parts(models_dir: Path, parts: list[Path], tmp_path: Path) -> None:
    """Two parts holding the same tensor (a part duplicated under another number) are refused, not merged."""
    src = read_gguf(parts[1])
    data = bytearray(parts[1].read_bytes())
    no_offset = _value_offset(data, b"split.no")
    assert src.metadata["split.no"] == 1 and data[no_offset:no_offset + 2] == b"\x01\x00"
    data[no_offset:no_offset + 2] = b"\x02\x00"  # now it says it is the third part
    parts[2].write_bytes(bytes(data))
    with pytest.raises(llmrun.ModelFormatError, match="is also in another part of this split model"):
        llmrun.load(parts[0])


def _value_offset(data: bytearray, key: bytes) -> int:
    """Where a uint16 metadata value lies: after the key (length-prefixed) and its uint32 value type."""
    at = data.index(len(key).to_bytes(8, "little") + key)
    return at + 8 + len(key) + 4
