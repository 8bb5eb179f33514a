"""`llmrun quantize` writes, for every preset, the bytes llama.cpp's llama-quantize writes.

tests/data/llama_quantize_sha256.json holds the type and sha256 of every tensor of the files llama-quantize
(llama.cpp as vendored by llama-cpp-python 0.3.36, no importance matrix) made of two F32 models, recorded by
benchmarks/quantize_vs_llama_cpp.py --golden:
- stories260K-f32.gguf (../shared/models): rows of 64 and 172 values, so every K-quant falls back to a 32-value
  type or f16, and a tied classifier;
- quant-fixture-f32.gguf (tests/quant_fixture.py, weights every machine computes alike): whole super-blocks,
  8 layers, grouped-query attention and an untied classifier, so every preset's mixture and every quantizer
  (Q2_K to Q6_K, IQ4_NL, IQ4_XS) is exercised.
A test fails on any tensor whose type or bytes differ, naming it. (A quantizer changed on purpose in one
place, say the 0.1 step of Q4_K's scale search, fails every K preset here: checked by hand.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
from quant_fixture import write_hash_model

from llmrun.formats import read_model
from llmrun.formats.gguf_writer import write_model

GOLDEN = json.loads((Path(__file__).parent / "data" / "llama_quantize_sha256.json").read_text())


@pytest.fixture(scope="module")
def inputs(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    fixture = write_hash_model(tmp_path_factory.mktemp("golden") / "quant-fixture-f32.gguf")
    return {"stories260K-f32.gguf": models_dir / "stories260K-f32.gguf", "quant-fixture-f32.gguf": fixture}


def digests(path: Path) -> dict[str, str]:
    """name -> "TYPE:first 10 hex digits of the sha256 of its data", as the golden file records them."""
    return {t.name: f"{t.tensor_type.name}:{hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest()[:10]}"
            for t in gguf.GGUFReader(path).tensors}


CASES = [(model, preset) for model, entry in GOLDEN.items() for preset in entry["presets"]]


@pytest.mark.parametrize("model, preset", CASES)
def test_quantize_matches_llama_quantize(inputs: dict[str, Path], tmp_path: Path, model: str, preset: str) -> None:
    out = tmp_path / f"{preset}.gguf"
    write_model(out, read_model(inputs[model]), preset)
    want = dict(zip(GOLDEN[model]["tensors"], GOLDEN[model]["presets"][preset], strict=True))
    got = digests(out)
    assert sorted(got) == sorted(want)
    wrong = [f"{name}: llmrun {got[name]}, llama.cpp {want[name]}" for name in sorted(want) if got[name] != want[name]]
    assert not wrong, "\n".join(wrong)


def test_golden_covers_every_quantizer() -> None:
    """The fixture's goldens hold every block type llmrun writes, so every quantizer is checked."""
    types = {entry.split(":")[0] for entries in GOLDEN["quant-fixture-f32.gguf"]["presets"].values()
             for entry in entries}
    assert types >= {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL",
                     "IQ4_XS", "F16", "BF16", "F32"}
