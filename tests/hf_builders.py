"""Helpers for the Hugging Face folder tests: copy a fixture, rewrite its config or weights, write
safetensors files (valid or deliberately broken) without the safetensors library."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np

from llmrun.formats.safetensors import SafetensorsFile
from llmrun.quantize import f32_to_bf16

HF = Path(__file__).resolve().parent / "data" / "hf"
FIXTURES = ("llama3-gqa", "llama-tied", "qwen2-bias", "mistral")


def copy_fixture(name: str, dst: Path) -> Path:
    """A writable copy of tests/data/hf/<name>."""
    return Path(shutil.copytree(HF / name, dst / name))


def edit_config(folder: Path, **changes: object) -> None:
    """Sets (value) or removes (None) keys of config.json."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    f = SafetensorsFile(path)
    return {name: np.array(f.tensor(name)) for name in f.entries}


def write_safetensors(path: Path, tensors: dict[str, np.ndarray], dtype: str = "F32",
                      header: dict | None = None, header_len: int | None = None) -> Path:
    """Writes `tensors` (float arrays) as `dtype` (F32, F16 or BF16). `header` replaces the computed JSON
    header and `header_len` the length field, to make broken files."""
    entries: dict[str, dict] = {}
    blobs = []
    offset = 0
    for name, values in tensors.items():
        values = np.asarray(values, dtype=np.float32)
        raw = {"F32": values.astype("<f4"), "F16": values.astype("<f2"), "BF16": f32_to_bf16(values)}[dtype].tobytes()
        entries[name] = {"dtype": dtype, "shape": list(values.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(entries if header is None else header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text) if header_len is None else header_len) + text + b"".join(blobs))
    return path
