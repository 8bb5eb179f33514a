"""GGUF files: what the official `gguf` writer produces, llmrun reads back exactly (metadata of every type,
tensors of every supported weight type, tied or not, v2 and v3, any alignment); the shared stories260K
GGUFs run like stories260K.bin; and every corrupt or hostile file raises ModelFormatError quickly, naming
the field, without allocating much more than the file's size."""

from __future__ import annotations

import dataclasses
import random
import struct
import tracemalloc
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_fixtures import (
    Q,
    RawGGUF,
    RawTensor,
    U,
    array_payload,
    decode_tensor,
    gstr,
    kv,
    kv_array,
    kv_f32,
    kv_str,
    kv_u32,
    make_vocab,
    raw_llama,
    u32,
    u64,
    with_kv,
    with_tensor,
    write_llama_gguf,
)
from quants import rounds_input_to_bf16

import llmrun
from builders import make_config, random_tensors, spec_from_tensors
from llmrun import ModelFormatError
from llmrun.engine import Engine, isa_for
from llmrun.formats import read_model
from llmrun.formats.gguf import StringArray, ValueType, read_gguf
from llmrun.formats.gguf_model import load_gguf
from llmrun.formats.llama2c_tokenizer import load_llama2c_tokenizer
from reference import forward as reference_forward

CFG = make_config(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32)
TOKENS = [1, 5, 9, 2, 7, 40, 63]


@pytest.fixture(scope="module")
def weights() -> dict[str, np.ndarray]:
    return random_tensors(CFG, seed=3, tied=False)


def _tied(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in t.items() if k != "output"}


def _is_file_view(a: np.ndarray) -> bool:
    """True when `a` is (a view of) a memory map, not a copy."""
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None
    return False


def _logits(spec: llmrun.spec.ModelSpec, tokens: list[int]) -> np.ndarray:
    engine = Engine(spec, n_ctx=32, n_threads=1)
    try:
        return engine.evaluate_all(tokens)
    finally:
        engine.close()


# ------------------------------------------------------------------------------------------------
# The container: metadata
# ------------------------------------------------------------------------------------------------

def test_every_metadata_value_type(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "m.gguf"), "llama")
    scalars = {"t.u8": (200, U.UINT8), "t.i8": (-100, U.INT8), "t.u16": (60000, U.UINT16),
               "t.i16": (-30000, U.INT16), "t.u32": (4_000_000_000, U.UINT32), "t.i32": (-2_000_000_000, U.INT32),
               "t.u64": (2**64 - 1, U.UINT64), "t.i64": (-(2**63), U.INT64), "t.f32": (1.5, U.FLOAT32),
               "t.f64": (1 / 3, U.FLOAT64), "t.true": (True, U.BOOL), "t.false": (False, U.BOOL),
               "t.str": ("h\u00e9llo \u2581w\u00f6rld \U0001F600", U.STRING), "t.empty": ("", U.STRING)}
    for key, (value, vtype) in scalars.items():
        w.add_key_value(key, value, vtype)
    arrays = {"a.u8": ([1, 255], U.UINT8, "u1"), "a.i8": ([-1, 127], U.INT8, "i1"),
              "a.u16": ([1, 65535], U.UINT16, "<u2"), "a.i16": ([-5, 5], U.INT16, "<i2"),
              "a.u32": ([7, 2**32 - 1], U.UINT32, "<u4"), "a.i32": ([-7, 9], U.INT32, "<i4"),
              "a.u64": ([0, 2**64 - 1], U.UINT64, "<u8"), "a.i64": ([-(2**63), 3], U.INT64, "<i8"),
              "a.f32": ([0.5, -2.25], U.FLOAT32, "<f4"), "a.f64": ([1e300, -1e-300], U.FLOAT64, "<f8"),
              "a.bool": ([True, False, True], U.BOOL, "?")}
    for key, (values, etype, _) in arrays.items():
        w.add_key_value(key, values, U.ARRAY, sub_type=etype)
    w.add_array("a.str", ["\u2581a", "", "b\u00e9", "<0x0A>"])
    w.add_array("a.nested", [[1, 2, 3], [4], [5, 6]])
    w.add_array("a.nested_str", [["x", "yz"], ["\u2581"]])
    w.add_array("a.nested2", [[[1.5], [2.5, 3.5]], [[4.5]]])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    f = read_gguf(tmp_path / "m.gguf")
    assert f.version == 3 and f.alignment == 32 and f.tensors == {}
    assert f.metadata["general.architecture"] == "llama"
    for key, (value, vtype) in scalars.items():
        assert f.metadata[key] == value, key  # 1.5 is exact in float32
        assert f.value_types[key] == ValueType(vtype), key
        assert type(f.metadata[key]) is type(value), key
    for key, (values, _, dtype) in arrays.items():
        got = f.metadata[key]
        assert f.value_types[key] == ValueType.ARRAY
        assert got.dtype == np.dtype(dtype) and got.tolist() == values, key
        assert not got.flags.writeable  # a view of the read-only file map
    strings = f.metadata["a.str"]
    assert isinstance(strings, StringArray) and list(strings) == ["\u2581a", "", "b\u00e9", "<0x0A>"]
    assert strings[1:3] == ["", "b\u00e9"] and strings.raw(2) == "b\u00e9".encode() and len(strings) == 4
    assert [a.tolist() for a in f.metadata["a.nested"]] == [[1, 2, 3], [4], [5, 6]]
    assert [list(a) for a in f.metadata["a.nested_str"]] == [["x", "yz"], ["\u2581"]]
    assert [[a.tolist() for a in inner] for inner in f.metadata["a.nested2"]] == [[[1.5], [2.5, 3.5]], [[4.5]]]
    # the official reader agrees on what was written
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    assert r.fields["t.str"].contents() == f.metadata["t.str"]
    assert r.fields["a.i64"].contents() == f.metadata["a.i64"].tolist()


def test_empty_arrays_and_invalid_utf8_strings(tmp_path: Path) -> None:
    """Arrays may be empty (the official writer refuses to write them; files from elsewhere have them);
    strings that are not UTF-8 are kept (exact bytes through raw(), U+FFFD in str)."""
    raw = RawGGUF(kvs=[kv_array("e.u32", U.UINT32, []), kv_array("e.str", U.STRING, []),
                       kv_array("e.arr", U.ARRAY, []), kv("bad.utf8", U.STRING, gstr(b"a\xffb")),
                       kv_array("bad.list", U.STRING, [gstr(b"\xe2\x96")])], tensors=[])
    f = read_gguf(raw.write(tmp_path / "e.gguf"))
    assert f.metadata["e.u32"].size == 0 and len(f.metadata["e.str"]) == 0 and f.metadata["e.arr"] == []
    assert f.metadata["bad.utf8"] == "a\ufffdb"
    assert f.metadata["bad.list"].raw(0) == b"\xe2\x96"


# ------------------------------------------------------------------------------------------------
# The Llama architecture: weights of every type, tied or not, versions, alignment
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ttype", ["f32", "f16", "bf16", "q8_0", "q4_0"])
@pytest.mark.parametrize("tied", [True, False])
def test_weights_read_back_exactly(tmp_path: Path, weights: dict[str, np.ndarray], ttype: str, tied: bool) -> None:
    t = _tied(weights) if tied else weights
    written = write_llama_gguf(tmp_path / "m.gguf", CFG, t, ttype)
    spec = read_model(tmp_path / "m.gguf")
    assert spec.format == "GGUF v3"
    assert dataclasses.replace(spec.config, norm_eps=1e-5) == CFG
    assert spec.config.norm_eps == pytest.approx(1e-5)  # stored as float32
    assert (spec.output is None) == tied
    named = {"token_embd.weight": spec.token_embd, "output_norm.weight": spec.output_norm}
    if not tied:
        named["output.weight"] = spec.output
    for i, layer in enumerate(spec.layers):
        named.update({f"blk.{i}.attn_norm.weight": layer.attn_norm, f"blk.{i}.attn_q.weight": layer.wq,
                      f"blk.{i}.attn_k.weight": layer.wk, f"blk.{i}.attn_v.weight": layer.wv,
                      f"blk.{i}.attn_output.weight": layer.wo, f"blk.{i}.ffn_norm.weight": layer.ffn_norm,
                      f"blk.{i}.ffn_gate.weight": layer.w_gate, f"blk.{i}.ffn_up.weight": layer.w_up,
                      f"blk.{i}.ffn_down.weight": layer.w_down})
    assert set(named) == set(written)
    for name, tensor in named.items():
        want = written[name]
        is_norm = "norm" in name
        assert tensor.type == ("f32" if is_norm else ttype), name
        assert _is_file_view(tensor.data), name  # used in place, no copy
        expected_shape = want.shape if ttype != "bf16" or is_norm else (want.shape[0], want.shape[1] // 2)
        assert tensor.data.shape == expected_shape, name
        assert tensor.data.tobytes() == want.tobytes(), name
    rows, cols = spec.layers[0].wq.shape
    assert (rows, cols) == (CFG.q_dim, CFG.dim)
    assert spec.n_params == sum(v.size for v in t.values())


@pytest.mark.parametrize("ttype", ["f32", "f16", "bf16", "q8_0", "q4_0"])
def test_logits_match_the_reference(tmp_path: Path, weights: dict[str, np.ndarray], ttype: str) -> None:
    """End to end through the engine against the numpy reference on the weights as stored (dequantized):
    float types agree to rounding; block types within the error of quantizing the activations to 8 bits, and so
    do bf16 weights at the avx512bf16 level, whose products round their input to bfloat16 (measured 3.5e-3)."""
    written = write_llama_gguf(tmp_path / "m.gguf", CFG, weights, ttype)
    spec = read_model(tmp_path / "m.gguf")
    got = _logits(spec, TOKENS)
    stored = {k: v.copy() for k, v in weights.items()}
    for name, array in written.items():
        kind = "f32" if "norm" in name else ttype
        values = decode_tensor(array, kind)
        if name.startswith("blk."):
            layer, short = int(name.split(".")[1]), name.split(".")[2]
            ours = {"attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo", "ffn_gate": "w_gate",
                    "ffn_up": "w_up", "ffn_down": "w_down"}.get(short, short)
            stored[ours][layer] = values
        else:
            stored[name.removesuffix(".weight")] = values
    want = reference_forward(spec.config, stored, TOKENS)
    exact = ttype in ("f32", "f16", "bf16") and not rounds_input_to_bf16(ttype, isa_for(None))  # _logits' level
    tolerance = 1e-4 if exact else 3e-2
    assert np.max(np.abs(got - want)) <= tolerance * np.max(np.abs(want))


def test_mixed_types_per_tensor(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    types = {"token_embd.weight": "q8_0", "blk.0.ffn_down.weight": "f16", "blk.1.attn_q.weight": "bf16"}
    write_llama_gguf(tmp_path / "m.gguf", CFG, weights, "q4_0", types=types)
    spec = read_model(tmp_path / "m.gguf")
    assert spec.token_embd.type == "q8_0" and spec.layers[0].w_down.type == "f16"
    assert spec.layers[1].wq.type == "bf16" and spec.layers[1].wk.type == "q4_0"
    assert spec.dtype == "q4_0 (+ f16, q8_0, bf16)"  # by how many weights each type holds


def test_version_2_reads_like_version_3(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    write_llama_gguf(tmp_path / "v3.gguf", CFG, weights)
    write_llama_gguf(tmp_path / "v2.gguf", CFG, weights, version=2)
    v2, v3 = read_model(tmp_path / "v2.gguf"), read_model(tmp_path / "v3.gguf")
    assert v2.format == "GGUF v2"
    assert v2.config == v3.config
    assert all(np.array_equal(a.data, b.data) for a, b in zip(v2.tensors(), v3.tensors(), strict=True))
    assert v2.tokenizer.encode("the tea") == v3.tokenizer.encode("the tea")


@pytest.mark.parametrize("version, message", [(1, "version 1 is not supported"), (0, "unknown GGUF version 0"),
                                              (4, "unknown GGUF version 4")])
def test_other_versions_are_refused(tmp_path: Path, weights: dict[str, np.ndarray], version: int,
                                    message: str) -> None:
    write_llama_gguf(tmp_path / "m.gguf", CFG, weights, version=version)
    with pytest.raises(ModelFormatError, match=message):
        read_model(tmp_path / "m.gguf")


def test_big_endian_is_refused(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "be.gguf"), "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_uint32("llama.block_count", 1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(ModelFormatError, match="big-endian"):
        read_model(tmp_path / "be.gguf")


@pytest.mark.parametrize("alignment", [1, 8, 64, 4096])
def test_alignments_other_than_32(tmp_path: Path, weights: dict[str, np.ndarray], alignment: int) -> None:
    write_llama_gguf(tmp_path / "a32.gguf", CFG, weights)
    write_llama_gguf(tmp_path / "a.gguf", CFG, weights, alignment=alignment)
    f = read_gguf(tmp_path / "a.gguf")
    assert f.alignment == alignment and f.data_offset % alignment == 0
    assert all(t.offset % alignment == 0 for t in f.tensors.values())
    a, ref = read_model(tmp_path / "a.gguf"), read_model(tmp_path / "a32.gguf")
    for x, y in zip(a.tensors(), ref.tensors(), strict=True):
        assert np.array_equal(x.data, y.data)
        assert x.data.ctypes.data % 4 == 0  # misaligned data (alignment 1) is copied into aligned memory
    assert np.array_equal(_logits(a, TOKENS), _logits(ref, TOKENS))


def test_head_dim_from_key_length(tmp_path: Path) -> None:
    cfg = make_config(dim=64, hidden_dim=96, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, max_seq_len=32,
                      head_dim=32)
    t = random_tensors(cfg, seed=9)
    write_llama_gguf(tmp_path / "m.gguf", cfg, t)
    spec = read_model(tmp_path / "m.gguf")
    assert spec.config.head_dim == 32 and spec.layers[0].wq.shape == (128, 64)
    want = reference_forward(spec.config, t, TOKENS)
    got = _logits(spec, TOKENS)
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


# ------------------------------------------------------------------------------------------------
# Tokenizer metadata
# ------------------------------------------------------------------------------------------------

def test_tokenizer_and_extras(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    template = "{% for m in messages %}{{ m.content }}{% endfor %}"
    write_llama_gguf(tmp_path / "m.gguf", CFG, weights,
                     extra_kv={"tokenizer.chat_template": (template, U.STRING),
                               "tokenizer.ggml.padding_token_id": (0, U.UINT32),
                               "tokenizer.ggml.eot_token_id": (2, U.UINT32)})
    spec = read_model(tmp_path / "m.gguf")
    tok = spec.tokenizer
    assert tok.vocab_size == CFG.vocab_size and (tok.bos_id, tok.eos_id, tok.unk_id) == (1, 2, 0)
    assert tok.encode("the tea") == [1, 38, 32, 4, 6]  # "▁the", "▁t", "e", "a"
    assert tok.decode(tok.encode("the tea")) == "the tea"
    assert spec.chat_template == template
    assert spec.add_bos_token is True and spec.add_eos_token is False
    assert spec.metadata["tokenizer.ggml.padding_token_id"] == 0 and spec.eog_token_ids == (2,)
    assert spec.metadata["tokenizer.ggml.model"] == "llama" and spec.tokenizer_problem == ""
    with llmrun.load(tmp_path / "m.gguf", n_threads=1) as model:  # the file's own tokenizer
        assert model.tokenize("the tea") == [1, 38, 32, 4, 6]


def test_add_space_prefix_false(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    write_llama_gguf(tmp_path / "m.gguf", CFG, weights,
                     extra_kv={"tokenizer.ggml.add_space_prefix": (False, U.BOOL),
                               "tokenizer.ggml.add_bos_token": (False, U.BOOL)})
    spec = read_model(tmp_path / "m.gguf")
    assert spec.tokenizer.encode("the tea") == [1, 5, 33, 32, 4, 6]  # "t", "he", "▁t", "e", "a"
    assert spec.add_bos_token is False


def test_other_tokenizer_models_still_load_for_logits(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    write_llama_gguf(tmp_path / "m.gguf", CFG, weights, tokenizer_model="t5")
    spec = read_model(tmp_path / "m.gguf")
    assert spec.tokenizer is None
    assert "tokenizer model 't5' is not supported yet" in spec.tokenizer_problem
    assert spec.config.vocab_size == CFG.vocab_size


def test_missing_tokenizer(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    raw = with_kv(raw_llama(CFG, _tied(weights)), "tokenizer.ggml.model", None)
    spec = read_model(raw.write(tmp_path / "m.gguf"))
    assert spec.tokenizer is None and "no tokenizer" in spec.tokenizer_problem


# ------------------------------------------------------------------------------------------------
# The shared stories260K files
# ------------------------------------------------------------------------------------------------

def test_shared_models_types(models_dir: Path) -> None:
    """As the models README says: F32; Q8_0 = 31 Q8_0 + 5 F16 + 11 F32; Q4_0 = 30 Q4_0 + 1 Q8_0 + 5 F16 + 11 F32."""
    want = {"f32": {"f32": 47}, "q8_0": {"q8_0": 31, "f16": 5, "f32": 11},
            "q4_0": {"q4_0": 30, "q8_0": 1, "f16": 5, "f32": 11}}
    bin_config = read_model(models_dir / "stories260K.bin").config
    for name, counts in want.items():
        spec = read_model(models_dir / f"stories260K-{name}.gguf")
        assert Counter(t.type for t in spec.tensors()) == counts, name
        assert spec.output is None  # tied to the embedding
        assert dataclasses.replace(spec.config, norm_eps=1e-5) == bin_config
        assert {layer.w_down.type for layer in spec.layers} == ({"f16"} if name != "f32" else {"f32"})
        assert spec.add_bos_token is True and spec.name == "stories260K"
        # tensor placement agrees with the official reader's
        ours = read_gguf(models_dir / f"stories260K-{name}.gguf").tensors
        theirs = gguf.GGUFReader(models_dir / f"stories260K-{name}.gguf").tensors
        assert {t.name: (t.data_offset, t.n_bytes, tuple(int(d) for d in t.shape)) for t in theirs} == {
            t.name: (t.offset, t.nbytes, t.ne) for t in ours.values()}


def _tokenizer_test_strings() -> list[str]:
    rng = random.Random(1234)
    words = ("Once upon a time there was a little girl named Lily she loved to play outside in the park "
             "One day saw big red ball and her mom said Thank you Tim dog cat happy sad The end").split()
    alphabet = "abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,!?'\"\n\t-\u00e9\u00fc\u4e2d\u6587\U0001F600\u2581"
    out = ["", " ", "  ", "\n", "Hello world", " leading", "trailing ", "a  b", "\u2581x", "caf\u00e9", "\U0001F44B"]
    for _ in range(200):
        out.append(" ".join(rng.choice(words) for _ in range(rng.randint(1, 12))))
    for _ in range(150):
        out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))))
    return out


def test_shared_tokenizer_equals_tok512(models_dir: Path) -> None:
    tok512 = load_llama2c_tokenizer(models_dir / "tok512.bin", 512)
    for name in ("f32", "q8_0", "q4_0"):
        tok = read_model(models_dir / f"stories260K-{name}.gguf").tokenizer
        assert tok.token_types == tok512.token_types
        assert np.array_equal(tok.scores, tok512.scores)
        for text in _tokenizer_test_strings():
            ids = tok.encode(text)
            assert ids == tok512.encode(text), (name, text)
            assert tok.decode(ids) == tok512.decode(ids), (name, text)


def test_stories_gguf_logits_equal_the_bin_and_rope_is_interleaved(models_dir: Path) -> None:
    """The f32 GGUF was converted from stories260K.bin without permuting Q/K: with the same (interleaved,
    adjacent-pair) RoPE the logits are bit for bit the .bin's; rotating halves instead changes them."""
    gguf_spec = read_model(models_dir / "stories260K-f32.gguf")
    assert gguf_spec.config.rope_style == "interleaved"
    ids = [1, 403, 407, 261, 378, 300, 280, 290, 500, 3, 2]
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as m:
        want = m.logits(ids)
    with llmrun.load(models_dir / "stories260K-f32.gguf", n_threads=1) as m:
        got = m.logits(ids)
    assert np.array_equal(got, want)
    halves = dataclasses.replace(gguf_spec, config=dataclasses.replace(gguf_spec.config, rope_style="halves"))
    engine = Engine(halves, n_ctx=32, n_threads=1)
    other = engine.evaluate_all(ids)
    engine.close()
    assert np.max(np.abs(other - want)) > 1e-2


def test_stories_gguf_generates_the_bin_story(models_dir: Path) -> None:
    """Greedy text from the GGUF (with its own tokenizer) is the .bin's story. The .bin run stops where
    the story ends with BOS (run.c's rule for llama2.c models); the GGUF run, like llama.cpp, stops only at
    EOS, so it goes on with the next story: the .bin's text is its beginning, followed by BOS."""
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as m:
        want = m.stream("Once upon a time", max_tokens=None, temperature=0)
        want_text = want.text()
    with llmrun.load(models_dir / "stories260K-f32.gguf", n_threads=1) as m:
        got = m.stream("Once upon a time", max_tokens=None, temperature=0)
        got_text = got.text()
    assert want_text.startswith(", there was a little girl named Lily. She loved to play outside in the park.")
    n = len(want.tokens)
    assert got.tokens[:n] == want.tokens
    if got_text != want_text:
        assert got_text.startswith(want_text) and got.tokens[n] == 1  # BOS: the next story


@pytest.mark.parametrize("name, n_chars", [("q8_0", 120), ("q4_0", 60)])
def test_quantized_stories_generate(models_dir: Path, name: str, n_chars: int) -> None:
    """Greedy text of the quantized files begins as the f32 model's (Q4_0 diverges sooner, as llama.cpp's)."""
    with llmrun.load(models_dir / "stories260K-f32.gguf", n_threads=1) as m:
        want = m.generate("Once upon a time", max_tokens=60, temperature=0)
    with llmrun.load(models_dir / f"stories260K-{name}.gguf", n_threads=1) as model:
        got = model.generate("Once upon a time", max_tokens=60, temperature=0)
    assert got[:n_chars] == want[:n_chars]


# ------------------------------------------------------------------------------------------------
# Corrupt and hostile files
# ------------------------------------------------------------------------------------------------

BIG = 2**63 - 1
HUGE = 2**64 - 1
SMALL = make_config(dim=32, hidden_dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=32, max_seq_len=16)


@pytest.fixture(scope="module")
def raw() -> RawGGUF:
    return raw_llama(SMALL, random_tensors(SMALL, seed=4))


def _tok(raw: RawGGUF, n: int) -> RawGGUF:
    pieces, _, _ = make_vocab(n)
    return with_kv(raw, "tokenizer.ggml.tokens", kv_array("tokenizer.ggml.tokens", U.STRING, [gstr(p) for p in pieces]))


def _edit(offset: int, data: bytes) -> Callable[[bytes], bytes]:
    return lambda b: b[:offset] + data + b[offset + len(data):]


# Each case: (id, a RawGGUF -> RawGGUF or bytes function, a piece of the expected message).
CORRUPTIONS: list[tuple[str, Callable[[RawGGUF], RawGGUF | bytes], str]] = [
    # header
    ("bad magic", lambda r: dataclasses.replace(r, magic=b"GGUG"), "not a GGUF file"),
    ("v1", lambda r: dataclasses.replace(r, version=1), "version 1 is not supported"),
    ("v0", lambda r: dataclasses.replace(r, version=0), "unknown GGUF version 0"),
    ("big-endian v3", lambda r: dataclasses.replace(r, version=0x03000000), "big-endian"),
    ("n_tensors 2^63-1", lambda r: dataclasses.replace(r, n_tensors=BIG), "tensor count = 9223372036854775807"),
    ("n_tensors 2^64-1", lambda r: dataclasses.replace(r, n_tensors=HUGE), "tensor count"),
    ("n_tensors beyond the file", lambda r: dataclasses.replace(r, n_tensors=16_000), "cannot fit"),
    ("n_tensors one too many", lambda r: dataclasses.replace(r, n_tensors=len(r.tensors) + 1), ""),
    ("n_kv 2^63-1", lambda r: dataclasses.replace(r, n_kv=BIG), "metadata count = 9223372036854775807"),
    ("n_kv beyond the file", lambda r: dataclasses.replace(r, n_kv=16_000), "cannot fit"),
    ("n_kv one too many", lambda r: dataclasses.replace(r, n_kv=len(r.kvs) + 1), ""),
    ("n_kv one too few", lambda r: dataclasses.replace(r, n_kv=len(r.kvs) - 1), ""),
    # metadata
    ("key length 2^63-1", lambda r: with_kv(r, "general.name", gstr(b"general.name", BIG)), "string length"),
    ("key length past the end", lambda r: with_kv(r, "general.name", gstr(b"general.name", 60_000)).build()[:9000],
     "truncated"),
    ("empty key", lambda r: dataclasses.replace(r, kvs=r.kvs + [kv(b"", U.UINT8, b"\0")]), "is empty"),
    ("key not utf-8", lambda r: dataclasses.replace(r, kvs=r.kvs + [kv(b"\xff\xfe", U.UINT8, b"\0")]), "UTF-8"),
    ("duplicate key", lambda r: dataclasses.replace(r, kvs=r.kvs + [kv_u32("llama.block_count", 2)]),
     "duplicate metadata key 'llama.block_count'"),
    ("unknown value type", lambda r: with_kv(r, "general.name", kv("general.name", 13, b"")), "unknown value type 13"),
    ("value type 2^32-1", lambda r: with_kv(r, "general.name", kv("general.name", 2**32 - 1, b"")),
     "unknown value type"),
    ("bool 2", lambda r: with_kv(r, "tokenizer.ggml.add_bos_token", kv("tokenizer.ggml.add_bos_token", U.BOOL, b"\2")),
     "expected 0 or 1"),
    ("string value length 2^63-1", lambda r: with_kv(r, "general.name", kv("general.name", U.STRING, gstr("x", BIG))),
     "string length 9223372036854775807 exceeds"),
    ("string value past the end", lambda r: with_kv(r, "general.name", kv("general.name", U.STRING, gstr("x", 10**7))),
     "truncated"),
    ("array length 2^63-1", lambda r: with_kv(r, "tokenizer.ggml.scores", kv_array(
        "tokenizer.ggml.scores", U.FLOAT32, [], BIG)), "array length = 9223372036854775807"),
    ("u64 array 2^61 (8x overflows 64 bits)", lambda r: with_kv(r, "x.a", kv_array("x.a", U.UINT64, [], 2**61)),
     "array length"),
    ("string array length 2^63-1", lambda r: with_kv(r, "tokenizer.ggml.tokens", kv_array(
        "tokenizer.ggml.tokens", U.STRING, [], BIG)), "array length"),
    ("string array past the end", lambda r: with_kv(r, "tokenizer.ggml.tokens", kv_array(
        "tokenizer.ggml.tokens", U.STRING, [gstr("a")], 100_000)), "cannot fit"),
    ("string in array 2^63-1 long", lambda r: with_kv(r, "tokenizer.ggml.tokens", kv_array(
        "tokenizer.ggml.tokens", U.STRING, [gstr("a"), gstr("b", BIG)])), "string length"),
    ("nested array length 2^63-1", lambda r: with_kv(r, "x.n", kv_array("x.n", U.ARRAY, [], BIG)), "array length"),
    ("nested arrays too many", lambda r: with_kv(r, "x.n", kv_array(
        "x.n", U.ARRAY, [array_payload(U.UINT8, [])] * 5000)), "arrays nested in arrays"),
    ("arrays nested too deep", lambda r: with_kv(r, "x.n", kv("x.n", U.ARRAY, _deep(12))), "nested more than"),
    ("unknown array element type", lambda r: with_kv(r, "x.a", kv_array("x.a", 99, [])), "unknown element type 99"),
    ("bool array with 7", lambda r: with_kv(r, "x.a", kv_array("x.a", U.BOOL, [b"\1", b"\7"])), "[1]: bool is 7"),
    # alignment
    ("alignment 0", lambda r: with_kv(r, "general.alignment", kv_u32("general.alignment", 0)), "not a power of two"),
    ("alignment 48", lambda r: with_kv(r, "general.alignment", kv_u32("general.alignment", 48)), "= 48 is not a power"),
    ("alignment as a string", lambda r: with_kv(r, "general.alignment", kv_str("general.alignment", "32")),
     "must be a uint32"),
    ("alignment 2^31 puts data past the end", lambda r: with_kv(r, "general.alignment", kv_u32(
        "general.alignment", 2**31)), "not a multiple of the alignment 2147483648"),
    # tensor infos
    ("tensor name 2^63-1 long", lambda r: with_tensor(r, "output_norm.weight", name="xxx").build().replace(
        gstr("xxx"), gstr("xxx", BIG)), "string length"),
    ("tensor name too long", lambda r: with_tensor(r, "output_norm.weight", name="n" * 300), "exceeds the limit"),
    ("empty tensor name", lambda r: with_tensor(r, "output_norm.weight", name=""), "is empty"),
    ("duplicate tensor", lambda r: with_tensor(r, "blk.1.attn_q.weight", name="blk.0.attn_q.weight"),
     "duplicate tensor name 'blk.0.attn_q.weight'"),
    ("n_dims 0", lambda r: with_tensor(r, "blk.0.attn_q.weight", ne=[], n_dims=0), "n_dims = 0"),
    ("n_dims 5", lambda r: with_tensor(r, "blk.0.attn_q.weight", ne=[32, 32, 1, 1, 1]), "n_dims = 5"),
    ("n_dims 2^32-1", lambda r: with_tensor(r, "blk.0.attn_q.weight", n_dims=2**32 - 1), "n_dims = 4294967295"),
    ("zero dim", lambda r: with_tensor(r, "blk.0.attn_q.weight", ne=[32, 0]), "dimension of size 0"),
    ("dims overflow 64 bits", lambda r: with_tensor(r, "blk.0.attn_q.weight", ne=[2**62, 2**62, 16, 16]),
     "runs past the end"),
    ("dims 2^63-1", lambda r: with_tensor(r, "blk.0.attn_q.weight", ne=[BIG, 1]), "runs past the end"),
    ("unknown type 99", lambda r: with_tensor(r, "blk.0.attn_q.weight", ggml_type=99), "unknown ggml type 99"),
    ("removed type 4", lambda r: with_tensor(r, "blk.0.attn_q.weight", ggml_type=4), "unknown ggml type 4"),
    ("type 2^32-1", lambda r: with_tensor(r, "blk.0.attn_q.weight", ggml_type=2**32 - 1), "unknown ggml type"),
    ("IQ2_XXS", lambda r: with_tensor(r, "blk.0.attn_q.weight", ggml_type=Q.IQ2_XXS),
     "'blk.0.attn_q.weight' has type IQ2_XXS (16), not supported yet (supported: F32, F16, Q4_0, Q4_1"),
    ("Q4_K row not a super-block multiple", lambda r: with_tensor(r, "blk.0.attn_q.weight", ggml_type=Q.Q4_K),
     "of type Q4_K has rows of 32 values, not a multiple of its block size 256"),
    ("Q8_0 row not a block multiple", lambda r: with_tensor(r, "blk.0.attn_q.weight", ggml_type=Q.Q8_0, ne=[48, 2]),
     "not a multiple of its block size 32"),
    ("offset past the end", lambda r: with_tensor(r, "output_norm.weight", offset=2**40), "runs past the end"),
    ("offset 2^64-32", lambda r: with_tensor(r, "output_norm.weight", offset=2**64 - 32), "runs past the end"),
    ("last tensor one byte short", lambda r: r.build()[:-1], "runs past the end"),
    ("misaligned offset", lambda r: with_tensor(r, "output_norm.weight", offset=4), "not a multiple of the alignment"),
    ("overlapping tensors", lambda r: with_tensor(r, "output_norm.weight", offset=0), "overlap"),
    # the llama architecture
    ("split model", lambda r: with_kv(r, "split.count", kv(b"split.count", U.UINT16, struct.pack("<H", 3))),
     "split GGUF model (3 files)"),
    ("no architecture", lambda r: with_kv(r, "general.architecture", None), "missing metadata general.architecture"),
    ("architecture gpt2", lambda r: with_kv(r, "general.architecture", kv_str("general.architecture", "gpt2")),
     "architecture 'gpt2' is not supported yet"),
    ("architecture not a string", lambda r: with_kv(r, "general.architecture", kv_u32("general.architecture", 1)),
     "must be a string"),
    ("no embedding_length", lambda r: with_kv(r, "llama.embedding_length", None), "missing metadata llama.embedding"),
    ("no rms epsilon", lambda r: with_kv(r, "llama.attention.layer_norm_rms_epsilon", None),
     "layer_norm_rms_epsilon"),
    ("block_count as string", lambda r: with_kv(r, "llama.block_count", kv_str("llama.block_count", "2")),
     "llama.block_count must be an integer"),
    ("head_count 0", lambda r: with_kv(r, "llama.attention.head_count", kv_u32("llama.attention.head_count", 0)),
     "llama.attention.head_count = 0 is out of range"),
    ("dim not divisible by heads", lambda r: with_kv(r, "llama.attention.head_count", kv_u32(
        "llama.attention.head_count", 3)), "not divisible"),
    ("heads not divisible by kv heads", lambda r: with_kv(r, "llama.attention.head_count_kv", kv_u32(
        "llama.attention.head_count_kv", 3)), "not divisible"),
    ("rope dims differ from head size", lambda r: with_kv(r, "llama.rope.dimension_count", kv_u32(
        "llama.rope.dimension_count", 4)), "llama.rope.dimension_count = 4 with head size 8: partial rotary"),
    ("negative epsilon", lambda r: with_kv(r, "llama.attention.layer_norm_rms_epsilon", kv_f32(
        "llama.attention.layer_norm_rms_epsilon", -1.0)), "positive finite"),
    ("NaN rope base", lambda r: with_kv(r, "llama.rope.freq_base", kv_f32("llama.rope.freq_base", float("nan"))),
     "llama.rope.freq_base = nan"),
    ("unknown rope scaling", lambda r: with_kv(r, "llama.rope.scaling.type", kv_str("llama.rope.scaling.type", "ntk")),
     "RoPE scaling llama.rope.scaling.type = 'ntk' is not supported"),
    ("sliding window as a string", lambda r: with_kv(r, "llama.attention.sliding_window", kv_str(
        "llama.attention.sliding_window", "8")), "metadata llama.attention.sliding_window must be an integer"),
    ("window pattern longer than the layers", lambda r: with_kv(with_kv(
        r, "llama.attention.sliding_window", kv_u32("llama.attention.sliding_window", 8)),
        "llama.attention.sliding_window_pattern", kv_array("llama.attention.sliding_window_pattern", U.BOOL,
                                                           [b"\x01"] * 3)),
     "llama.attention.sliding_window_pattern has 3 entries for 2 layers"),
    ("yarn with no original context", lambda r: with_kv(with_kv(
        r, "llama.rope.scaling.type", kv_str("llama.rope.scaling.type", "yarn")),
        "llama.rope.scaling.original_context_length", kv_u32("llama.rope.scaling.original_context_length", 0)),
     "llama.rope.scaling.original_context_length = 0 is out of range"),
    ("attention factor without yarn", lambda r: with_kv(r, "llama.rope.scaling.attn_factor", kv_f32(
        "llama.rope.scaling.attn_factor", 2.0)), "llama.rope.scaling.attn_factor = 2.0 without YaRN or LongRoPE"),
    ("mixture of experts", lambda r: with_kv(r, "llama.expert_count", kv_u32("llama.expert_count", 8)),
     "mixture-of-experts"),
    ("vocab_size differs from the embedding", lambda r: with_kv(r, "llama.vocab_size", kv_u32("llama.vocab_size", 33)),
     "token_embd.weight has ne = [32, 32], expected [32, 33]"),
    ("missing tensor", lambda r: dataclasses.replace(r, tensors=[t for t in r.tensors
                                                                 if t.name != "blk.1.ffn_up.weight"]),
     "missing tensor blk.1.ffn_up.weight"),
    ("wrong shape", lambda r: with_tensor(r, "blk.0.attn_k.weight", ne=[16, 32]),
     "blk.0.attn_k.weight has ne = [16, 32], expected [32, 16]"),
    ("norm as F16", lambda r: with_tensor(r, "blk.0.ffn_norm.weight", ggml_type=Q.F16),
     "norm tensor blk.0.ffn_norm.weight has type F16"),
    ("rope_freqs of the wrong size", lambda r: dataclasses.replace(
        r, tensors=r.tensors + [_vector("rope_freqs.weight", 3)]),
     "tensor rope_freqs.weight has ne = [3] and type F32, expected [4] F32"),
    ("unknown tensor", lambda r: dataclasses.replace(r, tensors=r.tensors + [_vector("blk.2.attn_norm.weight", 32)]),
     "unexpected tensor 'blk.2.attn_norm.weight'"),
    ("output with wrong vocab", lambda r: dataclasses.replace(r, tensors=r.tensors + [_vector("output.weight", 32)]),
     "tensor output.weight has ne = [32], expected [32, 32]"),
    # the tokenizer
    ("fewer tokens than the vocabulary", lambda r: _tok(r, 31), "tokenizer.ggml.tokens has 31 entries, expected 32"),
    ("tokens not strings", lambda r: with_kv(r, "tokenizer.ggml.tokens", kv_array(
        "tokenizer.ggml.tokens", U.INT32, [u32(0)] * 32)), "must be an array of STRING"),
    ("scores as strings", lambda r: with_kv(r, "tokenizer.ggml.scores", kv_array(
        "tokenizer.ggml.scores", U.STRING, [gstr("0")] * 32)), "tokenizer.ggml.scores must be an array of"),
    ("unknown token type", lambda r: with_kv(r, "tokenizer.ggml.token_type", kv_array(
        "tokenizer.ggml.token_type", U.INT32, [struct.pack("<i", 1)] * 31 + [struct.pack("<i", 9)])),
     "tokenizer.ggml.token_type[31] = 9"),
    ("bos out of range", lambda r: with_kv(r, "tokenizer.ggml.bos_token_id", kv_u32("tokenizer.ggml.bos_token_id", 32)),
     "tokenizer.ggml.bos_token_id = 32 is out of range"),
    ("eos 2^32-1", lambda r: with_kv(r, "tokenizer.ggml.eos_token_id", kv_u32(
        "tokenizer.ggml.eos_token_id", 2**32 - 1)),
     "tokenizer.ggml.eos_token_id = 4294967295"),
    ("byte token <0x-1>", lambda r: _byte_token(r, "<0x-1>"), "is not of the form <0xNN>"),
]


def _deep(levels: int) -> bytes:
    """An array nested `levels` deep around an empty uint8 array."""
    payload = array_payload(U.UINT8, [])
    for _ in range(levels):
        payload = array_payload(U.ARRAY, [payload])
    return payload


def _vector(name: str, n: int) -> RawTensor:
    return RawTensor(name, [n], Q.F32, bytes(4 * n))


def _byte_token(raw: RawGGUF, piece: str) -> RawGGUF:
    """Token 31 typed BYTE (6) but spelled `piece` (llama.cpp once wrote before its byte table with <0x-1>)."""
    pieces, _, types = make_vocab(32)
    pieces[31], types[31] = piece, 6
    raw = with_kv(raw, "tokenizer.ggml.tokens", kv_array("tokenizer.ggml.tokens", U.STRING, [gstr(p) for p in pieces]))
    return with_kv(raw, "tokenizer.ggml.token_type", kv_array(
        "tokenizer.ggml.token_type", U.INT32, [struct.pack("<i", t) for t in types]))


def _corrupt_bytes(raw: RawGGUF, corrupt: Callable[[RawGGUF], RawGGUF | bytes]) -> bytes:
    out = corrupt(raw)
    return out if isinstance(out, bytes) else out.build()


def test_the_raw_builder_makes_valid_files(tmp_path: Path, raw: RawGGUF) -> None:
    """The handcrafted file, uncorrupted, is valid for both readers: the corruptions are the only fault."""
    path = raw.write(tmp_path / "ok.gguf")
    spec = read_model(path)
    assert spec.config.vocab_size == 32 and spec.tokenizer.vocab_size == 32
    assert len(gguf.GGUFReader(path).tensors) == len(raw.tensors)


@pytest.mark.parametrize("name, corrupt, message", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_file_is_refused(tmp_path: Path, raw: RawGGUF, name: str,
                                 corrupt: Callable[[RawGGUF], RawGGUF | bytes], message: str) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(_corrupt_bytes(raw, corrupt))
    with pytest.raises(ModelFormatError) as info:
        load_gguf(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_corrupt_suite_is_memory_bounded(tmp_path: Path, raw: RawGGUF) -> None:
    """No parse of a corrupt file allocates more than the file's size plus a small constant (tracemalloc sees
    numpy's allocations too). How long the suite takes is measured by benchmarks/bench_formats.py."""
    files = []
    for i, (_, corrupt, _) in enumerate(CORRUPTIONS):
        path = tmp_path / f"bad{i}.gguf"
        path.write_bytes(_corrupt_bytes(raw, corrupt))
        files.append(path)
    worst = 0
    for path in files:
        tracemalloc.start()
        try:
            with pytest.raises(ModelFormatError):
                load_gguf(path)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        worst = max(worst, peak - path.stat().st_size)
    assert worst < 512 << 10, f"a parse allocated {worst} bytes more than its file's size"


def test_truncated_anywhere(tmp_path: Path, raw: RawGGUF) -> None:
    """Cut through the header, every metadata entry, the tensor infos and the data: always refused."""
    data = raw.build()
    path = raw.write(tmp_path / "full.gguf")
    f = read_gguf(path)
    data_end = max(t.offset + t.nbytes for t in f.tensors.values())
    cuts = list(range(0, f.data_offset, 3)) + list(range(f.data_offset, data_end, 997)) + [data_end - 1]
    for cut in cuts:
        path.write_bytes(data[:cut])
        with pytest.raises(ModelFormatError):
            load_gguf(path)


def test_random_mutations_never_crash(tmp_path: Path, raw: RawGGUF) -> None:
    """Random byte, field and length changes in the header: llmrun loads the file or refuses it with
    ModelFormatError -- never another exception."""
    data = raw.build()
    header_end = read_gguf(raw.write(tmp_path / "ok.gguf")).data_offset
    rng = random.Random(7)
    path = tmp_path / "m.gguf"
    for _ in range(400):
        mutated = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(4, header_end)
            choice = rng.random()
            if choice < 0.5:
                mutated[at] = rng.randrange(256)
            elif choice < 0.8:
                value = rng.choice([0, 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1, rng.randrange(2**64)])
                mutated[at:at + 8] = struct.pack("<Q", value)
            else:
                del mutated[at:at + rng.randint(1, 16)]
        path.write_bytes(bytes(mutated))
        try:
            load_gguf(path)
        except ModelFormatError:
            pass


def test_big_valid_metadata_costs_no_more_than_the_file(tmp_path: Path, raw: RawGGUF) -> None:
    """A file whose metadata is 200,000 tiny strings: parsing keeps 8 bytes per string, not a Python object."""
    big = dataclasses.replace(raw, kvs=raw.kvs + [kv_array("x.strings", U.STRING, [gstr("ab")] * 200_000)])
    path = big.write(tmp_path / "big.gguf")
    tracemalloc.start()
    try:
        f = read_gguf(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(f.metadata["x.strings"]) == 200_000 and f.metadata["x.strings"][199_999] == "ab"
    assert peak < path.stat().st_size + (256 << 10)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    empty = tmp_path / "e.gguf"
    empty.write_bytes(b"GGUF")
    with pytest.raises(ModelFormatError, match="truncated GGUF file: 4 bytes"):
        read_model(empty)
    with pytest.raises(ModelFormatError, match="no such"):
        read_model(tmp_path / "nothing.gguf")


def test_header_fields_are_named(tmp_path: Path) -> None:
    data = b"GGUF" + u32(3) + u64(0) + u64(1) + gstr("k") + u32(U.STRING) + gstr("v", 5)
    path = tmp_path / "m.gguf"
    path.write_bytes(data)
    with pytest.raises(ModelFormatError, match=r"metadata 'k' at offset \d+ needs 5 bytes, only 1 remain"):
        read_gguf(path)
    path.write_bytes(_edit(4, u32(2))(data))
    with pytest.raises(ModelFormatError, match="metadata 'k'"):
        read_gguf(path)


def test_spec_from_tensors_matches_gguf(tmp_path: Path, weights: dict[str, np.ndarray]) -> None:
    """The GGUF reader's ModelSpec computes what an in-memory spec of the same weights computes."""
    write_llama_gguf(tmp_path / "m.gguf", CFG, weights)
    spec = read_model(tmp_path / "m.gguf")
    memory = spec_from_tensors(spec.config, weights)
    assert np.array_equal(_logits(spec, TOKENS), _logits(memory, TOKENS))



def test_small_file_with_a_huge_attention_is_refused(tmp_path: Path) -> None:
    """dim 2 with 4 heads of 4096 (a 16.8 MB file asked for 33 GB of KV cache at load): refused while reading,
    naming the shape, before any memory is reserved."""
    cfg = dataclasses.replace(CFG, dim=2, hidden_dim=2, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=4096)
    write_llama_gguf(tmp_path / "m.gguf", cfg, random_tensors(cfg, seed=1), "f16")
    with pytest.raises(ModelFormatError, match="head_dim = 4096 is larger than 1024") as info:
        llmrun.load(tmp_path / "m.gguf")
    assert str(tmp_path / "m.gguf") in str(info.value)
    cfg = dataclasses.replace(cfg, n_heads=64, n_kv_heads=64, head_dim=8)
    write_llama_gguf(tmp_path / "w.gguf", cfg, random_tensors(cfg, seed=1), "f16")
    with pytest.raises(ModelFormatError, match="64 heads x 8 = 512 query dimensions, more than 16 times the model"
                                               " width 2"):
        read_model(tmp_path / "w.gguf")
