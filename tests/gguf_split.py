"""Split GGUF files for tests, written by the official `gguf` package's writer (`split_max_tensors`, the
code behind llama.cpp's `convert_hf_to_gguf.py --split-max-tensors`), so that llmrun's reader of split
models is checked against files it did not write: PREFIX-00001-of-0000N.gguf, the metadata in the first
part, split.no / split.count / split.tensors.count in every part."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np


def split_gguf(source: Path, out_dir: Path, parts: int, stem: str | None = None) -> list[Path]:
    """Writes `source` (a GGUF file with float tensors) as `parts` files in `out_dir`, named after `stem`
    (default: the source's), and returns their paths, first part first."""
    reader = gguf.GGUFReader(source)
    arch = str(reader.fields[gguf.Keys.General.ARCHITECTURE].contents())
    per_part = -(-len(reader.tensors) // parts)
    if -(-len(reader.tensors) // per_part) != parts:
        raise ValueError(f"{len(reader.tensors)} tensors cannot be cut into {parts} parts of equal count")
    path = out_dir / f"{stem or source.stem}.gguf"
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=per_part)
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # the writer adds these itself
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub_type)
    for t in reader.tensors:
        if t.tensor_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            raise ValueError(f"{source}: tensor {t.name} is {t.tensor_type.name}; this splitter copies float tensors")
        writer.add_tensor(t.name, np.array(t.data))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    names = writer.format_shard_names(path)
    assert len(names) == parts and all(p.is_file() for p in names), names
    return names
