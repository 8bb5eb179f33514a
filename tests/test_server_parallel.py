"""`llmrun serve` with many clients at once (issue 16), through the official openai client against a real uvicorn
server on a free loopback port, on stories260K: concurrent streams of mixed lengths joining and leaving (some
closed midway, some with n = 3 choices) each get what the model generates alone; /health shows the slots;
/metrics parses with prometheus_client's parser and counts what was asked; memory stays flat over 1,000
requests."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_server import HANG_TIMEOUT_S, serving, wait_for

import llmrun
import llmrun.server
from llmrun.server import ServerConfig

NAME = "stories"
KEY = "parallel-key"
PARALLEL = 4
SEED = 1234
STORY = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
         "friends. One day, she saw a big red ball under a tree and ran to get it. ")


@pytest.fixture(scope="module")
def model(models_dir: Path) -> Iterator[llmrun.Model]:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1,
                     parallel=PARALLEL) as model:
        yield model


@dataclass
class Case:
    """One client: a completion (or a chat turn), its token limit and choices; `close_after` chunks (None: read
    to the end); `temperature` 0 (greedy) or sampled with SEED (choice i: seed SEED + i)."""

    chat: bool
    prompt: str
    max_tokens: int
    n: int = 1
    close_after: int | None = None
    temperature: float = 0.0

    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.prompt}]


PROMPTS = ["Tom", "Lily saw a", "The sun was hot and", STORY, STORY * 2, "A cat", "Once upon a time", "Ben and"]
CASES = [
    *(Case(chat=i % 3 == 0, prompt=PROMPTS[i % len(PROMPTS)], max_tokens=(8, 24, 40, 64)[i % 4]) for i in range(10)),
    Case(chat=False, prompt="Tom", max_tokens=24, n=3),
    Case(chat=True, prompt=STORY, max_tokens=16, n=3),
    Case(chat=False, prompt="Lily saw a", max_tokens=30, n=3, temperature=0.8),  # three different seeded choices
    Case(chat=False, prompt=STORY, max_tokens=400, close_after=3),  # clients that leave midway
    Case(chat=True, prompt="Tom", max_tokens=400, close_after=2),
    Case(chat=False, prompt="A cat", max_tokens=400, n=3, close_after=4),
]


@dataclass
class Expected:
    texts: list[str]  # a choice's text alone (greedy: the same for every choice)
    prompt_tokens: int


def alone(model: llmrun.Model, case: Case) -> Expected:
    """What each choice of `case` is when the model generates it alone (for a closed client: the longest
    answer it can have read a prefix of)."""
    sampling = {"temperature": case.temperature, **({"seed": SEED} if case.temperature else {})}
    texts = []
    for i in range(case.n):
        if "seed" in sampling:
            sampling["seed"] = SEED + i
        if case.chat:
            reply = model.chat(case.messages(), max_tokens=case.max_tokens, **sampling)
            texts.append(reply["message"]["content"])
            prompt_tokens = reply["usage"]["prompt_tokens"]
        else:
            texts.append(model.generate(case.prompt, max_tokens=case.max_tokens, **sampling))
            prompt_tokens = len(model.tokenize(case.prompt))
    return Expected(texts, prompt_tokens)


@dataclass
class Answer:
    texts: list[str]
    finishes: list[str | None]
    usage: dict[str, int] | None
    closed: bool


def ask(client: openai.OpenAI, case: Case) -> Answer:
    """Streams `case` and joins each choice's pieces (chunks interleave the choices: each names its index)."""
    kwargs = dict(model=NAME, max_tokens=case.max_tokens, n=case.n, temperature=case.temperature, stream=True,
                  stream_options={"include_usage": True}, **({"seed": SEED} if case.temperature else {}))
    if case.chat:
        stream = client.chat.completions.create(messages=case.messages(), **kwargs)  # type: ignore[call-overload]
    else:
        stream = client.completions.create(prompt=case.prompt, **kwargs)  # type: ignore[call-overload]
    texts, finishes, usage = [""] * case.n, [None] * case.n, None
    for k, chunk in enumerate(stream):
        if case.close_after is not None and k == case.close_after:
            stream.close()  # the client goes away mid-stream
            return Answer(texts, finishes, None, closed=True)
        if chunk.usage is not None:
            usage = chunk.usage.model_dump(exclude_none=True)
        for choice in chunk.choices:
            piece = (choice.delta.content or "") if case.chat else choice.text
            texts[choice.index] += piece
            if choice.finish_reason is not None:
                assert finishes[choice.index] is None, "two finish chunks for one choice"
                finishes[choice.index] = choice.finish_reason
    return Answer(texts, finishes, usage, closed=False)


def metrics(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics (no key needed), parsed by prometheus_client's parser: {(sample name, labels): value}."""
    r = httpx.get(f"{url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def delta(after: dict, before: dict, name: str, **labels: str) -> float:
    key = (name, tuple(sorted(labels.items())))
    return after.get(key, 0.0) - before.get(key, 0.0)


def pace(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on each step of the model's scheduler takes at least 10 ms, as with a larger model: a 400-token
    answer takes seconds, far longer than a client that leaves after a few chunks stays (so that it is counted
    as cancelled)."""
    batch = llmrun.engine.Engine.batch

    def paced_batch(self: llmrun.engine.Engine, *args: object, **kwargs: object) -> object:
        time.sleep(0.01)
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(llmrun.engine.Engine, "batch", paced_batch)


def test_concurrent_streams_get_what_each_generates_alone(model: llmrun.Model, monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    assert len(CASES) == 16
    expected = [alone(model, case) for case in CASES]  # before the server starts: nothing else runs
    pace(monkeypatch)
    assert all(len(set(e.texts)) == 3 for c, e in zip(CASES, expected, strict=True) if c.temperature)  # seeds differ
    with serving(model, ServerConfig(model_name=NAME, api_key=KEY)) as running:
        client = running.client(KEY)
        before = metrics(running.url)
        start = threading.Barrier(len(CASES) + 1)

        def run(case: Case) -> Answer:
            start.wait()
            return ask(client, case)

        pool = ThreadPoolExecutor(len(CASES))
        try:  # the timeout only catches a hang
            futures = [pool.submit(run, case) for case in CASES]
            start.wait()
            health = httpx.get(f"{running.url}/health").json()  # while they run
            answers = [f.result(timeout=HANG_TIMEOUT_S) for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        assert health["status"] == "ok"
        assert health["slots_idle"] + health["slots_processing"] == PARALLEL and health["requests_waiting"] >= 0

        for case, want, got in zip(CASES, expected, answers, strict=True):
            assert got.closed == (case.close_after is not None)
            if got.closed:  # what it read is the start of its answer
                assert all(want.texts[i].startswith(text) for i, text in enumerate(got.texts)), case
                continue
            assert got.texts == want.texts, case
            assert all(f in ("stop", "length") for f in got.finishes), case
            assert got.usage is not None and got.usage["prompt_tokens"] == want.prompt_tokens, case  # counted once
            assert case.n <= got.usage["completion_tokens"] <= case.n * case.max_tokens, case  # all choices'

        # the server has let every request go (a closed stream is noticed within a hop)
        assert wait_for(lambda: running.server.in_flight == 0, 10.0)
        assert wait_for(lambda: httpx.get(f"{running.url}/health").json()["slots_processing"] == 0, 10.0)
        after = metrics(running.url)
        completed = [(c, a) for c, a in zip(CASES, answers, strict=True) if not a.closed]
        for endpoint, chat in (("completions", False), ("chat_completions", True)):
            assert delta(after, before, "llmrun_requests_total", endpoint=endpoint, outcome="ok") == \
                sum(c.chat == chat for c, _ in completed)
            assert delta(after, before, "llmrun_requests_total", endpoint=endpoint, outcome="cancelled") == \
                sum(c.chat == chat and c.close_after is not None for c in CASES)
            assert delta(after, before, "llmrun_request_duration_seconds_count", endpoint=endpoint) == \
                sum(c.chat == chat for c in CASES)
            assert delta(after, before, "llmrun_time_to_first_token_seconds_count", endpoint=endpoint) == \
                sum(c.chat == chat for c in CASES)  # every one had a first piece
        assert delta(after, before, "llmrun_prompt_tokens_total") == sum(e.prompt_tokens for e in expected)
        assert delta(after, before, "llmrun_generation_tokens_total") >= \
            sum(a.usage["completion_tokens"] for _, a in completed if a.usage)
        assert after[("llmrun_slots_total", ())] == PARALLEL and after[("llmrun_requests_in_flight", ())] == 0
        assert after[("llmrun_kv_blocks_total", ())] > 0


def test_n_choices_without_streaming(model: llmrun.Model) -> None:
    greedy = model.generate("Tom", max_tokens=12, temperature=0)
    seeded = [model.generate("Tom", max_tokens=12, temperature=0.9, seed=7 + i) for i in range(3)]
    chat = model.chat([{"role": "user", "content": "Tom"}], max_tokens=10, temperature=0)
    with serving(model, ServerConfig(model_name=NAME)) as running:
        client = running.client("unused")
        out = client.completions.create(model=NAME, prompt="Tom", max_tokens=12, temperature=0, n=3)
        assert [c.index for c in out.choices] == [0, 1, 2] and [c.text for c in out.choices] == [greedy] * 3
        n_prompt = len(model.tokenize("Tom"))
        assert out.usage.prompt_tokens == n_prompt and out.usage.completion_tokens == 3 * 12
        out = client.completions.create(model=NAME, prompt="Tom", max_tokens=12, temperature=0.9, seed=7, n=3)
        assert [c.text for c in out.choices] == seeded  # choice i: seed + i
        reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Tom"}],
                                               max_tokens=10, temperature=0, n=2)
        assert [c.message.content for c in reply.choices] == [chat["message"]["content"]] * 2
        assert reply.usage.completion_tokens == 2 * chat["usage"]["completion_tokens"]
        r = running.post("/v1/completions", {"prompt": "Tom", "n": 17}, key=None)
        assert r.status_code == 400 and r.json()["error"]["param"] == "n" and "n must be" in r.text


def rss_bytes() -> int:
    """This process's resident set size (the server runs in it), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


RSS_GROWTH_LIMIT = 30 << 20  # bytes: a leak of 30 KB a request would show as 24 MB over 800 requests


def test_memory_stays_flat_over_1000_requests(model: llmrun.Model) -> None:
    with serving(model, ServerConfig(model_name=NAME)) as running:
        client = running.client("unused")
        prompts = ["Tom", "Lily saw a", "A cat", STORY]

        def one(i: int) -> int:
            prompt = prompts[i % len(prompts)]
            if i % 2:
                stream = client.completions.create(model=NAME, prompt=prompt, max_tokens=3, stream=True)
                return sum(1 for _ in stream)
            if i % 4 == 0:
                return len(client.completions.create(model=NAME, prompt=prompt, max_tokens=3, n=2).choices)
            reply = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=3)
            return len(reply.choices)

        with ThreadPoolExecutor(8) as pool:  # several at a time
            assert all(list(pool.map(one, range(200), timeout=HANG_TIMEOUT_S)))
            first = rss_bytes()
            assert all(list(pool.map(one, range(200, 1000), timeout=HANG_TIMEOUT_S)))
            last = rss_bytes()
        assert last - first < RSS_GROWTH_LIMIT, f"RSS grew by {(last - first) / 2**20:.1f} MiB over 800 requests"
        assert wait_for(lambda: running.server.in_flight == 0)
        ok = sum(v for (name, labels), v in metrics(running.url).items()
                 if name == "llmrun_requests_total" and ("outcome", "ok") in labels)
        assert ok == 1000


def test_health_and_metrics_need_no_key_but_the_api_does(model: llmrun.Model) -> None:
    with serving(model, ServerConfig(model_name=NAME, api_key=KEY)) as running:
        assert httpx.get(f"{running.url}/health").json() == {"status": "ok", "slots_idle": PARALLEL,
                                                             "slots_processing": 0, "requests_waiting": 0}
        families = {f.name: f for f in text_string_to_metric_families(httpx.get(f"{running.url}/metrics").text)}
        for name, kind in [("llmrun_requests", "counter"), ("llmrun_prompt_tokens", "counter"),
                           ("llmrun_generation_tokens", "counter"), ("llmrun_requests_in_flight", "gauge"),
                           ("llmrun_requests_waiting", "gauge"), ("llmrun_slots_busy", "gauge"),
                           ("llmrun_slots_total", "gauge"), ("llmrun_kv_blocks_used", "gauge"),
                           ("llmrun_kv_blocks_total", "gauge"), ("llmrun_time_to_first_token_seconds", "histogram"),
                           ("llmrun_request_duration_seconds", "histogram")]:
            assert families[name].type == kind, name
        r = running.post("/v1/completions", {"prompt": "Tom", "max_tokens": 2}, key=None)
        assert r.status_code == 401
        after = metrics(running.url)
        assert after[("llmrun_requests_total", (("endpoint", "completions"), ("outcome", "client_error")))] == 1
        # a streaming request refused before its stream began is counted once, as the client's error
        r = running.post("/v1/completions", {"prompt": "Tom " * 2000, "max_tokens": 2, "stream": True}, key=KEY)
        assert r.status_code == 400
        again = metrics(running.url)
        assert {k: v - after.get(k, 0.0) for k, v in again.items() if k[0] == "llmrun_requests_total"
                and v != after.get(k, 0.0)} == {("llmrun_requests_total", (("endpoint", "completions"),
                                                                           ("outcome", "client_error"))): 1.0}


def test_the_server_starts_and_stops_the_models_batching(model: llmrun.Model, monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    calls: list[str] = []
    monkeypatch.setattr(model, "start_batching", lambda: calls.append("start"))
    monkeypatch.setattr(model, "stop_batching", lambda: calls.append("stop"))
    warm_up = model.warm_up
    monkeypatch.setattr(model, "warm_up", lambda: (calls.append("warm up"), warm_up()))
    with serving(model, ServerConfig(model_name=NAME)) as running:
        assert calls == ["warm up", "start"]  # before the first request: the weights read once, then the steps
        assert running.post("/v1/completions", {"prompt": "Tom", "max_tokens": 2}, key=None).status_code == 200
    assert calls == ["warm up", "start", "stop"]
