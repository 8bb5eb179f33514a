"""Embeddings (issue 15, item 1): the C library's final hidden states (llm_forward_hidden) against the numpy
oracle; Model.embed against transformers' `last_hidden_state` pooled mean / last / cls on two committed tiny
fixtures of different families (tests/data/embeddings, written by tests/make_embedding_fixtures.py); batches
equal one text at a time; the pooling defaults (GGUF `<arch>.pooling_type`, a sentence-transformers folder's
pooling module, else mean); hostile inputs; POST /v1/embeddings through the official openai client; llama.cpp's
embeddings of the GGUF files llmrun writes (recorded in tests/data/llama_cpp/embeddings.* by
tests/make_llama_cpp_embeddings.py, and live where llama-cpp-python is installed).

Tolerance: 1e-4 max abs difference against transformers' float32 states (their scale is ~5; measured: up to
2.4e-5 on gemma3, 2e-6 on llama3-gqa), as tests/test_families.py for logits; 1e-4 of the scale against the
float64 oracle, as tests/test_forward.py.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import llmrun
from builders import make_config, random_tensors, spec_from_tensors
from hf_builders import HF, copy_fixture
from llmrun import ContextOverflowError, InvalidArgumentError, ModelFormatError
from llmrun.engine import Engine, available_isas, ffi, lib
from llmrun.formats import read_model
from llmrun.formats.gguf_writer import (
    Metadata,
    ValueType,
    gguf_architecture,
    model_metadata,
    plan_tensors,
    sentencepiece_from_bpe,
    write_gguf,
)
from llmrun.model import _packs
from reference import forward as reference_forward

DATA = Path(__file__).resolve().parent / "data" / "embeddings"
GOLDEN = Path(__file__).resolve().parent / "data" / "llama_cpp"
FAMILIES = ("llama3-gqa", "gemma3")
POOLED = ("mean", "last", "cls")
TOLERANCE = 1e-4
RTOL = 1e-4


def fixture(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


def expected(name: str, pooling: str) -> np.ndarray:
    return np.load(DATA / f"{name}_{pooling}.npy")


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> tuple[str, llmrun.Model]:
    with llmrun.load(HF / request.param, n_threads=2) as model:
        yield request.param, model


# --- the C library ---------------------------------------------------------------------------------------

def family_model(seed: int = 3) -> tuple:
    """A random model with Gemma's options (norms after the blocks, QK-norm, a window, soft-caps, scales) on
    which the hidden states must not see the classifier's options (logit_scale, final_softcap)."""
    from dataclasses import replace
    cfg = replace(make_config(dim=48, hidden_dim=80, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, vocab_size=64,
                              max_seq_len=64, rope_style="halves"),
                  embed_scale=3.0, attn_softcap=20.0, final_softcap=2.0, logit_scale=0.5, layer_windows=(0, 5, 0))
    t = random_tensors(cfg, seed=seed, tied=False)
    rng = np.random.default_rng(seed)
    for name, width in (("q_norm", cfg.head_dim), ("k_norm", cfg.head_dim), ("attn_post_norm", cfg.dim),
                        ("ffn_post_norm", cfg.dim)):
        t[name] = (1 + 0.5 * rng.standard_normal((cfg.n_layers, width))).astype(np.float32)
    return cfg, t


MODELS = {
    "gqa-tied": lambda: (make_config(dim=64, hidden_dim=172, n_heads=8, n_kv_heads=4, vocab_size=96),
                         random_tensors(make_config(dim=64, hidden_dim=172, n_heads=8, n_kv_heads=4, vocab_size=96),
                                        seed=1)),
    "odd-dims": lambda: (make_config(dim=37, hidden_dim=51, n_layers=2, n_heads=3, n_kv_heads=1, head_dim=10,
                                     vocab_size=29), random_tensors(make_config(
                                         dim=37, hidden_dim=51, n_layers=2, n_heads=3, n_kv_heads=1, head_dim=10,
                                         vocab_size=29), seed=2)),
    "gemma-options": family_model,
}


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = RTOL) -> None:
    err = np.max(np.abs(got - want)) / np.max(np.abs(want))
    assert err <= rtol, f"max abs error is {err:.2e} of the states' scale (allowed {rtol:.0e})"


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("n_batch", [64, 7])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_hidden_states_match_the_oracle(name: str, n_batch: int, isa: str) -> None:
    cfg, t = MODELS[name]()
    tokens = [int(i) for i in np.random.default_rng(4).integers(0, cfg.vocab_size, size=20)]
    want = reference_forward(cfg, t, tokens, hidden=True)
    assert want.shape == (20, cfg.dim)
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=32, n_threads=2, isa=isa, n_batch=n_batch)
    got = engine.hidden(tokens)
    assert got.shape == (20, cfg.dim) and got.dtype == np.float32
    assert_close(got, want)
    # the cache holds the text afterwards: decoding on from it gives the oracle's logits
    assert engine.cached_tokens == tokens
    assert engine.reusable_prefix(tokens + [1]) == 20
    assert_close(engine.evaluate(tokens + [1]), reference_forward(cfg, t, tokens + [1])[-1])
    # a second text starts over at position 0, whatever the cache held
    assert_close(engine.hidden(tokens[5:]), reference_forward(cfg, t, tokens[5:], hidden=True))
    engine.close()


def test_hidden_states_are_what_the_classifier_reads() -> None:
    cfg, t = MODELS["gqa-tied"]()
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=16, n_threads=1)
    states = engine.hidden(tokens)
    logits = engine.evaluate_all(tokens)
    assert_close(states @ t["token_embd"].T, logits)


def test_the_c_library_checks_hidden_arguments_itself() -> None:
    cfg, t = MODELS["gqa-tied"]()
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=8, n_threads=1)
    out = ffi.new("float[]", 8 * cfg.dim)
    ids = ffi.new("int32_t[]", [1, 2])
    assert lib.llm_forward_hidden(engine._ctx, ids, 2, 0, ffi.NULL) == lib.LLM_ERR_INVALID
    assert b"hidden" in ffi.string(lib.llm_last_error(engine._ctx))
    for tokens, pos in [([1, 2], 7), ([1], -1), ([cfg.vocab_size], 0), ([-5], 0), ([1], 3)]:
        assert lib.llm_forward_hidden(engine._ctx, ffi.new("int32_t[]", tokens), len(tokens), pos, out) \
            == lib.LLM_ERR_INVALID
        assert ffi.string(lib.llm_last_error(engine._ctx))
    assert lib.llm_forward_hidden(engine._ctx, ids, 0, 0, out) == lib.LLM_ERR_INVALID
    assert lib.llm_forward_hidden(engine._ctx, ffi.NULL, 1, 0, out) == lib.LLM_ERR_INVALID
    assert lib.llm_forward_hidden(ffi.NULL, ids, 1, 0, out) == lib.LLM_ERR_INVALID
    assert lib.llm_forward_hidden(engine._ctx, ids, 2, 0, out) == 0


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_texts_give_each_texts_own_states(name: str, isa: str) -> None:
    """Texts packed into one batch (hidden_texts: each its own sequence from position 0, attending to itself only;
    gemma-options has a window of 5, shorter than the texts) give exactly the states each gives alone (a batch's
    rows do not depend on each other in the matrix kernels), and leave sequence 0 (the engine's own) as it was."""
    cfg, t = MODELS[name]()
    rng = np.random.default_rng(5)
    texts = [[int(i) for i in rng.integers(0, cfg.vocab_size, size=n)] for n in (9, 1, 13, 6, 2)]
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=40, n_threads=2, isa=isa, n_batch=32, n_seq=6, n_kv=6 * 40)
    engine.evaluate(texts[0])
    packed = engine.hidden_texts(texts, [1, 2, 3, 4, 5])
    assert [engine.seq_length(s) for s in range(6)] == [9, 0, 0, 0, 0, 0]  # the texts' sequences are cleared
    assert engine.cached_tokens == texts[0] and engine.reusable_prefix(texts[0] + [3]) == 9
    assert_close(engine.evaluate(texts[0] + [3]), reference_forward(cfg, t, texts[0] + [3])[-1])
    for text, got in zip(texts, packed, strict=True):
        alone = engine.hidden(text)  # one token alone takes the matrix-vector kernels, a few ulps apart
        assert np.array_equal(got, alone) if len(text) > 1 else np.allclose(got, alone, rtol=1e-5, atol=1e-6)
        assert_close(got, reference_forward(cfg, t, text, hidden=True))
    engine.close()


def test_hidden_texts_checks_its_arguments() -> None:
    cfg, t = MODELS["gqa-tied"]()
    engine = Engine(spec_from_tensors(cfg, t), n_ctx=16, n_threads=1, n_batch=4, n_seq=3, n_kv=64)
    for texts, seqs, match in [([[1, 2, 3], [4, 5]], [1, 2], "5 tokens"), ([], [1], "at least one text"),
                               ([[1], []], [1, 2], "no empty one"), ([[1], [2]], [1], "2 texts for 1 sequences"),
                               ([[1], [2]], [1, 1], "repeats a sequence"), ([[1], [2]], [1, 3], "seqs must be"),
                               ([[1], [cfg.vocab_size]], [1, 2], "outside the vocabulary")]:
        with pytest.raises(InvalidArgumentError, match=match):
            engine.hidden_texts(texts, seqs)
    # the C library checks a batch itself: hidden (like logits) may be NULL, the entries not
    out = ffi.new("float[]", 16 * cfg.dim)
    entries = ffi.new("llm_batch_entry[]", [(1, 1, 0, 1), (2, 1, 1, 1), (3, 2, 0, 1)])
    assert lib.llm_batch(engine._ctx, ffi.NULL, 3, ffi.NULL, out) == lib.LLM_ERR_INVALID
    assert b"entries is NULL" in ffi.string(lib.llm_last_error(engine._ctx))
    assert lib.llm_batch(ffi.NULL, entries, 3, ffi.NULL, out) == lib.LLM_ERR_INVALID
    assert lib.llm_batch(engine._ctx, entries, 3, ffi.NULL, out) == 0
    assert [lib.llm_seq_length(engine._ctx, s) for s in range(3)] == [0, 2, 1]


# --- Model.embed against transformers ---------------------------------------------------------------------

@pytest.mark.parametrize("pooling", POOLED)
def test_embeddings_match_transformers(family: tuple[str, llmrun.Model], pooling: str) -> None:
    name, model = family
    meta = fixture(name)
    assert [model.tokenize(text) for text in meta["texts"]] == meta["ids"]  # the same BOS rule and tokens
    want = expected(name, pooling)
    got = model.embed(meta["texts"], pooling=pooling, normalize=False)
    assert got.shape == (len(meta["texts"]), model.info.dim) and got.dtype == np.float32
    diff = float(np.max(np.abs(got - want)))
    assert diff <= TOLERANCE, f"{name} {pooling}: max diff {diff:.2e}"
    assert np.array_equal(model.embed(meta["ids"], pooling=pooling, normalize=False), got)  # ids as given
    normed = model.embed(meta["texts"], pooling=pooling)
    unit = want / np.linalg.norm(want, axis=1, keepdims=True)
    assert np.max(np.abs(normed - unit)) <= TOLERANCE
    assert np.allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)
    # poolings differ by far more than the tolerance: a wrong pooling fails
    for other in POOLED:
        if other != pooling:
            assert np.max(np.abs(expected(name, other) - want)) > 100 * TOLERANCE


def test_small_batches_and_one_text_at_a_time_give_the_same(family: tuple[str, llmrun.Model]) -> None:
    name, model = family
    meta = fixture(name)
    together = model.embed(meta["texts"])
    one_by_one = np.stack([model.embed(text)[0] for text in reversed(meta["texts"])][::-1])
    assert np.array_equal(together, one_by_one)
    with llmrun.load(HF / name, n_threads=2, n_batch=5) as small:  # the 54-58 token texts in 11-12 chunks
        got = small.embed(meta["texts"], pooling="mean", normalize=False)
    assert np.max(np.abs(got - expected(name, "mean"))) <= TOLERANCE


def test_packs_and_long_texts_give_what_each_text_gives_alone(family: tuple[str, llmrun.Model]) -> None:
    """With n_batch 64 the fixture's texts and their parts pack (up to four per batch, most longer than gemma3's
    window of 8) around texts that run alone (a 102-token one in chunks): each is exactly what it gives alone."""
    name, model = family
    ids = fixture(name)["ids"]
    texts = [ids[0][:20], ids[1], ids[0] + ids[3] + ids[1], ids[3][:30], ids[2], ids[0][:25], ids[0][:3], ids[3]]
    assert [len(pack) for pack in _packs(texts, 64, max_texts=32, blocks=2**20, block_size=32)] == [2, 1, 4, 1]
    with llmrun.load(HF / name, n_threads=2, n_batch=64) as small:
        together = small.embed(texts, pooling="none", normalize=False)
        alone = [small.embed([text], pooling="none", normalize=False)[0] for text in texts]
    for got, want in zip(together, alone, strict=True):
        assert np.array_equal(got, want)


def test_pooling_none_gives_each_tokens_state(family: tuple[str, llmrun.Model]) -> None:
    name, model = family
    meta = fixture(name)
    rows = model.embed(meta["texts"], pooling="none", normalize=False)
    assert isinstance(rows, list) and [r.shape for r in rows] == [(len(i), model.info.dim) for i in meta["ids"]]
    for pooling, pick in (("mean", lambda r: r.mean(axis=0)), ("last", lambda r: r[-1]), ("cls", lambda r: r[0])):
        assert np.max(np.abs(np.stack([pick(r) for r in rows]) - expected(name, pooling))) <= TOLERANCE
    normed = model.embed(meta["texts"][0], pooling="none")
    assert np.allclose(np.linalg.norm(normed[0], axis=1), 1.0, atol=1e-6)


def test_embedding_between_generations_leaves_them_right(family: tuple[str, llmrun.Model]) -> None:
    name, model = family
    ids = fixture(name)["ids"][0]
    before = model.logits(ids).copy()
    first = model.generate(ids, max_tokens=5, temperature=0)
    model.embed(["something else entirely"])
    assert np.array_equal(model.logits(ids), before)
    assert model.generate(ids, max_tokens=5, temperature=0) == first


@pytest.mark.parametrize("texts, error, match", [
    ([], InvalidArgumentError, "empty"),
    ("", InvalidArgumentError, "empty"),
    (["a", ""], InvalidArgumentError, "index 1 is empty"),
    ([[]], InvalidArgumentError, "empty"),
    ([1, 2, 3], InvalidArgumentError, "flat list"),
    (5, InvalidArgumentError, "texts must be"),
    (b"bytes", InvalidArgumentError, "texts must be"),
    ([b"bytes"], InvalidArgumentError, "texts\\[0\\]"),
    ([None], InvalidArgumentError, "texts\\[0\\]"),
    ([[1, "a"]], InvalidArgumentError, "must be an int"),
    ([[1, 2.5]], InvalidArgumentError, "must be an int"),
    ([[1, True]], InvalidArgumentError, "must be an int"),
    ([[1, 10**9]], InvalidArgumentError, "outside the vocabulary"),
    ([[-1]], InvalidArgumentError, "outside the vocabulary"),
    (["word " * 300], ContextOverflowError, "text at index 0 is"),
    ([[1] * 257], ContextOverflowError, "more than the context"),
])
def test_hostile_inputs_are_refused_clearly(texts: object, error: type, match: str) -> None:
    with llmrun.load(HF / "llama3-gqa", n_threads=1, n_ctx=256) as model:
        with pytest.raises(error, match=match):
            model.embed(texts)
        # the model is fine afterwards
        assert model.embed("fine").shape == (1, model.info.dim)


def test_numpy_ids_and_tuples_are_texts_too() -> None:
    meta = fixture("llama3-gqa")
    with llmrun.load(HF / "llama3-gqa", n_threads=1) as model:
        want = model.embed(meta["ids"][:2])
        assert np.array_equal(model.embed([np.array(i, dtype=np.int32) for i in meta["ids"][:2]]), want)
        assert np.array_equal(model.embed(tuple(tuple(i) for i in meta["ids"][:2])), want)
        one = model.embed([meta["ids"][2]])
        assert np.array_equal(model.embed(np.array([meta["ids"][2]] * 2)), np.concatenate([one, one]))
        with pytest.raises(InvalidArgumentError, match="flat list"):
            model.embed(np.array(meta["ids"][2]))


def test_bad_pooling_and_normalize() -> None:
    with llmrun.load(HF / "llama3-gqa", n_threads=1) as model:
        for pooling in ("max", "rank", 3, ""):
            with pytest.raises(InvalidArgumentError, match="pooling"):
                model.embed("hi", pooling=pooling)
        with pytest.raises(InvalidArgumentError, match="normalize"):
            model.embed("hi", normalize="yes")


# --- the default pooling ----------------------------------------------------------------------------------

def gguf_with_pooling(tmp_path: Path, name: str, pooling_type: int | None) -> Path:
    spec = read_model(HF / name)
    tok = spec.tokenizer
    if not tok.byte_level:  # as write_model: GGUF stores SentencePiece-style vocabularies as "llama"
        tok = sentencepiece_from_bpe(tok)
    meta = model_metadata(spec, "f32", tok, name)
    if pooling_type is not None:
        meta.append(Metadata(f"{gguf_architecture(spec)}.pooling_type", ValueType.UINT32, pooling_type))
    path = tmp_path / f"{name}-{pooling_type}.gguf"
    write_gguf(path, meta, plan_tensors(spec, "f32"))
    return path


@pytest.mark.parametrize("name", FAMILIES)
@pytest.mark.parametrize("pooling_type, pooling", [(None, "mean"), (0, "none"), (1, "mean"), (2, "cls"), (3, "last")])
def test_gguf_pooling_type_is_the_default(tmp_path: Path, name: str, pooling_type: int | None, pooling: str) -> None:
    meta = fixture(name)
    with llmrun.load(gguf_with_pooling(tmp_path, name, pooling_type), n_threads=1) as model:
        assert model.pooling == pooling
        got = model.embed(meta["texts"], normalize=False)
        if pooling == "none":
            assert isinstance(got, list) and len(got) == len(meta["texts"])
            got = np.stack([r.mean(axis=0) for r in got])
            pooling = "mean"
        assert np.max(np.abs(got - expected(name, pooling))) <= TOLERANCE


@pytest.mark.parametrize("value", [4, 9])
def test_gguf_rank_pooling_is_refused(tmp_path: Path, value: int) -> None:
    with llmrun.load(gguf_with_pooling(tmp_path, "llama3-gqa", value), n_threads=1) as model:
        with pytest.raises(InvalidArgumentError, match="pooling_type") as e:
            model.embed("hi")
        assert e.value.param == "pooling"
        assert model.embed("hi", pooling="last").shape == (1, model.info.dim)  # an explicit pooling works
        assert model.generate("hi", max_tokens=2, temperature=0) is not None  # the model itself loads and runs


def sentence_transformers(tmp_path: Path, flags: dict[str, bool], module_path: str | None = None) -> Path:
    folder = copy_fixture("llama3-gqa", tmp_path)
    pool = folder / (module_path or "1_Pooling")
    pool.mkdir()
    (pool / "config.json").write_text(json.dumps({"word_embedding_dimension": 64, **flags}))
    if module_path is not None:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": module_path, "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    return folder


@pytest.mark.parametrize("flag, pooling", [("pooling_mode_mean_tokens", "mean"), ("pooling_mode_cls_token", "cls"),
                                           ("pooling_mode_lasttoken", "last")])
@pytest.mark.parametrize("module_path", [None, "pooler"])
def test_sentence_transformers_pooling_is_the_default(tmp_path: Path, flag: str, pooling: str,
                                                       module_path: str | None) -> None:
    off = {f: False for f in ("pooling_mode_mean_tokens", "pooling_mode_cls_token", "pooling_mode_lasttoken",
                              "pooling_mode_max_tokens")}
    folder = sentence_transformers(tmp_path, {**off, flag: True}, module_path)
    meta = fixture("llama3-gqa")
    with llmrun.load(folder, n_threads=1) as model:
        assert model.pooling == pooling
        got = model.embed(meta["texts"], normalize=False)
        assert np.max(np.abs(got - expected("llama3-gqa", pooling))) <= TOLERANCE


@pytest.mark.parametrize("flags", [{"pooling_mode_max_tokens": True}, {},
                                   {"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True},
                                   {"pooling_mode_mean_tokens": True, "pooling_mode_weightedmean_tokens": True}])
def test_sentence_transformers_poolings_llmrun_cannot_do_are_refused(tmp_path: Path, flags: dict) -> None:
    with llmrun.load(sentence_transformers(tmp_path, flags), n_threads=1) as model:
        with pytest.raises(InvalidArgumentError, match="1_Pooling"):
            model.embed("hi")
        assert model.embed("hi", pooling="mean").shape == (1, 64)


def test_a_broken_pooling_config_is_a_format_error(tmp_path: Path) -> None:
    folder = sentence_transformers(tmp_path, {})
    (folder / "1_Pooling" / "config.json").write_text("{not json")
    with llmrun.load(folder, n_threads=1) as model:
        with pytest.raises(ModelFormatError, match="config.json"):
            model.embed("hi")
    shutil.rmtree(folder / "1_Pooling")
    (folder / "modules.json").write_text("[")
    with llmrun.load(folder, n_threads=1) as model:
        with pytest.raises(ModelFormatError, match="modules.json"):
            model.embed("hi")


# --- the server -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def served() -> object:
    for extra in ("starlette", "uvicorn", "openai", "httpx"):  # the server extra: its tests skip without it
        pytest.importorskip(extra)
    from test_server import serving  # imported only where the server extra is installed

    from llmrun.server import ServerConfig
    with llmrun.load(HF / "gemma3", n_threads=2, n_ctx=128) as model:
        with serving(model, ServerConfig(model_name="tiny", api_key="k", max_body_bytes=1 << 16)) as running:
            yield running


def test_server_embeddings_through_the_openai_client(served: object) -> None:
    meta = fixture("gemma3")
    client = served.client("k")
    want = served.model.embed(meta["texts"])
    unit = expected("gemma3", "mean") / np.linalg.norm(expected("gemma3", "mean"), axis=1, keepdims=True)
    for fmt in ("float", None):  # None: the client asks for base64 and decodes it itself
        kwargs = {"encoding_format": fmt} if fmt else {}
        r = client.embeddings.create(model="anything", input=meta["texts"], **kwargs)
        got = np.array([d.embedding for d in r.data], dtype=np.float32)
        assert [d.index for d in r.data] == list(range(len(meta["texts"])))
        assert np.array_equal(got, want)
        assert np.max(np.abs(got - unit)) <= TOLERANCE
        assert r.model == "tiny" and r.object == "list"
        n = sum(len(i) for i in meta["ids"])
        assert r.usage.prompt_tokens == n and r.usage.total_tokens == n
    r = client.embeddings.create(model="tiny", input=meta["texts"][1], encoding_format="base64")
    raw = r.data[0].embedding
    assert isinstance(raw, str)
    assert np.array_equal(np.frombuffer(base64.b64decode(raw), dtype="<f4"), want[1])
    # token ids: one list, or a list of lists
    r = client.embeddings.create(model="tiny", input=meta["ids"][2], encoding_format="float")
    assert np.array_equal(np.array(r.data[0].embedding, dtype=np.float32), want[2])
    r = client.embeddings.create(model="tiny", input=meta["ids"], encoding_format="float", dimensions=32)
    assert np.array_equal(np.array([d.embedding for d in r.data], dtype=np.float32), want)


@pytest.mark.parametrize("body, param", [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": ""}, "input"),
    ({"input": ["a", ""]}, "input"),
    ({"input": [[]]}, "input"),
    ({"input": 5}, "input"),
    ({"input": None}, "input"),
    ({"input": [1, "a"]}, "input"),
    ({"input": [[1], "a"]}, "input"),
    ({"input": [1.5]}, "input"),
    ({"input": [True]}, "input"),
    ({"input": {"text": "a"}}, "input"),
    ({"input": [10**9]}, "input"),
    ({"input": [[1], [-3]]}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": "word " * 200}, "input"),
    ({"input": "a", "encoding_format": "hex"}, "encoding_format"),
    ({"input": "a", "dimensions": 16}, "dimensions"),
    ({"input": "a", "dimensions": "32"}, "dimensions"),
    ({"input": "a", "model": 3}, "model"),
    ([{"input": "a"}], None),
])
def test_server_refuses_bad_embedding_requests(served: object, body: object, param: str | None) -> None:
    r = served.post("/v1/embeddings", body, key="k")
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if body == {"input": "word " * 200}:
        assert error["code"] == "context_length_exceeded"
    assert served.post("/v1/embeddings", {"input": "still fine"}, key="k").status_code == 200


def test_server_embeddings_need_the_key(served: object) -> None:
    assert served.post("/v1/embeddings", {"input": "a"}, key="wrong").status_code == 401


def test_the_readme_snippet_runs() -> None:
    """The README's Embeddings snippet, as written, on the demo model the package ships."""
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text.split("### Embeddings\n", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)  # noqa: S102 (the project's own README)
    assert scope["vectors"].shape == (3, 64) and len(scope["rows"]) == 1 and scope["raw"].shape == (1, 64)


# --- llama.cpp ------------------------------------------------------------------------------------------

LLAMA_CPP_FIXTURES = ("qwen3", "smollm3", "gemma3")


@pytest.mark.parametrize("name", LLAMA_CPP_FIXTURES)
def test_llama_cpp_embeddings(tmp_path: Path, name: str) -> None:
    """llama.cpp's embeddings (llama-cpp-python's embed, pooling mean / cls / last) of the file llmrun writes
    against llmrun's: always those recorded by tests/make_llama_cpp_embeddings.py (the file must be the recorded
    one, byte for byte), and where llama-cpp-python is installed, llama.cpp's live. Tolerance as for the logits
    (test_families.LLAMA_CPP_TOLERANCE: llama.cpp computes Gemma's steps differently; measured 1e-2 there, 2e-6
    elsewhere)."""
    import hashlib

    from test_families import LLAMA_CPP_TOLERANCE, write_for_llama_cpp
    record = json.loads((GOLDEN / "embeddings.json").read_text())
    entry = record["fixtures"][name]
    out = tmp_path / f"{name}.gguf"
    write_for_llama_cpp(name, out)
    rerecord = "run `PYTHONPATH=$PWD python tests/make_llama_cpp_embeddings.py` where llama-cpp-python is installed"
    assert hashlib.sha256(out.read_bytes()).hexdigest() == entry["gguf_sha256"], f"the file changed: {rerecord}"
    golden = np.load(GOLDEN / "embeddings.npz")
    tolerance = LLAMA_CPP_TOLERANCE.get(name, TOLERANCE)
    with llmrun.load(out, n_threads=1, n_ctx=256) as model:
        assert [model.tokenize(t) for t in record["texts"]] == entry["ids"]
        for pooling in POOLED:
            ours = model.embed(entry["ids"], pooling=pooling, normalize=False)
            assert np.max(np.abs(ours - golden[f"{name}_{pooling}"])) <= tolerance, pooling
            if llama_cpp_live():
                from make_llama_cpp_embeddings import llama_cpp_embeddings
                ids, live = llama_cpp_embeddings(out, pooling, record["texts"])
                assert ids == entry["ids"]
                assert np.max(np.abs(ours - live)) <= tolerance, pooling


def llama_cpp_live() -> bool:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:  # CI: the recorded embeddings stand in for it
        return False
    return True


@pytest.mark.parametrize(("pooling_type", "pooling"), [(1, "mean"), (2, "cls"), (3, "last")])
def test_pooling_key_is_read_as_llama_cpp_reads_it(tmp_path: Path, pooling_type: int, pooling: str) -> None:
    """A GGUF with `<arch>.pooling_type` (llama.cpp's enum): llmrun's default pooling is the one it names; where
    llama-cpp-python is installed, llama.cpp's default pooling of the same file gives the same embeddings."""
    path = gguf_with_pooling(tmp_path, "qwen3", pooling_type)
    texts = fixture("llama3-gqa")["texts"]
    with llmrun.load(path, n_threads=1, n_ctx=256) as model:
        ours = model.embed(texts)
        assert model.pooling == pooling and np.array_equal(ours, model.embed(texts, pooling=pooling))
    if not llama_cpp_live():  # CI: the recorded embeddings of test_llama_cpp_embeddings cover each pooling
        return
    import llama_cpp

    llm = llama_cpp.Llama(str(path), embedding=True, n_ctx=256, n_batch=256, n_ubatch=256, type_k=0, type_v=0,
                          flash_attn=False, n_threads=1, verbose=False)
    theirs = np.array(llm.embed(texts, normalize=True), dtype=np.float32)  # several texts in one batch
    llm.close()
    assert np.max(np.abs(ours - theirs)) <= TOLERANCE


def test_server_embeddings_with_a_full_kv_pool_get_503(served: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the generations running hold the whole KV pool, an embeddings request gets 503 server_busy (retry, here
    or on another replica), not a 400 that blames the input."""
    from llmrun.errors import KVCacheFullError

    def full(*args: object, **kwargs: object) -> object:
        raise KVCacheFullError("the KV pool is full: 2 more blocks of 32 positions are needed, 0 are free (4 in all)")

    monkeypatch.setattr(served.model, "embed", full)
    r = served.post("/v1/embeddings", {"input": ["hello"]}, key="k")
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy" and "KV pool is full" in r.text
