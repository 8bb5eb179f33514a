"""The Python API on stories260K + tok512: llama2.c's greedy output, streaming, sampling options, stop
strings, limits, KV-cache reuse, errors and lifetime."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
from pathlib import Path

import numpy as np
import pytest

import llmrun
import llmrun.engine
import llmrun.model
from builders import make_config, random_tensors, write_model
from llmrun import ContextOverflowError, InvalidArgumentError, LLMError, SamplingError, TokenizerError
from llmrun.engine import best_isa
from llmrun.formats import read_model
from llmrun.spec import TENSOR_TYPES, ModelSpec
from reference import forward as reference_forward

GOLDEN = json.loads((Path(__file__).parent / "data" / "llama2c_greedy.json").read_text())


@pytest.fixture(scope="module")
def model(models_dir: Path):
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin") as m:
        yield m


@pytest.mark.parametrize("case", GOLDEN["cases"], ids=lambda c: c["prompt"][:20] or "empty")
def test_greedy_equals_llama2c(model: llmrun.Model, case: dict) -> None:
    """llama2.c's run.c prints the prompt, then the greedy continuation up to BOS or the context end,
    then a newline (tests/data/llama2c_greedy.json records its stdout)."""
    text = model.generate(case["prompt"], max_tokens=None, temperature=0)
    assert case["prompt"] + text + "\n" == case["stdout"]


def test_stream_joins_to_generate(model: llmrun.Model) -> None:
    gen = model.stream("Lily", max_tokens=60, temperature=0)
    pieces = list(gen)
    assert len(pieces) > 10
    assert "".join(pieces) == model.generate("Lily", max_tokens=60, temperature=0)
    assert gen.finish_reason == "length" and len(gen.tokens) == 60
    assert gen.stats.generated_tokens == 60 and gen.stats.prompt_tokens == len(model.tokenize("Lily"))


def test_seed_makes_runs_reproducible(model: llmrun.Model) -> None:
    a = model.generate("Once upon a time", max_tokens=80, temperature=1.0, seed=42)
    b = model.generate("Once upon a time", max_tokens=80, temperature=1.0, seed=42)
    c = model.generate("Once upon a time", max_tokens=80, temperature=1.0, seed=43)
    assert a == b
    assert a != c


def test_sampling_options_reach_the_sampler(model: llmrun.Model) -> None:
    greedy = model.generate("Tom", max_tokens=40, temperature=0)
    assert model.generate("Tom", max_tokens=40, temperature=1.5, top_k=1, seed=1) == greedy
    penalized = model.generate("Tom", max_tokens=40, temperature=0, repeat_penalty=1.5)
    assert penalized != greedy
    assert model.generate("Tom", max_tokens=40, temperature=0, presence_penalty=0.0, frequency_penalty=0.0) == greedy
    assert model.generate("Tom", max_tokens=40, temperature=0, presence_penalty=2.0) != greedy
    assert model.generate("Tom", max_tokens=40, temperature=0, frequency_penalty=2.0) != greedy
    chat = [{"role": "user", "content": "Tom"}]
    assert (model.chat(chat, max_tokens=30, temperature=0, frequency_penalty=2.0)["message"]
            != model.chat(chat, max_tokens=30, temperature=0)["message"])


def test_stop_strings(model: llmrun.Model) -> None:
    full = model.generate("Once upon a time", max_tokens=60, temperature=0)
    gen = model.stream("Once upon a time", max_tokens=60, temperature=0, stop=["Lily", "never there"])
    text = gen.text()
    assert text == full[: full.index("Lily")]
    assert gen.finish_reason == "stop"
    # a stop string that spans several tokens is never partly emitted
    gen = model.stream("Once upon a time", max_tokens=60, temperature=0, stop="girl named")
    assert "".join(gen) == full[: full.index("girl named")]


def test_end_of_generation(model: llmrun.Model) -> None:
    gen = model.stream("Once upon a time", max_tokens=None, temperature=0)
    gen.text()
    assert gen.finish_reason == "stop" and 300 < len(gen.tokens) < 500


def test_context_limits(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_ctx=16) as m:
        assert m.info.n_ctx == 16
        prompt = m.tokenize("Once upon a time")  # 5 tokens
        gen = m.stream(prompt, max_tokens=None, temperature=0)
        gen.text()
        assert gen.finish_reason == "length" and len(prompt) + len(gen.tokens) == 17  # the last needs no slot
        long_text = "Once upon a time there was a dog. " * 10
        with pytest.raises(ContextOverflowError, match="more than the context of 16"):
            m.generate(long_text)
        with pytest.raises(ContextOverflowError):
            m.logits(list(range(17)))


def test_logits_match_reference(model: llmrun.Model, models_dir: Path) -> None:
    spec = read_model(models_dir / "stories260K.bin")
    names = ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_down", "w_up"]
    t = {name: np.stack([getattr(layer, name).data for layer in spec.layers]) for name in names}
    t["token_embd"], t["output_norm"] = spec.token_embd.data, spec.output_norm.data
    tokens = model.tokenize("Once upon a time, there was a little dog named Max.")
    got = model.logits(tokens)
    assert got.shape == (len(tokens), 512) and got.dtype == np.float32
    want = reference_forward(spec.config, t, tokens)
    assert np.max(np.abs(got - want)) <= 1e-4 * np.max(np.abs(want))


def test_cache_reuse_gives_the_same_answer(models_dir: Path) -> None:
    paths = dict(path=models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin")
    with llmrun.load(**paths) as warm, llmrun.load(**paths) as cold:
        first = warm.stream("Once upon a time, there was a dog", max_tokens=20, temperature=0)
        first.text()
        assert first.stats.reused_tokens == 0
        second = warm.stream("Once upon a time, there was a dog named Max", max_tokens=30, temperature=0)
        text = second.text()
        assert second.stats.reused_tokens >= len(warm.tokenize("Once upon a time, there was a dog")) - 1
        assert text == cold.generate("Once upon a time, there was a dog named Max", max_tokens=30, temperature=0)


def test_shared_prefix_is_not_recomputed(models_dir: Path) -> None:
    """A request that shares a 400-token prefix with what the cache holds computes only the rest: its
    cost, counted in positions run through the model, is a small fraction of the first request's, and
    its answer is the one a fresh model gives. The same holds for logits() calls."""
    paths = dict(path=models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin")
    story = (Path(__file__).parent / "data" / "stories.txt").read_text()
    with llmrun.load(**paths) as warm, llmrun.load(**paths) as cold:
        engine = warm._engine
        prefix = warm.tokenize(story)[:400]
        more = warm.tokenize(" Then the sun came out.", add_bos=False)
        first = warm.stream(prefix, max_tokens=8, temperature=0)
        first.text()
        first_cost = engine.tokens_computed
        assert first_cost >= 400
        second = warm.stream(prefix + more, max_tokens=8, temperature=0)
        text = second.text()
        second_cost = engine.tokens_computed - first_cost
        assert second.stats.reused_tokens >= 400
        assert second_cost <= len(more) + 8 and second_cost < first_cost / 20
        assert text == cold.generate(prefix + more, max_tokens=8, temperature=0)

        rows = warm.logits(prefix)
        before = engine.tokens_computed
        longer = warm.logits(prefix + more)
        assert engine.tokens_computed - before == len(more)
        np.testing.assert_array_equal(longer[:400], rows)
        fresh = cold.logits(prefix + more)
        assert np.max(np.abs(longer - fresh)) <= 1e-4 * np.max(np.abs(fresh))
        longer[:] = 0  # the caller owns the array: changing it does not change what is reused
        assert np.array_equal(warm.logits(prefix + more)[:400], rows)


def test_tokenize_roundtrip(model: llmrun.Model) -> None:
    ids = model.tokenize("Once upon a time")
    assert ids == [1, 403, 407, 261, 378]
    assert model.tokenize("Once upon a time", add_bos=False) == ids[1:]
    assert model.detokenize(ids) == "Once upon a time"


def test_info(model: llmrun.Model) -> None:
    i = model.info
    assert (i.dim, i.n_layers, i.n_heads, i.n_kv_heads, i.vocab_size, i.context_length) == (64, 5, 8, 4, 512, 512)
    assert i.n_params == 260_032 and i.dtype == "f32" and i.file_size == 1_056_540
    assert i.isa == best_isa() and i.n_threads >= 1


@pytest.mark.parametrize("kwargs", [
    dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-1), dict(min_p=2.0), dict(repeat_penalty=0.0),
    dict(seed=-1), dict(temperature=float("nan")),
])
def test_bad_sampling_parameters(model: llmrun.Model, kwargs: dict) -> None:
    with pytest.raises(SamplingError, match=next(iter(kwargs))):
        model.generate("Hi", max_tokens=5, **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_tokens=-1), "max_tokens"), (dict(max_tokens=1.5), "max_tokens"), (dict(stop=[""]), "stop"),
    (dict(stop=[3]), "stop"),
])
def test_bad_generation_arguments(model: llmrun.Model, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        model.generate("Hi", **kwargs)


def test_bad_load_arguments(models_dir: Path) -> None:
    path = models_dir / "stories260K.bin"
    for kwargs in (dict(n_ctx=0), dict(n_threads=0), dict(n_threads=True), dict(n_ctx="512")):
        with pytest.raises(ValueError):
            llmrun.load(path, tokenizer=models_dir / "tok512.bin", **kwargs)
    with pytest.raises(TokenizerError):  # the 32000-token Llama 2 vocabulary does not fit a 512-token model
        llmrun.load(path, tokenizer=models_dir / "tokenizer.bin")


def test_bad_tokens(model: llmrun.Model) -> None:
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.logits([1, 512])
    with pytest.raises(ValueError, match="outside the vocabulary"):
        model.generate([1, -3], max_tokens=2)


def test_model_without_tokenizer(tmp_path: Path) -> None:
    cfg = make_config(vocab_size=40, max_seq_len=16)
    path = write_model(tmp_path / "m.bin", cfg, random_tensors(cfg))
    with llmrun.load(path) as m:
        assert m.logits([1, 2, 3]).shape == (3, 40)
        with pytest.raises(TokenizerError, match="tokenizer"):
            m.generate("hello")


def test_close(models_dir: Path) -> None:
    m = llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin")
    m.close()
    m.close()
    with pytest.raises(LLMError, match="closed"):
        m.logits([1, 2])


def test_errors_share_a_base_class() -> None:
    for cls in (llmrun.ModelFormatError, TokenizerError, ContextOverflowError, llmrun.KernelError, SamplingError):
        assert issubclass(cls, LLMError)


def test_concurrent_generations_do_not_mix(model: llmrun.Model) -> None:
    """Generations on one model from several threads each get their own answer (the C calls release the
    GIL, so each generation must sample from logits no other thread writes)."""
    import threading

    prompts = ["Once upon a time", "Lily", "The dog", "Tom and Sue"]
    want = [model.generate(p, max_tokens=40, temperature=0) for p in prompts]
    def run(i: int, got: list[str | None]) -> None:
        got[i] = model.generate(prompts[i], max_tokens=40, temperature=0)

    for _ in range(3):
        got: list[str | None] = [None] * len(prompts)
        threads = [threading.Thread(target=run, args=(i, got)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got == want


def test_bad_prompt_ids_fail_at_once(model: llmrun.Model) -> None:
    with pytest.raises(llmrun.InvalidArgumentError, match="outside the vocabulary"):
        model.stream([1, 999], max_tokens=3)  # before any iteration
    with pytest.raises(llmrun.InvalidArgumentError, match="no tokens"):
        model.stream([], max_tokens=3)
    assert issubclass(llmrun.InvalidArgumentError, LLMError) and issubclass(llmrun.InvalidArgumentError, ValueError)


def test_repeat_last_n(model: llmrun.Model) -> None:
    greedy = model.generate("Tom", max_tokens=40, temperature=0)
    # an empty penalty window: the penalty has nothing to act on
    assert model.generate("Tom", max_tokens=40, temperature=0, repeat_penalty=1.5, repeat_last_n=0) == greedy
    assert model.generate("Tom", max_tokens=40, temperature=0, repeat_penalty=1.5, repeat_last_n=-1) != greedy


def test_logprobs_are_the_models_log_softmax(model: llmrun.Model) -> None:
    prompt = model.tokenize("Once upon a time")
    gen = model.stream(prompt, max_tokens=12, temperature=0.9, seed=3, logprobs=3, repeat_penalty=1.3)
    gen.text()
    assert len(gen.token_logprobs) == len(gen.tokens) == 12
    rows = model.logits(prompt + gen.tokens)[len(prompt) - 1:-1].astype(np.float64)
    want = rows - np.log(np.exp(rows - rows.max(1, keepdims=True)).sum(1, keepdims=True)) - rows.max(1, keepdims=True)
    for j, lp in enumerate(gen.token_logprobs):
        assert lp.token == gen.tokens[j]
        assert lp.logprob == pytest.approx(want[j, lp.token], abs=1e-4)  # raw logits: no penalty, no temperature
        assert [t for t, _ in lp.top] == list(np.argsort(-want[j], kind="stable")[:3])
        assert [v for _, v in lp.top] == pytest.approx(sorted(want[j], reverse=True)[:3], abs=1e-4)
    greedy = model.stream(prompt, max_tokens=5, temperature=0, logprobs=0)
    greedy.text()
    assert all(lp.top == () and lp.logprob <= 0 for lp in greedy.token_logprobs)
    assert model.stream(prompt, max_tokens=3).token_logprobs == []
    for bad in (-1, 21, 1.5, True):
        with pytest.raises(llmrun.InvalidArgumentError, match="logprobs"):
            model.stream(prompt, max_tokens=3, logprobs=bad)


# --- issue 11 ---------------------------------------------------------------------------------------


def test_sampling_params_with_keyword_overrides(model: llmrun.Model) -> None:
    """Every generation method takes a SamplingParams and/or keyword overrides of its fields."""
    greedy = model.generate("Tom", max_tokens=30, temperature=0)
    params = llmrun.SamplingParams(temperature=0)
    assert model.generate("Tom", params, max_tokens=30) == greedy
    assert model.generate("Tom", llmrun.SamplingParams(temperature=1.5, top_k=1), max_tokens=30, seed=1) == greedy
    assert model.generate("Tom", params, max_tokens=30, repeat_penalty=1.5) != greedy  # the override wins
    assert model.stream("Tom", params, max_tokens=30).text() == greedy
    chat = [{"role": "user", "content": "Tom"}]
    reply = model.chat(chat, max_tokens=20, temperature=0)
    assert model.chat(chat, params, max_tokens=20) == reply
    assert model.chat_stream(chat, params, max_tokens=20).result() == reply


def test_sampling_defaults_are_stated_once() -> None:
    """No generation method repeats SamplingParams' fields (or their defaults) in its own signature."""
    fields = {f.name for f in dataclasses.fields(llmrun.SamplingParams)}
    for method in (llmrun.Model.generate, llmrun.Model.stream, llmrun.Model.chat, llmrun.Model.chat_stream):
        named = set(inspect.signature(method).parameters)
        assert not named & fields, f"{method.__name__} repeats {sorted(named & fields)}"


def test_unknown_keyword_is_named(model: llmrun.Model) -> None:
    for call in (lambda: model.generate("Hi", temprature=0), lambda: model.stream("Hi", temprature=0),
                 lambda: model.chat([{"role": "user", "content": "Hi"}], temprature=0)):
        with pytest.raises(InvalidArgumentError, match="'temprature'") as info:
            call()
        assert info.value.param == "temprature"


def test_logprobs_through_every_method(model: llmrun.Model) -> None:
    chat = [{"role": "user", "content": "Tom"}]
    reply = model.chat(chat, max_tokens=6, temperature=0, logprobs=2)
    content = reply["logprobs"]["content"]  # OpenAI's shape, as a chat completion's choice has it
    assert len(content) == reply["usage"]["completion_tokens"] == 6
    assert all(len(c["top_logprobs"]) == 2 and c["logprob"] <= 0 for c in content)
    assert "".join(c["token"] for c in content).strip() == reply["message"]["content"].strip()
    assert "logprobs" not in model.chat(chat, max_tokens=6, temperature=0)
    stream = model.chat_stream(chat, max_tokens=6, temperature=0, logprobs=1)
    stream.result()
    assert len(stream.generation.token_logprobs) == 6
    # generate() returns text only: logprobs are refused with a pointer to stream(), never silently dropped
    with pytest.raises(InvalidArgumentError, match=r"stream\(") as info:
        model.generate("Tom", max_tokens=6, logprobs=2)
    assert info.value.param == "logprobs"


def test_model_layer_reads_no_format_module() -> None:
    """model.py reaches the formats through their entry points only, and reads typed ModelSpec fields."""
    source = Path(llmrun.model.__file__).read_text()
    assert re.findall(r"from \.formats\S* import", source) == ["from .formats import"]
    assert "extra" not in {f.name for f in dataclasses.fields(ModelSpec)}


def test_bad_argument_types_are_invalid_arguments(model: llmrun.Model) -> None:
    for ids in ([1.5], [True], [None], [1, "2"], 5, None):
        with pytest.raises(InvalidArgumentError, match="ids|token id") as info:
            model.detokenize(ids)  # type: ignore[arg-type]
        assert info.value.param == "ids"
    for text in (b"x", None, 5, ["a"]):
        with pytest.raises(InvalidArgumentError, match="text") as info:
            model.tokenize(text)  # type: ignore[arg-type]
        assert info.value.param == "text"


def test_kv_cache_must_fit_in_physical_memory(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The KV cache (and the context's other per-position buffers) is checked against physical memory before
    it is allocated; the error names the largest n_ctx that fits, and that n_ctx loads."""
    paths = dict(path=models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1)
    monkeypatch.setattr(llmrun.model, "physical_memory", lambda: 8 << 20)
    with pytest.raises(InvalidArgumentError, match="physical memory") as info:
        llmrun.load(**paths, n_ctx=100_000)
    assert info.value.param == "n_ctx"
    largest = int(re.search(r"n_ctx <= (\d+)", str(info.value)).group(1))
    assert 1000 < largest < 100_000
    with llmrun.load(**paths, n_ctx=largest) as m:
        assert m.info.n_ctx == largest
    with pytest.raises(InvalidArgumentError, match=f"n_ctx <= {largest}"):
        llmrun.load(**paths, n_ctx=largest + 1)
    assert "-c" in info.value.for_flags({"n_ctx": "-c"})


def test_context_overflow_says_what_would_fit(models_dir: Path) -> None:
    paths = dict(path=models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1)
    long_text = "Once upon a time there was a dog. " * 80  # about 700 tokens; the model was trained for 512
    with llmrun.load(**paths, n_ctx=16) as m:
        with pytest.raises(ContextOverflowError, match="larger n_ctx, up to the model's 512") as info:
            m.generate(long_text)
        e = info.value
        assert (e.n_ctx, e.max_ctx, e.param) == (16, 512, "n_ctx") and e.n_tokens == len(m.tokenize(long_text))
    with llmrun.load(**paths, n_ctx=512) as m:  # already the model's maximum: no advice to raise it
        with pytest.raises(ContextOverflowError) as info:
            m.generate(long_text)
        assert "n_ctx" not in str(info.value) and "512" in str(info.value)
        assert (info.value.n_ctx, info.value.max_ctx) == (512, 512)
        with pytest.raises(ContextOverflowError) as info:
            m.logits(list(range(513)))
        assert (info.value.n_tokens, info.value.n_ctx) == (513, 512)


def test_context_overflow_claims_nothing_false_about_the_models_maximum(models_dir: Path) -> None:
    """With -c 600 on a model trained for 512, a too long prompt was said to overflow "the context of 600,
    which is already as long as the model's (512)"."""
    paths = dict(path=models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1)
    long_text = "Once upon a time there was a dog. " * 80  # about 700 tokens
    with llmrun.load(**paths, n_ctx=600) as m:
        with pytest.raises(ContextOverflowError) as info:
            m.generate(long_text)
        e = info.value
        assert str(e) == f"the prompt is {e.n_tokens} tokens, more than the context of 600"
        assert (e.n_ctx, e.max_ctx, e.param) == (600, 512, None)
    with llmrun.load(**paths, n_ctx=512) as m:
        with pytest.raises(ContextOverflowError, match=r"context of 512, which is already the model's maximum$"):
            m.generate(long_text)


def test_add_bos_token_says_whether_tokenize_adds_bos(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as m:
        assert m.add_bos_token is True and m.tokenize("a")[0] == m.tokenizer.bos_id
    with llmrun.load(Path(__file__).parent / "data" / "hf" / "qwen2-bias", n_threads=1) as m:  # no BOS token
        assert m.add_bos_token is False and m.tokenize("a") == m.tokenizer.encode("a", add_bos=False)


def test_n_ctx_beyond_the_trained_context_is_accepted(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_ctx=1024) as m:
        assert (m.info.n_ctx, m.info.context_length) == (1024, 512)
        assert m.logits([i % 512 for i in range(600)]).shape == (600, 512)


@pytest.mark.parametrize("kwargs, param", [
    (dict(n_ctx=0), "n_ctx"), (dict(n_ctx="512"), "n_ctx"), (dict(n_threads=0), "n_threads"),
    (dict(n_threads=100_000), "n_threads"), (dict(n_batch=0), "n_batch"), (dict(chat_format="nope"), "chat_format"),
    (dict(quantize="q4_0"), "quantize"),
])
def test_load_errors_name_their_argument(models_dir: Path, kwargs: dict, param: str) -> None:
    with pytest.raises(LLMError, match=param) as info:
        llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", **kwargs)
    assert info.value.param == param


def test_tokenizer_errors_name_their_argument(models_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerError) as info:  # the 32000-token Llama 2 vocabulary does not fit a 512-token model
        llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tokenizer.bin")
    assert info.value.param == "tokenizer"
    with pytest.raises(TokenizerError) as info:
        llmrun.load(models_dir / "stories260K.bin", tokenizer=tmp_path / "missing.bin")
    assert info.value.param == "tokenizer"
    with pytest.raises(InvalidArgumentError, match="tokenizer must be a path") as info:
        llmrun.load(models_dir / "stories260K.bin", tokenizer=5)  # type: ignore[arg-type]
    assert info.value.param == "tokenizer"
    cfg = make_config(vocab_size=40, max_seq_len=16)
    with llmrun.load(write_model(tmp_path / "m.bin", cfg, random_tensors(cfg))) as m:
        with pytest.raises(TokenizerError, match="tokenizer=") as info:
            m.tokenize("hello")
        assert info.value.param == "tokenizer"
        assert "-z/--tokenizer" in info.value.for_flags({"tokenizer": "-z/--tokenizer"})


def test_closing_an_unfinished_generation_says_cancelled(model: llmrun.Model) -> None:
    gen = model.stream("Once upon a time", max_tokens=50, temperature=0)
    next(gen)
    gen.close()
    assert gen.finish_reason == "cancelled"
    untouched = model.stream("Once upon a time", max_tokens=5, temperature=0)
    untouched.close()
    assert untouched.finish_reason == "cancelled"
    done = model.stream("Once upon a time", max_tokens=5, temperature=0)
    done.text()
    done.close()
    assert done.finish_reason == "length"  # closing a finished generation changes nothing
    reply = model.chat_stream([{"role": "user", "content": "Hi"}], max_tokens=50, temperature=0)
    next(reply)
    reply.close()
    assert reply.finish_reason == "cancelled"


def test_measurement_surface(models_dir: Path, tmp_path: Path) -> None:
    """evaluate/reset/has_tokenizer: what benchmarks time, without reaching into the engine."""
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as m:
        assert m.has_tokenizer
        prompt = m.tokenize("Once upon a time")
        rows = m.logits(prompt)
        m.reset()
        first = m.evaluate(prompt)
        np.testing.assert_allclose(first, rows[-1], rtol=1e-5, atol=1e-5)
        history = prompt + [int(np.argmax(first))]
        out = np.empty(512, dtype=np.float32)
        step = m.evaluate(history, out=out)  # one decode step: the cache holds the prompt
        assert step is out
        np.testing.assert_allclose(step, m.logits(history)[-1], rtol=1e-5, atol=1e-5)
        with pytest.raises(InvalidArgumentError, match="out") as info:
            m.evaluate(prompt, out=np.empty(3, dtype=np.float32))
        assert info.value.param == "out"
    cfg = make_config(vocab_size=40, max_seq_len=16)
    with llmrun.load(write_model(tmp_path / "m.bin", cfg, random_tensors(cfg))) as m:
        assert not m.has_tokenizer


def test_benchmarks_use_the_public_api() -> None:
    root = Path(__file__).resolve().parents[1]
    for path in (root / "benchmarks" / "compare.py", root / "benchmarks" / "bench_decode.py"):
        source = path.read_text()
        assert not re.search(r"\._(engine|tokenizer)\b", source), path


def test_isa_support_is_asked_not_ordered(monkeypatch: pytest.MonkeyPatch) -> None:
    """available_isas asks the library which instruction sets run here; it never compares their codes."""
    codes = llmrun.engine.ISA_NAMES
    # avx512vnni without avx2 (no real CPU): if the answer follows, it came from asking, not from the codes
    fake = types.SimpleNamespace(llm_isa_supported=lambda code: int(code in (codes["scalar"], codes["avx512vnni"])),
                                 llm_isa_best=lambda: codes["avx512vnni"])
    monkeypatch.setattr(llmrun.engine, "lib", fake)
    assert llmrun.engine.available_isas() == ["scalar", "avx512vnni"]


def test_llmrun_isa_environment_forces_a_level(models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """LLMRUN_ISA picks the kernels of every model loaded without an explicit isa (to measure on one machine what an
    older CPU gets); a name the library does not know, or a level this CPU lacks, is an error that names it."""
    path = models_dir / "stories260K-f32.gguf"
    monkeypatch.setenv("LLMRUN_ISA", "scalar")
    with llmrun.load(path, n_ctx=64, parallel=1) as m:
        assert m.info.isa == "scalar"
        assert m.generate("Once", max_tokens=4, temperature=0)
    monkeypatch.delenv("LLMRUN_ISA")
    with llmrun.load(path, n_ctx=64, parallel=1) as m:
        assert m.info.isa == best_isa()
    monkeypatch.setenv("LLMRUN_ISA", "avx9000")
    with pytest.raises(llmrun.InvalidArgumentError, match="LLMRUN_ISA.*avx9000") as e:
        llmrun.load(path, n_ctx=64, parallel=1)
    assert e.value.param == "isa"
    missing = [name for name in llmrun.engine.ISA_NAMES if name not in llmrun.engine.available_isas()]
    for name in missing:  # a level this machine cannot run (the arm64 ones on x86, the x86 ones on arm64)
        monkeypatch.setenv("LLMRUN_ISA", name)
        with pytest.raises(llmrun.InvalidArgumentError, match=f"LLMRUN_ISA environment variable asks for '{name}'"):
            llmrun.load(path, n_ctx=64, parallel=1)


def test_constants_come_from_the_c_library() -> None:
    from llmrun._kernel import ffi, lib
    assert llmrun.engine.ISA_NAMES == {ffi.string(lib.llm_isa_name(i)).decode(): i for i in range(lib.LLM_ISA_COUNT)}
    assert llmrun.engine.MAX_THREADS == lib.LLM_MAX_THREADS
    assert len(TENSOR_TYPES) == lib.LLM_TYPE_COUNT
    elems, nbytes = ffi.new("int64_t *"), ffi.new("int64_t *")
    for t in TENSOR_TYPES.values():
        assert ffi.string(lib.llm_type_name(t.code)).decode() == t.name
        assert lib.llm_type_layout(t.code, elems, nbytes) == 0 and (elems[0], nbytes[0]) == (t.block_elems,
                                                                                             t.block_bytes)
    with pytest.raises(InvalidArgumentError, match="n_threads"):
        llmrun.load(Path(__file__).parents[2] / "shared" / "models" / "stories260K.bin",
                    n_threads=lib.LLM_MAX_THREADS + 1)


def test_import_without_the_kernel_says_what_to_do(tmp_path: Path) -> None:
    """A source checkout without the built extension (llmrun/_kernel*.so) shadowing the installed package:
    one clear ImportError that names the fix, not a misleading "circular import"."""
    package = tmp_path / "llmrun"
    shutil.copytree(Path(llmrun.__file__).parent, package, ignore=shutil.ignore_patterns("_kernel*", "__pycache__"))
    # -S: no site hooks; then with them, where an editable install's finder could hand the copy the real
    # checkout's library (it must not be taken: the copy's Python and that C need not match)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), sysconfig.get_paths()["purelib"]])}
    for flags in (["-S"], []):
        result = subprocess.run([sys.executable, *flags, "-c", "import llmrun"], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0, flags
        last = result.stderr.strip().splitlines()[-1]
        assert last.startswith("ImportError") and "pip install -e ." in last and "circular" not in result.stderr
