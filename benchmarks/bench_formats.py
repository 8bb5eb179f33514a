"""pytest-benchmark suite: how fast corrupt and truncated GGUF files are refused (the claims
tests/test_gguf.py used to time itself: all corruptions together "in well under a second", every truncation
of a small file within 5 s).

    pytest benchmarks/bench_formats.py --benchmark-only
"""

from __future__ import annotations

from pathlib import Path

import pytest
from gguf_fixtures import raw_llama
from test_gguf import CORRUPTIONS, SMALL, _corrupt_bytes

from builders import random_tensors
from llmrun import ModelFormatError
from llmrun.formats.gguf import read_gguf
from llmrun.formats.gguf_model import load_gguf


@pytest.fixture(scope="module")
def raw():  # noqa: ANN201 - a gguf_fixtures.RawGGUF
    return raw_llama(SMALL, random_tensors(SMALL, seed=4))


def refuse_all(paths: list[Path]) -> None:
    for path in paths:
        try:
            load_gguf(path)
        except ModelFormatError:
            continue
        raise AssertionError(f"{path} was not refused")


def test_corrupt_suite(benchmark, tmp_path: Path, raw) -> None:  # noqa: ANN001
    paths = []
    for i, (_, corrupt, _) in enumerate(CORRUPTIONS):
        paths.append(tmp_path / f"bad{i}.gguf")
        paths[-1].write_bytes(_corrupt_bytes(raw, corrupt))
    benchmark(refuse_all, paths)
    benchmark.extra_info["files"] = len(paths)


def test_truncated_anywhere(benchmark, tmp_path: Path, raw) -> None:  # noqa: ANN001
    data = raw.build()
    f = read_gguf(raw.write(tmp_path / "full.gguf"))
    data_end = max(t.offset + t.nbytes for t in f.tensors.values())
    cuts = list(range(0, f.data_offset, 3)) + list(range(f.data_offset, data_end, 997)) + [data_end - 1]
    paths = []
    for cut in cuts:
        paths.append(tmp_path / f"cut{cut}.gguf")
        paths[-1].write_bytes(data[:cut])
    benchmark(refuse_all, paths)
    benchmark.extra_info["files"] = len(paths)
