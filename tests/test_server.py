"""`llmrun serve` through the official openai client (and raw httpx for what a client library would not send),
against a server on a free loopback port, on stories260K."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("starlette")
uvicorn = pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

import gguf  # noqa: E402
from gguf_fixtures import write_llama_gguf  # noqa: E402
from test_chat import HOSTILE, TOK, gguf_vocab  # noqa: E402

import llmrun  # noqa: E402
import llmrun.cli  # noqa: E402
import llmrun.server  # noqa: E402
from builders import make_config, random_tensors  # noqa: E402
from commands import LLMRUN  # noqa: E402
from llmrun import template_sandbox  # noqa: E402
from llmrun.server import ModelServer, ServerConfig, serving_in_thread  # noqa: E402

KEY = "test-key-0123"
NAME = "stories"
BODY_LIMIT = 64 * 1024
HANG_TIMEOUT_S = 600  # far beyond any run that works: only a hang gets there
CHAT = [{"role": "system", "content": "Tell a story."}, {"role": "user", "content": "Tom had a dog"}]


@dataclass
class Running:
    url: str
    server: ModelServer
    model: llmrun.Model

    def client(self, key: str = KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, timeout=30)

    def post(self, path: str, body: object = None, key: str | None = KEY, **kwargs: object) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        if body is not None:
            kwargs["content"] = body if isinstance(body, (bytes, str)) else json.dumps(body)
        kwargs.setdefault("timeout", 30)
        return httpx.post(f"{self.url}{path}", headers=headers, **kwargs)  # type: ignore[arg-type]


@contextlib.contextmanager
def serving(model: llmrun.Model, config: ServerConfig) -> Iterator[Running]:
    """`model` served on a free loopback port by uvicorn in a thread (llmrun.server.serving_in_thread); its log
    records reach pytest's caplog."""
    app_server = ModelServer(model, config)
    with serving_in_thread(app_server.app) as url:
        yield Running(url, app_server, model)


@pytest.fixture(scope="module")
def running(models_dir: Path) -> Iterator[Running]:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as model:
        with serving(model, ServerConfig(model_name=NAME, api_key=KEY, max_body_bytes=BODY_LIMIT)) as running:
            yield running


def test_health_and_models(running: Running) -> None:
    health = httpx.get(f"{running.url}/health").json()  # no key needed
    assert health["status"] == "ok" and health["requests_waiting"] == 0
    assert health["slots_idle"] + health["slots_processing"] == running.model.serving_stats().parallel
    client = running.client()
    assert [m.id for m in client.models.list()] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_completion_is_the_librarys_generation(running: Running) -> None:
    prompt = "Once upon a time"
    out = running.client().completions.create(model=NAME, prompt=prompt, max_tokens=20, temperature=0)
    assert out.object == "text_completion" and out.model == NAME and out.id.startswith("cmpl-")
    assert out.choices[0].text == running.model.generate(prompt, max_tokens=20, temperature=0)
    assert out.choices[0].finish_reason == "length"
    n_prompt = len(running.model.tokenize(prompt))
    assert out.usage.model_dump(exclude_none=True) == {"prompt_tokens": n_prompt, "completion_tokens": 20,
                                                       "total_tokens": n_prompt + 20}
    ids = running.model.tokenize(prompt)
    by_ids = running.client().completions.create(model=NAME, prompt=ids, max_tokens=20, temperature=0, echo=True)
    assert by_ids.choices[0].text == prompt + out.choices[0].text


def test_streamed_chat_joins_to_the_whole_answer(running: Running) -> None:
    client = running.client()
    args = dict(model=NAME, messages=CHAT, max_tokens=40, temperature=0.8, seed=11)
    whole = client.chat.completions.create(**args)
    chunks = list(client.chat.completions.create(**args, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert whole.choices[0].message.role == "assistant" and whole.object == "chat.completion"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    reference = running.model.chat(CHAT, max_tokens=40, temperature=0.8, seed=11)
    assert reference["message"]["content"] == text
    assert whole.usage.model_dump(exclude_none=True) == reference["usage"]


def test_the_kv_cache_carries_a_shared_prefix_across_requests(running: Running) -> None:
    client = running.client()
    system = {"role": "system", "content": "Lily and Tom went to the park to play with a red ball."}
    client.chat.completions.create(model=NAME, messages=[system, {"role": "user", "content": "Tom"}], max_tokens=4)
    second = client.chat.completions.create(model=NAME, messages=[system, {"role": "user", "content": "A cat"}],
                                            max_tokens=4)
    stats = running.server.last_stats
    assert stats is not None and stats.prompt_tokens == second.usage.prompt_tokens
    shared = len(running.model.tokenize(system["content"]))
    assert stats.reused_tokens >= shared - 1 > 5


def test_stop_strings(running: Running) -> None:
    client = running.client()
    full = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=60, temperature=0)
    assert "Lily" in full.choices[0].text
    cut = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=60, temperature=0,
                                    stop=["Lily", "never there"])
    assert cut.choices[0].text == full.choices[0].text.split("Lily")[0]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(model=NAME, prompt="Once upon a time", max_tokens=60, temperature=0,
                                         stop="Lily", stream=True)
    pieces = list(streamed)
    assert "".join(p.choices[0].text for p in pieces) == cut.choices[0].text
    assert pieces[-1].choices[0].finish_reason == "stop"


def test_sampling_fields_reach_the_sampler(running: Running) -> None:
    client = running.client()
    args = dict(model=NAME, prompt="Tom", max_tokens=30, temperature=0)
    plain = client.completions.create(**args).choices[0].text
    pen = client.completions.create(**args, frequency_penalty=1.5, presence_penalty=0.5).choices[0].text
    assert pen != plain
    assert pen == running.model.generate("Tom", max_tokens=30, temperature=0, frequency_penalty=1.5,
                                         presence_penalty=0.5)
    ext = client.completions.create(**args, extra_body={"repeat_penalty": 1.5, "top_k": 5, "min_p": 0.1})
    assert ext.choices[0].text == running.model.generate("Tom", max_tokens=30, temperature=0, repeat_penalty=1.5)


def test_logprobs(running: Running) -> None:
    client = running.client()
    chat = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                          top_logprobs=3)
    entries = chat.choices[0].logprobs.content
    assert len(entries) == chat.usage.completion_tokens == 8
    assert "".join(e.token for e in entries).lstrip() == chat.choices[0].message.content.lstrip()
    for e in entries:  # greedy: the chosen token is the most likely one
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == e.logprob <= 0
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
    stream = client.chat.completions.create(model=NAME, messages=CHAT, max_tokens=8, temperature=0, logprobs=True,
                                            top_logprobs=3, stream=True)
    streamed = [e for c in stream if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]
    # the same up to rounding: this time the prompt came from the KV cache
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in entries], abs=1e-5)
    legacy = client.completions.create(model=NAME, prompt="Tom", max_tokens=6, temperature=0, logprobs=2)
    lp = legacy.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 6
    assert all(len(alternatives) == 2 for alternatives in lp.top_logprobs)


def test_api_key_is_required(running: Running) -> None:
    with pytest.raises(openai.AuthenticationError):
        running.client(key="wrong").models.list()
    for key in (None, "wrong", KEY + "x"):
        r = running.post("/v1/completions", {"prompt": "Tom"}, key=key)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(f"{running.url}/v1/models", headers={"Authorization": f"Basic {KEY}"})
    assert r.status_code == 401


BAD = [
    ("/v1/completions", b"{not json", 400, None),
    ("/v1/completions", b"\xff\xfe", 400, None),
    ("/v1/completions", b"[1, 2]", 400, None),
    ("/v1/completions", b'{"prompt": "Tom", "temperature": NaN}', 400, None),
    ("/v1/completions", b"[" * 50_000, 400, None),
    ("/v1/completions", {}, 400, "prompt"),
    ("/v1/completions", {"prompt": 7}, 400, "prompt"),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "prompt"),
    ("/v1/completions", {"prompt": [1, 99999]}, 400, None),
    ("/v1/completions", {"prompt": "Tom", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "Tom", "max_tokens": "10"}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "Tom", "max_tokens": 1.5}, 400, "max_tokens"),
    ("/v1/completions", {"prompt": "Tom", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"prompt": "Tom", "temperature": 2.5}, 400, "temperature"),
    ("/v1/completions", {"prompt": "Tom", "temperature": 10**400}, 400, "temperature"),  # too big for a float
    ("/v1/completions", {"prompt": "Tom", "presence_penalty": -10**400}, 400, "presence_penalty"),
    ("/v1/completions", {"prompt": "Tom", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"prompt": "Tom", "top_k": -1}, 400, "top_k"),
    ("/v1/completions", {"prompt": "Tom", "seed": -5}, 400, "seed"),
    ("/v1/completions", {"prompt": "Tom", "seed": True}, 400, "seed"),
    ("/v1/completions", {"prompt": "Tom", "stop": ["a", ""]}, 400, "stop"),
    ("/v1/completions", {"prompt": "Tom", "stop": 3}, 400, "stop"),
    ("/v1/completions", {"prompt": "Tom", "n": 17}, 400, "n"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 0}, 400, "n"),
    ("/v1/completions", {"prompt": "Tom", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"prompt": "Tom", "logprobs": 9}, 400, "logprobs"),
    ("/v1/completions", {"prompt": "Tom", "suffix": "end"}, 400, "suffix"),
    ("/v1/completions", {"prompt": "Tom", "logit_bias": {"5": 10}}, 400, "logit_bias"),
    ("/v1/completions", {"prompt": "Tom", "model": 5}, 400, "model"),
    ("/v1/chat/completions", {}, 400, "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": None}]}, 400, "messages[0].content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]},
     400, "tools"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400,
     "top_logprobs"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "xml"}}, 400, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                              "response_format": {"type": "json_schema", "json_schema": {
                                  "name": "x", "schema": {"type": "object", "minProperties": "two"}}}},
     400, "response_format"),
    ("/v1/completions", {"prompt": "Tom", "response_format": {"type": "json_schema"}}, 400, "response_format"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 600}]}, 400, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": ["user"], "content": "hi"}]}, 400, "messages[0].role"),
    ("/v1/chat/completions", {"messages": [{"role": {"name": "user"}, "content": "hi"}]}, 400, "messages[0].role"),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD, ids=[f"{i}" for i in range(len(BAD))])
def test_bad_requests_get_openai_errors(running: Running, path: str, body: object, status: int,
                                        param: str | None) -> None:
    r = running.post(path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param
    if isinstance(body, dict) and "hi hi hi" in json.dumps(body):
        assert error["code"] == "context_length_exceeded"


def test_any_model_name_is_served_by_the_one_model(running: Running) -> None:
    """As llama-server: with one model, a request for any model name gets it (a client set up for another
    server's model name works as it is); the response names the model that answered."""
    client = running.client()
    out = client.completions.create(model="gpt-4", prompt="Tom", max_tokens=5, temperature=0)
    assert out.model == NAME and out.choices[0].text == running.model.generate("Tom", max_tokens=5, temperature=0)
    chat = client.chat.completions.create(model="some-other-model", messages=CHAT, max_tokens=3)
    assert chat.model == NAME and chat.usage.completion_tokens == 3


def test_a_client_gone_mid_body_is_a_disconnect_not_an_error(running: Running,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    port = int(running.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"prompt\": ")
        time.sleep(0.2)  # the server is reading the body
    assert wait_for(lambda: any("client disconnected (499)" in r.getMessage() for r in caplog.records))
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.text
    assert running.client().completions.create(model=NAME, prompt="Tom", max_tokens=2).usage.completion_tokens == 2


def test_a_runaway_chat_template_ends_and_the_server_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model whose template never finishes rendering (a C-level loop the sandbox's checks cannot see): the
    render ends at its budget whether or not its client waits, and the server answers the next requests."""
    monkeypatch.setattr(template_sandbox, "TIME_LIMIT_S", 0.25)
    cfg = make_config(vocab_size=TOK.vocab_size)
    path = tmp_path / "runaway.gguf"
    write_llama_gguf(path, cfg, random_tensors(cfg), vocab=gguf_vocab(),
                     extra_kv={"tokenizer.chat_template": (HOSTILE["wordwrap"], gguf.GGUFValueType.STRING)})
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with llmrun.load(path, n_threads=1) as model, serving(model, ServerConfig(model_name="runaway")) as server:
        with pytest.raises(httpx.ReadTimeout):  # a client that gives up while its template renders
            server.post("/v1/chat/completions", body, key=None, timeout=0.05)
        r = server.post("/v1/chat/completions", body, key=None, timeout=120)  # renders once the first has ended
        assert r.status_code == 400 and "took longer than" in r.json()["error"]["message"], r.text
        assert server.post("/v1/completions", {"prompt": "hi", "max_tokens": 2}, key=None).status_code == 200


def test_unknown_routes_and_methods(running: Running) -> None:
    assert running.post("/v2/anything", {}).status_code == 404
    r = httpx.get(f"{running.url}/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.json()["error"]["message"]
    assert httpx.get(f"{running.url}/health").status_code == 200


def test_oversized_bodies_get_413(running: Running) -> None:
    big = json.dumps({"prompt": "a" * (BODY_LIMIT + 10)})
    r = running.post("/v1/completions", big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the server counts what arrives
        yield b'{"prompt": "'
        for _ in range(BODY_LIMIT // 1024 + 2):
            yield b"a" * 1024
        yield b'"}'

    r = running.post("/v1/completions", None, content=chunked())
    assert r.status_code == 413
    assert running.client().completions.create(model=NAME, prompt="Tom", max_tokens=3).usage.completion_tokens == 3


def test_concurrent_clients_get_the_sequential_answers(running: Running) -> None:
    prompts = ["Tom", "Once upon a time", "Lily saw a", "The sun"]
    client = running.client()

    def ask(i: int) -> str:
        prompt = prompts[i % len(prompts)]
        if i % 2:
            return client.completions.create(model=NAME, prompt=prompt, max_tokens=24, temperature=0).choices[0].text
        stream = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=24, temperature=0, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    expected = [ask(i) for i in range(8)]
    pool = ThreadPoolExecutor(8)  # 8 clients x 4 requests
    try:  # the timeout only catches a hang (requests that never end): a stuck pool is left behind, not joined
        answers = list(pool.map(lambda i: [ask(i) for _ in range(4)], range(8), timeout=HANG_TIMEOUT_S))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    assert answers == [[expected[i]] * 4 for i in range(8)]
    assert wait_for(lambda: running.server.in_flight == 0)
    assert httpx.get(f"{running.url}/health").status_code == 200


@pytest.fixture
def slow_model(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each step of the model's scheduler takes at least 20 ms, as with a large model: a long answer takes
    seconds (the steps run in the scheduler's own thread, whatever the clients read)."""
    batch = llmrun.engine.Engine.batch

    def slow_batch(self: llmrun.engine.Engine, *args: object, **kwargs: object) -> object:
        time.sleep(0.02)
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(llmrun.engine.Engine, "batch", slow_batch)


def wait_for(condition: object, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.02)
    return False


def test_client_gone_mid_stream_stops_the_generation(running: Running, slow_model: None) -> None:
    server = running.server
    stopped = server.stopped
    body = {"model": NAME, "messages": CHAT, "max_tokens": 400, "temperature": 1.0, "min_p": 0.0, "seed": 1,
            "stream": True}
    with httpx.stream("POST", f"{running.url}/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        lines = r.iter_lines()
        assert next(lines).startswith("data: ")
    assert wait_for(lambda: server.stopped == stopped + 1, 5.0), "the generation went on"
    # the slot is free and the next request is answered normally
    out = running.client().completions.create(model=NAME, prompt="Tom", max_tokens=5, temperature=0)
    assert out.choices[0].text == running.model.generate("Tom", max_tokens=5, temperature=0)


def test_client_gone_while_waiting_for_a_whole_answer(running: Running, slow_model: None) -> None:
    server = running.server
    stopped = server.stopped
    with pytest.raises(httpx.ReadTimeout):
        running.post("/v1/completions", {"prompt": "Tom", "max_tokens": 400, "temperature": 1.0, "min_p": 0.0},
                     timeout=0.5)
    assert wait_for(lambda: server.stopped == stopped + 1, 5.0), "the generation went on"
    assert running.client().completions.create(model=NAME, prompt="Tom", max_tokens=3).usage.completion_tokens == 3


def test_client_closing_the_openai_stream_frees_the_slot_within_a_step(running: Running, slow_model: None,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    server = running.server
    stopped = server.stopped
    stream = running.client().chat.completions.create(model=NAME, messages=CHAT, max_tokens=400, temperature=1.0,
                                                      seed=2, stream=True, extra_body={"min_p": 0.0})
    for _, _chunk in zip(range(3), stream, strict=False):
        pass
    stream.close()  # the client goes away mid-stream
    assert wait_for(lambda: server.stopped == stopped + 1, 5.0), "the generation went on"  # a hang catcher
    assert server.last_stats is not None and server.last_stats.generated_tokens < 100  # stopped, not run out
    assert wait_for(lambda: any("finish cancelled" in r.getMessage() for r in caplog.records))
    out = running.client().completions.create(model=NAME, prompt="Tom", max_tokens=5, temperature=0)
    assert out.choices[0].text == running.model.generate("Tom", max_tokens=5, temperature=0)


def test_a_request_whose_client_leaves_while_queued_is_cancelled(models_dir: Path, slow_model: None,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """One slot, held by a stream: a client that gives up while its request waits (for the slot, or generating
    where the holder has already finished: the scheduler's tests show that a cancelled queued generation is
    never computed) cancels it, and the holder goes on."""
    caplog.set_level(logging.INFO)
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1,
                     parallel=1) as model, serving(model, ServerConfig(model_name=NAME, parallel=1)) as running:
        server = running.server
        body = {"model": NAME, "prompt": "Tom", "max_tokens": 400, "temperature": 1.0, "min_p": 0.0, "stream": True}
        with httpx.stream("POST", f"{running.url}/v1/completions", json=body, timeout=30) as holder:
            lines = holder.iter_lines()
            assert next(lines).startswith("data: ")  # holds the slot for seconds
            stopped, finished = server.stopped, server.finished
            with pytest.raises(httpx.ReadTimeout):  # a client that gives up waiting for its whole answer
                running.post("/v1/completions", {"prompt": "A long wait", "max_tokens": 400}, key=None, timeout=0.3)
            assert wait_for(lambda: server.in_flight == 1 and server.stopped == stopped + 1), "it went on"
            assert server.finished == finished
            assert next(line for line in lines if line).startswith("data: ")  # the holder goes on
            holder.close()
        assert wait_for(lambda: server.in_flight == 0 and server.stopped == stopped + 2, 5.0)
        assert sum("client disconnected (499)" in r.getMessage() for r in caplog.records) == 1
        assert running.post("/v1/completions", {"prompt": "Tom", "max_tokens": 2}, key=None).json()["usage"][
            "completion_tokens"] == 2


def test_logprob_bytes_of_a_split_emoji(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    from llmrun.sampling import Sampler

    emoji = "\N{SLIGHTLY SMILING FACE}"
    ids = running.model.tokenize(f"Hi {emoji}", add_bos=False)
    assert len(ids) >= 5  # the emoji is four byte tokens

    def sample(self: Sampler, logits: object, history: object, generated: list[int]) -> int:
        return ids[len(generated)] if len(generated) < len(ids) else 2  # then </s>

    monkeypatch.setattr(Sampler, "sample", sample)
    client = running.client()
    for stream in (False, True):
        args = dict(model=NAME, messages=CHAT, max_tokens=20, logprobs=True, top_logprobs=2)
        if stream:
            chunks = list(client.chat.completions.create(**args, stream=True))
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            entries = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
        else:
            chat = client.chat.completions.create(**args)
            content, entries = chat.choices[0].message.content, chat.choices[0].logprobs.content
        assert content.endswith(emoji)
        assert [e.bytes for e in entries[-4:]] == [[b] for b in emoji.encode()]  # the raw bytes, not U+FFFD's
        assert all(e.token == "\ufffd" for e in entries[-4:])
        assert bytes(b for e in entries for b in e.bytes).decode().endswith(emoji)
        assert all(t.bytes is not None for e in entries for t in e.top_logprobs)


def test_a_full_queue_gets_503(running: Running, slow_model: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """parallel + max_queue requests in flight (here 1 + 1): the next one gets 503 at once, and gets in once one
    of them has ended."""
    server = running.server
    monkeypatch.setattr(server, "config", dataclasses.replace(server.config, max_queue=1))
    monkeypatch.setattr(server, "parallel", 1)
    body = {"model": NAME, "prompt": "Tom", "max_tokens": 400, "temperature": 1.0, "min_p": 0.0, "stream": True}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.stream("POST", f"{running.url}/v1/completions", json=body, timeout=30, headers=headers) as first, \
            httpx.stream("POST", f"{running.url}/v1/completions", json=body, timeout=30, headers=headers) as second:
        held = [first.iter_lines(), second.iter_lines()]  # kept: dropping an iterator would close its connection
        assert all(next(lines).startswith("data: ") for lines in held)
        assert server.in_flight == 2
        r = running.post("/v1/completions", {"prompt": "Tom", "max_tokens": 2})
        assert r.status_code == 503 and r.json()["error"]["code"] == "server_busy"
        assert server.in_flight == 2
        assert 'llmrun_requests_total{endpoint="completions",outcome="busy"} 1.0' in \
            httpx.get(f"{running.url}/metrics").text.splitlines()
        first.close()  # one leaves: the next request gets in
        assert wait_for(lambda: server.in_flight == 1)
        assert running.post("/v1/completions", {"prompt": "Tom", "max_tokens": 2}).json()["usage"][
            "completion_tokens"] == 2
    assert wait_for(lambda: server.in_flight == 0)

def test_cli_serve(models_dir: Path) -> None:
    env = {**os.environ, "LLMRUN_API_KEY": "cli-key", "PYTHONUNBUFFERED": "1"}
    cmd = [*LLMRUN, "serve", str(models_dir / "stories260K.bin"), "-z",
           str(models_dir / "tok512.bin"), "--port", "0", "-t", "1", "-c", "256", "--alias", "tiny", "--parallel", "2",
           "--kv-size", "512"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = None
        lines = []
        deadline = time.monotonic() + 20
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            match = re.search(r"running on (http://127\.0\.0\.1:\d+)", line)
            url = match.group(1) if match else None
        assert url, "no 'running on' line"
        start = "".join(lines)  # what was served, with which context and threads, before the first request
        assert "stories260K.bin" in start and "'tiny'" in start and "context 256" in start and "threads 1" in start
        assert "2 requests generated together" in start and "KV pool of 512 positions" in start
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="cli-key", max_retries=0, timeout=30)
        assert [m.id for m in client.models.list()] == ["tiny"]
        assert client.completions.create(model="tiny", prompt="Tom", max_tokens=4).usage.completion_tokens == 4
        assert httpx.get(f"{url}/v1/models").status_code == 401
        health = httpx.get(f"{url}/health").json()  # no key needed
        assert health["slots_idle"] + health["slots_processing"] == 2
    finally:
        proc.terminate()
        proc.wait(10)


def test_without_the_server_extra(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                  tmp_path: Path) -> None:
    from llmrun import cli

    monkeypatch.setitem(sys.modules, "llmrun.server", None)  # as if starlette/uvicorn were missing
    assert cli.main(["serve", "model.gguf"]) == cli.EXIT_ERROR
    assert "pip install 'llmrun[server]'" in capsys.readouterr().err
    code = ("import sys; sys.modules.update(starlette=None, uvicorn=None, anyio=None); import llmrun, llmrun.cli, "
            "llmrun.openai_api; print('ok')")
    # the llmrun this test imported (installed in CI, the built source tree in development)
    env = {**os.environ, "PYTHONPATH": str(Path(llmrun.__file__).resolve().parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_default_model_name_keeps_a_folder_name_whole(monkeypatch: pytest.MonkeyPatch, models_dir: Path,
                                                         tmp_path: Path) -> None:
    """A Hugging Face folder is named as it is (Qwen2.5-0.5B-Instruct, not Qwen2.5-0); a file loses .gguf / .bin."""
    served: list[str] = []
    monkeypatch.setattr(llmrun.server, "serve", lambda model, config, **kwargs: served.append(config.model_name))
    folder = tmp_path / "Qwen2.5-0.5B-Instruct"
    shutil.copytree(Path(__file__).parent / "data" / "hf" / "qwen2-bias", folder)
    for args in ([folder], [models_dir / "stories260K-q8_0.gguf"], [models_dir / "stories260K.bin", "-z",
                                                                     models_dir / "tok512.bin"]):
        assert llmrun.cli.main(["serve", *map(str, args)]) == 0
    assert served == ["Qwen2.5-0.5B-Instruct", "stories260K-q8_0", "stories260K"]
