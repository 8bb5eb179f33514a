"""Quantization: ggml-exact quantizers, the GGUF writer, `llmrun quantize`, and llama2.c version 2 files.

The oracle for the quantizers is the official `gguf` package (ggml's own Python port of its reference C
quantizers); for the written files, `gguf.GGUFReader` and, where installed, llama.cpp itself."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest
from gguf_fixtures import write_llama_gguf as write_gguf_source

import llmrun
from builders import make_config, random_tensors, spec_from_tensors, write_model
from llmrun import quantize as q
from llmrun._library import ffi, lib
from llmrun.cli import main as cli_main
from llmrun.errors import ModelFormatError
from llmrun.formats import read_model
from llmrun.formats.gguf_writer import Metadata, TensorPlan, ValueType, write_gguf
from llmrun.formats.gguf_writer import write_model as write_gguf_model
from llmrun.formats.llama2c import quantize_q80_export, write_llama2c
from llmrun.presets import ModelShape, find_preset, more_bits_layer, tensor_type
from llmrun.spec import ModelConfig, Tensor
from reference import forward as reference_forward

GT = gguf.GGMLQuantizationType
GGUF_TYPES = {"f32": GT.F32, "f16": GT.F16, "bf16": GT.BF16, "q8_0": GT.Q8_0, "q4_0": GT.Q4_0, "q4_1": GT.Q4_1,
              "q5_0": GT.Q5_0, "q5_1": GT.Q5_1}
QUANT_TYPES = ["f16", "bf16", "q8_0", "q4_0"]
GGUF_QUANTIZES = [*QUANT_TYPES, "q4_1", "q5_0", "q5_1"]  # the types gguf.quants.quantize implements
GOLDEN = json.loads((Path(__file__).parent / "data" / "llama2c_greedy.json").read_text())
STORY_START = ", there was a little girl named Lily."


# --- the quantizers against gguf's --------------------------------------------------------------------

def hard_rows() -> np.ndarray:
    """Rows of 4 blocks each, chosen to hit the quantizers' edge cases."""
    rng = np.random.default_rng(7)
    normal = rng.standard_normal((8, 128)).astype(np.float32)
    rows = [
        np.zeros(128),  # d = 0: reciprocal 0, all q = 0
        np.full(128, 0.37), np.full(128, -2.5),  # all-equal blocks, positive and negative maxima
        # tiny values: the fp16 scale underflows to zero (smaller ones, whose scale has no finite float32
        # reciprocal, are undefined behaviour in ggml's C code)
        normal[:2] * 1e-30, normal[:2] * 1e-36, normal[:2] * 1e-6,
        normal[:2] * 1e30,  # huge values: the fp16 scale overflows to inf
        -np.abs(normal[0]), np.abs(normal[1]),  # a block's maximum magnitude is negative / positive
        np.tile(np.arange(-16, 16) * 0.5, 4),  # values landing exactly on .5 after scaling (ties)
        np.tile(np.r_[-127.0, np.arange(-63, 64) * 1.0][:32], 4),  # exact integers
        np.tile(np.r_[3.0, -3.0, np.zeros(30)], 4),  # equal magnitudes of both signs: the first one wins
        normal[2] * np.repeat([1e-3, 1.0, 1e3, 1e-5], 32),  # blocks of very different scales
    ]
    return np.vstack([np.asarray(r, dtype=np.float32) for r in rows] + [normal])


@pytest.mark.parametrize("type", GGUF_QUANTIZES)
def test_quantize_is_bit_exact_with_gguf(type: str) -> None:
    rng = np.random.default_rng(1)
    for x in (hard_rows(), rng.standard_normal((64, 256)).astype(np.float32) * 0.02):
        ours = q.quantize(x, type)
        with np.errstate(over="ignore", invalid="ignore"):  # gguf warns about the fp16 scales that overflow
            theirs = gguf.quants.quantize(x, GGUF_TYPES[type])
        assert ours.tobytes() == theirs.tobytes()


@pytest.mark.parametrize("type", ["f16", "bf16"])
def test_float_conversions_of_specials(type: str) -> None:
    bits = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7F7FFFFF, 0x00000001,
                     0x80000000, 0x3F808000, 0x3F818000, 0x477FF000], dtype=np.uint32)  # inf, NaNs, ties ...
    x = bits.view(np.float32)
    with np.errstate(over="ignore"):
        assert q.quantize(x, type).tobytes() == gguf.quants.quantize(x, GGUF_TYPES[type]).tobytes()
    if type == "bf16":  # NaNs stay NaN (quiet), never become inf
        out = q.f32_to_bf16(x)
        assert np.isnan(q.bf16_to_f32(out[2:5])).all()
        assert list(out[8:10]) == [0x3F80, 0x3F82]  # ties to even


@pytest.mark.parametrize("type", QUANT_TYPES)
def test_dequantize_is_bit_exact_with_gguf(type: str) -> None:
    data = q.quantize(hard_rows(), type)
    with np.errstate(invalid="ignore", over="ignore"):  # inf scales times zero values: NaN, as in ggml
        theirs = gguf.quants.dequantize(data.view(np.uint8), GGUF_TYPES[type])  # gguf takes raw bytes
        ours = q.dequantize(data, type)
    assert ours.dtype == np.float32 and ours.shape == hard_rows().shape
    assert ours.tobytes() == np.asarray(theirs, dtype=np.float32).tobytes()


def test_round_trips() -> None:
    x = np.random.default_rng(2).standard_normal((32, 128)).astype(np.float32)
    for type in ("f16", "bf16", "q8_0"):  # quantizing dequantized values gives the same storage back
        stored = q.quantize(x, type)
        assert q.quantize(q.dequantize(stored, type), type).tobytes() == stored.tobytes(), type
    # errors within half a quantization step of each block (a whole one for Q4_0 values near the opposite
    # extreme of the block's maximum: q = 16 is clipped to 15), plus the fp16 rounding of the step (2**-11
    # relative, times at most 127 or 8 steps)
    amax = np.abs(x.reshape(-1, 32)).max(axis=1, keepdims=True)
    err8 = np.abs(q.dequantize(q.quantize(x, "q8_0"), "q8_0") - x).reshape(-1, 32)
    err4 = np.abs(q.dequantize(q.quantize(x, "q4_0"), "q4_0") - x).reshape(-1, 32)
    assert (err8 <= amax / 127 * (0.5 + 127 / 2048)).all()
    assert (err4 <= amax / 8 * (1 + 8 / 2048)).all()


def test_block_quantizer_refuses_bad_arguments() -> None:
    """llm_quantize: float and unknown types, rows that are not whole blocks, negative counts, NULL buffers."""
    x = np.zeros((2, 256), np.float32)
    out = np.zeros(2 * 256, np.uint8)
    xp, op = ffi.from_buffer("float[]", x), ffi.from_buffer(out)
    assert lib.llm_quantize(lib.LLM_Q4_K, xp, 2, 256, op) == 0
    bad = [(lib.LLM_F32, 2, 256), (lib.LLM_F16, 2, 256), (lib.LLM_TYPE_COUNT, 2, 256), (-1, 2, 256),
           (lib.LLM_Q4_K, 2, 128), (lib.LLM_Q8_0, 2, 48), (lib.LLM_Q8_0, -1, 256), (lib.LLM_Q8_0, 2, 0)]
    for type, rows, cols in bad:
        assert lib.llm_quantize(type, xp, rows, cols, op) == lib.LLM_ERR_INVALID, (type, rows, cols)
    assert lib.llm_quantize(lib.LLM_Q8_0, ffi.NULL, 2, 256, op) == lib.LLM_ERR_INVALID
    assert lib.llm_quantize(lib.LLM_Q8_0, xp, 2, 256, ffi.NULL) == lib.LLM_ERR_INVALID
    with pytest.raises(ValueError, match="row length 100 is not a multiple of the q6_k block size 256"):
        q.quantize(np.zeros((1, 100), np.float32), "q6_k")


@pytest.mark.parametrize("type", ["q4_k", "iq4_xs", "q5_0"])
def test_threads_split_rows_without_changing_bytes(type: str) -> None:
    """Large inputs are quantized by several threads, each a run of rows: the bytes are those of one call."""
    x = np.random.default_rng(4).standard_normal((600, 512)).astype(np.float32)
    assert x.size > 2 * q.THREAD_VALUES
    whole = q.quantize(x, type)
    rows = np.concatenate([q.quantize(x[i:i + 7], type) for i in range(0, 600, 7)])
    assert whole.tobytes() == rows.tobytes()


@pytest.mark.parametrize("type", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_nl", "iq4_xs"])
def test_new_types_read_back_close(type: str) -> None:
    """The K-quants and IQ4 read back (gguf's dequantizer) within their resolution: the RMS error relative to
    the values' RMS stays below the error of rounding to 2^bits levels spread over +-3 sigma, times 1.5 for the
    coarse 4- and 6-bit scales. A scrambled layout (values in the wrong place) gives errors of about 1.4."""
    x = np.random.default_rng(5).standard_normal((16, 512)).astype(np.float32)
    data = q.quantize(x, type)
    back = gguf.quants.dequantize(data, gguf.GGMLQuantizationType[type.upper()]).reshape(x.shape)
    bits = {"q2_k": 2, "q3_k": 3, "q4_k": 4, "q5_k": 5, "q6_k": 6, "iq4_nl": 4, "iq4_xs": 4}[type]
    step = 6 / 2**bits  # in sigmas
    rel_rms = np.sqrt(np.mean((back - x) ** 2) / np.mean(x**2))
    assert rel_rms <= 1.5 * step / np.sqrt(12), rel_rms


def test_convert_rows_chunks_and_pass_through() -> None:
    x = np.random.default_rng(3).standard_normal((50, 64)).astype(np.float32)
    whole = q.quantize(x, "q4_0")
    chunks = list(q.convert_rows(Tensor(x), "q4_0", chunk_values=64 * 7))
    assert len(chunks) == 8 and np.concatenate(chunks).tobytes() == whole.tobytes()
    same = list(q.convert_rows(Tensor(whole, "q4_0"), "q4_0"))
    assert np.shares_memory(same[0], whole)  # already the wanted type: no requantization
    # from a block type to another: dequantize, then quantize
    assert np.concatenate(list(q.convert_rows(Tensor(whole, "q4_0"), "f16"))).tobytes() == \
        q.dequantize(whole, "q4_0").astype(np.float16).tobytes()
    with pytest.raises(ValueError, match="cannot be stored as q8_0"):
        list(q.convert_rows(Tensor(np.zeros((2, 48), np.float32)), "q8_0"))


# --- the GGUF writer ------------------------------------------------------------------------------------

def test_writer_metadata_of_every_type_reads_back(tmp_path: Path) -> None:
    V = ValueType
    items = [
        Metadata("u8", V.UINT8, 255), Metadata("i8", V.INT8, -128), Metadata("u16", V.UINT16, 65535),
        Metadata("i16", V.INT16, -32768), Metadata("u32", V.UINT32, 4_000_000_000), Metadata("i32", V.INT32, -7),
        Metadata("f32", V.FLOAT32, 0.25), Metadata("bool", V.BOOL, True), Metadata("str", V.STRING, "héllo ▁"),
        Metadata("u64", V.UINT64, 2**63 + 5), Metadata("i64", V.INT64, -(2**40)), Metadata("f64", V.FLOAT64, 1e-300),
        Metadata("strs", V.ARRAY, ["a", "", "▁b"], V.STRING), Metadata("ints", V.ARRAY, [1, -2, 3], V.INT32),
        Metadata("bools", V.ARRAY, [True, False], V.BOOL), Metadata("empty", V.ARRAY, [], V.FLOAT32),
    ]
    data = np.arange(96, dtype=np.float32).reshape(3, 32)
    plans = [TensorPlan("a", Tensor(data), "q8_0", is_vector=False), TensorPlan("b", Tensor(data[0]), "f32", True)]
    size = write_gguf(tmp_path / "m.gguf", items, plans)
    assert size == (tmp_path / "m.gguf").stat().st_size
    r = gguf.GGUFReader(tmp_path / "m.gguf")
    for item in items:
        got = r.fields[item.key].contents()
        assert got == pytest.approx(item.value) if item.type == V.FLOAT32 else got == item.value, item.key
    a, b = r.tensors
    assert (a.name, a.tensor_type, list(a.shape), a.data_offset % 32) == ("a", GT.Q8_0, [32, 3], 0)
    assert np.asarray(a.data).tobytes() == q.quantize(data, "q8_0").tobytes()
    assert (b.name, b.tensor_type, list(b.shape)) == ("b", GT.F32, [32]) and np.array_equal(b.data, data[0])
    with pytest.raises(ValueError, match="does not fit UINT8"):
        write_gguf(tmp_path / "bad.gguf", [Metadata("x", V.UINT8, 256)], [])
    assert not (tmp_path / "bad.gguf").exists() and not list(tmp_path.glob(".bad*"))  # no partial file left


def test_halves_rope_is_written_interleaved(tmp_path: Path) -> None:
    """GGUF `llama` rotates adjacent pairs: a Hugging Face-style (halves) model must have its Q/K rows
    reordered so that the file computes the same function."""
    cfg = make_config(rope_style="halves", hidden_dim=64)
    t = random_tensors(cfg, seed=4)
    write_gguf_model(tmp_path / "h.gguf", spec_from_tensors(cfg, t), "f32")
    r = {x.name: np.asarray(x.data) for x in gguf.GGUFReader(tmp_path / "h.gguf").tensors}
    back = dict(t)
    for ours, theirs in (("wq", "attn_q"), ("wk", "attn_k")):
        back[ours] = np.stack([r[f"blk.{i}.{theirs}.weight"] for i in range(cfg.n_layers)])
    assert not np.array_equal(back["wq"], t["wq"])
    interleaved = make_config(rope_style="interleaved", hidden_dim=64)
    tokens = [1, 5, 9, 2, 7, 30]
    np.testing.assert_allclose(reference_forward(interleaved, back, tokens), reference_forward(cfg, t, tokens),
                               rtol=1e-9, atol=1e-9)


# --- llmrun quantize ------------------------------------------------------------------------------------

def run_cli(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str]:
    rc = cli_main([str(a) for a in args])
    return rc, capsys.readouterr().err


def generate(path: Path, prompt: str, n: int, **kwargs: object) -> str:
    with llmrun.load(path, n_threads=1, **kwargs) as model:
        return model.generate(prompt, max_tokens=n, temperature=0)


@pytest.fixture(scope="module")
def stories_outputs(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("quantized")
    paths = {}
    for type in QUANT_TYPES:
        paths[type] = out / f"stories260K-{type}.gguf"
        assert cli_main(["quantize", str(models_dir / "stories260K.bin"), str(paths[type]), "--type", type,
                         "-z", str(models_dir / "tok512.bin")]) == 0
    return paths


@pytest.mark.parametrize("type", QUANT_TYPES)
def test_quantized_stories_reads_in_gguf(stories_outputs: dict[str, Path], models_dir: Path, type: str) -> None:
    r = gguf.GGUFReader(stories_outputs[type])
    tensors = {t.name: t for t in r.tensors}
    assert len(tensors) == 47  # tied classifier: no output.weight
    for name, t in tensors.items():
        want = "f32" if "norm" in name else "f16" if "ffn_down" in name and type in ("q8_0", "q4_0") else type
        if name == "token_embd.weight" and type == "q4_0":  # the tied classifier: llama.cpp's Q6_K, which
            want = "q8_0"  # falls back to Q8_0 for rows of 64 values
        assert t.tensor_type == GGUF_TYPES[want], name
    assert list(tensors["token_embd.weight"].shape) == [64, 512]
    assert list(tensors["blk.0.ffn_down.weight"].shape) == [172, 64]
    assert list(tensors["blk.4.attn_k.weight"].shape) == [64, 32]
    f = {k: v.contents() for k, v in r.fields.items() if not k.startswith("GGUF.")}
    assert f["general.architecture"] == "llama" and f["llama.block_count"] == 5
    assert f["llama.attention.head_count_kv"] == 4 and f["llama.feed_forward_length"] == 172
    assert f["tokenizer.ggml.model"] == "llama" and f["tokenizer.ggml.bos_token_id"] == 1
    assert f["tokenizer.ggml.tokens"][:4] == ["<unk>", "<s>", "</s>", "<0x00>"]
    assert f["tokenizer.ggml.token_type"][:4] == [2, 3, 3, 6]
    assert "\u2581" in "".join(f["tokenizer.ggml.tokens"]) and f["tokenizer.ggml.add_bos_token"] is True
    # the same bytes as llama.cpp's llama-quantize made from the same weights
    reference = models_dir / f"stories260K-{type}.gguf"
    if reference.exists():
        theirs = {t.name: t for t in gguf.GGUFReader(reference).tensors}
        same = [n for n in theirs if np.asarray(theirs[n].data).tobytes() == np.asarray(tensors[n].data).tobytes()]
        assert sorted(set(theirs) - set(same)) == []


@pytest.mark.parametrize("type", QUANT_TYPES)
def test_quantized_stories_generates(stories_outputs: dict[str, Path], type: str) -> None:
    text = generate(stories_outputs[type], "Once upon a time", 12)
    assert text.startswith(STORY_START)


def test_quantize_reports_each_tensor(capsys: pytest.CaptureFixture, models_dir: Path, tmp_path: Path) -> None:
    rc, err = run_cli(capsys, "quantize", models_dir / "stories260K.bin", tmp_path / "o.gguf", "--type", "q4_0")
    lines = err.splitlines()
    assert rc == 0
    assert "warning: the output will have no vocabulary" in lines[0]  # tok512.bin is not beside it
    assert len(lines) == 1 + 47 + 1
    assert "blk.0.ffn_down.weight" in lines[9] and "f32 -> f16" in lines[9]
    assert lines[-1].startswith(f"wrote {tmp_path / 'o.gguf'}: 47 tensors") and "x smaller" in lines[-1]
    rc, err = run_cli(capsys, "quantize", tmp_path / "o.gguf", tmp_path / "o8.gguf", "--type", "q8_0")
    assert rc == 0 and "already q4_0" in err  # requantizing is allowed, with a warning
    rc, err = run_cli(capsys, "quantize", tmp_path / "missing.bin", tmp_path / "x.gguf", "--type", "q8_0")
    assert rc == 1 and err.startswith("llmrun: error:") and "no such model file" in err
    with pytest.raises(SystemExit):
        cli_main(["quantize", str(models_dir / "stories260K.bin"), str(tmp_path / "x.gguf"), "--type", "q7_k"])


@pytest.mark.parametrize("type", QUANT_TYPES)
def test_quantize_random_llama2c_model(capsys: pytest.CaptureFixture, tmp_path: Path, type: str) -> None:
    """An untied classifier, grouped-query attention and 172 hidden columns (f16 fallback for ffn_down);
    the written file computes what the f32 model computes, within the type's precision."""
    cfg = make_config()
    t = random_tensors(cfg, seed=9, tied=False)
    src = write_model(tmp_path / "m.bin", cfg, t, version=1)
    rc, _ = run_cli(capsys, "quantize", src, tmp_path / "m.gguf", "--type", type)
    assert rc == 0
    tensors = {x.name: x for x in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    # the classifier: llama.cpp's Q6_K for Q4_0 falls back to Q8_0 for rows of 64 values
    assert tensors["output.weight"].tensor_type == GGUF_TYPES["q8_0" if type == "q4_0" else type]
    assert list(tensors["output.weight"].shape) == [cfg.dim, cfg.vocab_size]
    for name, ours in (("attn_q", "wq"), ("ffn_down", "w_down"), ("ffn_gate", "w_gate")):
        x = tensors[f"blk.1.{name}.weight"]
        values = gguf.quants.dequantize(np.asarray(x.data), x.tensor_type).reshape(t[ours][1].shape)
        step = {"f16": 1e-3, "bf16": 8e-3, "q8_0": 1e-2, "q4_0": 0.15}[type]
        assert np.max(np.abs(values - t[ours][1])) <= step * np.max(np.abs(t[ours][1]))
    tokens = [1, 5, 9, 2, 7, 30, 31]
    with llmrun.load(tmp_path / "m.gguf", n_threads=1) as model:
        got = model.logits(tokens)
    want = reference_forward(cfg, t, tokens)
    tolerance = {"f16": 0.003, "bf16": 0.02, "q8_0": 0.05, "q4_0": 0.3}[type]  # measured: 5e-4, 5e-3, 0.018, 0.2
    assert np.max(np.abs(got - want)) <= tolerance * np.max(np.abs(want))


def test_gguf_input_keeps_its_metadata(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """Requantizing a GGUF keeps every key the writer does not write itself, with its value type (llama.cpp
    checks types), including a vocabulary llmrun cannot run (here "gpt2" with merges) and a chat template;
    what described the old tensor data (file type, alignment) is replaced."""
    U = gguf.GGUFValueType
    cfg = make_config(hidden_dim=64)
    extra = {"tokenizer.chat_template": ("{{ messages }}", U.STRING),
             "tokenizer.ggml.merges": (["a b", "\u0120 t"], U.ARRAY), "tokenizer.ggml.eot_token_id": (2, U.UINT32),
             "general.license": ("mit", U.STRING), "test.i16": (-3, U.INT16), "test.f64": (0.1, U.FLOAT64),
             "test.bools": ([True, False, True], U.ARRAY), "test.ints": ([5, -6], U.ARRAY)}
    write_gguf_source(tmp_path / "in.gguf", cfg, random_tensors(cfg, seed=2), "f16", alignment=64,
                      extra_kv=extra, tokenizer_model="gpt2")
    rc, _ = run_cli(capsys, "quantize", tmp_path / "in.gguf", tmp_path / "out.gguf", "--type", "q8_0")
    assert rc == 0
    before, after = (gguf.GGUFReader(tmp_path / n).fields for n in ("in.gguf", "out.gguf"))
    replaced = {"GGUF.kv_count", "general.file_type", "general.alignment", "general.quantization_version"}
    for key in set(before) - replaced:
        assert after[key].types == before[key].types, key
        assert after[key].contents() == before[key].contents(), key
    assert "general.alignment" not in after and after["general.file_type"].contents() == 7
    assert read_model(tmp_path / "out.gguf").metadata["tokenizer.chat_template"] == "{{ messages }}"


# --- llama2.c version 2 ---------------------------------------------------------------------------------

CFG = make_config(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=48, max_seq_len=32)


def write_v2(path: Path, cfg: ModelConfig, t: dict[str, np.ndarray], group_size: int) -> Path:
    write_llama2c(path, cfg, t, version=2, group_size=group_size)
    return path


@pytest.mark.parametrize("group_size", [32, 64])
@pytest.mark.parametrize("tied", [True, False])
def test_v2_with_whole_blocks_loads_as_q8_0(tmp_path: Path, group_size: int, tied: bool) -> None:
    """Groups of 32k values: every block keeps the file's int8 values, with its group's scale in fp16."""
    t = random_tensors(CFG, seed=3, tied=tied)
    spec = read_model(write_v2(tmp_path / "m.bin", CFG, t, group_size))
    assert spec.format == "llama2.c v2" and spec.group_size == group_size and spec.config == CFG
    assert spec.dtype == "q8_0" and (spec.output is None) == tied
    assert spec.layers[0].attn_norm.type == "f32" and np.array_equal(spec.layers[1].ffn_norm.data, t["ffn_norm"][1])
    for tensor, original in ((spec.token_embd, t["token_embd"]), (spec.layers[1].w_down, t["w_down"][1]),
                             (spec.layers[0].wk, t["wk"][0])):
        qv, scales = quantize_q80_export(original, group_size)
        blocks = tensor.data.reshape(-1, 34)
        assert np.array_equal(blocks[:, 2:].view(np.int8).ravel(), qv.ravel())
        assert np.array_equal(blocks[:, :2].copy().view(np.float16).ravel(),
                              np.repeat(scales.astype(np.float16), group_size // 32))
    tokens = [1, 5, 9, 2, 7]
    with llmrun.load(tmp_path / "m.bin", n_threads=1) as model:
        got = model.logits(tokens)
    want = reference_forward(CFG, t, tokens)
    assert np.max(np.abs(got - want)) <= 0.05 * np.max(np.abs(want))


def test_v2_small_groups_and_tiny_scales_dequantize_to_f32(tmp_path: Path) -> None:
    t = random_tensors(CFG, seed=4)
    spec = read_model(write_v2(tmp_path / "g16.bin", CFG, t, 16))
    assert spec.dtype == "f32"
    qv, scales = quantize_q80_export(t["wq"][1], 16)
    assert np.array_equal(spec.layers[1].wq.data, (qv.astype(np.float32) * scales[:, None]).reshape(64, 64))
    t["wv"] = t["wv"] * np.float32(1e-6)  # scales below fp16's normal range: kept exact in f32
    spec = read_model(write_v2(tmp_path / "tiny.bin", CFG, t, 32))
    assert spec.layers[0].wv.type == "f32" and spec.layers[0].wq.type == "q8_0"


def v2_cases(good: bytes) -> dict[str, tuple[bytes, str]]:
    def with_group(gs: int) -> bytes:
        return good[:37] + struct.pack("<i", gs) + good[41:]
    return {
        "truncated header": (good[:200], "truncated header"),
        "group size 0": (with_group(0), "group_size = 0"),
        "negative group size": (with_group(-32), "group_size = -32"),
        "group size not dividing dim": (with_group(48), "group_size = 48"),
        "group size above dim": (with_group(128), "group_size = 128"),
        "one byte short": (good[:-1], "file size"),
        "one byte extra": (good + b"\0", "file size"),
        "bad shared flag": (good[:36] + b"\x02" + good[37:], "shared_classifier"),
    }


def test_v2_corrupt_headers(tmp_path: Path) -> None:
    good = write_v2(tmp_path / "good.bin", CFG, random_tensors(CFG, seed=1), 32).read_bytes()
    for name, (data, message) in v2_cases(good).items():
        path = tmp_path / f"{name.replace(' ', '_')}.bin"
        path.write_bytes(data)
        with pytest.raises(ModelFormatError) as info:
            read_model(path)
        assert str(path) in str(info.value) and message in str(info.value), f"{name}: {info.value}"
    path = tmp_path / "short.bin"
    path.write_bytes(good[:-1])
    with pytest.raises(ModelFormatError, match=rf"file size is {len(good) - 1} bytes .*group_size=32\) implies "
                                               rf"{len(good)} bytes"):
        read_model(path)


def test_v2_writer_reproduces_export_py(models_dir: Path, tmp_path: Path) -> None:
    """stories260K_q80.bin was made by llama2.c's export.py; our writer makes the same bytes from the fp32
    model, so the layout we read is the one export.py writes and runq.c reads."""
    spec = read_model(models_dir / "stories260K.bin")
    t = {"token_embd": spec.token_embd.data, "output_norm": spec.output_norm.data}
    for name in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_down", "w_up"):
        t[name] = np.stack([getattr(layer, name).data for layer in spec.layers])
    out = write_v2(tmp_path / "q80.bin", spec.config, t, 4)
    assert out.read_bytes() == (models_dir / "stories260K_q80.bin").read_bytes()


def test_stories260k_q80_loads_and_follows_runq(models_dir: Path) -> None:
    """group_size 4: dequantized to f32 (exactly runq.c's q * scale). runq.c also quantizes every
    activation vector to int8 in groups of 4 before each product; llmrun keeps activations in f32, so
    greedy decoding follows runq for a while and then may part: measured, 2 of the 8 recorded prompts
    give runq's output exactly, the others agree for their first 82 to 244 tokens."""
    spec = read_model(models_dir / "stories260K_q80.bin")
    assert spec.format == "llama2.c v2" and spec.group_size == 4 and spec.dtype == "f32"
    assert spec.output is None and spec.config.hidden_dim == 172
    fp32 = read_model(models_dir / "stories260K.bin")
    assert np.max(np.abs(spec.token_embd.data - fp32.token_embd.data)) < 0.005
    with llmrun.load(models_dir / "stories260K_q80.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as m:
        exact = 0
        for case in GOLDEN["runq"]["cases"]:
            gen = m.stream(case["prompt"], max_tokens=None, temperature=0)
            text = gen.text()
            assert gen.tokens[:64] == case["generated_tokens"][:64], case["prompt"]
            exact += case["prompt"] + text + "\n" == case["stdout"]
        assert exact >= 2


# --- presets --------------------------------------------------------------------------------------------

TINYLLAMA = ModelShape(n_layers=22, n_heads=32, n_kv_heads=4, tied=False)


def test_more_bits_layers_of_22() -> None:
    """llama.cpp's use_more_bits for TinyLlama's 22 layers, worked by hand: i < 22/8 = 2, i >= 7*22/8 = 19, or
    (i - 2) % 3 == 2."""
    assert [i for i in range(22) if more_bits_layer(i, 22)] == [0, 1, 4, 7, 10, 13, 16, 19, 20, 21]


@pytest.mark.parametrize("preset, name, cols, want", [
    ("Q4_K_M", "blk.4.attn_v.weight", 2048, "q6_k"), ("Q4_K_M", "blk.5.attn_v.weight", 2048, "q4_k"),
    ("Q4_K_M", "blk.21.ffn_down.weight", 5632, "q6_k"), ("Q4_K_M", "blk.18.ffn_down.weight", 5632, "q4_k"),
    ("Q4_K_M", "output.weight", 2048, "q6_k"), ("Q4_K_M", "token_embd.weight", 2048, "q4_k"),
    ("Q3_K_M", "blk.1.attn_v.weight", 2048, "q5_k"), ("Q3_K_M", "blk.2.attn_v.weight", 2048, "q4_k"),
    ("Q3_K_M", "blk.0.ffn_down.weight", 5632, "q5_k"), ("Q3_K_M", "blk.3.attn_output.weight", 2048, "q4_k"),
    ("Q3_K_S", "blk.3.attn_output.weight", 2048, "q3_k"), ("Q2_K", "blk.7.attn_v.weight", 2048, "q4_k"),
    ("Q2_K", "blk.7.ffn_down.weight", 5632, "q3_k"), ("IQ4_XS", "blk.9.attn_v.weight", 2048, "q5_k"),
    ("IQ4_XS", "blk.1.ffn_down.weight", 5632, "q5_k"), ("IQ4_XS", "blk.2.ffn_down.weight", 5632, "iq4_xs"),
    ("Q4_K_S", "blk.3.attn_v.weight", 2048, "q5_k"), ("Q4_K_S", "blk.4.attn_v.weight", 2048, "q4_k"),
    ("Q4_0", "output.weight", 2048, "q6_k"), ("Q8_0", "output.weight", 2048, "q8_0"),
    ("Q5_K_M", "blk.3.ffn_gate.weight", 64, "q5_1"), ("Q6_K", "blk.0.attn_q.weight", 96, "q8_0"),
    ("IQ4_XS", "blk.0.attn_q.weight", 96, "iq4_nl"), ("Q3_K_L", "blk.0.attn_q.weight", 96, "q4_0"),
    ("Q4_K_M", "blk.0.attn_q.weight", 100, "f16"), ("F16", "output.weight", 100, "f16"),
])
def test_preset_tensor_types(preset: str, name: str, cols: int, want: str) -> None:
    """llama.cpp's choices (llama_tensor_get_type) for TinyLlama's shape, worked by hand; the last rows are the
    fallbacks for rows that are not whole super-blocks (and not even whole 32-value blocks: f16)."""
    assert tensor_type(find_preset(preset), name, cols, TINYLLAMA) == want


def test_preset_70b_rule() -> None:
    """80 layers with grouped-query attention is llama.cpp's 70B: its attn_v gets Q5_K where Q3_K/Q4_K were due."""
    big = ModelShape(n_layers=80, n_heads=64, n_kv_heads=8, tied=False)
    assert tensor_type(find_preset("Q4_K_M"), "blk.11.attn_v.weight", 8192, big) == "q5_k"
    assert tensor_type(find_preset("Q4_K_M"), "blk.4.attn_v.weight", 8192, big) == "q6_k"


@pytest.mark.parametrize("type, message", [
    ("IQ2_XS", "IQ2_XS needs an importance matrix"), ("iq1_m", "IQ1_M needs an importance matrix"),
    ("Q2_K_S", "Q2_K_S needs an importance matrix"), ("IQ3_XXS", "IQ3_XXS needs an importance matrix"),
    ("IQ3_M", "unknown quantization type 'IQ3_M' (its IQ3_S blocks are not a type llmrun has)"),
    ("q9_9", "unknown quantization type"),
])
def test_quantize_refuses_other_presets(capsys: pytest.CaptureFixture, tmp_path: Path, type: str,
                                        message: str) -> None:
    with pytest.raises(SystemExit):
        cli_main(["quantize", str(tmp_path / "in.gguf"), str(tmp_path / "out.gguf"), "--type", type])
    err = capsys.readouterr().err
    assert message in err and "Q4_K_M" in err
    assert not (tmp_path / "out.gguf").exists()


def test_short_k_names_are_the_m_mixtures_as_in_llama_quantize() -> None:
    for short in ("Q3_K", "q4_k", "Q5_K"):
        assert find_preset(short) == find_preset(short.upper() + "_M")


def test_non_finite_weights_are_refused_by_name(tmp_path: Path) -> None:
    """ggml's quantizers turn inf and NaN into integers (undefined behaviour in C; garbage blocks at best):
    a weight that is not finite is an error naming the tensor, the row and the value, and no file is left."""
    cfg = make_config(dim=256, hidden_dim=512, n_layers=1, n_heads=4, n_kv_heads=2)
    t = random_tensors(cfg)
    t["wk"][0, 3, 17] = np.nan
    src = write_model(tmp_path / "m.bin", cfg, t)
    for type in ("Q4_K_M", "Q8_0"):
        with pytest.raises(ValueError, match=r"blk\.0\.attn_k\.weight: cannot quantize to \w+: row 3 holds nan"):
            write_gguf_model(tmp_path / "out.gguf", read_model(src), type)
        assert not (tmp_path / "out.gguf").exists()
    with pytest.raises(ValueError, match="row 1 holds inf at column 5"):
        q.quantize(np.where(np.arange(64).reshape(2, 32) == 37, np.inf, 1.0), "q4_1")


@pytest.mark.parametrize("native", ["0", "1"])
def test_portable_sources_never_fuse_multiply_add(monkeypatch: pytest.MonkeyPatch, native: str) -> None:
    """csrc/quantize.c is byte-identical to ggml only when a * b + c rounds twice: built with
    -ffp-contract=fast -march=native, 17 of the 36 golden cases of test_quantize_golden.py fail (checked by hand).
    The flag must hold for the portable sources in every build, the native one included."""
    import build_kernel
    monkeypatch.setenv("LLMRUN_NATIVE", native)
    flags = build_kernel.portable_compile_args()
    assert "-ffp-contract=off" in flags and ("-march=native" in flags) == (native == "1")
    assert "quantize.c" in " ".join(build_kernel.portable_sources())
