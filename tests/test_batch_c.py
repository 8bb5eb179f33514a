"""Several sequences in one C context (issue 16, part 1): llm_batch over tokens of any sequences, the sequence
operations (keep, copy, length, resume_min), the KV cache's pool of blocks (shared blocks, copy on write, windowed
layers giving blocks back, a full pool changing nothing), the hostile inputs, and the memory llm_ctx_bytes counts.

Equality: a token's result does not depend on the other tokens of its batch. The attention of a token reads only
its own sequence's blocks and accumulates its weighted sum in the same order whatever else is in the batch, and
the matrix-matrix kernels compute each row alone; a batch of ONE token (or ONE classifier row) takes the
matrix-vector kernels instead, which round differently in the last bits. So each sequence's logits from a mixed
batch are compared EXACTLY (np.array_equal) with the same sequence run with the same chunking next to a different
companion sequence (every batch then holds two or more tokens and output rows), and within 1e-5 of the logits'
scale with llm_forward alone (float weights; measured ~1e-7) and within 1e-4 with the float64 oracle
(tests/reference.py). Q8_0 weights: exact against the companion run as well (the activations' 8-bit quantization
is per row), 1e-2 of the scale against llm_forward alone (a last-bit difference may move an activation across one
quantization step: tests/test_forward.py).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from test_forward import typed_model
from test_forward_families import model as family_model

from builders import make_config, random_tensors, spec_from_tensors
from llmrun import InvalidArgumentError, KernelError, KVCacheFullError
from llmrun.engine import Engine, _c_config, available_isas, context_bytes, ffi, lib
from reference import forward as reference_forward

B = 32  # LLM_KV_BLOCK
RNG = np.random.default_rng(16)


def plain_model(seed: int = 3) -> tuple:
    cfg = make_config(dim=48, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=80, max_seq_len=256)
    t = random_tensors(cfg, seed=seed, tied=False)
    return cfg, spec_from_tensors(cfg, t), t


def windowed_model() -> tuple:
    case = family_model(layer_windows=(5, 0, 5), max_seq_len=256)  # Mistral-style windows on layers 0 and 2
    return case.cfg, spec_from_tensors(case.cfg, case.t), case.t


def window_only_model() -> tuple:
    case = family_model(layer_windows=(6, 6, 6), max_seq_len=256)  # every layer windowed: one windowed pool
    return case.cfg, spec_from_tensors(case.cfg, case.t), case.t


def tokens(n: int, vocab: int = 64) -> list[int]:
    return [int(i) for i in RNG.integers(0, vocab, size=n)]


def scale_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def run_steps(engine: Engine, texts: dict[int, list[int]], steps: list[dict[int, int]],
              companion: list[int] | None = None) -> dict[int, list[np.ndarray]]:
    """Runs texts in steps (each: sequence -> how many of its next tokens), each step one engine.batch with the
    sequences' entries interleaved; the logits of every sequence's last entry of each step, by sequence. With a
    companion, every step also restarts sequence `companion[0]` on the tokens companion[1:] (a different neighbour),
its last token an output too: no batch then runs one token or one classifier row (the matrix-vector kernels)."""
    done = dict.fromkeys(texts, 0)
    got: dict[int, list[np.ndarray]] = {s: [] for s in texts}
    for step in steps:
        runs = [[(texts[s][p], s, p, p == done[s] + k - 1) for p in range(done[s], done[s] + k)]
                for s, k in step.items()]
        if companion is not None:
            runs.append([(tok, companion[0], p, p == len(companion) - 2) for p, tok in enumerate(companion[1:])])
        entries = []  # round-robin: each sequence's entries in order, sequences interleaved
        while any(runs):
            for run in runs:
                if run:
                    entries.append(run.pop(0))
        tok, seq, pos, out = (list(c) for c in zip(*entries, strict=True))
        logits = engine.batch(tok, seq, pos, out)
        rows = iter(logits)
        for e in entries:
            if e[3]:
                row = next(rows)
                if e[1] in got:  # not the companion's
                    got[e[1]].append(row)
        for s, k in step.items():
            done[s] += k
    return got


def schedule(lengths: dict[int, int], chunk: int, seed: int) -> list[dict[int, int]]:
    """Steps that bring each sequence to its length: prompt chunks of up to `chunk` tokens, sequences starting
    at different steps, and single decode tokens, mixed."""
    rng = np.random.default_rng(seed)
    left, steps, start = dict(lengths), [], {s: int(rng.integers(0, 3)) for s in lengths}
    i = 0
    while any(left.values()):
        step = {}
        for s in lengths:
            if left[s] and i >= start[s]:
                k = min(left[s], int(rng.integers(1, chunk + 1)) if rng.random() < 0.5 else 1)
                step[s] = k
                left[s] -= k
        if step:
            steps.append(step)
        i += 1
    return steps


def check_mixed_batches(cfg: object, spec: object, t: dict, lengths: dict[int, int], n_ctx: int, n_batch: int,
                        chunk: int, alone_rtol: float, isa: str | None = None, companion_tokens: int = 2) -> None:
    """`companion_tokens`: how many tokens the companion of the mixed batches runs (the alone runs' one runs
    one more)."""
    texts = {s: tokens(n, cfg.vocab_size) for s, n in lengths.items()}
    steps = schedule(lengths, chunk, seed=len(lengths))
    engine = Engine(spec, n_ctx=n_ctx, n_threads=2, isa=isa, n_batch=n_batch, n_seq=8, n_kv=8 * n_ctx)
    mixed = run_steps(engine, texts, steps, companion=[6, *tokens(companion_tokens, cfg.vocab_size)])  # n > 1
    for s, text in texts.items():
        # the same sequence, the same chunking, with a different neighbour in every batch: exactly equal
        other = Engine(spec, n_ctx=n_ctx, n_threads=2, isa=isa, n_batch=n_batch, n_seq=8, n_kv=8 * n_ctx)
        own_steps = [{s: step[s]} for step in steps if s in step]
        alone = run_steps(other, {s: text}, own_steps, companion=[7] + tokens(companion_tokens + 1, cfg.vocab_size))
        assert all(np.array_equal(a, b) for a, b in zip(mixed[s], alone[s], strict=True)), f"sequence {s}"
        # against the single-sequence path (llm_forward) and the oracle: the last logits of each step
        ends = np.cumsum([step[s] for step in own_steps]) - 1
        want = Engine(spec, n_ctx=n_ctx, n_threads=1, isa=isa).evaluate_all(text)[ends]
        assert scale_error(np.array(mixed[s]), want) <= alone_rtol, f"sequence {s}"
        if alone_rtol < 1e-3:
            assert scale_error(np.array(mixed[s]), reference_forward(cfg, t, text)[ends]) <= 1e-4


@pytest.mark.parametrize("isa", available_isas())
def test_mixed_batches_equal_each_sequence_alone(isa: str) -> None:
    cfg, spec, t = plain_model()
    check_mixed_batches(cfg, spec, t, {0: 40, 1: 7, 2: 75, 3: 1, 5: 33}, n_ctx=96, n_batch=64, chunk=20,
                        alone_rtol=1e-5, isa=isa)


def test_windowed_model_in_mixed_batches() -> None:
    """Windows of 5 on two of three layers, prompts far past the window and over several blocks (the windowed
    layers give blocks back as the sequences grow)."""
    cfg, spec, t = windowed_model()
    check_mixed_batches(cfg, spec, t, {0: 90, 1: 12, 2: 70, 4: 3}, n_ctx=128, n_batch=48, chunk=16, alone_rtol=1e-5)
    cfg, spec, t = window_only_model()
    check_mixed_batches(cfg, spec, t, {1: 80, 2: 41, 3: 2}, n_ctx=128, n_batch=32, chunk=9, alone_rtol=1e-5)


def test_q8_0_model_in_mixed_batches() -> None:
    """The 32-value block kernels sum a token's products in one order in batches of up to 8 tokens (the
    matrix-vector kernel's: batched decode steps equal decoding alone) and in another in larger ones (prompts),
    so a token's result is independent of its neighbours as long as its batches stay on one side of that."""
    cfg, spec, t = typed_model("q8_0")
    # chunks of up to 2 tokens of 3 sequences and a companion of 2 (alone: 3): every batch 8 tokens at most
    check_mixed_batches(cfg, spec, t, {0: 30, 1: 5, 2: 50}, n_ctx=64, n_batch=40, chunk=2, alone_rtol=1e-2)
    # a companion of 9 tokens (alone: 10): every batch more than 8
    check_mixed_batches(cfg, spec, t, {0: 30, 1: 5, 2: 50}, n_ctx=64, n_batch=64, chunk=12, alone_rtol=1e-2,
                        companion_tokens=9)


# --- sequence operations -------------------------------------------------------------------------------

def last_logits(engine: Engine, seq: int, text: list[int], start: int) -> np.ndarray:
    """Runs text[start:] on sequence seq (one batch) and returns each position's logits."""
    n = len(text) - start
    return engine.batch(text[start:], [seq] * n, list(range(start, len(text))), [True] * n)


def test_prefix_copy_shares_blocks_and_copies_on_write() -> None:
    cfg, spec, t = plain_model()
    engine = Engine(spec, n_ctx=128, n_threads=2, n_batch=64, n_seq=4, n_kv=512)
    prompt = tokens(45, cfg.vocab_size)  # a block and a half: the half block is shared too
    a, b = prompt + tokens(30, cfg.vocab_size), prompt + tokens(20, cfg.vocab_size)
    last_logits(engine, 1, prompt, 0)
    assert engine.kv_usage() == (2, 16)
    engine.seq_copy(1, 2, 45)
    assert engine.kv_usage() == (2, 16)  # nothing copied yet
    assert engine.seq_length(2) == 45
    got_b = last_logits(engine, 2, b, 45)  # writes into the shared half block: copied first
    assert engine.kv_usage() == (4, 16)  # the copy of block 1 and block 2
    got_a = last_logits(engine, 1, a, 45)  # the source's own half block, unchanged by the copy's writes
    want_a, want_b = reference_forward(cfg, t, a), reference_forward(cfg, t, b)
    assert scale_error(got_a, want_a[45:]) <= 1e-4 and scale_error(got_b, want_b[45:]) <= 1e-4
    # and exactly what each gives computed from scratch alone (both continuations were one batch of > 1 token)
    fresh = Engine(spec, n_ctx=128, n_threads=2, n_batch=64, n_seq=4, n_kv=512)
    last_logits(fresh, 0, prompt, 0)
    assert np.array_equal(last_logits(fresh, 0, a, 45), got_a)
    fresh.seq_keep(0, 45)
    assert np.array_equal(last_logits(fresh, 0, b, 45), got_b)
    # a copy of a whole block-aligned prefix writes into a fresh block, no copy
    engine.seq_copy(1, 3, 64)
    used = engine.kv_usage()[0]
    last_logits(engine, 3, a[:66], 64)
    assert engine.kv_usage()[0] == used + 1
    # copying onto a sequence drops what it held; n == 0 clears it
    engine.seq_copy(1, 2, 0)
    assert engine.seq_length(2) == 0
    engine.seq_copy(3, 1, 10)
    assert engine.seq_length(1) == 10
    assert scale_error(last_logits(engine, 1, a[:12], 10), reference_forward(cfg, t, a[:12])[10:]) <= 1e-4


def test_keep_rewinds_and_clears() -> None:
    cfg, spec, t = plain_model()
    engine = Engine(spec, n_ctx=128, n_threads=2, n_batch=128, n_seq=3, n_kv=256)
    text = tokens(70, cfg.vocab_size)
    last_logits(engine, 2, text, 0)
    assert engine.kv_usage()[0] == 3 and engine.seq_length(2) == 70
    engine.seq_keep(2, 33)  # blocks 0 and 1 (33 = 32 + 1) stay, block 2 goes back
    assert engine.kv_usage()[0] == 2 and engine.seq_length(2) == 33
    other = text[:33] + tokens(10, cfg.vocab_size)
    assert scale_error(last_logits(engine, 2, other, 33), reference_forward(cfg, t, other)[33:]) <= 1e-4
    # a batch that rewinds (first position below the length) drops the rest first
    again = text[:20] + tokens(5, cfg.vocab_size)
    assert scale_error(last_logits(engine, 2, again, 20), reference_forward(cfg, t, again)[20:]) <= 1e-4
    assert engine.seq_length(2) == 25 and engine.kv_usage()[0] == 1
    engine.seq_keep(2, 0)
    assert engine.kv_usage()[0] == 0 and engine.seq_length(2) == 0
    # sequence 0 is the single-sequence API's: keeping part of it keeps that part of its cache
    engine.evaluate(text[:50])
    engine.seq_keep(0, 40)
    assert engine.cached_tokens == text[:40]
    computed = engine.tokens_computed
    assert scale_error(engine.evaluate(text[:45]), reference_forward(cfg, t, text[:45])[-1]) <= 1e-4
    assert engine.tokens_computed - computed == 5


def test_windowed_sequences_give_blocks_back() -> None:
    """A windowed layer's pool holds what the window still needs: one sequence decoding far past the window keeps
    at most ceil((window + n_batch - 1) / 32) + 1 blocks there, while the full layers' pool grows with it; the
    resume rule follows what was given back."""
    cfg, spec, t = windowed_model()  # window 5, n_batch 8: at most ceil(12 / 32) + 1 = 2 blocks per sequence
    engine = Engine(spec, n_ctx=256, n_threads=2, n_batch=8, n_seq=2, n_kv=512)
    used, total = engine.kv_usage()
    assert (used, total) == (0, 16 + 2 * 3)  # the full group's 16 blocks, the windowed group's 2 x (1 + 2)
    text = tokens(200, cfg.vocab_size)
    for end in range(8, 201, 8):
        engine.batch(text[end - 8:end], [1] * 8, list(range(end - 8, end)), [False] * 7 + [True])
        full = -(-end // B)
        assert engine.kv_usage()[0] - full <= 2
        oldest = (end - 5 + 1) // B * B
        assert engine.seq_resume_min(1) == (oldest + 4 if oldest else 0)
    assert engine.kv_usage()[0] == 7 + 1  # 200 positions: 7 full blocks; the window 196..199 lies in block 6
    # continue from the resume point (a rewind within what is held) and compare with the oracle
    n = engine.seq_resume_min(1)
    assert n == 196
    with pytest.raises(KernelError, match="needs keys that the sliding-window layers"):
        last_logits(engine, 1, text[:195] + [1], 195)
    got = last_logits(engine, 1, text[:n] + [3, 4], n)
    assert scale_error(got, reference_forward(cfg, t, text[:n] + [3, 4])[n:]) <= 1e-4
    # a copy needs the window before n: below resume_min it is refused, at or above it shares the blocks
    with pytest.raises(KernelError, match="no longer hold"):
        engine.seq_copy(1, 0, 150)
    engine.seq_copy(1, 0, 197)
    assert engine.seq_resume_min(0) == engine.seq_resume_min(1)
    assert engine.cached_tokens == []  # sequence 0 was replaced: the engine's own API starts over


def test_many_short_sequences_and_one_long_share_the_pool() -> None:
    """A pool of 12 blocks: a long sequence of 6 blocks and six short ones of one block each fill it; the next block
    any of them needs is refused with KVCacheFullError and changes nothing (each sequence continues afterwards with
    the logits it gets from scratch); clearing one short sequence lets the batch run."""
    cfg, spec, t = plain_model()
    engine = Engine(spec, n_ctx=256, n_threads=2, n_batch=64, n_seq=8, n_kv=12 * B)
    long = tokens(6 * B, cfg.vocab_size)
    for start in range(0, len(long), 64):
        last_logits(engine, 0, long[:start + 64], start)
    shorts = {s: tokens(20 + s, cfg.vocab_size) for s in range(1, 7)}
    flat = [(tok, s, p, p == len(text) - 1) for s, text in shorts.items() for p, tok in enumerate(text)]
    for start in range(0, len(flat), 64):
        engine.batch(*(list(c) for c in zip(*flat[start:start + 64], strict=True)))
    assert engine.kv_usage() == (12, 12)
    lengths = [engine.seq_length(s) for s in range(8)]
    # the long sequence needs a seventh block; a short one continues into its block, a new one needs a block
    for toks, seqs, poss in [([1], [0], [6 * B]), ([1, 2], [2, 7], [shorts[2].__len__(), 0])]:
        with pytest.raises(KVCacheFullError, match=r"the KV pool is full: 1 more blocks of 32 positions are needed, "
                                                   r"0 are free \(12 in all\)"):
            engine.batch(toks, seqs, poss, [True] * len(toks))
        assert [engine.seq_length(s) for s in range(8)] == lengths and engine.kv_usage() == (12, 12)
    # llm_forward (sequence 0, the engine's evaluate) too
    with pytest.raises(KVCacheFullError):
        engine.evaluate(long + [5])
    # nothing changed: every sequence continues as from scratch
    for s, text in shorts.items():
        more = text + [s, s + 1]
        got = last_logits(engine, s, more, len(text))
        assert scale_error(got, reference_forward(cfg, t, more)[len(text):]) <= 1e-4
    engine.seq_keep(3, 0)
    got = last_logits(engine, 0, long + [5, 6], 6 * B)
    assert scale_error(got, reference_forward(cfg, t, long + [5, 6])[6 * B:]) <= 1e-4


def test_copy_on_write_counts_against_a_full_pool() -> None:
    cfg, spec, _ = plain_model()
    engine = Engine(spec, n_ctx=64, n_threads=1, n_batch=8, n_seq=3, n_kv=2 * B)
    text = tokens(40, cfg.vocab_size)
    last_logits(engine, 1, text[:8], 0)
    for start in range(8, 40, 8):
        last_logits(engine, 1, text[:start + 8], start)
    engine.seq_copy(1, 2, 40)
    assert engine.kv_usage() == (2, 2)
    with pytest.raises(KVCacheFullError, match="1 more blocks"):  # the shared block 1 must be copied first
        engine.batch([1], [2], [40], [True])
    engine.seq_keep(1, 0)  # now sequence 2 alone holds the blocks: written in place
    engine.batch([1], [2], [40], [True])
    assert engine.kv_usage() == (2, 2)


def test_a_small_pool_for_one_sequence() -> None:
    """n_kv < n_ctx: the single-sequence API runs until the pool is full, keeps the batches computed before, and
    says so with KVCacheFullError."""
    cfg, spec, t = plain_model()
    engine = Engine(spec, n_ctx=128, n_threads=1, n_batch=16, n_kv=40)
    assert engine.n_kv == 64 and engine.block_size == B and engine.kv_usage() == (0, 2)
    text = tokens(80, cfg.vocab_size)
    with pytest.raises(KVCacheFullError, match="the KV pool is full"):
        engine.evaluate(text)
    assert engine.seq_length(0) == 64
    assert scale_error(engine.evaluate(text[:64]), reference_forward(cfg, t, text[:64])[-1]) <= 1e-4


# --- hostile inputs ----------------------------------------------------------------------------------------

def c_batch(engine: Engine, rows: list[tuple[int, int, int, int]], n: int | None = None, null: bool = False) -> int:
    entries = ffi.new("llm_batch_entry[]", rows) if rows else ffi.NULL
    logits = ffi.new("float[]", max(1, len(rows)) * engine.vocab_size)
    return lib.llm_batch(ffi.NULL if null else engine._ctx, entries, len(rows) if n is None else n, logits, ffi.NULL)


def test_c_refuses_bad_batches_and_changes_nothing() -> None:
    cfg, spec, _ = plain_model()
    engine = Engine(spec, n_ctx=64, n_threads=1, n_batch=4, n_seq=4, n_kv=256)
    assert c_batch(engine, [(1, 0, 0, 1), (2, 0, 1, 1), (3, 2, 0, 0)]) == 0
    state = [engine.seq_length(s) for s in range(4)], engine.kv_usage()
    v = cfg.vocab_size
    for rows, n, message in [
        ([], 1, "entries is NULL"),
        ([(1, 1, 0, 1)], 0, "n is 0; a batch holds 1 to 4 entries"),
        ([(1, 1, 0, 1)] * 5, 5, "n is 5"),
        ([(1, 1, 0, 1), (v, 1, 1, 1)], None, f"entry 1: token {v} is outside \\[0, {v}\\)"),
        ([(-1, 1, 0, 1)], None, "entry 0: token -1"),
        ([(1, 1, 0, 1), (1, 9, 0, 1)], None, r"entry 1: sequence 9 is outside \[0, 4\)"),
        ([(1, -1, 0, 1)], None, "entry 0: sequence -1"),
        ([(1, 1, 64, 1)], None, r"entry 0: position 64 is outside the context \[0, 64\)"),
        ([(1, 1, -3, 1)], None, "entry 0: position -3"),
        ([(1, 0, 2, 1), (1, 0, 4, 1)], None, "entry 1: position 4 of sequence 0 does not follow position 2"),
        ([(1, 0, 2, 1), (1, 1, 0, 1), (1, 0, 2, 1)], None, "entry 2: position 2 of sequence 0 does not follow"),
        ([(1, 2, 3, 1)], None, "entry 0: position 3 is past the cache of sequence 2, which holds positions 0..0"),
        ([(1, 1, 1, 1)], None, "entry 0: position 1 is past the cache of sequence 1"),
    ]:
        assert c_batch(engine, rows, n) == lib.LLM_ERR_INVALID, message
        assert_message(engine, message)
        assert ([engine.seq_length(s) for s in range(4)], engine.kv_usage()) == state
    assert c_batch(engine, [(1, 0, 0, 1)], null=True) == lib.LLM_ERR_INVALID
    # logits and hidden may both be NULL (only the cache is filled)
    entries = ffi.new("llm_batch_entry[]", [(1, 3, 0, 1)])
    assert lib.llm_batch(engine._ctx, entries, 1, ffi.NULL, ffi.NULL) == 0 and engine.seq_length(3) == 1


def assert_message(engine: Engine, pattern: str) -> None:
    message = ffi.string(lib.llm_last_error(engine._ctx)).decode()
    assert re.search(pattern, message), message


def test_c_refuses_bad_sequence_operations() -> None:
    cfg, spec, _ = plain_model()
    engine = Engine(spec, n_ctx=64, n_threads=1, n_batch=8, n_seq=3, n_kv=128)
    assert c_batch(engine, [(1, 1, 0, 1), (2, 1, 1, 1)]) == 0
    ctx = engine._ctx
    for call, message in [
        (lambda: lib.llm_seq_keep(ctx, 3, 0), r"sequence 3 is outside \[0, 3\)"),
        (lambda: lib.llm_seq_keep(ctx, -1, 0), "sequence -1"),
        (lambda: lib.llm_seq_keep(ctx, 1, 3), r"n 3 is outside \[0, 2\]: sequence 1 holds 2 positions"),
        (lambda: lib.llm_seq_keep(ctx, 1, -1), "n -1"),
        (lambda: lib.llm_seq_copy(ctx, 1, 1, 1), "cannot copy sequence 1 onto itself"),
        (lambda: lib.llm_seq_copy(ctx, 1, 2, 3), r"n 3 is outside \[0, 2\]"),
        (lambda: lib.llm_seq_copy(ctx, 5, 2, 0), r"src 5 is outside \[0, 3\)"),
        (lambda: lib.llm_seq_copy(ctx, 1, 7, 0), r"dst 7 is outside \[0, 3\)"),
    ]:
        assert call() == lib.LLM_ERR_INVALID, message
        assert_message(engine, message)
    for call in (lambda: lib.llm_seq_keep(ffi.NULL, 0, 0), lambda: lib.llm_seq_copy(ffi.NULL, 0, 1, 0),
                 lambda: lib.llm_seq_length(ffi.NULL, 0), lambda: lib.llm_seq_resume_min(ffi.NULL, 0),
                 lambda: lib.llm_seq_length(ctx, 3), lambda: lib.llm_seq_resume_min(ctx, -1),
                 lambda: lib.llm_kv_usage(ffi.NULL, ffi.new("int64_t *"), ffi.new("int64_t *")),
                 lambda: lib.llm_kv_usage(ctx, ffi.NULL, ffi.new("int64_t *"))):
        assert call() == lib.LLM_ERR_INVALID
    assert lib.llm_seq_length(ctx, 1) == 2 and engine.kv_usage() == (1, 4)


def test_engine_checks_batch_arguments() -> None:
    cfg, spec, _ = plain_model()
    engine = Engine(spec, n_ctx=32, n_threads=1, n_batch=4, n_seq=2, n_kv=128)
    for args, param, match in [
        (([1, 2], [0], [0, 1], [True, True]), "seqs", "seqs has 1 entries, tokens 2"),
        (([1], [0], [0], [True, False]), "outputs", "outputs has 2 entries"),
        (([1.5], [0], [0], [True]), "tokens", "tokens must be a sequence of ints"),
        (([1], [True], [0], [True]), "seqs", "seqs must be a sequence of ints"),
        (([1], [2], [0], [True]), "seqs", r"seqs\[0\] is 2, outside \[0, 2\)"),
        (([1], [0], [32], [True]), "positions", r"positions\[0\] is 32"),
        (([999], [0], [0], [True]), "tokens", r"tokens\[0\] is 999"),
        (([], [], [], []), "tokens", "a batch holds 1 to 4 tokens"),
        (([1] * 5, [0] * 5, list(range(5)), [True] * 5), "tokens", "got 5"),
        (([[1]], [0], [0], [True]), "tokens", "shape"),
    ]:
        with pytest.raises(InvalidArgumentError, match=match) as caught:
            engine.batch(*args)
        assert caught.value.param == param
    with pytest.raises(KernelError, match="does not follow"):  # what only the library checks
        engine.batch([1, 2], [1, 1], [0, 2], [True, True])
    for call, match in [(lambda: engine.seq_keep(2, 0), "seq must be"), (lambda: engine.seq_keep(0, 1), r"\[0, 0\]"),
                        (lambda: engine.seq_copy(1, 1, 0), "onto itself"), (lambda: engine.seq_copy(0, 1, 3), "n must"),
                        (lambda: engine.seq_length(-1), "seq must"), (lambda: engine.seq_resume_min(True), "seq must")]:
        with pytest.raises(InvalidArgumentError, match=match):
            call()
    out = engine.batch(np.array([1, 2, 3], np.int32), np.array([1, 1, 0]), np.arange(3) % 2 * 0 + [0, 1, 0],
                       np.array([False, True, True]))
    assert out.shape == (2, cfg.vocab_size) and out.dtype == np.float32
    hidden = engine.batch_hidden([4], [1], [2], [True])
    assert hidden.shape == (1, cfg.dim)
    assert engine.batch([5], [1], [3], [False]).shape == (0, cfg.vocab_size)
    engine.close()
    with pytest.raises(KernelError, match="closed"):
        engine.kv_usage()


def test_create_checks_the_sizes() -> None:
    cfg, spec, _ = plain_model()
    for kwargs, match in [({"n_seq": 0}, "n_seq must be an int in"), ({"n_kv": -1}, "n_kv must be"),
                          ({"n_seq": 2**31}, "n_seq must be")]:
        with pytest.raises(InvalidArgumentError, match=match):
            Engine(spec, n_ctx=16, n_threads=1, **kwargs)
    with pytest.raises(KernelError, match=r"n_seq must be in \[1, 65536\] \(0: 1\), got 65537"):
        Engine(spec, n_ctx=16, n_threads=1, n_seq=65537)
    config, _keep = _c_config(cfg, "test")
    params = ffi.new("llm_ctx_params *", {"n_ctx": 16, "n_seq": 0, "n_kv": 0, "n_batch": 4, "n_threads": 1,
                                          "isa": lib.LLM_ISA_AUTO})
    one = lib.llm_ctx_bytes(config, params)
    params.n_seq = 1
    assert lib.llm_ctx_bytes(config, params) == one > 0  # n_seq 0 means 1
    for field, value in [("n_seq", -1), ("n_seq", 65537), ("n_kv", -5), ("n_batch", 0), ("n_ctx", 0)]:
        old = getattr(params, field)
        setattr(params, field, value)
        assert lib.llm_ctx_bytes(config, params) == lib.LLM_ERR_INVALID, field
        setattr(params, field, old)
    assert lib.llm_ctx_bytes(config, ffi.NULL) == lib.LLM_ERR_INVALID
    params.n_seq, params.n_kv, params.n_ctx = 65536, 2**31 - 1, 2**31 - 1  # sizes no memory holds, counted
    assert lib.llm_ctx_bytes(config, params) > 2**40


def test_context_bytes_grow_with_the_pool_not_the_sequences() -> None:
    """The pool's size is n_kv (whole blocks) whatever n_seq: more sequences cost only their block tables (4 bytes
    per block of n_ctx) and a few counters; each block of 32 positions costs 2 x n_layers x 32 x kv_dim floats (and
two int32: its free-list entry and reference count)."""
    cfg, _, _ = plain_model()
    n_ctx = 4096
    base = context_bytes(cfg, n_ctx, 64, 2)
    assert base == context_bytes(cfg, n_ctx, 64, 2, n_kv=n_ctx)
    block = 2 * cfg.n_layers * B * cfg.kv_dim * 4 + 2 * 4  # keys and values; its free-list entry and refcount
    assert context_bytes(cfg, n_ctx, 64, 2, n_kv=2 * n_ctx) - base == (n_ctx // B) * block
    assert context_bytes(cfg, n_ctx, 64, 2, n_kv=n_ctx + 1) - base == block  # rounded up to a whole block
    per_seq = context_bytes(cfg, n_ctx, 64, 2, n_seq=9) - context_bytes(cfg, n_ctx, 64, 2, n_seq=8)
    assert 4 * (n_ctx // B) <= per_seq <= 4 * (n_ctx // B) + 64
    assert context_bytes(cfg, n_ctx, 64, 2, n_seq=-1) is None
