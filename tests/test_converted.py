"""GGUF files as llama.cpp's own converter writes them: tests/data/converted/<name>.gguf is convert_hf_to_gguf.py
(llama-cpp-python 0.3.36's vendored llama.cpp, --outtype f32) run on the family fixture tests/data/hf/<name> by
tests/make_converted_fixtures.py (provenance, the command and the converter's in-memory changes: there and in
converted.json). Where tests/test_families.py reads GGUF files llmrun wrote itself, these are written by the
converter: its key names, its Gemma norms stored + 1, its fused Phi-3 attn_qkv / ffn_up, its rope_factors
tensors and LongRoPE attn_factor, its q/k row permutation (SmolLM3, Granite), its Granite scale keys.

- each file is the recorded one (sha256), and holds the converter conventions it is here for;
- llmrun's logits for it are transformers' for the fixture within 1e-4, every prompt, with the fixture tests'
  n_ctx rule (LongRoPE's original context). One correction: the converter writes no key for Gemma's
  query_pre_attn_scalar (llama.cpp derives the query scale from the head size), and the fixtures' scalar is
  not the head size, so llmrun reads llama.cpp's scale (checked) and the test then sets the fixture's;
- its tokenizer encodes the prompts to the fixture's ids where the converter could write the fixture's
  tokenizer (the byte-level ones); for the SentencePiece-style Gemma and Phi-3 fixtures (tokenizer.json only,
  no tokenizer.model) it could not, and what it wrote is checked not to pass for theirs;
- switching an option off in the spec read from a converted file moves the logits far beyond the tolerance.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_families import TOLERANCE, _config, _layers, _rope, prompts, worst_diff

from hf_builders import HF, read_tensors
from llmrun.formats.gguf import read_gguf
from llmrun.formats.gguf_model import load_gguf
from llmrun.spec import ModelSpec

CONVERTED = Path(__file__).resolve().parent / "data" / "converted"
RECORD = json.loads((CONVERTED / "converted.json").read_text())
NAMES = tuple(RECORD["files"])
# the fixtures whose tokenizer the converter can write (byte-level BPE); the others are SentencePiece-style
# tokenizer.json folders without tokenizer.model, which the converter only reads through sentencepiece
BYTE_LEVEL = ("phi4-mini", "smollm3", "granite", "qwen3")

# per file: metadata the converter writes that the file is chosen for (key -> value), and tensor names
CONVENTIONS: dict[str, tuple[dict[str, Any], tuple[str, ...]]] = {
    "gemma2": ({"gemma2.attn_logit_softcapping": 5.0, "gemma2.final_logit_softcapping": 3.0,
                "gemma2.attention.sliding_window": 8, "gemma2.attention.key_length": 32},
               ("blk.0.post_attention_norm.weight", "blk.0.post_ffw_norm.weight")),
    "gemma3": ({"gemma3.rope.freq_base": 1e6, "gemma3.rope.freq_base_swa": 1e4, "gemma3.rope.scaling.type": "linear",
                "gemma3.rope.scaling.factor": 8.0, "gemma3.attention.sliding_window": 8},
               ("blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight")),
    "phi3-longrope": ({"phi3.rope.scaling.original_context_length": 48, "phi3.context_length": 192,
                       "phi3.attention.sliding_window": 16},
                      ("blk.0.attn_qkv.weight", "rope_factors_long.weight", "rope_factors_short.weight")),
    "phi4-mini": ({"phi3.rope.dimension_count": 12, "phi3.rope.scaling.original_context_length": 48},
                  ("blk.0.attn_qkv.weight", "rope_factors_long.weight")),
    "smollm3": ({"smollm3.rope.dimension_count": 12}, ("blk.0.attn_q.weight",)),
    "granite": ({"granite.embedding_scale": 12.0, "granite.residual_scale": 0.22, "granite.logit_scale": 4.0,
                 "granite.attention.scale": 0.1}, ()),
    "qwen3": ({}, ("blk.0.attn_q_norm.weight", "blk.0.attn_k_norm.weight", "output.weight")),
}


def converted(name: str) -> ModelSpec:
    """The converted file as llmrun reads it, with Gemma's query scale set to the fixture's (see the module)."""
    spec = load_gguf(CONVERTED / f"{name}.gguf")
    config = json.loads((HF / name / "config.json").read_text())
    if "query_pre_attn_scalar" in config:
        assert spec.config.attn_scale == pytest.approx(1 / math.sqrt(spec.config.head_dim))  # llama.cpp's rule
        scale = config["query_pre_attn_scalar"] ** -0.5
        spec = dataclasses.replace(spec, config=dataclasses.replace(spec.config, attn_scale=scale))
    return spec


def test_recorded_files() -> None:
    """The files are those tests/make_converted_fixtures.py recorded, of the fixtures as they are now."""
    assert sorted(NAMES) == sorted(p.stem for p in CONVERTED.glob("*.gguf")) == sorted(CONVENTIONS)
    total = 0
    for name, entry in RECORD["files"].items():
        data = (CONVERTED / f"{name}.gguf").read_bytes()
        total += len(data)
        assert hashlib.sha256(data).hexdigest() == entry["sha256"], name
        for file, digest in entry["source_sha256"].items():
            assert hashlib.sha256((HF / name / file).read_bytes()).hexdigest() == digest, f"{name}/{file} changed"
    assert total < 4 << 20
    assert RECORD["converter"]["llama_cpp_commit"] == "0c1e57098bba43ac29e6e3b677cdceebdd22334f"


@pytest.mark.parametrize("name", NAMES)
def test_converter_conventions(name: str) -> None:
    f = read_gguf(CONVERTED / f"{name}.gguf")
    assert f.metadata["general.file_type"] == 0  # all f32
    keys, tensors = CONVENTIONS[name]
    for key, value in keys.items():
        assert f.metadata[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    assert set(tensors) <= set(f.tensors)
    if name.startswith("phi"):  # fused, as the folder has them: no separate q or gate
        assert not {"blk.0.attn_q.weight", "blk.0.ffn_gate.weight"} & set(f.tensors)
    if name.startswith("gemma"):  # Gemma's RMSNorm weights stored + 1 (the folder keeps w of 1 + w)
        folder = read_tensors(HF / name / "model.safetensors")
        stored = f.tensor_data("blk.0.attn_norm.weight")
        np.testing.assert_array_equal(stored, folder["model.layers.0.input_layernorm.weight"] + np.float32(1))


@pytest.mark.parametrize("name", NAMES)
def test_converted_matches_transformers(name: str) -> None:
    assert worst_diff(converted(name), name) <= TOLERANCE


@pytest.mark.parametrize("name", NAMES)
def test_converted_tokenizer(name: str) -> None:
    spec = load_gguf(CONVERTED / f"{name}.gguf")
    texts_ids = [(p["text"], p["ids"]) for p in prompts(name)]
    if name in BYTE_LEVEL:
        assert spec.tokenizer is not None, spec.tokenizer_problem
        assert [spec.tokenizer.encode(t, add_bos=spec.add_bos_token) for t, _ in texts_ids] == [i for _, i in texts_ids]
    else:  # the converter's byte-level copy of a SentencePiece-style vocabulary: refused, or not the fixture's
        assert spec.tokenizer is None or any(spec.tokenizer.encode(t, add_bos=spec.add_bos_token) != i
                                             for t, i in texts_ids)


def _halves(spec: ModelSpec) -> ModelSpec:
    """RoPE on the halves of each head, as in the folder: wrong for the converter's permuted q/k rows."""
    return dataclasses.replace(spec, config=dataclasses.replace(spec.config, rope_style="halves"))


def _llama_cpp_scale(spec: ModelSpec) -> ModelSpec:
    """Gemma's query scale as the file gives it (the head size's): not the fixture's query_pre_attn_scalar."""
    return dataclasses.replace(spec, config=dataclasses.replace(spec.config, attn_scale=spec.config.head_dim ** -0.5))


OPTIONS_OFF = [
    ("gemma2", "attention soft-cap", _config(attn_softcap=0.0)),
    ("gemma2", "sliding windows", _config(layer_windows=())),
    ("gemma2", "query_pre_attn_scalar", _llama_cpp_scale),
    ("gemma3", "sliding windows", _config(layer_windows=())),
    ("gemma3", "local RoPE base (freq_base_swa)", _config(layer_ropes=())),
    ("gemma3", "QK-norm", _layers(q_norm=None, k_norm=None)),
    ("phi3-longrope", "sliding window", _config(layer_windows=())),
    ("phi3-longrope", "LongRoPE attn_factor", _rope(attention_factor=1.0)),
    ("smollm3", "no-RoPE layers", _config(layer_ropes=())),
    ("smollm3", "q/k permutation", _halves),
    ("granite", "residual_scale", _config(residual_scale=1.0)),
    ("qwen3", "QK-norm", _layers(q_norm=None, k_norm=None)),
]


@pytest.mark.parametrize("name, option, switch_off", OPTIONS_OFF, ids=[f"{n}-{o}" for n, o, _ in OPTIONS_OFF])
def test_converted_option_matters(name: str, option: str, switch_off: Any) -> None:
    assert worst_diff(switch_off(converted(name)), name) > 100 * TOLERANCE, option
