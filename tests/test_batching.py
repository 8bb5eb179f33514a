"""Several generations at once (llmrun/scheduler.py): each one's tokens are what it produces alone, whatever runs
beside it, whenever it arrives and leaves; seeds; the shared KV pool (full pools, preemption, prefix copies);
cancellation; generate_batch / chat_batch; embeddings through the batched path.

"Alone" is the same model generating one request at a time. For float weights the tokens must be identical:
a token's arithmetic does not depend on the batch it is in (the float products of one token and of a batch sum in
the same order, attention and norms are per token). For 8-bit weights the one-token and the batch products
round differently (the same integer dot products, float sums in another order), so a near-tie may flip a
greedy token: at least 95% of the requests must match exactly, and the logits of one token batched and alone
stay within BATCHED_Q8_TOL.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from gguf_fixtures import write_llama_gguf

import llmrun
from builders import make_config, random_tensors
from llmrun.errors import InvalidArgumentError

BATCHED_Q8_TOL = 2e-3  # max |logit difference| of a Q8_0 token in a batch vs alone (logits ~ N(0, 1) x 4)
VOCAB = 320


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random-weight llama GGUF files, one per weight type (with a vocabulary, so text can be decoded)."""
    cfg = make_config(dim=64, hidden_dim=160, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=VOCAB, max_seq_len=512)
    t = random_tensors(cfg, seed=3, tied=False)
    out = {}
    for ttype in ("f32", "f16", "q8_0"):
        out[ttype] = tmp_path_factory.mktemp("batching") / f"random-{ttype}.gguf"
        write_llama_gguf(out[ttype], cfg, t, ttype=ttype)
    return out


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    """n prompts of mixed lengths (1 to 90 tokens): BOS, then random ids."""
    rng = np.random.default_rng(seed)
    return [[1] + rng.integers(3, VOCAB, size=int(rng.integers(0, 90))).tolist() for _ in range(n)]


def alone(model: llmrun.Model, prompt: list[int], **kw: object) -> list[int]:
    gen = model.stream(prompt, **kw)
    gen.text()
    return gen.tokens


@pytest.mark.parametrize("ttype", ["f32", "f16"])
def test_float_batches_give_each_request_its_own_tokens(files: dict[str, Path], ttype: str) -> None:
    with llmrun.load(files[ttype], n_ctx=512, parallel=4, n_threads=2) as model:
        ps = prompts(10, seed=1)
        lengths = [5 + 7 * (i % 4) for i in range(len(ps))]  # they end at different steps: others take the slots
        expected = [alone(model, p, temperature=0, max_tokens=n) for p, n in zip(ps, lengths, strict=True)]
        gens = [model.stream(p, temperature=0, max_tokens=n) for p, n in zip(ps, lengths, strict=True)]
        for g in gens:
            g.start()
        for g in reversed(gens):  # the order they are read in does not matter
            g.text()
        assert [g.tokens for g in gens] == expected
        assert model.serving_stats().active == 0


def test_requests_joining_and_leaving_mid_stream(files: dict[str, Path]) -> None:
    """Threads start their requests at different moments (after others have produced some tokens) and some stop
    reading early: every completed request still has exactly its own tokens."""
    with llmrun.load(files["f32"], n_ctx=512, parallel=3, n_threads=2) as model:
        ps = prompts(8, seed=2)
        limits = [400 if i == 5 else 24 for i in range(len(ps))]  # request 5 leaves early: it cannot end first
        expected = [alone(model, p, temperature=0, max_tokens=n) for p, n in zip(ps, limits, strict=True)]
        got: dict[int, list[int]] = {}
        started = [threading.Event() for _ in ps]

        def run(i: int) -> None:
            if i:
                started[i - 1].wait()  # request i starts once request i-1 has produced tokens
            gen = model.stream(ps[i], temperature=0, max_tokens=limits[i])
            for k, _piece in enumerate(gen):
                if k == 2:
                    started[i].set()
                if i == 5 and k == 4:  # this client goes away: its slot frees within a step
                    gen.close()
                    break
            started[i].set()
            got[i] = gen.tokens

        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(ps))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads)
        for i, tokens in got.items():
            if i == 5:
                assert tokens == expected[i][:len(tokens)] and len(tokens) < 400
            else:
                assert tokens == expected[i], i


def test_q8_0_batches_match_alone_on_most_requests(files: dict[str, Path]) -> None:
    with llmrun.load(files["q8_0"], n_ctx=512, parallel=8, n_threads=2) as model:
        ps = prompts(24, seed=4)
        expected = [alone(model, p, temperature=0, max_tokens=16) for p in ps]
        got = [g.tokens for g in _run_all([model.stream(p, temperature=0, max_tokens=16) for p in ps])]
        same = sum(a == b for a, b in zip(got, expected, strict=True))
        assert same >= 0.95 * len(ps), f"{same} of {len(ps)} requests match"


def test_q8_0_token_logits_batched_vs_alone(files: dict[str, Path]) -> None:
    """The logits of a sequence's token computed beside others (one batch of several sequences) and alone."""
    with llmrun.load(files["q8_0"], n_ctx=512, parallel=4, n_threads=2) as model:
        engine = model._engine
        ps = prompts(4, seed=5)
        single = [engine.evaluate(p).copy() for p in ps]  # sequence 0, one sequence at a time
        tokens, seqs, positions, outputs = [], [], [], []
        for s, p in enumerate(ps, start=1):
            tokens += p
            seqs += [s] * len(p)
            positions += range(len(p))
            outputs += [False] * (len(p) - 1) + [True]
        batched = engine.batch(tokens, seqs, positions, outputs)
        assert np.abs(batched - np.stack(single)).max() <= BATCHED_Q8_TOL
        for s in range(1, 5):
            engine.seq_keep(s, 0)


def test_seeded_sampling_is_the_same_alone_and_batched(files: dict[str, Path]) -> None:
    with llmrun.load(files["f32"], n_ctx=512, parallel=4, n_threads=2) as model:
        ps = prompts(6, seed=6)
        kw = dict(temperature=0.9, top_k=0, top_p=1.0, min_p=0.0, max_tokens=20)
        expected = [alone(model, p, seed=100 + i, **kw) for i, p in enumerate(ps)]
        got = [g.tokens for g in _run_all([model.stream(p, seed=100 + i, **kw) for i, p in enumerate(ps)])]
        assert got == expected
        texts = model.generate_batch(ps, seed=100, **kw)  # generate_batch: seed + i for prompt i
        assert texts == [model.generate(p, seed=100 + i, **kw) for i, p in enumerate(ps)]


def test_prefix_copies_are_not_recomputed(files: dict[str, Path]) -> None:
    """n choices of one prompt: the prompt is computed once; the others copy its blocks (only the last token,
    whose logits each needs, runs again) and the choices differ (seed + i)."""
    with llmrun.load(files["f32"], n_ctx=512, parallel=4, n_threads=2) as model:
        prompt = prompts(1, seed=7)[0] + list(range(10, 80))
        before = model.serving_stats()
        texts = model.generate_batch([prompt] * 3, temperature=1.0, seed=5, max_tokens=12)
        stats = model.serving_stats()
        assert stats.prompt_tokens - before.prompt_tokens == 3 * len(prompt)
        assert stats.computed_prompt_tokens - before.computed_prompt_tokens == len(prompt) + 2
        assert len(set(texts)) > 1
        assert texts == [model.generate(prompt, temperature=1.0, seed=5 + i, max_tokens=12) for i in range(3)]


def test_a_full_pool_preempts_and_recomputes(files: dict[str, Path]) -> None:
    """A pool of 256 positions for requests that need ~100 each: they cannot all run at once; the latest is
    preempted (recomputed later) and every request still gets its own tokens; the pool is given back."""
    with llmrun.load(files["f32"], n_ctx=256, kv_size=256, parallel=6, n_threads=2) as model:
        ps = [p[:60] for p in prompts(12, seed=8)]
        expected = [alone(model, p, temperature=0, max_tokens=40) for p in ps]
        long_one = prompts(1, seed=9)[0] + list(range(3, 150))  # and one long request beside them
        expected_long = alone(model, long_one, temperature=0, max_tokens=20)
        gens = [model.stream(p, temperature=0, max_tokens=40) for p in ps]
        gens.insert(3, model.stream(long_one, temperature=0, max_tokens=20))
        got = [g.tokens for g in _run_all(gens)]
        assert got[3] == expected_long
        del got[3]
        assert got == expected
        stats = model.serving_stats()
        assert stats.preempted > 0
        assert stats.kv_blocks_used <= stats.kv_blocks_total


def test_a_lone_generation_ends_at_its_context_and_kv_size_below_it_is_refused(files: dict[str, Path]) -> None:
    with llmrun.load(files["f32"], n_ctx=128, n_threads=1) as model:
        gen = model.stream(prompts(1)[0], temperature=0, max_tokens=None)
        gen.text()
        assert gen.finish_reason == "length"  # the context ends it, not the pool (kv_size >= n_ctx)
    with pytest.raises(InvalidArgumentError, match="kv_size"):
        llmrun.load(files["f32"], n_ctx=128, kv_size=64)


def test_cancel_frees_the_slot_within_a_step(files: dict[str, Path]) -> None:
    with llmrun.load(files["f32"], n_ctx=512, parallel=2, n_threads=2) as model:
        a = model.stream(prompts(1)[0], temperature=0, max_tokens=None)
        b = model.stream(prompts(1, seed=1)[0], temperature=0, max_tokens=8)
        c = model.stream(prompts(1, seed=2)[0], temperature=0, max_tokens=8)
        for g in (a, b, c):
            g.start()
        next(a)
        assert model.serving_stats().waiting == 1  # c waits: two slots
        a.cancel()
        n_before = len(a.tokens)
        b.text()
        c.text()
        assert a.finish_reason == "cancelled" and len(a.tokens) <= n_before + 1
        assert model.serving_stats().active == 0


def test_chat_batch_matches_chat(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", parallel=3) as model:
        conversations = [[{"role": "user", "content": text}] for text in
                         ("Once upon a time", "The cat", "Lily and Tom went to the park", "A big dog")]
        replies = model.chat_batch(conversations, temperature=0, max_tokens=30)
        assert replies == [model.chat(c, temperature=0, max_tokens=30) for c in conversations]


def test_batch_arguments_are_checked(files: dict[str, Path]) -> None:
    with llmrun.load(files["f32"], n_ctx=128, n_threads=1) as model:
        with pytest.raises(InvalidArgumentError, match="prompts"):
            model.generate_batch([])
        with pytest.raises(InvalidArgumentError, match="prompts"):
            model.generate_batch("one string")
        with pytest.raises(InvalidArgumentError, match="conversations"):
            model.chat_batch([])
    for bad in (0, -1, 10**6, 2.5, True):
        with pytest.raises(InvalidArgumentError, match="parallel"):
            llmrun.load(files["f32"], parallel=bad)


def test_background_driver_runs_generations_nobody_waits_for(files: dict[str, Path]) -> None:
    """With start_batching() the steps run in a thread of their own: a started generation completes although
    nobody iterates it."""
    with llmrun.load(files["f32"], n_ctx=512, parallel=2, n_threads=2) as model:
        expected = alone(model, prompts(1)[0], temperature=0, max_tokens=10)
        model.start_batching()
        try:
            gen = model.stream(prompts(1)[0], temperature=0, max_tokens=10).start()
            for _ in range(2000):
                if gen.finish_reason is not None:
                    break
                threading.Event().wait(0.01)
            assert gen.finish_reason is not None
            assert gen.text() == model.detokenize(expected) or gen.tokens == expected
        finally:
            model.stop_batching()


def test_embeddings_go_through_the_batched_path(files: dict[str, Path]) -> None:
    """Texts packed as sequences of one batch give what each gives alone (exactly, float weights)."""
    with llmrun.load(files["f32"], n_ctx=512, n_threads=2) as model:
        texts = prompts(40, seed=10)  # more texts than one pack holds
        together = model.embed(texts, pooling="mean")
        each = np.stack([model.embed([t], pooling="mean")[0] for t in texts])
        assert np.array_equal(together, each)


def _run_all(gens: list[llmrun.Generation]) -> list[llmrun.Generation]:
    for g in gens:
        g.start()
    for g in gens:
        g.text()
    return gens


def test_the_readme_snippet_runs() -> None:
    import re

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "generate_batch" in b)
    exec(snippet, {"llmrun": llmrun, "print": lambda *a: None})


def test_a_generation_nobody_holds_is_cancelled(files: dict[str, Path]) -> None:
    """A started generation that its caller dropped unfinished (never closed) leaves its slot at the next step
    instead of generating on to max_tokens."""
    import gc

    with llmrun.load(files["f32"], n_ctx=512, parallel=1, n_threads=1) as model:
        model.stream(prompts(1)[0], temperature=0, max_tokens=None).start()
        gc.collect()
        before = model.serving_stats().generated_tokens
        assert len(model.stream(prompts(1, seed=3)[0], temperature=0, max_tokens=5).tokens) == 0
        gen = model.stream(prompts(1, seed=3)[0], temperature=0, max_tokens=5)
        gen.text()
        assert model.serving_stats().generated_tokens - before == len(gen.tokens) == 5
        assert model.serving_stats().active == 0


def test_an_interrupted_admission_loses_nothing(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C landing while the scheduler admits a generation (in the caller's thread): reading it again carries
    on, and its tokens are what they would have been."""
    from llmrun import scheduler

    with llmrun.load(files["f32"], n_ctx=256, parallel=2, n_threads=1) as model:
        p = prompts(1, seed=11)[0]
        expected = alone(model, p, temperature=0, max_tokens=12)
        model.reset()
        place = scheduler.Scheduler._place
        calls = []

        def interrupted_once(self: scheduler.Scheduler, job: object) -> None:
            calls.append(job)
            if len(calls) == 1:
                raise KeyboardInterrupt
            place(self, job)

        monkeypatch.setattr(scheduler.Scheduler, "_place", interrupted_once)
        gen = model.stream(p, temperature=0, max_tokens=12)
        with pytest.raises(KeyboardInterrupt):
            next(gen)
        gen.text()
        assert gen.tokens == expected and len(calls) == 2


def test_prompts_get_room_when_decoders_fill_the_batch(files: dict[str, Path]) -> None:
    """n_batch 2 with 3 slots: the decoding generations leave a prompt room in every batch (or every other one,
    with n_batch 1), so a newcomer starts at once instead of after the others end."""
    for n_batch in (2, 1):
        with llmrun.load(files["f32"], n_ctx=512, parallel=3, n_batch=n_batch, n_threads=1) as model:
            ps = prompts(3, seed=12)
            expected = [alone(model, p, temperature=0, max_tokens=n) for p, n in zip(ps, (60, 60, 5), strict=True)]
            a, b = (model.stream(p, temperature=0, max_tokens=60).start() for p in ps[:2])
            next(a), next(b)
            c = model.stream(ps[2], temperature=0, max_tokens=5)
            c.text()
            assert c.tokens == expected[2] and len(a.tokens) < 60 and len(b.tokens) < 60
            a.text(), b.text()
            assert [a.tokens, b.tokens] == expected[:2]


def test_embeddings_beside_generations_do_not_break_them(models_dir: Path) -> None:
    """Model.embed from another thread while generations fill a small KV pool: the generations never fail (an
    embedding that finds no room raises KVCacheFullError; it never takes a generation's room)."""
    from llmrun.errors import KVCacheFullError

    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_ctx=128, parallel=2,
                     n_threads=1) as model:
        expected = model.generate("Once upon a time", max_tokens=100, temperature=0)
        stop = threading.Event()
        outcomes = {"ok": 0, "full": 0}

        def embedder() -> None:
            while not stop.is_set():
                try:
                    model.embed(["hello there, how are you today my friend"])
                    outcomes["ok"] += 1
                except KVCacheFullError:
                    outcomes["full"] += 1

        thread = threading.Thread(target=embedder)
        thread.start()
        try:
            for _ in range(5):
                assert model.generate("Once upon a time", max_tokens=100, temperature=0) == expected
        finally:
            stop.set()
            thread.join()
        assert outcomes["ok"] > 0


def test_a_seed_in_params_counts_per_item_too(files: dict[str, Path]) -> None:
    with llmrun.load(files["f32"], n_ctx=256, parallel=2, n_threads=1) as model:
        params = llmrun.SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, seed=40)
        p = prompts(1, seed=13)[0]
        assert model.generate_batch([p, p], params, max_tokens=10) == \
            [model.generate(p, params, seed=40 + i, max_tokens=10) for i in range(2)]


def test_finished_caches_outlive_the_next_request(files: dict[str, Path]) -> None:
    """One slot generating, but the caches of finished generations stay in idle sequences while the pool has
    room: a client's prompt asked again after someone else's request is not computed again."""
    with llmrun.load(files["f32"], n_ctx=256, parallel=1, n_threads=1) as model:
        mine, other = prompts(2, seed=14)
        model.generate(mine, max_tokens=4, temperature=0)
        model.generate(other, max_tokens=4, temperature=0)
        again = model.stream(mine, max_tokens=4, temperature=0)
        again.text()
        assert again.stats.reused_tokens == len(mine) - 1


def test_a_closed_generation_frees_its_room_at_once(files: dict[str, Path]) -> None:
    """Closing a generation (no background thread, nothing else stepping) frees its slot and KV blocks at once:
    scoring calls on a pool it filled work right away."""
    with llmrun.load(files["f32"], n_ctx=64, parallel=1, n_threads=1) as model:
        gen = model.stream([1] + list(range(3, 53)), temperature=0, max_tokens=10)
        next(gen)
        gen.close()
        assert model.serving_stats().active == 0
        ids = [1] + list(range(10, 50))
        assert model.logits(ids).shape == (len(ids), VOCAB)
        assert model.embed([ids]).shape == (1, 64)


def test_common_prefix_is_the_naive_one() -> None:
    from llmrun.engine import common_prefix

    rng = np.random.default_rng(15)
    for _ in range(500):
        a = rng.integers(0, 3, size=int(rng.integers(0, 40))).tolist()
        b = a[:int(rng.integers(0, len(a) + 1))] + rng.integers(0, 3, size=int(rng.integers(0, 40))).tolist()
        naive = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        assert common_prefix(a, b) == common_prefix(b, a) == naive
