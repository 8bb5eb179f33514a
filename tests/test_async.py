"""Cancellation from other threads and tasks, the asyncio API (Model.astream/agenerate/achat), and the bytes of
log-probabilities. A random model large enough that a prompt batch takes milliseconds makes "mid-prefill" and
"within one step" observable."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import llmrun
from builders import make_config, random_tensors, write_model
from llmrun.engine import Engine
from llmrun.generate import logprob_entry
from llmrun.sampling import Sampler

N_BATCH = 8
PROMPT = [1] + [300 + i % 200 for i in range(599)]  # 75 prompt batches of N_BATCH
CHAT = [{"role": "user", "content": "Tom had a dog"}]
EMOJI = "🙂"  # four UTF-8 bytes: four byte-fallback tokens in the stories / Llama 2 tokenizers


@pytest.fixture(scope="module")
def slow(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[llmrun.Model]:
    """A random 4-layer model of dim 512 with the stories tokenizer: a prompt batch of 8 takes a few ms."""
    cfg = make_config(dim=512, hidden_dim=1376, n_layers=4, n_heads=8, n_kv_heads=4, vocab_size=512,
                      max_seq_len=1024)
    path = write_model(tmp_path_factory.mktemp("slow") / "slow.bin", cfg, random_tensors(cfg, seed=1))
    with llmrun.load(path, tokenizer=models_dir / "tok512.bin", n_threads=1, n_batch=N_BATCH) as model:
        yield model


@pytest.fixture(scope="module")
def stories(models_dir: Path) -> Iterator[llmrun.Model]:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as model:
        yield model


def model_is_free(model: llmrun.Model) -> bool:
    """No generation holds a slot or waits for one, and no forward pass runs."""
    lock = model._engine._lock
    if model.serving_stats().active or model.serving_stats().waiting or not lock.acquire(blocking=False):
        return False
    lock.release()
    return True


def cached_tokens(model: llmrun.Model) -> list[int]:
    """What the cache of the slot a finished (or cancelled) generation left holds: the longest idle slot's."""
    return max((slot.tokens for slot in model._scheduler.slots if slot.job is None), key=len)


def consume_in_thread(gen: llmrun.Generation) -> tuple[threading.Thread, list[str]]:
    pieces: list[str] = []
    thread = threading.Thread(target=lambda: pieces.extend(gen), daemon=True)
    thread.start()
    return thread, pieces


def wait_until(condition: object, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.0005)


# --- cancel from another thread -------------------------------------------------------------------------------

def test_cancel_from_another_thread_mid_stream(slow: llmrun.Model) -> None:
    slow.reset()
    gen = slow.stream("Once upon a time", max_tokens=None, temperature=0)
    thread, pieces = consume_in_thread(gen)
    wait_until(lambda: len(gen.tokens) >= 20)
    gen.cancel()
    at_cancel = len(gen.tokens)
    thread.join(5)  # catches a hang only: how long a step takes is the machine's business
    assert not thread.is_alive()
    assert len(gen.tokens) <= at_cancel + 1  # within one decode step: at most the step in progress ends
    assert gen.finish_reason == "cancelled" and gen.cancelled
    n = len(gen.tokens)
    assert 20 <= n < slow.info.n_ctx
    assert model_is_free(slow)
    # the cache holds the prompt and what was generated (all but the last token, which was never run): valid,
    # so the same request again reuses it and gives the same tokens as a fresh start
    prompt = gen.prompt
    cached = cached_tokens(slow)
    assert cached == (prompt + gen.tokens)[:len(cached)] and len(cached) >= len(prompt) + n - 1
    again = slow.stream(prompt + gen.tokens[:-1], max_tokens=5, temperature=0)
    assert again.text() is not None and again.stats.reused_tokens == len(prompt) + n - 2
    slow.reset()
    fresh = slow.stream(prompt + gen.tokens[:-1], max_tokens=5, temperature=0)
    assert fresh.text() is not None and fresh.tokens == again.tokens
    assert pieces and slow.detokenize(gen.tokens).startswith("".join(pieces).lstrip())


def test_close_from_another_thread_is_cancel(slow: llmrun.Model) -> None:
    gen = slow.stream("Once upon a time", max_tokens=None, temperature=0)
    thread, _ = consume_in_thread(gen)
    wait_until(lambda: len(gen.tokens) >= 5)
    gen.close()  # used to raise "generator already executing"
    thread.join(5)
    assert not thread.is_alive() and gen.finish_reason == "cancelled"
    gen.close()  # and again, after the end: nothing changes
    assert gen.finish_reason == "cancelled" and model_is_free(slow)


def test_cancel_mid_prefill_stops_between_batches(slow: llmrun.Model) -> None:
    engine = slow._engine
    slow.reset()
    before = engine.tokens_computed
    gen = slow.stream(PROMPT, max_tokens=50, temperature=0)
    thread, pieces = consume_in_thread(gen)
    wait_until(lambda: engine.tokens_computed - before >= 5 * N_BATCH, 10)
    gen.cancel()
    thread.join(5)
    assert not thread.is_alive()
    computed = engine.tokens_computed - before
    assert gen.finish_reason == "cancelled" and gen.tokens == [] and pieces == []
    assert computed < len(PROMPT) - N_BATCH, "the whole prompt was processed"
    assert computed % N_BATCH == 0  # whole batches only
    assert cached_tokens(slow) == PROMPT[:computed]  # what was computed stays, valid
    assert model_is_free(slow)
    # the next request reuses those batches and answers as a fresh model does
    resumed = slow.stream(PROMPT, max_tokens=4, temperature=0)
    text = resumed.text()
    assert resumed.stats.reused_tokens == computed
    slow.reset()
    assert slow.generate(PROMPT, max_tokens=4, temperature=0) == text


def test_cancel_before_start_computes_nothing(slow: llmrun.Model) -> None:
    engine = slow._engine
    before = engine.tokens_computed
    gen = slow.stream("A brand new prompt", max_tokens=10)
    gen.cancel()
    assert list(gen) == [] and gen.finish_reason == "cancelled" and engine.tokens_computed == before


def test_cancel_after_the_end_changes_nothing(stories: llmrun.Model) -> None:
    gen = stories.stream("Tom", max_tokens=3, temperature=0)
    gen.text()
    gen.cancel()
    assert gen.finish_reason == "length"


def test_chat_stream_cancel_from_another_thread(slow: llmrun.Model) -> None:
    stream = slow.chat_stream(CHAT, temperature=0)
    thread = threading.Thread(target=lambda: stream.result(), daemon=True)
    thread.start()
    wait_until(lambda: len(stream.generation.tokens) >= 5)
    stream.cancel()
    thread.join(5)
    assert not thread.is_alive() and stream.finish_reason == "cancelled" and model_is_free(slow)


# --- asyncio --------------------------------------------------------------------------------------------------

def test_async_api_gives_the_sync_results(stories: llmrun.Model) -> None:
    async def main() -> None:
        pieces = [p async for p in stories.astream("Once upon a time", max_tokens=30, temperature=0)]
        assert pieces == list(stories.stream("Once upon a time", max_tokens=30, temperature=0))
        assert await stories.agenerate("Tom", max_tokens=20, temperature=0) == \
            stories.generate("Tom", max_tokens=20, temperature=0)
        reply = await stories.achat(CHAT, max_tokens=12, temperature=0, logprobs=2)
        sync = stories.chat(CHAT, max_tokens=12, temperature=0, logprobs=2)
        assert {k: v for k, v in reply.items() if k != "logprobs"} == {k: v for k, v in sync.items() if k != "logprobs"}
        a, b = reply["logprobs"]["content"], sync["logprobs"]["content"]  # (the cache reuse moves them by ~1e-7)
        assert [(e["token"], e["bytes"]) for e in a] == [(e["token"], e["bytes"]) for e in b]
        assert [e["logprob"] for e in a] == pytest.approx([e["logprob"] for e in b], abs=1e-5)
        stream = stories.achat_stream(CHAT, max_tokens=12, temperature=0)
        text = "".join([p async for p in stream])
        assert text == reply["message"]["content"] and stream.finish_reason == "length"
        assert stream.source is not None and stream.source.usage == reply["usage"]
        # argument errors surface where the first piece is awaited
        with pytest.raises(llmrun.SamplingError):
            await stories.agenerate("Tom", temperature=-1)
        with pytest.raises(llmrun.InvalidArgumentError):
            await stories.agenerate("Tom", nonsense=1)

    asyncio.run(main())


def test_heartbeat_stays_on_time_during_generation(slow: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10 ms heartbeat on the same loop keeps its beat while a long prompt is processed and tokens decoded:
    every forward pass runs off the loop's thread (what keeps the loop free); the gaps are printed, not asserted
    (a loaded machine delays any beat)."""
    slow.reset()
    gaps: list[float] = []
    forward_threads: set[int] = set()
    batch = Engine.batch

    def recording(self: Engine, *args: object, **kwargs: object) -> object:
        forward_threads.add(threading.get_ident())
        return batch(self, *args, **kwargs)

    monkeypatch.setattr(Engine, "batch", recording)

    async def heartbeat(stop: asyncio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.01)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    async def main() -> tuple[float, llmrun.Generation]:
        stop = asyncio.Event()
        beat = asyncio.create_task(heartbeat(stop))
        await asyncio.sleep(0.05)
        start = time.perf_counter()
        stream = slow.astream(PROMPT, max_tokens=300, temperature=0)
        async for _ in stream:
            pass
        elapsed = time.perf_counter() - start
        stop.set()
        await beat
        assert stream.generation is not None
        return elapsed, stream.generation

    elapsed, gen = asyncio.run(main())
    assert len(gen.tokens) == 300
    s = gen.stats
    step = max(s.decode_seconds / s.generated_tokens, s.prefill_seconds / (len(PROMPT) / N_BATCH))
    worst = max(gaps)
    print(f"heartbeat: {len(gaps)} beats of 10 ms over {elapsed * 1000:.0f} ms of generation (prefill "
          f"{s.prefill_seconds * 1000:.0f} ms, 300 tokens {s.decode_seconds * 1000:.0f} ms; a step <= "
          f"{step * 1000:.1f} ms): max gap {worst * 1000:.1f} ms, mean {sum(gaps) / len(gaps) * 1000:.1f} ms")
    assert forward_threads and threading.get_ident() not in forward_threads, "a forward pass ran on the loop"


def test_cancelling_the_task_cancels_the_generation(slow: llmrun.Model) -> None:
    async def main() -> None:
        stream = slow.astream("Once upon a time", max_tokens=None, temperature=0)
        got: list[str] = []

        async def consume() -> None:
            async for piece in stream:
                got.append(piece)

        task = asyncio.create_task(consume())
        while len(got) < 10:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        gen = stream.generation
        assert gen is not None and gen.finish_reason == "cancelled"
        assert len(gen.tokens) < slow.info.n_ctx - 20
        assert model_is_free(slow)  # the worker has stopped by the time the task ended
        # the model is free for the next call
        assert await slow.agenerate("Tom", max_tokens=5, temperature=0) == slow.generate("Tom", max_tokens=5,
                                                                                          temperature=0)

    asyncio.run(main())


def test_cancel_from_another_task_and_aclose(slow: llmrun.Model) -> None:
    async def main() -> None:
        stream = slow.astream("Once upon a time", max_tokens=None, temperature=0)

        async def canceller() -> None:
            await asyncio.sleep(0.05)
            stream.cancel()

        other = asyncio.create_task(canceller())
        pieces = [p async for p in stream]  # ends (no exception) once cancelled
        await other
        assert stream.finish_reason == "cancelled" and pieces
        await stream.wait()
        assert model_is_free(slow)

        # aclose (and async with) stop a stream that is being read ahead
        async with slow.astream("Once upon a time", max_tokens=None, temperature=0) as s:
            async for _ in s:
                break
        assert s.finish_reason == "cancelled" and model_is_free(slow)

        # cancelled before it started: nothing runs
        never = slow.astream("Tom", max_tokens=5)
        never.cancel()
        assert [p async for p in never] == [] and never.finish_reason == "cancelled"

    asyncio.run(main())


def test_cancel_the_async_chat(slow: llmrun.Model) -> None:
    async def main() -> None:
        task = asyncio.create_task(slow.achat(CHAT, temperature=0))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert model_is_free(slow)

    asyncio.run(main())


# --- log-probability bytes -----------------------------------------------------------------------------------

def forced(monkeypatch: pytest.MonkeyPatch, ids: list[int]) -> None:
    """The sampler picks `ids` in turn (then the end of generation): a model's output chosen by the test."""
    queue = list(ids)

    def sample(self: Sampler, logits: object, history: object, generated: list[int]) -> int:
        return queue[len(generated)] if len(generated) < len(queue) else 2  # </s>

    monkeypatch.setattr(Sampler, "sample", sample)


def test_logprob_bytes_of_an_emoji_split_into_byte_tokens(stories: llmrun.Model,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    tok = stories.tokenizer
    ids = tok.encode(f"Hi {EMOJI}", add_bos=False)
    byte_ids = ids[-4:]
    assert [logprob_entry(tok, t, 0.0)["bytes"] for t in byte_ids] == [[b] for b in EMOJI.encode()]
    forced(monkeypatch, ids)
    gen = stories.stream("Tom", max_tokens=20, logprobs=3)
    assert gen.text().endswith(EMOJI)  # the stream never shows half of it
    content = gen.logprobs_content()
    assert [c["bytes"] for c in content[-4:]] == [[b] for b in EMOJI.encode()]
    assert all(c["token"] == "\ufffd" for c in content[-4:])  # the text of one byte alone, as OpenAI's "token"
    assert bytes(b for c in content for b in c["bytes"]).decode() == " " + tok.decode(ids)  # the token "▁Hi"
    assert all(len(c["top_logprobs"]) == 3 and all("bytes" in t for t in c["top_logprobs"]) for c in content)
    reply = stories.chat(CHAT, max_tokens=20, logprobs=1)
    assert reply["message"]["content"].endswith(EMOJI)
    chat_bytes = [c["bytes"] for c in reply["logprobs"]["content"]]
    assert chat_bytes[-4:] == [[b] for b in EMOJI.encode()]
    assert bytes(b for c in chat_bytes for b in c).decode().endswith(EMOJI)


def test_logprob_bytes_with_the_llama2_tokenizer(models_dir: Path) -> None:
    from llmrun.formats import read_tokenizer

    tok = read_tokenizer(models_dir / "tokenizer.bin", 32000)
    ids = tok.encode(f"ok {EMOJI}!", add_bos=False)
    entries = [logprob_entry(tok, t, -1.0) for t in ids]
    assert bytes(b for e in entries for b in e["bytes"]).decode() == f" ok {EMOJI}!"
    partial = [e for e in entries if len(e["bytes"]) == 1 and e["bytes"][0] >= 0x80]
    assert [e["bytes"][0] for e in partial] == list(EMOJI.encode()) and all(e["token"] == "\ufffd" for e in partial)


def test_the_readme_snippets_for_cancel_and_asyncio_run() -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, re.S)
    cancel = next(b for b in blocks if "gen.cancel" in b)
    aio = next(b for b in blocks if "async def main" in b)
    with llmrun.load("demo") as model:
        exec(cancel, {"model": model, "llmrun": llmrun})
    exec(aio, {"llmrun": llmrun})
