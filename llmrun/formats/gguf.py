"""GGUF model files (llama.cpp, ollama): versions 2 and 3, little-endian.

Layout (docs/gguf.md in ggml): magic "GGUF", uint32 version, uint64 tensor count, uint64 metadata count;
the metadata (key string, uint32 value type, value); one info per tensor (name string, uint32 n_dims,
n_dims x uint64 ne -- innermost dimension first --, uint32 ggml type, uint64 offset); zero padding to
`general.alignment` (default 32); then the tensor data, each tensor at its offset from the start of that
aligned data section. Strings are a uint64 byte length and UTF-8 bytes; arrays a uint32 element type, a
uint64 count and the elements (arrays of arrays included).

The file is untrusted input (ggml's parser had heap overflows from unchecked lengths, counts and offsets:
CVE-2024-23496, CVE-2025-53630, CVE-2026-27940; ollama leaked heap through unchecked tensor offsets:
CVE-2026-7482). So every length and count is checked against the bytes that remain before it is used,
counts and lengths have caps, numbers are Python ints (no overflow), every tensor must lie inside the
file, aligned, without overlapping another, and parsing allocates about as much as the file's metadata at
most: numeric arrays are views of the file, string arrays keep 8 bytes per string and decode on access.
Any problem raises ModelFormatError naming the file, the field or tensor and the value.

`read_gguf` parses the container (any architecture); `load_gguf` (gguf_model.py) turns a file of a
supported architecture into a ModelSpec. Tensors are views of one read-only memory map of the file:
nothing is copied (except a tensor whose data is not aligned to its element size, possible only with
`general.alignment` below 4).

Split models (llama.cpp's `llama-gguf-split`: NAME-00001-of-00003.gguf ...): each part is a whole GGUF
file with `split.no`, `split.count` and `split.tensors.count`, the model's metadata in the first part
and a share of the tensors in each. Given any part, every part is mapped and checked (count, numbering,
total tensors, no tensor twice) and the model loads as one (`join_split`); its metadata loses the split.*
keys, which describe the files, not the model.

The architectures on top of the container: llmrun/formats/gguf_model.py.
"""

from __future__ import annotations

import array
import enum
import itertools
import math
import os
import re
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np

from ..errors import ModelFormatError
from ..spec import (
    F32_MAX,
    F32_MIN,
    TENSOR_TYPES,
    TensorType,
)
from .mapping import map_file

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT = 32

# Caps that reject hostile headers before any work; real files stay far below them.
MAX_STRING_BYTES = 1 << 30  # any string (ggml's cap too); a chat template is a few KB
MAX_KEY_BYTES = 1 << 16
MAX_TENSOR_NAME_BYTES = 256  # ggml itself refuses names of 64 bytes or more
MAX_ARRAY_LEN = 1 << 30  # elements of one array (ggml's cap)
MAX_STRING_ARRAY_LEN = 1 << 20  # strings in one array: vocabularies and merge lists have < 10^6
MAX_NESTED_ARRAYS = 1 << 12  # arrays inside arrays, in the whole file (each a Python object; llama.cpp reads none)
MAX_ARRAY_DEPTH = 8
MAX_KV = 1 << 14  # real files have a few dozen keys
MAX_TENSORS = 1 << 14  # a 126-layer Llama has about 1,150 tensors
MAX_DIMS = 4
MAX_SPLIT_PARTS = 9999  # the part number has 5 digits in llama.cpp's names; real models have a few dozen
# llama.cpp's name for part `no` of `count` of a split model: PREFIX-00001-of-00003.gguf (parts count from 1)
SPLIT_NAME = re.compile(r"(?P<prefix>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf")

# The smallest possible encodings, to bound counts by the bytes that remain.
MIN_KV_BYTES = 8 + 4 + 1  # empty key, value type, a one-byte value
MIN_TENSOR_INFO_BYTES = 8 + 4 + 8 + 4 + 8  # empty name, n_dims, one dim, type, offset
MIN_STRING_BYTES = 8
MIN_ARRAY_BYTES = 4 + 8


class ValueType(enum.IntEnum):
    """GGUF metadata value types (gguf_type in ggml)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# Fixed-size value types: their numpy dtype (little-endian). BOOL is one byte that must be 0 or 1.
FIXED_DTYPES: dict[int, np.dtype] = {
    ValueType.UINT8: np.dtype("u1"), ValueType.INT8: np.dtype("i1"), ValueType.UINT16: np.dtype("<u2"),
    ValueType.INT16: np.dtype("<i2"), ValueType.UINT32: np.dtype("<u4"), ValueType.INT32: np.dtype("<i4"),
    ValueType.FLOAT32: np.dtype("<f4"), ValueType.BOOL: np.dtype("u1"), ValueType.UINT64: np.dtype("<u8"),
    ValueType.INT64: np.dtype("<i8"), ValueType.FLOAT64: np.dtype("<f8"),
}
_FIXED_STRUCTS = {t: struct.Struct("<" + code) for t, code in zip(
    FIXED_DTYPES, "BbHhIifBQqd", strict=True)}  # explicit codes: numpy's dtype.char for uint64 is 4 bytes in struct
INT_TYPES = frozenset({ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16, ValueType.UINT32,
                        ValueType.INT32, ValueType.UINT64, ValueType.INT64})
FLOAT_TYPES = frozenset({ValueType.FLOAT32, ValueType.FLOAT64})
_VALUE_TYPE_CODES = frozenset(int(t) for t in ValueType)
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

# ggml_type codes (ggml.h) and names, for messages about types llmrun cannot run yet.
GGML_TYPE_NAMES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1", 10: "Q2_K",
    11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS",
    19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4", 40: "NVFP4",
    41: "Q1_0", 42: "Q2_0",
}
# ggml type code -> llmrun's type name (spec.TENSOR_TYPES, whose block layouts are GGUF's).
SUPPORTED_GGML_TYPES = {0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 6: "q5_0", 7: "q5_1", 8: "q8_0", 10: "q2_k",
                        11: "q3_k", 12: "q4_k", 13: "q5_k", 14: "q6_k", 20: "iq4_nl", 23: "iq4_xs", 30: "bf16"}
_SUPPORTED_NAMES = ", ".join(GGML_TYPE_NAMES[code] for code in sorted(SUPPORTED_GGML_TYPES))

# Element alignment each storage type needs in memory: f32 4 bytes; f16, bf16 and every block type 2 (their
# blocks are built of fp16 scales and bytes).
_MEMORY_ALIGNMENT = {name: 4 if name == "f32" else 2 for name in SUPPORTED_GGML_TYPES.values()}


# ------------------------------------------------------------------------------------------------
# The container
# ------------------------------------------------------------------------------------------------


class StringArray(Sequence[str]):
    """A GGUF array of strings, decoded on access.

    Only the file offset of each string is kept (8 bytes, no more than the string takes in the file), so a
    hostile file with millions of strings cannot make the reader allocate much more than its own size.
    Items are str (invalid UTF-8 replaced by U+FFFD); `raw(i)` gives the exact bytes."""

    def __init__(self, buf: memoryview, starts: array.array) -> None:
        self._buf = buf
        self._starts = starts  # offset of each string's uint64 length field

    def __len__(self) -> int:
        return len(self._starts)

    def raw(self, index: int) -> bytes:
        """The bytes of string `index` as stored."""
        start = self._starts[index]
        (length,) = _U64.unpack_from(self._buf, start)
        return bytes(self._buf[start + 8:start + 8 + length])

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self.raw(index).decode("utf-8", errors="replace")

    def __iter__(self) -> Iterator[str]:
        for i in range(len(self)):
            yield self[i]

    def __repr__(self) -> str:
        return f"StringArray(len={len(self)})"


@dataclass(frozen=True)
class TensorInfo:
    """One tensor's entry in the file: name, ggml type, dims (GGUF order: innermost first), where its data
    lies (absolute file offset) and how many bytes it takes."""

    name: str
    ggml_type: int
    ne: tuple[int, ...]
    offset: int
    nbytes: int

    @property
    def type(self) -> str:
        """llmrun's name of the storage type (spec.TENSOR_TYPES)."""
        return SUPPORTED_GGML_TYPES[self.ggml_type]

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major (numpy) shape: the dims outermost first."""
        return tuple(reversed(self.ne))


@dataclass
class GGUFFile:
    """A parsed GGUF file: its metadata and tensor infos, and the memory map the tensor data lives in."""

    path: Path
    version: int
    alignment: int
    metadata: dict[str, Any]  # int, float, bool, str; arrays: numpy views, StringArray, lists (nested)
    value_types: dict[str, ValueType]  # each key's value type as stored
    tensors: dict[str, TensorInfo]  # in file order
    data_offset: int  # start of the (aligned) tensor data section
    file_size: int  # of all its parts, for a split model
    data: np.memmap = field(repr=False)  # the whole file, read-only, uint8
    # a split model: the memory map of each tensor that lives in another part than the first
    part_data: dict[str, np.memmap] = field(default_factory=dict, repr=False)

    def tensor_data(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        """The tensor's data as a view of the file: for float types an array of its values, for block types
        uint8 rows of blocks. `shape` (row-major, same element count) overrides the file's, e.g. to drop
        dims of size 1."""
        info = self.tensors[name]
        ttype = TENSOR_TYPES[info.type]
        shape = info.shape if shape is None else shape
        raw = self.part_data.get(name, self.data)[info.offset:info.offset + info.nbytes]
        if ttype.block_elems == 1:
            out = raw.view(ttype.dtype).reshape(shape)
        else:
            out = raw.reshape(*shape[:-1], ttype.row_bytes(shape[-1]))
        if out.ctypes.data % _MEMORY_ALIGNMENT[info.type]:
            # Only with general.alignment < 4: the C kernels need naturally aligned elements.
            out = np.array(out, copy=True).view(np.ndarray)
            out.setflags(write=False)
        return out


def read_gguf(path: str | os.PathLike) -> GGUFFile:
    """Parses a GGUF file's header, metadata and tensor infos; the tensor data stays mapped, unread."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as e:
        raise ModelFormatError(f"{path}: cannot read model file: {e.strerror or e}") from None
    if file_size < 4 + 4 + 8 + 8:
        raise ModelFormatError(f"{path}: truncated GGUF file: {file_size} bytes, the header alone needs 24")
    try:
        data = map_file(path)
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{path}: cannot map model file: {e}") from None
    return _Parser(path, data).parse()


class _Parser:
    """Bounds-checked little-endian reads over the mapped file; every read names what it reads."""

    def __init__(self, path: Path, data: np.memmap) -> None:
        self.path = path
        self.data = data
        self.buf = memoryview(data)
        self.size = len(data)
        self.pos = 0
        self.nested_arrays = 0

    # --- primitives ---------------------------------------------------------------------------------

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.path}: {message}")

    def take(self, n: int, what: str) -> int:
        """Advances past `n` bytes and returns where they start; refuses to run past the end."""
        left = self.size - self.pos
        if n > left:
            raise self.fail(f"truncated GGUF file: {what} at offset {self.pos} needs {n} bytes, only {left} "
                            f"remain (file size {self.size})")
        start = self.pos
        self.pos += n
        return start

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.take(8, what))[0]

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> bytes:
        length = self.u64(f"{what} length")
        if length > limit:
            raise self.fail(f"{what}: string length {length} exceeds the limit of {limit} bytes")
        start = self.take(length, what)
        return bytes(self.buf[start:start + length])

    def identifier(self, what: str, limit: int) -> str:
        """A key or tensor name: non-empty UTF-8."""
        at = self.pos
        raw = self.string(what, limit)
        if not raw:
            raise self.fail(f"{what} at offset {at} is empty")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} at offset {at} is not valid UTF-8: {raw[:80]!r}") from None

    def check_count(self, count: int, what: str, limit: int, min_bytes: int) -> None:
        """Rejects a count above `limit` or one whose smallest encoding would not fit in the rest of the file."""
        if count > limit:
            raise self.fail(f"{what} = {count} exceeds the limit of {limit}")
        left = self.size - self.pos
        if count * min_bytes > left:
            raise self.fail(f"{what} = {count} cannot fit in the {left} bytes that remain (each needs at least "
                            f"{min_bytes} bytes): truncated or corrupt file")

    # --- structure ----------------------------------------------------------------------------------

    def parse(self) -> GGUFFile:
        version, n_tensors, n_kv = self.header()
        metadata, value_types = self.metadata(n_kv)
        alignment = self.alignment(metadata, value_types)
        tensors = self.tensor_infos(n_tensors, alignment)
        data_offset = _align_up(self.pos, alignment)
        tensors = self.place_tensors(tensors, data_offset)
        return GGUFFile(path=self.path, version=version, alignment=alignment, metadata=metadata,
                        value_types=value_types, tensors=tensors, data_offset=data_offset, file_size=self.size,
                        data=self.data)

    def header(self) -> tuple[int, int, int]:
        magic = bytes(self.buf[self.take(4, "magic"):4])
        if magic != MAGIC:
            raise self.fail(f"not a GGUF file: magic {magic!r}, expected {MAGIC!r}")
        version = self.u32("version")
        if version == 0:
            raise self.fail("unknown GGUF version 0 (supported: 2 and 3)")
        if version & 0xFFFF == 0:
            raise self.fail(f"GGUF version field is 0x{version:08x}: the file looks big-endian; only "
                            "little-endian GGUF files are supported")
        if version == 1:
            raise self.fail("GGUF version 1 is not supported (it is obsolete); convert the model again with a "
                            "current llama.cpp to get version 3")
        if version not in SUPPORTED_VERSIONS:
            raise self.fail(f"unknown GGUF version {version} (supported: 2 and 3)")
        n_tensors = self.u64("tensor count")
        n_kv = self.u64("metadata count")
        self.check_count(n_tensors, "tensor count", MAX_TENSORS, MIN_TENSOR_INFO_BYTES)
        self.check_count(n_kv, "metadata count", MAX_KV, MIN_KV_BYTES)
        if n_tensors * MIN_TENSOR_INFO_BYTES + n_kv * MIN_KV_BYTES > self.size - self.pos:
            raise self.fail(f"tensor count {n_tensors} and metadata count {n_kv} cannot fit in the "
                            f"{self.size - self.pos} bytes after the header: truncated or corrupt file")
        return version, n_tensors, n_kv

    def metadata(self, n_kv: int) -> tuple[dict[str, Any], dict[str, ValueType]]:
        metadata: dict[str, Any] = {}
        value_types: dict[str, ValueType] = {}
        for i in range(n_kv):
            key = self.identifier(f"metadata key {i}", MAX_KEY_BYTES)
            if key in metadata:
                raise self.fail(f"duplicate metadata key {key!r} (entry {i})")
            vtype = self.u32(f"value type of {key!r}")
            if vtype not in _VALUE_TYPE_CODES:
                raise self.fail(f"metadata {key!r} has unknown value type {vtype}")
            metadata[key] = self.value(ValueType(vtype), f"metadata {key!r}", depth=0)
            value_types[key] = ValueType(vtype)
        return metadata, value_types

    def value(self, vtype: ValueType, what: str, depth: int) -> Any:
        if vtype == ValueType.STRING:
            return self.string(what).decode("utf-8", errors="replace")
        if vtype == ValueType.ARRAY:
            return self.array(what, depth + 1)
        at = self.pos
        value = _FIXED_STRUCTS[vtype].unpack_from(self.buf, self.take(FIXED_DTYPES[vtype].itemsize, what))[0]
        if vtype == ValueType.BOOL:
            if value > 1:
                raise self.fail(f"{what}: bool at offset {at} is {value}, expected 0 or 1")
            return bool(value)
        return value

    def array(self, what: str, depth: int) -> Any:
        if depth > MAX_ARRAY_DEPTH:
            raise self.fail(f"{what}: arrays nested more than {MAX_ARRAY_DEPTH} deep")
        etype = self.u32(f"{what} element type")
        count = self.u64(f"{what} array length")
        if etype not in _VALUE_TYPE_CODES:
            raise self.fail(f"{what}: array has unknown element type {etype}")
        if etype == ValueType.STRING:
            return self.string_array(count, what)
        if etype == ValueType.ARRAY:
            self.check_count(count, f"{what} array length", MAX_ARRAY_LEN, MIN_ARRAY_BYTES)
            self.nested_arrays += count
            if self.nested_arrays > MAX_NESTED_ARRAYS:
                raise self.fail(f"{what}: more than {MAX_NESTED_ARRAYS} arrays nested in arrays in the file")
            return [self.array(f"{what}[{i}]", depth + 1) for i in range(count)]
        dtype = FIXED_DTYPES[etype]
        self.check_count(count, f"{what} array length", MAX_ARRAY_LEN, dtype.itemsize)
        start = self.take(count * dtype.itemsize, what)
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=start)  # a view of the file
        if etype == ValueType.BOOL:
            bad = np.flatnonzero(values > 1)
            if bad.size:
                raise self.fail(f"{what}[{bad[0]}]: bool is {values[bad[0]]}, expected 0 or 1")
            values = values.view(np.bool_)
        return values

    def string_array(self, count: int, what: str) -> StringArray:
        self.check_count(count, f"{what} array length", MAX_STRING_ARRAY_LEN, MIN_STRING_BYTES)
        starts = array.array("q", [0]) * count  # 8 bytes a string: no more than the strings take in the file
        buf, end, pos = self.buf, self.size, self.pos
        unpack = _U64.unpack_from
        for i in range(count):
            if end - pos < 8:
                self.pos = pos
                self.take(8, f"{what}[{i}] length")
            (length,) = unpack(buf, pos)
            if length > MAX_STRING_BYTES:
                raise self.fail(f"{what}[{i}]: string length {length} exceeds the limit of {MAX_STRING_BYTES} bytes")
            if length > end - pos - 8:
                self.pos = pos + 8
                self.take(length, f"{what}[{i}]")
            starts[i] = pos
            pos += 8 + length
        self.pos = pos
        return StringArray(buf, starts)

    def alignment(self, metadata: dict[str, Any], value_types: dict[str, ValueType]) -> int:
        if "general.alignment" not in metadata:
            return DEFAULT_ALIGNMENT
        if value_types["general.alignment"] != ValueType.UINT32:
            raise self.fail(f"general.alignment must be a uint32, got {value_types['general.alignment'].name}")
        value = metadata["general.alignment"]
        if value == 0 or value & (value - 1):
            raise self.fail(f"general.alignment = {value} is not a power of two")
        return value

    def tensor_infos(self, n_tensors: int, alignment: int) -> list[TensorInfo]:
        infos: list[TensorInfo] = []
        seen: set[str] = set()
        for i in range(n_tensors):
            name = self.identifier(f"tensor {i} name", MAX_TENSOR_NAME_BYTES)
            if name in seen:
                raise self.fail(f"duplicate tensor name {name!r} (tensor {i})")
            seen.add(name)
            what = f"tensor {name!r}"
            n_dims = self.u32(f"{what} n_dims")
            if not 1 <= n_dims <= MAX_DIMS:
                raise self.fail(f"{what} has n_dims = {n_dims}, expected 1..{MAX_DIMS}")
            ne = tuple(self.u64(f"{what} dimension {d}") for d in range(n_dims))
            if min(ne) == 0:
                raise self.fail(f"{what} has a dimension of size 0: ne = {list(ne)}")
            code = self.u32(f"{what} type")
            ttype = self.tensor_type(code, what)
            offset = self.u64(f"{what} offset")
            if ne[0] % ttype.block_elems:
                raise self.fail(f"{what} of type {GGML_TYPE_NAMES[code]} has rows of {ne[0]} values, not a "
                                f"multiple of its block size {ttype.block_elems}")
            if offset % alignment:
                raise self.fail(f"{what} has offset {offset}, not a multiple of the alignment {alignment}")
            rows = math.prod(ne[1:])
            nbytes = rows * ttype.row_bytes(ne[0])  # Python ints: no overflow; checked against the file below
            infos.append(TensorInfo(name, code, ne, offset, nbytes))
        return infos

    def tensor_type(self, code: int, what: str) -> TensorType:
        if code in SUPPORTED_GGML_TYPES:
            return TENSOR_TYPES[SUPPORTED_GGML_TYPES[code]]
        if code in GGML_TYPE_NAMES:
            raise self.fail(f"{what} has type {GGML_TYPE_NAMES[code]} ({code}), not supported yet (supported: "
                            f"{_SUPPORTED_NAMES})")
        raise self.fail(f"{what} has unknown ggml type {code} (not a type of ggml.h; supported: {_SUPPORTED_NAMES})")

    def place_tensors(self, infos: list[TensorInfo], data_offset: int) -> dict[str, TensorInfo]:
        """Turns offsets into absolute file positions; every tensor inside the file, none overlapping."""
        placed = []
        for info in infos:
            start = data_offset + info.offset
            if start + info.nbytes > self.size:
                raise self.fail(f"tensor {info.name!r} (ne = {list(info.ne)}, {GGML_TYPE_NAMES[info.ggml_type]}, "
                                f"{info.nbytes} bytes at data offset {info.offset}) runs past the end of the file: "
                                f"it would end at byte {start + info.nbytes}, the file has {self.size}")
            placed.append(TensorInfo(info.name, info.ggml_type, info.ne, start, info.nbytes))
        ordered = sorted(placed, key=lambda t: t.offset)
        for before, after in itertools.pairwise(ordered):
            if before.offset + before.nbytes > after.offset:
                raise self.fail(f"tensors {before.name!r} and {after.name!r} overlap in the file (bytes "
                                f"{before.offset}..{before.offset + before.nbytes} and {after.offset}..)")
        return {t.name: t for t in placed}


def _align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


# ------------------------------------------------------------------------------------------------
# Split models
# ------------------------------------------------------------------------------------------------

def read_gguf_model(path: str | os.PathLike) -> GGUFFile:
    """`read_gguf`, and for a part of a split model every part joined into one GGUFFile (`join_split`)."""
    f = read_gguf(path)
    return join_split(f) if _split_count(f) > 1 else f


def _split_count(f: GGUFFile) -> int:
    """How many files the model is split into: 1 when the file is a whole model."""
    meta = Metadata(f)
    return meta.integer("split.count", 0, MAX_SPLIT_PARTS, 1) if meta.has("split.count") else 1


def split_part_paths(path: Path, count: int) -> list[Path]:
    """The paths of every part of a split model of `count` parts, from the name of one of them (llama.cpp
    finds the parts by name too: the files hold no other link between them)."""
    m = SPLIT_NAME.fullmatch(path.name)
    if m is None or int(m["count"]) != count:
        raise ModelFormatError(f"{path}: part of a split GGUF model ({count} files) by its split.count, but its name "
                               f"does not follow llama.cpp's NAME-00001-of-{count:05d}.gguf, so the other parts "
                               "cannot be found: give the parts their original names")
    return [path.with_name(f"{m['prefix']}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]


def join_split(given: GGUFFile) -> GGUFFile:
    """The split model that `given` is a part of, as one GGUFFile: the first part's header and metadata
    (without the split.* keys), the tensors of every part, each read from its own part's memory map."""
    count = _split_count(given)
    paths = split_part_paths(given.path, count)
    parts = []
    for no, path in enumerate(paths):
        if path == given.path:
            part = given
        elif not path.is_file():
            raise ModelFormatError(f"{given.path}: part {no + 1} of this split GGUF model ({count} files) is missing: "
                                   f"{path}")
        else:
            part = read_gguf(path)
        meta = Metadata(part)
        if _split_count(part) != count or meta.integer("split.no", 0, MAX_SPLIT_PARTS, -1) != no:
            raise meta.fail(f"expected part {no + 1} of {count} of the split GGUF model {paths[0].name}, but the file "
                            f"says split.no = {part.metadata.get('split.no')}, split.count = "
                            f"{part.metadata.get('split.count')} (a part of another model or another split?)")
        parts.append(part)
    first = parts[0]
    tensors: dict[str, TensorInfo] = {}
    part_data: dict[str, np.memmap] = {}
    for part in parts:
        for name, info in part.tensors.items():
            if name in tensors:
                raise ModelFormatError(f"{part.path}: tensor {name!r} is also in another part of this split model")
            tensors[name] = info
            if part is not first:
                part_data[name] = part.data
    expected = Metadata(first).integer("split.tensors.count", 0, MAX_TENSORS * MAX_SPLIT_PARTS)
    if len(tensors) != expected:
        raise ModelFormatError(f"{first.path}: the {count} parts of this split model hold {len(tensors)} tensors, "
                               f"the first part says split.tensors.count = {expected}")
    metadata = {k: v for k, v in first.metadata.items() if not k.startswith("split.")}
    value_types = {k: v for k, v in first.value_types.items() if not k.startswith("split.")}
    return GGUFFile(path=first.path, version=first.version, alignment=first.alignment, metadata=metadata,
                    value_types=value_types, tensors=tensors, data_offset=first.data_offset,
                    file_size=sum(p.file_size for p in parts), data=first.data, part_data=part_data)


MAX_SCALE = 1e6  # multipliers (embedding, attention, residual, logit scales) beyond it are not a model's


class Metadata:
    """Typed, checked access to metadata values, with messages naming the file and key."""

    def __init__(self, f: GGUFFile) -> None:
        self.f = f
        self.arch = "llama"  # the prefix of the hyperparameter keys

    def fail(self, message: str) -> ModelFormatError:
        return ModelFormatError(f"{self.f.path}: {message}")

    def has(self, key: str) -> bool:
        return key in self.f.metadata

    def string(self, key: str, default: str | None = None) -> str:
        if key not in self.f.metadata:
            if default is None:
                raise self.fail(f"missing metadata {key}")
            return default
        if self.f.value_types[key] != ValueType.STRING:
            raise self.fail(f"metadata {key} must be a string, got {self.f.value_types[key].name}")
        return self.f.metadata[key]

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        if key not in self.f.metadata:
            if default is None:
                raise self.fail(f"missing metadata {key}")
            return default
        if self.f.value_types[key] not in INT_TYPES:
            raise self.fail(f"metadata {key} must be an integer, got {self.f.value_types[key].name}")
        value = self.f.metadata[key]
        if not low <= value <= high:
            raise self.fail(f"metadata {key} = {value} is out of range (expected {low}..{high})")
        return value

    def number(self, key: str, default: float | None = None) -> float:
        """A positive finite float (integers accepted too)."""
        if key not in self.f.metadata:
            if default is None:
                raise self.fail(f"missing metadata {key}")
            return default
        if self.f.value_types[key] not in FLOAT_TYPES | INT_TYPES:
            raise self.fail(f"metadata {key} must be a number, got {self.f.value_types[key].name}")
        value = float(self.f.metadata[key])
        if not (math.isfinite(value) and value > 0):
            raise self.fail(f"metadata {key} = {value} must be a positive finite number")
        if not F32_MIN <= value <= F32_MAX:  # a float64 or integer key: the C library holds it as a float32
            raise self.fail(f"metadata {key} = {value} is out of float32's range")
        return value

    def bounded(self, key: str, default: float) -> float:
        """number(), a multiplier of at most MAX_SCALE (beyond it no model's: the scores overflow)."""
        value = self.number(key, default)
        if value > MAX_SCALE:
            raise self.fail(f"metadata {key} = {value} is out of range (expected at most {MAX_SCALE:g})")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        if key not in self.f.metadata:
            return default
        if self.f.value_types[key] != ValueType.BOOL:
            raise self.fail(f"metadata {key} must be a bool, got {self.f.value_types[key].name}")
        return self.f.metadata[key]

    def array(self, key: str, length: int, kinds: frozenset[ValueType]) -> Any:
        """An array of `length` elements of one of `kinds` (numpy view or StringArray)."""
        if key not in self.f.metadata:
            raise self.fail(f"missing metadata {key}")
        value = self.f.metadata[key]
        if self.f.value_types[key] != ValueType.ARRAY or isinstance(value, list):
            raise self.fail(f"metadata {key} must be an array of {'/'.join(sorted(k.name for k in kinds))}")
        kind = ValueType.STRING if isinstance(value, StringArray) else value_type_of(value.dtype)
        if kind not in kinds:
            raise self.fail(f"metadata {key} must be an array of {'/'.join(sorted(k.name for k in kinds))}, "
                            f"got an array of {kind.name}")
        if len(value) != length:
            raise self.fail(f"metadata {key} has {len(value)} entries, expected {length} (the vocabulary size)")
        return value


def value_type_of(dtype: np.dtype) -> ValueType:
    if dtype == np.bool_:
        return ValueType.BOOL
    for vtype, d in FIXED_DTYPES.items():
        if d == dtype and vtype != ValueType.BOOL:
            return ValueType(vtype)
    raise AssertionError(dtype)
