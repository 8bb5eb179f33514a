"""Hugging Face model folders against transformers: tests/data/hf/ holds tiny random-init models written by
tests/make_hf_fixtures.py with transformers' expected logits and greedy tokens.

Tolerance: float32 logits within 1e-4 (max abs diff) of transformers' for every position of every prompt
(the logits are of order 3; measured differences are about 5e-6)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

import llmrun
from commands import LLMRUN
from hf_builders import FIXTURES, HF, copy_fixture, edit_config, read_tensors, write_safetensors
from llmrun.errors import ModelFormatError, TokenizerError
from llmrun.formats import read_model
from llmrun.quantize import quantize
from llmrun.rope import rope_tables

TOLERANCE = 1e-4


def expected(name: str) -> list[dict]:
    return json.loads((HF / name / "expected.json").read_text())["prompts"]


def check_logits(model: llmrun.Model, name: str, tolerance: float = TOLERANCE) -> float:
    worst = 0.0
    for i, prompt in enumerate(expected(name)):
        want = np.load(HF / name / f"logits_{i}.npy")
        got = model.logits(prompt["ids"])
        assert got.shape == want.shape
        worst = max(worst, float(np.max(np.abs(got - want))))
    assert worst <= tolerance, f"{name}: max abs logit diff {worst}"
    return worst


@pytest.mark.parametrize("name", FIXTURES)
def test_logits_tokens_and_greedy_match_transformers(name: str) -> None:
    with llmrun.load(HF / name, n_threads=1) as model:
        check_logits(model, name)
        for prompt in expected(name):
            assert model.tokenize(prompt["text"]) == prompt["ids"]
            gen = model.stream(prompt["ids"], max_tokens=len(prompt["greedy"]), temperature=0)
            text = gen.text()
            n = len(gen.tokens)
            assert gen.tokens == prompt["greedy"][:n]
            assert n == len(prompt["greedy"]) or gen.tokens[-1] in model.eog_ids  # stopped at end of generation
            assert text == model.detokenize(gen.tokens)


def test_spec_details() -> None:
    spec = read_model(HF / "llama3-gqa")
    assert spec.config.rope_style == "halves" and spec.config.n_kv_heads == 2 and spec.output is not None
    assert spec.rope_scaling is not None and spec.rope_scaling.kind == "llama3"
    freqs, attn = rope_tables(spec, 64)
    assert freqs is not None and freqs.dtype == np.float32 and attn == 1.0
    assert spec.chat_template.startswith("{% for m in messages %}")
    assert spec.add_bos_token is True
    tok = spec.tokenizer
    assert spec.eog_token_ids == (tok.piece_to_id("<|eot_id|>"), tok.piece_to_id("<|end_of_text|>"))
    assert tok.encode("a<|eot_id|>", add_bos=False, special=True)[-1] == tok.piece_to_id("<|eot_id|>")
    assert tok.piece_to_id("<|eot_id|>") not in tok.encode("a<|eot_id|>", add_bos=False)  # no injection

    tied = read_model(HF / "llama-tied")
    assert tied.output is None and tied.config.head_dim == 32 and tied.config.q_dim == 128
    qwen = read_model(HF / "qwen2-bias")
    assert qwen.layers[0].bq is not None and qwen.layers[0].bq.shape == (1, 64)
    assert qwen.config.vocab_size == qwen.tokenizer.vocab_size  # padded beyond the tokenizer's own ids
    assert qwen.tokenizer.bos_id is None and qwen.add_bos_token is False
    assert qwen.chat_template.startswith("{% for m in messages %}<|im_start|>")
    with llmrun.load(HF / "qwen2-bias", n_threads=1) as model:
        assert model.eog_ids == {qwen.tokenizer.piece_to_id("<|im_end|>"), qwen.tokenizer.piece_to_id("<|endoftext|>")}


def test_transformers_4_config_layout(tmp_path: Path) -> None:
    """rope_theta and rope_scaling (with the old `type` key) at the top level, as transformers 4.x writes."""
    for name, scaling in (("llama3-gqa", {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}),
                          ("llama-tied", {"rope_type": "linear", "factor": 2.0})):
        folder = copy_fixture(name, tmp_path)
        edit_config(folder, rope_parameters=None, rope_theta=10000.0, rope_scaling=scaling)
        with llmrun.load(folder, n_threads=1) as model:
            check_logits(model, name)


def test_rope_scaling_matters(tmp_path: Path) -> None:
    """Dropping the scaling changes the logits well beyond the tolerance (the test can fail)."""
    folder = copy_fixture("llama3-gqa", tmp_path)
    edit_config(folder, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    with llmrun.load(folder, n_threads=1) as model, pytest.raises(AssertionError):
        check_logits(model, "llama3-gqa")


@pytest.mark.parametrize("dtype", ["F16", "BF16"])
def test_half_precision_weights(tmp_path: Path, dtype: str) -> None:
    folder = copy_fixture("qwen2-bias", tmp_path)
    tensors = read_tensors(folder / "model.safetensors")
    write_safetensors(folder / "model.safetensors", tensors, dtype=dtype)
    spec = read_model(folder)
    assert spec.layers[0].wq.type == dtype.lower() and spec.layers[0].attn_norm.type == "f32"
    with llmrun.load(folder, n_threads=1) as model:
        check_logits(model, "qwen2-bias", tolerance=0.1)


def test_sharded_weights(tmp_path: Path) -> None:
    folder = copy_fixture("llama3-gqa", tmp_path)
    tensors = read_tensors(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    weight_map = {}
    for shard, part in shards.items():
        write_safetensors(folder / shard, {n: tensors[n] for n in part})
        weight_map.update(dict.fromkeys(part, shard))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with llmrun.load(folder, n_threads=1) as model:
        check_logits(model, "llama3-gqa")


@pytest.mark.parametrize("quant", ["q8_0", "q4_0"])
def test_quantize_at_load(quant: str) -> None:
    seen = []
    spec = read_model(HF / "llama3-gqa", quantize=quant, progress=lambda done, total, name: seen.append(done))
    assert spec.layers[0].wq.type == quant and spec.layers[0].attn_norm.type == "f32"
    assert seen == list(range(1, len(spec.tensors()) + 1))
    f32 = read_model(HF / "llama3-gqa")
    for got, source in zip(spec.tensors(), f32.tensors(), strict=True):  # ggml's quantizers, byte for byte
        want = source.data if got.type == "f32" else quantize(np.asarray(source.data), quant)
        assert np.array_equal(got.data, want)
    # Random weights quantize badly (4 bits especially); the logits stay close to transformers' all the same.
    with llmrun.load(HF / "llama3-gqa", quantize=quant, n_threads=1) as model:
        check_logits(model, "llama3-gqa", tolerance=0.3 if quant == "q8_0" else 2.5)


def test_sliding_window(tmp_path: Path) -> None:
    """Mistral's window is each layer's window; it no longer limits the context (the windowed layers attend to
    their window of it)."""
    folder = copy_fixture("mistral", tmp_path)
    edit_config(folder, sliding_window=64)
    assert read_model(folder).config.layer_windows == (64, 64)
    with llmrun.load(folder, n_threads=1) as model:  # the trained context, as without a window
        assert model.info.n_ctx == model.info.context_length
    with llmrun.load(folder, n_ctx=128, n_threads=1) as model:
        assert model.info.n_ctx == 128
    edit_config(folder, sliding_window=0)
    with pytest.raises(ModelFormatError, match=r"sliding_window = 0 must be an integer in 1\.\."):
        read_model(folder)


def test_cli_generate() -> None:
    r = subprocess.run([*LLMRUN, "generate", str(HF / "qwen2-bias"), "-p", "Hello",
                        "-n", "8", "--temp", "0", "-t", "1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    with llmrun.load(HF / "qwen2-bias", n_threads=1) as model:
        assert r.stdout.startswith("Hello" + model.generate("Hello", max_tokens=8, temperature=0))


@pytest.mark.parametrize("name", ["llama3-gqa", "qwen2-bias"])
def test_cli_chat(name: str, tmp_path: Path) -> None:
    """`llmrun chat FOLDER` uses the folder's own chat template: two turns through a pipe, each reply the
    one Model.chat gives for the conversation so far (the saved transcript shows them)."""
    saved = tmp_path / "talk.json"
    r = subprocess.run([*LLMRUN, "chat", str(HF / name), "-n", "6", "--temp", "0", "-t", "1"],
                       input=f"Hello there\nAnd then?\n/save {saved}\n", capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "plain format" not in r.stderr
    talk = json.loads(saved.read_text())
    assert [m["role"] for m in talk] == ["user", "assistant", "user", "assistant"]
    with llmrun.load(HF / name, n_threads=1) as model:
        assert model.has_chat_template
        first = model.chat(talk[:1], max_tokens=6, temperature=0)["message"]["content"]
        second = model.chat(talk[:3], max_tokens=6, temperature=0)["message"]["content"]
    assert [talk[1]["content"], talk[3]["content"]] == [first, second]


# --- bad input ------------------------------------------------------------------------------------------

def test_unknown_architecture(tmp_path: Path) -> None:
    folder = copy_fixture("llama-tied", tmp_path)
    edit_config(folder, architectures=["GPTNeoXForCausalLM"])
    with pytest.raises(ModelFormatError, match="architecture 'GPTNeoXForCausalLM' is not supported"):
        read_model(folder)


def test_missing_files(tmp_path: Path) -> None:
    folder = copy_fixture("llama-tied", tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="no model weights"):
        read_model(folder)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFormatError, match="no config.json"):
        read_model(folder)
    folder = copy_fixture("qwen2-bias", tmp_path)
    (folder / "tokenizer.json").unlink()
    spec = read_model(folder)
    assert spec.tokenizer is None and "no tokenizer.json" in spec.tokenizer_problem


def test_mismatched_shapes(tmp_path: Path) -> None:
    folder = copy_fixture("llama3-gqa", tmp_path)
    edit_config(folder, intermediate_size=128)
    with pytest.raises(ModelFormatError, match=r"mlp.gate_proj.weight has shape \[96, 64\], expected \[128, 64\]"):
        read_model(folder)
    folder = copy_fixture("qwen2-bias", tmp_path / "b")
    tensors = read_tensors(folder / "model.safetensors")
    del tensors["model.layers.1.self_attn.k_proj.bias"]
    write_safetensors(folder / "model.safetensors", tensors)
    with pytest.raises(ModelFormatError, match="missing tensor model.layers.1.self_attn.k_proj.bias"):
        read_model(folder)


@pytest.mark.parametrize("field, value, match", [
    ("vocab_size", "HUGE", "vocab_size"),  # an integer of 5000 digits: Python's JSON reader refuses it
    ("rms_norm_eps", 10**400, "rms_norm_eps"),  # too large for a float
])
def test_absurd_numbers_in_config(tmp_path: Path, field: str, value: object, match: str) -> None:
    folder = copy_fixture("llama-tied", tmp_path)
    config = (folder / "config.json").read_text()
    data = json.loads(config)
    data[field] = 0
    text = json.dumps(data).replace(f'"{field}": 0', f'"{field}": ' + ("9" * 5000 if value == "HUGE" else str(value)))
    (folder / "config.json").write_text(text)
    with pytest.raises(ModelFormatError, match=match if value != "HUGE" else "config.json"):
        read_model(folder)


@pytest.mark.parametrize("edit, match", [
    (dict(head_dim=2048), r"head_dim = 2048 is larger than 1024"),
    (dict(head_dim=1024, num_attention_heads=64, num_key_value_heads=64),
     r"64 heads x 1024 = 65536 query dimensions, more than 16 times the model width 64"),
])
def test_implausible_attention_shapes(tmp_path: Path, edit: dict, match: str) -> None:
    """Attention far wider than the model: a small file that would reserve a huge KV cache."""
    folder = copy_fixture("llama-tied", tmp_path)
    edit_config(folder, **edit)
    with pytest.raises(ModelFormatError, match=match) as info:
        read_model(folder)
    assert str(folder / "config.json") in str(info.value)


def test_null_rope_theta_with_scaling_is_the_default(tmp_path: Path) -> None:
    folder = copy_fixture("llama3-gqa", tmp_path)
    data = json.loads((folder / "config.json").read_text())
    params = data.get("rope_parameters") or {}
    if params:
        data["rope_parameters"] = {**params, "rope_theta": None}
    else:
        data["rope_theta"] = None
    (folder / "config.json").write_text(json.dumps(data))
    spec = read_model(folder)  # null means the default, for the scaled frequencies as for the config
    assert spec.config.rope_theta == 10000.0 and np.all(np.isfinite(rope_tables(spec, 64)[0]))


def test_unknown_rope_scaling(tmp_path: Path) -> None:
    folder = copy_fixture("llama3-gqa", tmp_path)
    edit_config(folder, rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0})
    with pytest.raises(ModelFormatError, match="rope scaling type 'dynamic' is not supported"):
        read_model(folder)


@pytest.mark.parametrize("model_type", ["Unigram", "WordPiece"])
def test_unsupported_tokenizer_model(tmp_path: Path, model_type: str) -> None:
    folder = copy_fixture("llama-tied", tmp_path)
    data = json.loads((folder / "tokenizer.json").read_text())
    data["model"] = {"type": model_type, "vocab": [["a", 0.0]] if model_type == "Unigram" else {"a": 0}}
    (folder / "tokenizer.json").write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match=f"tokenizer model type '{model_type}' is not supported"):
        read_model(folder)


def _corrupt(tmp_path: Path, **kwargs: object) -> Path:
    folder = copy_fixture("llama-tied", tmp_path)
    tensors = read_tensors(folder / "model.safetensors")
    write_safetensors(folder / "model.safetensors", tensors, **kwargs)
    return folder


def test_corrupt_safetensors(tmp_path: Path) -> None:
    folder = copy_fixture("llama-tied", tmp_path / "trunc")
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ModelFormatError, match="out of range"):
        read_model(folder)
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(ModelFormatError, match="truncated safetensors file"):
        read_model(folder)

    with pytest.raises(ModelFormatError, match="header length 18446744073709551615 exceeds"):
        read_model(_corrupt(tmp_path / "huge", header_len=2**64 - 1))
    with pytest.raises(ModelFormatError, match="only .* bytes follow"):
        read_model(_corrupt(tmp_path / "long", header_len=50_000_000))
    bad = {"model.norm.weight": {"dtype": "F32", "shape": [64], "data_offsets": [0, 10**12]}}
    with pytest.raises(ModelFormatError, match=r"data_offsets \[0, 1000000000000\] are out of range"):
        read_model(_corrupt(tmp_path / "offs", header=bad))
    bad = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
           "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    with pytest.raises(ModelFormatError, match="overlap"):
        read_model(_corrupt(tmp_path / "overlap", header=bad))
    bad = {"a": {"dtype": "I64", "shape": [2], "data_offsets": [0, 16]}}
    with pytest.raises(ModelFormatError, match="dtype I64 is not supported"):
        read_model(_corrupt(tmp_path / "dtype", header=bad))
    bad = {"a": {"dtype": "F32", "shape": [5], "data_offsets": [0, 16]}}
    with pytest.raises(ModelFormatError, match="needs 20 bytes"):
        read_model(_corrupt(tmp_path / "size", header=bad))
    with pytest.raises(ModelFormatError, match="not valid JSON"):
        read_model(_corrupt(tmp_path / "json", header_len=3))
    for dtype in (["F32"], {"F32": 1}, None, 32):  # once a TypeError (an unhashable dtype)
        bad = {"a": {"dtype": dtype, "shape": [4], "data_offsets": [0, 16]}}
        with pytest.raises(ModelFormatError, match=r"tensor 'a': unknown dtype"):
            read_model(_corrupt(tmp_path / f"dtype{type(dtype).__name__}", header=bad))
