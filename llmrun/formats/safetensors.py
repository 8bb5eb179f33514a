"""Safetensors files (Hugging Face): one file or a sharded set with `model.safetensors.index.json`.

Layout: uint64 little-endian N, then N bytes of UTF-8 JSON mapping each tensor name to
{"dtype": "F32" | "F16" | "BF16" | ..., "shape": [...], "data_offsets": [begin, end]} (offsets relative to
the byte after the header; an optional "__metadata__" entry maps strings to strings), then the data.

The file is untrusted input, so the header is bounded (MAX_HEADER_BYTES) and every entry is checked before
any tensor is touched: a known dtype, a shape of non-negative ints whose element count times the dtype size
equals the byte range, offsets inside the file and no two tensors overlapping. Any problem raises
ModelFormatError naming the file, the tensor and the value. Tensors are read-only views of one memory map
per file (no copy); BF16 values stay their raw uint16 patterns (spec.TENSOR_TYPES["bf16"]).
"""

from __future__ import annotations

import itertools
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelFormatError
from .mapping import map_file

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own cap
MAX_DIMS = 8
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

# safetensors dtype -> (llmrun's type name, numpy storage dtype)
DTYPES: dict[str, tuple[str, np.dtype]] = {
    "F32": ("f32", np.dtype("<f4")),
    "F16": ("f16", np.dtype("<f2")),
    "BF16": ("bf16", np.dtype("<u2")),
}
# dtypes the format knows but llmrun cannot use, for a precise message
KNOWN_DTYPES = {"BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F64", "F8_E4M3", "F8_E5M2",
                "F8_E8M0", "F4", "F6_E2M3", "F6_E3M2", "C64"}


@dataclass(frozen=True)
class TensorEntry:
    """One tensor of a safetensors file: llmrun type name, shape and absolute byte range."""

    name: str
    type: str
    shape: tuple[int, ...]
    start: int
    end: int


class SafetensorsFile:
    """One parsed safetensors file; `tensor(name)` gives a read-only array view of its data."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.entries, self.metadata, self.size = _parse(self.path)
        self._data: np.memmap | None = None

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def tensor(self, name: str) -> np.ndarray:
        """The tensor's values as a view of the file (shape as stored; BF16 as uint16)."""
        entry = self.entries[name]
        if self._data is None:
            try:
                self._data = map_file(self.path)
            except (OSError, ValueError) as e:
                raise ModelFormatError(f"{self.path}: cannot map file: {e}") from None
        raw = self._data[entry.start:entry.end]
        dtype = DTYPES[_dtype_name(entry.type)][1]
        out = raw.view(dtype).reshape(entry.shape)
        if out.ctypes.data % dtype.itemsize:  # the format does not promise aligned data
            out = np.array(out, copy=True)
            out.setflags(write=False)
        return out


def _dtype_name(type_name: str) -> str:
    return next(k for k, (t, _) in DTYPES.items() if t == type_name)


def _parse(path: Path) -> tuple[dict[str, TensorEntry], dict[str, str], int]:
    def fail(message: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: {message}")

    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise fail(f"truncated safetensors file: {size} bytes, the header length alone needs 8")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise fail(f"safetensors header length {n} exceeds the limit of {MAX_HEADER_BYTES} bytes")
            if n > size - 8:
                raise fail(f"truncated safetensors file: the header says {n} bytes of JSON, only {size - 8} "
                           "bytes follow")
            raw = f.read(n)
    except OSError as e:
        raise fail(f"cannot read file: {e.strerror or e}") from None
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError as e:  # bad UTF-8, bad JSON, an integer of thousands of digits
        raise fail(f"safetensors header is not valid JSON: {e}") from None
    except RecursionError:
        raise fail("safetensors header is not valid JSON: nested too deep") from None
    if not isinstance(header, dict):
        raise fail(f"safetensors header must be a JSON object, got {type(header).__name__}")
    data_start = 8 + n
    data_size = size - data_start
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise fail("safetensors __metadata__ must be an object")
    entries: dict[str, TensorEntry] = {}
    for name, info in header.items():
        entries[name] = _entry(path, name, info, data_start, data_size)
    ordered = sorted(entries.values(), key=lambda e: (e.start, e.end))
    for before, after in itertools.pairwise(ordered):
        if before.end > after.start:
            raise fail(f"tensors {before.name!r} and {after.name!r} overlap (bytes {before.start - data_start}.."
                       f"{before.end - data_start} and {after.start - data_start}..{after.end - data_start})")
    return entries, {str(k): str(v) for k, v in metadata.items()}, size


def _entry(path: Path, name: str, info: object, data_start: int, data_size: int) -> TensorEntry:
    def fail(message: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: tensor {name!r}: {message}")

    if not isinstance(info, dict):
        raise fail("entry must be an object with dtype, shape and data_offsets")
    dtype = info.get("dtype")
    if not isinstance(dtype, str):  # a list or object would not even be hashable
        raise fail(f"unknown dtype {dtype!r}")
    if dtype not in DTYPES:
        if dtype in KNOWN_DTYPES:
            raise fail(f"dtype {dtype} is not supported (llmrun reads F32, F16 and BF16)")
        raise fail(f"unknown dtype {dtype!r}")
    shape = info.get("shape")
    if (not isinstance(shape, list) or len(shape) > MAX_DIMS
            or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
        raise fail(f"shape must be a list of at most {MAX_DIMS} non-negative integers, got {shape!r}")
    offsets = info.get("data_offsets")
    if (not isinstance(offsets, list) or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)):
        raise fail(f"data_offsets must be [begin, end], got {offsets!r}")
    begin, end = offsets
    if not 0 <= begin <= end <= data_size:
        raise fail(f"data_offsets {offsets} are out of range (the data section has {data_size} bytes)")
    type_name, np_dtype = DTYPES[dtype]
    nbytes = math.prod(shape) * np_dtype.itemsize
    if nbytes != end - begin:
        raise fail(f"shape {shape} of {dtype} needs {nbytes} bytes but data_offsets {offsets} span {end - begin}")
    return TensorEntry(name, type_name, tuple(shape), data_start + begin, data_start + end)


class SafetensorsSet(Mapping[str, TensorEntry]):
    """The tensors of a model folder: one `model.safetensors`, or the shards an index names.

    Maps tensor name -> TensorEntry; `array(name)` gives the data (a view of its shard)."""

    def __init__(self, folder: str | os.PathLike) -> None:
        folder = Path(folder)
        self.folder = folder
        self._files: dict[str, SafetensorsFile] = {}
        self._where: dict[str, SafetensorsFile] = {}
        index = folder / INDEX_NAME
        if index.is_file():
            self._load_index(index)
        elif (folder / SINGLE_NAME).is_file():
            f = SafetensorsFile(folder / SINGLE_NAME)
            self._files[SINGLE_NAME] = f
            self._where = dict.fromkeys(f.entries, f)
        else:
            found = sorted(p.name for p in folder.glob("*.safetensors"))
            if len(found) == 1:
                f = SafetensorsFile(folder / found[0])
                self._files[found[0]] = f
                self._where = dict.fromkeys(f.entries, f)
            elif found:
                raise ModelFormatError(f"{folder}: {len(found)} .safetensors files but no {INDEX_NAME} saying "
                                       "which tensor is where")
            elif list(folder.glob("*.bin")) or list(folder.glob("*.pt")) or list(folder.glob("*.pth")):
                raise ModelFormatError(f"{folder}: no .safetensors weights (PyTorch pickle files are not read: "
                                       "they can run code; convert them with transformers' save_pretrained"
                                       "(safe_serialization=True))")
            else:
                raise ModelFormatError(f"{folder}: no model weights ({SINGLE_NAME} or {INDEX_NAME}) found")

    def _load_index(self, index: Path) -> None:
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ModelFormatError(f"{index}: cannot read the shard index: {e}") from None
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ModelFormatError(f"{index}: missing or empty weight_map")
        for name, shard in weight_map.items():
            if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
                raise ModelFormatError(f"{index}: weight_map[{name!r}] = {shard!r} is not a .safetensors file "
                                       "name in the folder")
            if shard not in self._files:
                if not (self.folder / shard).is_file():
                    raise ModelFormatError(f"{index}: shard {shard} (holding {name!r}) is missing")
                self._files[shard] = SafetensorsFile(self.folder / shard)
            f = self._files[shard]
            if name not in f:
                raise ModelFormatError(f"{index}: weight_map puts {name!r} in {shard}, which has no such tensor")
            self._where[name] = f

    def __getitem__(self, name: str) -> TensorEntry:
        return self._where[name].entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def array(self, name: str) -> np.ndarray:
        """The tensor's data as a read-only view of its file."""
        return self._where[name].tensor(name)

    @property
    def file_size(self) -> int:
        """Bytes of all the shards together."""
        return sum(f.size for f in self._files.values())
