"""Structured output (llmrun/structured.py) on random-weight models, which produce noise when unconstrained: every
finished output must be valid (jsonschema with format checks, or a full regex match), greedy and sampled, on a
byte-level BPE vocabulary (qwen3) and a SentencePiece byte-fallback one (llama-tied); Lark and regex forms;
streaming; max_tokens cuts; invalid schemas; the server through the openai client."""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema")
pytest.importorskip("llguidance")

import llmrun  # noqa: E402
from llmrun import Grammar, InvalidArgumentError  # noqa: E402

HF = Path(__file__).parent / "data" / "hf"
MAX_TOKENS = 160

SCHEMAS = {
    "nested": {"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 6},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "address": {"type": "object", "properties": {"zip": {"type": "string", "pattern": "^[0-9]{5}$"},
                                                      "city": {"type": "string", "maxLength": 5}},
                    "required": ["zip", "city"], "additionalProperties": False}},
        "required": ["name", "age", "address"], "additionalProperties": False},
    "array_bounds": {"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "minItems": 2, "maxItems": 4},
        "scores": {"type": "array", "items": {"type": "number", "minimum": -1, "maximum": 1}, "maxItems": 3}},
        "required": ["tags", "scores"], "additionalProperties": False},
    "enum_const": {"type": "object", "properties": {
        "color": {"enum": ["red", "green", "blue"]}, "v": {"const": 2}, "n": {"type": "null"},
        "flag": {"type": "boolean"}},
        "required": ["color", "v", "n", "flag"], "additionalProperties": False},
    "any_of": {"type": "object", "properties": {
        "id": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 999}, {"type": "string", "maxLength": 4}]},
        "note": {"type": ["string", "null"], "maxLength": 4}},
        "required": ["id", "note"], "additionalProperties": False},
    "formats": {"type": "object", "properties": {
        "day": {"type": "string", "format": "date"}, "uid": {"type": "string", "format": "uuid"}},
        "required": ["day", "uid"], "additionalProperties": False},
    "optional": {"type": "object", "properties": {
        "a": {"type": "integer", "minimum": 1, "maximum": 9}, "b": {"type": "boolean"},
        "c": {"type": "string", "maxLength": 2}},
        "required": ["a"], "additionalProperties": False},
    "top_array": {"type": "array", "items": {"type": "object", "properties": {"k": {"enum": ["x", "y"]}},
                                             "required": ["k"], "additionalProperties": False},
                  "minItems": 1, "maxItems": 3},
    "ref": {"type": "object", "$defs": {"pt": {"type": "object", "properties": {
        "x": {"type": "integer", "minimum": -9, "maximum": 9}, "y": {"type": "integer", "minimum": -9, "maximum": 9}},
        "required": ["x", "y"], "additionalProperties": False}},
        "properties": {"from": {"$ref": "#/$defs/pt"}, "to": {"$ref": "#/$defs/pt"}},
        "required": ["from", "to"], "additionalProperties": False},
}
SAMPLED_SEEDS = range(10)


def _valid_date(s: str) -> bool:
    import datetime
    try:
        datetime.date.fromisoformat(s)
        return re.fullmatch(r"\d{4}-\d{2}-\d{2}", s) is not None
    except ValueError:
        return False


FORMATS = jsonschema.FormatChecker()
FORMATS.checks("date")(_valid_date)  # jsonschema checks "date" only with rfc3339-validator installed
FORMATS.checks("uuid")(lambda s: re.fullmatch(r"[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}", s) is not None)


@pytest.fixture(scope="module", params=["qwen3", "llama-tied"])
def model(request: pytest.FixtureRequest) -> Iterator[llmrun.Model]:
    with llmrun.load(HF / request.param, n_threads=1) as m:
        yield m


def _fmt(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


def _check_json(text: str, schema: dict) -> None:
    jsonschema.validate(json.loads(text), schema, format_checker=FORMATS)


@pytest.mark.parametrize("name", SCHEMAS)
def test_every_output_matches_its_schema(model: llmrun.Model, name: str) -> None:
    """Greedy and 10 sampled generations per schema and model (8 x 11 x 2 = 176 in all): every one that ends by
    itself is valid JSON of the schema; nearly all end by themselves within MAX_TOKENS."""
    runs = [dict(temperature=0)] + [dict(temperature=1.0, seed=s) for s in SAMPLED_SEEDS]
    stopped = 0
    for kw in runs:
        gen = model.stream("Data:", max_tokens=MAX_TOKENS, response_format=_fmt(name), **kw)
        text = gen.text()
        if gen.finish_reason == "stop":
            stopped += 1
            _check_json(text, SCHEMAS[name])
        else:
            assert gen.finish_reason == "length" and len(gen.tokens) == MAX_TOKENS
    assert stopped >= len(runs) - 1, f"{name}: only {stopped} of {len(runs)} ended"


def test_unconstrained_output_is_noise(model: llmrun.Model) -> None:
    """The check above means something: without the constraint the same model writes no JSON."""
    text = model.generate("Data:", max_tokens=40, temperature=0)
    with pytest.raises(ValueError):
        json.loads(text)


def test_json_object(model: llmrun.Model) -> None:
    """{"type": "json_object"}: any JSON object. Noise models write long strings, so some runs are cut."""
    done = 0
    for seed in range(8):
        gen = model.stream("x", max_tokens=MAX_TOKENS, response_format={"type": "json_object"}, temperature=1.0,
                           top_k=5, seed=seed)
        text = gen.text()
        assert text.startswith("{")
        if gen.finish_reason == "stop":
            done += 1
            assert isinstance(json.loads(text), dict)
    reply = model.chat([{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS, temperature=0,
                       response_format=_fmt("enum_const"))
    assert reply["finish_reason"] == "stop"
    _check_json(reply["message"]["content"], SCHEMAS["enum_const"])


def test_grammar_as_a_json_schema(model: llmrun.Model) -> None:
    text = model.generate("x", max_tokens=MAX_TOKENS, temperature=0.7, seed=1,
                          grammar=Grammar.json_schema(json.dumps(SCHEMAS["optional"])))
    _check_json(text, SCHEMAS["optional"])


# (Rust regex syntax: \d is any Unicode digit, so the patterns say [0-9])
REGEXES = [r"[0-9]{3}-[0-9]{4}", r"(cat|dog|bird)s?", r"[a-z]+(\.[a-z]+){1,3}",
           r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}Z"]


@pytest.mark.parametrize("pattern", REGEXES)
def test_regex(model: llmrun.Model, pattern: str) -> None:
    for kw in [dict(temperature=0)] + [dict(temperature=1.0, seed=s) for s in range(6)]:
        gen = model.stream("x", max_tokens=60, grammar=Grammar.regex(pattern), **kw)
        text = gen.text()
        if gen.finish_reason == "stop":
            assert re.fullmatch(pattern, text), (pattern, text)
        else:
            assert len(gen.tokens) == 60


LARK = r"""
start: expr
expr: term (("+" | "-") term)*
term: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""
LARK_CHECK = re.compile(r"[0-9()+\-]+")


def _balanced_expr(s: str) -> bool:
    try:  # a Python expression of the same shape: digits, + -, parentheses (no leading zeros issue: eval ints)
        return LARK_CHECK.fullmatch(s) is not None and isinstance(eval(re.sub(r"\b0+(\d)", r"\1", s)), int)
    except SyntaxError:
        return False


def test_lark(model: llmrun.Model) -> None:
    ok = 0
    for kw in [dict(temperature=0)] + [dict(temperature=1.0, seed=s) for s in range(10)]:
        for grammar in (LARK, Grammar.lark(LARK)):
            gen = model.stream("x", max_tokens=60, grammar=grammar, **kw)
            text = gen.text()
            if gen.finish_reason == "stop":
                ok += 1
                assert _balanced_expr(text), text
    assert ok >= 11


def test_streaming_pieces_are_the_text(model: llmrun.Model) -> None:
    fmt = _fmt("nested")
    pieces = list(model.stream("x", max_tokens=MAX_TOKENS, temperature=0.8, seed=4, response_format=fmt))
    whole = model.generate("x", max_tokens=MAX_TOKENS, temperature=0.8, seed=4, response_format=fmt)
    assert "".join(pieces) == whole and len(pieces) > 3
    _check_json(whole, SCHEMAS["nested"])
    chat = model.chat_stream([{"role": "user", "content": "hi"}], max_tokens=MAX_TOKENS, temperature=0.8, seed=4,
                             response_format=fmt)
    text = "".join(chat)
    _check_json(text, SCHEMAS["nested"])


def test_penalties_and_logprobs(model: llmrun.Model) -> None:
    """Penalties change the sampled tokens, never the validity; logprobs are the model's own (unmasked)."""
    fmt = _fmt("ref")
    for kw in [dict(repeat_penalty=1.5, temperature=0), dict(presence_penalty=1.5, frequency_penalty=1.0,
                                                             temperature=0.9, seed=3)]:
        gen = model.stream("x", max_tokens=MAX_TOKENS, response_format=fmt, logprobs=2, **kw)
        text = gen.text()
        assert gen.finish_reason == "stop"
        _check_json(text, SCHEMAS["ref"])
        assert len(gen.token_logprobs) == len(gen.tokens)
        assert all(e.logprob <= 0 and len(e.top) == 2 for e in gen.token_logprobs)


def test_max_tokens_cut_is_length_and_a_prefix(model: llmrun.Model) -> None:
    fmt = _fmt("nested")
    full = model.stream("x", max_tokens=MAX_TOKENS, temperature=0, response_format=fmt)
    text = full.text()
    cut = model.stream("x", max_tokens=3, temperature=0, response_format=fmt)
    part = cut.text()
    assert cut.finish_reason == "length" and len(cut.tokens) == 3
    assert text.startswith(part)  # incomplete: not valid JSON on its own


def test_async(model: llmrun.Model) -> None:
    text = asyncio.run(model.agenerate("x", max_tokens=MAX_TOKENS, temperature=0, response_format=_fmt("ref")))
    _check_json(text, SCHEMAS["ref"])


BAD = [
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}}),
     "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}),
     "response_format"),
    (dict(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"minItems": "2"}}}),
     "response_format"),
    (dict(response_format={"type": "json_schema"}), "response_format"),
    (dict(response_format={"type": "xml"}), "response_format"),
    (dict(response_format="json"), "response_format"),
    (dict(grammar="start: undefined_rule"), "grammar"),
    (dict(grammar=Grammar.regex("(ab")), "grammar"),
    (dict(grammar=7), "grammar"),
    (dict(grammar="start: \"a\"", response_format={"type": "json_object"}), "grammar"),
]


@pytest.mark.parametrize(("kwargs", "param"), BAD, ids=range(len(BAD)))
def test_invalid_constraints_are_invalid_arguments(model: llmrun.Model, kwargs: dict, param: str) -> None:
    with pytest.raises(InvalidArgumentError) as e:
        model.generate("x", max_tokens=4, **kwargs)
    assert e.value.param == param
    with pytest.raises(InvalidArgumentError):
        model.chat([{"role": "user", "content": "hi"}], max_tokens=4, **kwargs)


def test_text_format_is_unconstrained(model: llmrun.Model) -> None:
    a = model.generate("x", max_tokens=8, temperature=0, response_format={"type": "text"})
    assert a == model.generate("x", max_tokens=8, temperature=0)


def test_missing_llguidance_names_the_package(model: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "llguidance", None)
    with pytest.raises(InvalidArgumentError, match="llguidance"):
        model.generate("x", max_tokens=4, response_format={"type": "json_object"})


# --- the server, through the official openai client ------------------------------------------------------

def test_server(model: llmrun.Model) -> None:
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    from test_server import serving

    from llmrun.server import ServerConfig

    with serving(model, ServerConfig(model_name="m", api_key="k")) as running:
        client = running.client("k")
        messages = [{"role": "user", "content": "hi"}]
        r = client.chat.completions.create(model="m", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                           response_format=_fmt("nested"))
        assert r.choices[0].finish_reason == "stop"
        _check_json(r.choices[0].message.content, SCHEMAS["nested"])
        stream = client.chat.completions.create(model="m", messages=messages, max_tokens=MAX_TOKENS, temperature=0.9,
                                                seed=2, response_format=_fmt("any_of"), stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        _check_json(text, SCHEMAS["any_of"])
        c = client.completions.create(model="m", prompt="x", max_tokens=MAX_TOKENS, temperature=0,
                                      extra_body={"response_format": {"type": "json_object"}})
        assert c.choices[0].text.startswith("{")
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="m", messages=messages, response_format={
                "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frob"}}})
        assert e.value.status_code == 400 and e.value.body["param"] == "response_format"
        # the server goes on
        r = client.chat.completions.create(model="m", messages=messages, max_tokens=MAX_TOKENS, temperature=0,
                                           response_format=_fmt("enum_const"))
        _check_json(r.choices[0].message.content, SCHEMAS["enum_const"])
