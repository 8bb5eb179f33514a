"""Tests of llmrun.sampling: the filter chain, determinism, statistics and input validation."""

from __future__ import annotations

import collections
import math

import numpy as np
import pytest

from llmrun.errors import InvalidArgumentError, LLMError
from llmrun.sampling import Sampler, SamplingError, SamplingParams

# Filters off: every finite token can be drawn, with probability softmax(logits / temperature).
PLAIN = {"top_k": 0, "top_p": 1.0, "min_p": 0.0}


def softmax(x: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array."""
    e = np.exp(x - x.max())
    return e / e.sum()


def draw(params: SamplingParams, logits: np.ndarray, n: int, history: tuple[int, ...] = ()) -> np.ndarray:
    """Draw ``n`` tokens from one sampler with fixed logits."""
    sampler = Sampler(params)
    return np.array([sampler.sample(logits, history) for _ in range(n)])


def chi2_sf_even_df(stat: float, df: int) -> float:
    """Survival function of the chi-square distribution for an even number of degrees of freedom."""
    half = stat / 2
    return math.exp(-half) * sum(half**i / math.factorial(i) for i in range(df // 2))


def reference_survivors(x: np.ndarray, params: SamplingParams) -> dict[int, float]:
    """Naive llama.cpp chain (full sort, filters one after another): {token id: probability}."""
    ids = np.lexsort((np.arange(x.size), -x))  # decreasing logit, ties by increasing id
    ids = ids[x[ids] > -np.inf]
    if params.top_k:
        ids = ids[: params.top_k]
    if params.top_p < 1.0:
        cum = np.cumsum(softmax(x[ids]))
        ids = ids[: min(int(np.searchsorted(cum, params.top_p)) + 1, ids.size)]
    if params.min_p > 0.0:
        p = softmax(x[ids])
        ids = ids[p >= params.min_p * p.max()]
    probs = softmax(x[ids] / params.temperature)
    return dict(zip(ids.tolist(), probs.tolist(), strict=True))


def survivors(sampler: Sampler, x: np.ndarray) -> dict[int, float]:
    """The sampler's own surviving tokens and their probabilities (private API)."""
    ids, weights = sampler._survivors(x.astype(np.float64), float(x.max()))
    return dict(zip(ids.tolist(), (weights / weights.sum()).tolist(), strict=True))


# ---------------------------------------------------------------------------------------------
# Parameters


def test_defaults_follow_llama_cpp() -> None:
    p = SamplingParams()
    assert (p.temperature, p.top_k, p.top_p, p.min_p) == (0.8, 40, 0.95, 0.05)
    assert (p.repeat_penalty, p.repeat_last_n, p.seed) == (1.0, 64, None)


BAD_PARAMS = [
    ("temperature", -0.1),
    ("temperature", math.nan),
    ("temperature", math.inf),
    ("temperature", True),
    ("temperature", "0.8"),
    ("temperature", None),
    ("temperature", 10**400),
    ("top_k", -1),
    ("top_k", 2.0),
    ("top_k", True),
    ("top_k", False),
    ("top_k", "40"),
    ("top_k", math.nan),
    ("top_p", 0.0),
    ("top_p", 1.5),
    ("top_p", -0.5),
    ("top_p", math.nan),
    ("top_p", math.inf),
    ("top_p", True),
    ("top_p", "0.9"),
    ("min_p", -0.01),
    ("min_p", 1.01),
    ("min_p", math.nan),
    ("min_p", -math.inf),
    ("min_p", False),
    ("min_p", [0.1]),
    ("repeat_penalty", 0.0),
    ("repeat_penalty", -1.1),
    ("repeat_penalty", math.nan),
    ("repeat_penalty", math.inf),
    ("repeat_penalty", True),
    ("repeat_penalty", "1.1"),
    ("repeat_last_n", -2),
    ("repeat_last_n", 64.0),
    ("repeat_last_n", True),
    ("repeat_last_n", None),
    ("presence_penalty", 2.01),
    ("presence_penalty", math.nan),
    ("presence_penalty", "0.5"),
    ("frequency_penalty", -2.5),
    ("frequency_penalty", math.inf),
    ("frequency_penalty", True),
    ("seed", -1),
    ("seed", 2**64),
    ("seed", 1.0),
    ("seed", True),
    ("seed", "42"),
    ("seed", math.nan),
]


@pytest.mark.parametrize(("name", "value"), BAD_PARAMS, ids=[f"{n}={v!r}"[:40] for n, v in BAD_PARAMS])
def test_bad_parameter_raises_value_error_naming_it(name: str, value: object) -> None:
    with pytest.raises(ValueError, match=rf"^{name} must ") as info:
        SamplingParams(**{name: value})
    assert isinstance(info.value, SamplingError)
    assert isinstance(info.value, LLMError)
    assert "got" in str(info.value)
    assert info.value.param == name  # a front end can name its own option for it (LLMError.for_flags)


def test_bad_parameter_message_names_value_and_range() -> None:
    with pytest.raises(ValueError, match=r"^top_p must be in \(0, 1\], got 1\.5$"):
        SamplingParams(top_p=1.5)
    with pytest.raises(ValueError, match=r"^top_k must be an int >= 0, got True \(bool\)$"):
        SamplingParams(top_k=True)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": 0},
        {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0},
        {"top_p": 1e-9, "min_p": 1.0, "repeat_penalty": 1e-3},
        {"repeat_last_n": -1, "repeat_penalty": 100.0},
        {"seed": 0},
        {"seed": 2**64 - 1},
        {"seed": np.uint64(2**63), "top_k": np.int32(5), "temperature": np.float32(0.5)},
    ],
)
def test_edge_of_range_parameters_are_accepted(kwargs: dict[str, object]) -> None:
    p = SamplingParams(**kwargs)
    Sampler(p).sample(np.array([0.5, 1.0, -2.0], dtype=np.float32), [0, 1])


def test_parameters_are_normalised_and_frozen() -> None:
    p = SamplingParams(temperature=1, top_k=np.int64(3), seed=np.uint64(7))
    assert Sampler(p).params is p
    assert type(p.temperature) is float
    assert type(p.top_k) is int
    assert type(p.seed) is int
    assert p == SamplingParams(temperature=1.0, top_k=3, seed=7)
    with pytest.raises(AttributeError):
        p.top_k = 5  # type: ignore[misc]


def test_with_overrides_is_one_validated_step() -> None:
    base = SamplingParams(temperature=0.5, seed=1)
    p = base.with_overrides(top_k=3, min_p=np.float32(0.25))
    assert (p.temperature, p.top_k, p.min_p, p.seed) == (0.5, 3, 0.25, 1) and type(p.min_p) is float
    assert base == SamplingParams(temperature=0.5, seed=1)  # frozen: a new object
    assert base.with_overrides() == base
    with pytest.raises(SamplingError, match="^top_k must be an int >= 0, got -1$") as info:
        base.with_overrides(top_k=-1)
    assert info.value.param == "top_k"
    with pytest.raises(InvalidArgumentError, match="unknown argument 'tok_k'.*top_k") as unknown:
        base.with_overrides(tok_k=3)
    assert unknown.value.param == "tok_k"


def test_sampler_requires_sampling_params() -> None:
    with pytest.raises(TypeError):
        Sampler({"temperature": 0.5})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Greedy, seeds, determinism


def test_greedy_is_argmax() -> None:
    rng = np.random.default_rng(1)
    sampler = Sampler(SamplingParams(temperature=0.0))
    for _ in range(50):
        logits = rng.normal(size=500).astype(np.float32)
        assert sampler.sample(logits) == int(np.argmax(logits))


def test_greedy_ties_go_to_lowest_id_and_ignore_minus_inf() -> None:
    sampler = Sampler(SamplingParams(temperature=0.0))
    assert sampler.sample(np.array([1.0, 3.0, 2.0, 3.0])) == 1
    assert sampler.sample(np.array([-np.inf, -5.0, -np.inf])) == 1


def test_same_seed_same_tokens_and_different_seeds_differ() -> None:
    rng = np.random.default_rng(2)
    steps = [rng.normal(size=1000) for _ in range(60)]
    params = {"temperature": 1.5, "top_k": 0, "top_p": 1.0, "min_p": 0.0}

    def run(seed: int) -> list[int]:
        sampler = Sampler(SamplingParams(seed=seed, **params))
        return [sampler.sample(x, list(range(i))) for i, x in enumerate(steps)]

    assert run(123) == run(123)
    assert run(123) != run(124)
    # The defaults (top-k, top-p, min-p on) are reproducible too.
    a, b = Sampler(SamplingParams(seed=9)), Sampler(SamplingParams(seed=9))
    assert [a.sample(x) for x in steps] == [b.sample(x) for x in steps]


def test_unseeded_samplers_use_fresh_entropy() -> None:
    flat = np.zeros(10_000)
    runs = {tuple(draw(SamplingParams(**PLAIN), flat, 20)) for _ in range(3)}
    assert len(runs) == 3  # three identical runs of 20 draws from 10k tokens: chance ~1e-80


@pytest.mark.parametrize("temperature", [0.05, 1.0, 5.0, 1e6])
def test_top_k_1_is_greedy_at_any_temperature(temperature: float) -> None:
    rng = np.random.default_rng(3)
    sampler = Sampler(SamplingParams(temperature=temperature, top_k=1, top_p=1.0, min_p=0.0, seed=0))
    for _ in range(30):
        logits = np.round(rng.normal(size=300), 1)  # rounding creates ties: lowest id must win
        assert sampler.sample(logits) == int(np.argmax(logits))


# ---------------------------------------------------------------------------------------------
# The filters


def test_top_k_never_leaves_the_top_k() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=5000)
    top = set(np.argsort(-logits)[:10].tolist())
    tokens = draw(SamplingParams(temperature=20.0, top_k=10, top_p=1.0, min_p=0.0, seed=1), logits, 3000)
    assert set(tokens.tolist()) == top  # nothing outside, and at this temperature all 10 appear


def test_top_k_ties_at_the_cut_keep_the_lowest_ids() -> None:
    logits = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 1.0])
    tokens = draw(SamplingParams(temperature=1.0, top_k=3, top_p=1.0, min_p=0.0, seed=2), logits, 500)
    assert set(tokens.tolist()) == {1, 2, 4}


# Probabilities whose nuclei are known; ids are shuffled so that order by id means nothing.
NUCLEUS_PROBS = {7: 0.5, 2: 0.25, 9: 0.15, 0: 0.06, 4: 0.04}


@pytest.mark.parametrize(
    ("top_p", "expected"),
    [(0.3, {7}), (0.7, {7, 2}), (0.76, {7, 2, 9}), (0.9, {7, 2, 9}), (0.95, {7, 2, 9, 0}), (0.99, None)],
)
def test_top_p_keeps_exactly_the_smallest_nucleus(top_p: float, expected: set[int] | None) -> None:
    logits = np.full(10, -np.inf)
    for token, p in NUCLEUS_PROBS.items():
        logits[token] = math.log(p)
    expected = set(NUCLEUS_PROBS) if expected is None else expected
    params = SamplingParams(temperature=1.0, top_k=0, top_p=top_p, min_p=0.0, seed=3)
    # Every kept token has probability >= 0.04 / 0.96, so 3000 draws show each (miss chance < 1e-50).
    assert set(draw(params, logits, 3000).tolist()) == expected
    got = survivors(Sampler(params), logits)
    assert set(got) == expected
    total = sum(NUCLEUS_PROBS[t] for t in expected)
    for token, p in got.items():
        assert p == pytest.approx(NUCLEUS_PROBS[token] / total, rel=1e-12)


def test_top_p_applies_after_top_k() -> None:
    # After top_k=2 the survivors are renormalised to {7: 2/3, 2: 1/3}: top_p=0.6 keeps only 7.
    logits = np.full(10, -np.inf)
    for token, p in NUCLEUS_PROBS.items():
        logits[token] = math.log(p)
    assert set(survivors(Sampler(SamplingParams(top_k=2, top_p=0.6, min_p=0.0)), logits)) == {7}
    assert set(survivors(Sampler(SamplingParams(top_k=0, top_p=0.6, min_p=0.0)), logits)) == {7, 2}


def test_top_p_on_a_large_flat_vocabulary_keeps_the_lowest_ids() -> None:
    # 4000 equal logits: the nucleus is the first 2000 ids (exercises the growing partial sort).
    got = survivors(Sampler(SamplingParams(top_k=0, top_p=0.4999, min_p=0.0)), np.zeros(4000))
    assert sorted(got) == list(range(2000))


def test_min_p_excludes_tokens_below_the_threshold() -> None:
    # p_max = 0.5 and min_p = 0.1: the threshold is 0.05, so 0.06 stays and 0.04 goes. Min-p looks at
    # the temperature-1 probabilities, so a high temperature must not let token 4 back in.
    logits = np.full(10, -np.inf)
    for token, p in NUCLEUS_PROBS.items():
        logits[token] = math.log(p)
    params = SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.1, seed=4)
    assert set(draw(params, logits, 2000).tolist()) == {7, 2, 9, 0}
    params = SamplingParams(temperature=5.0, top_k=0, top_p=1.0, min_p=0.51, seed=4)
    assert set(draw(params, logits, 200).tolist()) == {7}


def test_min_p_one_keeps_only_the_maximum_and_its_ties() -> None:
    logits = np.array([1.0, 3.0, 3.0, 2.9999])
    got = survivors(Sampler(SamplingParams(temperature=1.0, top_k=0, top_p=1.0, min_p=1.0)), logits)
    assert got == {1: 0.5, 2: 0.5}


def test_minus_inf_tokens_are_never_sampled() -> None:
    logits = np.array([-np.inf, 0.0, -np.inf, 0.0, -np.inf])
    for top_k in (0, 2, 4):
        params = SamplingParams(temperature=1.0, top_k=top_k, top_p=1.0, min_p=0.0, seed=5)
        assert set(draw(params, logits, 300).tolist()) == {1, 3}


@pytest.mark.parametrize("temperature", [0.7, 2.0])
def test_temperature_frequencies_match_softmax(temperature: float) -> None:
    """Empirical frequencies of N draws against softmax(logits / T).

    Tolerance: Pearson's chi-square statistic (df = 4) must have a p-value above 1e-6, and every
    count must lie within 5 sigma of N * p. For a correct sampler either check fails for a random
    seed with probability about 1e-6; a fixed seed keeps the test deterministic.
    """
    logits = np.array([1.0, 0.5, 0.0, -0.5, -1.5])
    n = 20_000
    tokens = draw(SamplingParams(temperature=temperature, **PLAIN, seed=6), logits, n)
    counts = np.bincount(tokens, minlength=logits.size)
    expected = n * softmax(logits / temperature)
    stat = float(((counts - expected) ** 2 / expected).sum())
    assert chi2_sf_even_df(stat, df=4) > 1e-6, (counts, expected)
    sigma = np.sqrt(expected * (1 - expected / n))
    assert np.all(np.abs(counts - expected) < 5 * sigma), (counts, expected)
    # The same counts are clearly incompatible with temperature 1, so temperature really applies.
    wrong = n * softmax(logits)
    assert chi2_sf_even_df(float(((counts - wrong) ** 2 / wrong).sum()), df=4) < 1e-6


CHAIN_CASES = [
    # (vocab, params): default chain, each filter alone, and sizes that take the shortcut paths.
    (50, {}),
    (5000, {}),
    (5000, {"top_k": 100, "top_p": 0.9, "min_p": 0.0}),
    (5000, {"top_k": 0, "top_p": 0.9, "min_p": 0.0}),
    (5000, {"top_k": 0, "top_p": 1.0, "min_p": 0.02}),
    (5000, {"top_k": 3000, "top_p": 0.99, "min_p": 0.001}),
    (5000, {"top_k": 20, "top_p": 1.0, "min_p": 0.3}),
    (5000, {"top_k": 0, "top_p": 0.999, "min_p": 0.0, "temperature": 3.0}),
    (20_000, {"top_k": 64, "top_p": 0.8, "min_p": 0.01, "temperature": 0.3}),
]


@pytest.mark.parametrize(("vocab", "kwargs"), CHAIN_CASES)
def test_chain_matches_naive_reference(vocab: int, kwargs: dict[str, float]) -> None:
    """The shortcuts (min-p pre-filter, sampled top-k threshold, partial nucleus sort) are exact."""
    rng = np.random.default_rng(vocab)
    params = SamplingParams(**kwargs)
    sampler = Sampler(params)
    for scale in (0.5, 2.0, 6.0):
        for ties in (False, True):
            x = rng.normal(size=vocab) * scale
            if ties:
                x = np.round(x)  # lots of exact ties, including at every cut
            x[rng.integers(0, vocab, vocab // 10)] = -np.inf
            want = reference_survivors(x, params)
            got = survivors(sampler, x)
            assert set(got) == set(want)
            np.testing.assert_allclose([got[t] for t in want], list(want.values()), rtol=1e-9)


def test_top_k_is_exact_when_the_sampled_threshold_guess_fails() -> None:
    # Top-k guesses a threshold from every 4th logit of a 5000 vocabulary. Making exactly those
    # logits the largest fools the guess into admitting fewer than k, forcing the full partition.
    rng = np.random.default_rng(13)
    x = rng.normal(size=5000)
    x[::4] += 50.0
    x[3] = x[::4].max() + 1.0  # an unsampled token that must still win
    for k in (40, 300):
        params = SamplingParams(temperature=1.0, top_k=k, top_p=1.0, min_p=0.0)
        want = reference_survivors(x, params)
        got = survivors(Sampler(params), x)
        assert set(got) == set(want)
        assert 3 in got
        np.testing.assert_allclose([got[t] for t in want], list(want.values()), rtol=1e-9)


# ---------------------------------------------------------------------------------------------
# Repetition penalty


def greedy_with_penalty(logits: list[float], history: list[int], **kwargs: float) -> int:
    """Greedy choice after the repetition penalty."""
    params = SamplingParams(temperature=0.0, **kwargs)
    return Sampler(params).sample(np.array(logits), history)


def test_penalty_divides_positive_logits() -> None:
    assert greedy_with_penalty([2.0, 1.5], [0], repeat_penalty=1.0) == 0
    assert greedy_with_penalty([2.0, 1.5], [0], repeat_penalty=2.0) == 1  # 2.0 / 2 = 1.0 < 1.5


def test_penalty_multiplies_negative_logits() -> None:
    # llama.cpp: -1.0 * 2 = -2.0 < -1.5. Dividing (-0.5) would wrongly make token 0 *more* likely.
    assert greedy_with_penalty([-1.0, -1.5], [0], repeat_penalty=2.0) == 1
    assert greedy_with_penalty([-1.0, -1.5], [], repeat_penalty=2.0) == 0


def test_penalty_counts_each_distinct_token_once() -> None:
    # Once: 2.0 / 1.5 = 1.33 > 1.2. Three times would give 0.59 < 1.2.
    assert greedy_with_penalty([2.0, 1.2], [0, 0, 0], repeat_penalty=1.5) == 0


def test_penalty_window_is_repeat_last_n() -> None:
    logits, history = [2.0, 1.9, 1.0], [0, 2, 2]
    assert greedy_with_penalty(logits, history, repeat_penalty=2.0, repeat_last_n=2) == 0
    assert greedy_with_penalty(logits, history, repeat_penalty=2.0, repeat_last_n=3) == 1
    assert greedy_with_penalty(logits, history, repeat_penalty=2.0, repeat_last_n=-1) == 1
    assert greedy_with_penalty(logits, history, repeat_penalty=2.0, repeat_last_n=0) == 0


def test_penalty_lowers_a_repeated_tokens_probability() -> None:
    logits = np.array([1.0, 1.0, -0.5, -0.5])
    plain = survivors(Sampler(SamplingParams(temperature=1.0, **PLAIN)), logits)
    sampler = Sampler(SamplingParams(temperature=1.0, **PLAIN, repeat_penalty=1.3))
    x = logits.copy()
    sampler._apply_repeat_penalty(x, [0, 2])
    np.testing.assert_allclose(x, [1.0 / 1.3, 1.0, -0.5 * 1.3, -0.5])
    penalised = survivors(sampler, x)
    assert penalised[0] < plain[0]
    assert penalised[2] < plain[2]
    assert penalised[1] > plain[1]
    assert penalised[3] > plain[3]
    # And in draws: token 0 drops from about 37% to about 28%.
    tokens = draw(SamplingParams(temperature=1.0, **PLAIN, repeat_penalty=1.3, seed=7), logits, 4000, (0, 2))
    assert abs(np.mean(tokens == 0) - penalised[0]) < 5 * math.sqrt(penalised[0] / 4000)


def test_penalty_accepts_numpy_and_deque_histories() -> None:
    logits = np.array([2.0, 1.5, 0.0])
    for history in (np.array([2, 0], dtype=np.uint32), collections.deque([2, 0]), (0,), range(1)):
        assert Sampler(SamplingParams(temperature=0.0, repeat_penalty=2.0)).sample(logits, history) == 1


@pytest.mark.parametrize("bad", [5, -1, 2**70])
def test_penalty_rejects_out_of_range_history_ids(bad: int) -> None:
    sampler = Sampler(SamplingParams(repeat_penalty=1.1))
    with pytest.raises(ValueError, match=rf"history token id {bad} is out of range"):
        sampler.sample(np.zeros(5), [0, bad, 1])


def test_penalty_rejects_non_integer_history() -> None:
    sampler = Sampler(SamplingParams(repeat_penalty=1.1))
    for history in ([0, 1.5], [0, "a"], [True], [0, [1, 2]], np.zeros((1, 1), dtype=int)):
        with pytest.raises(ValueError, match="history must hold integer token ids"):
            sampler.sample(np.zeros(5), history)  # type: ignore[arg-type]


def test_history_outside_the_penalty_is_not_checked() -> None:
    # Only ids the penalty looks at are validated (and none when the penalty is off).
    assert Sampler(SamplingParams(temperature=0.0)).sample(np.array([0.0, 1.0]), [99]) == 1
    params = SamplingParams(temperature=0.0, repeat_penalty=2.0, repeat_last_n=1)
    assert Sampler(params).sample(np.array([0.0, 1.0]), [99, 1]) == 1


# ---------------------------------------------------------------------------------------------
# Logits handling


def test_callers_logits_are_not_modified() -> None:
    logits = np.array([3.0, -2.0, 1.0, 0.5], dtype=np.float32)
    before = logits.copy()
    sampler = Sampler(SamplingParams(repeat_penalty=1.5, seed=8))
    for _ in range(20):
        sampler.sample(logits, [0, 1, 2])
    np.testing.assert_array_equal(logits, before)


def test_read_only_logits_work() -> None:
    values = np.array([0.1, 2.0, -1.0, 0.7], dtype=np.float32)
    from_bytes = np.frombuffer(values.tobytes(), dtype=np.float32)  # read-only, like a view of C memory
    assert not from_bytes.flags.writeable
    locked = values.copy()
    locked.flags.writeable = False
    for params in (SamplingParams(seed=1, repeat_penalty=1.2), SamplingParams(temperature=0.0)):
        for logits in (from_bytes, locked):
            Sampler(params).sample(logits, [1, 3])


def test_float16_32_64_give_the_same_tokens() -> None:
    logits = np.round(np.random.default_rng(9).normal(size=2000), 2).astype(np.float16)
    runs = [
        draw(SamplingParams(seed=11, repeat_penalty=1.1), logits.astype(dtype), 50, (3, 4))
        for dtype in (np.float16, np.float32, np.float64)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])


@pytest.mark.parametrize(
    ("logits", "message"),
    [
        (np.zeros((2, 3)), "1-D"),
        (np.float32(1.0), "1-D"),
        (np.zeros(0), "empty"),
        (np.arange(4), "float"),
        (np.array([True, False]), "float"),
        (np.array([0.0, np.nan, 1.0]), "NaN"),
        (np.array([0.0, np.inf]), r"\+inf"),
        (np.full(4, -np.inf), "all logits are -inf"),
    ],
)
def test_bad_logits_raise_value_error(logits: np.ndarray, message: str) -> None:
    for params in (SamplingParams(), SamplingParams(temperature=0.0)):
        with pytest.raises(ValueError, match=message):
            Sampler(params).sample(logits)


def test_large_vocab_default_chain_runs() -> None:
    rng = np.random.default_rng(10)
    logits = (rng.normal(size=128_000) * 3).astype(np.float32)
    sampler = Sampler(SamplingParams(seed=12))
    top40 = set(np.argsort(-logits)[:40].tolist())
    assert {sampler.sample(logits) for _ in range(50)} <= top40


# ---------------------------------------------------------------------------------------------
# Presence and frequency penalties (OpenAI): over the generated tokens only


def test_presence_and_frequency_penalties_follow_openai() -> None:
    sampler = Sampler(SamplingParams(temperature=1.0, **PLAIN, presence_penalty=0.5, frequency_penalty=0.25))
    x = np.array([1.0, 1.0, 1.0, -np.inf])
    sampler._apply_presence_frequency(x, [0, 0, 0, 2])
    np.testing.assert_allclose(x, [1.0 - 0.5 - 0.75, 1.0, 1.0 - 0.5 - 0.25, -np.inf])


def test_presence_and_frequency_penalties_look_only_at_generated_tokens() -> None:
    logits = np.array([2.0, 1.8, 0.0])
    params = SamplingParams(temperature=0.0, presence_penalty=0.5)
    assert Sampler(params).sample(logits, history=[0, 0, 0]) == 0  # the prompt is not penalised
    assert Sampler(params).sample(logits, history=[0], generated=[0]) == 1  # 1.5 < 1.8
    freq = SamplingParams(temperature=0.0, frequency_penalty=0.1)
    assert Sampler(freq).sample(logits, generated=[0]) == 0  # 1.9 > 1.8
    assert Sampler(freq).sample(logits, generated=[0, 0, 0]) == 1  # 1.7 < 1.8
    # A negative penalty encourages repetition.
    assert Sampler(SamplingParams(temperature=0.0, presence_penalty=-0.5)).sample(logits, generated=[1]) == 1


def test_presence_penalty_rejects_out_of_range_generated_ids() -> None:
    sampler = Sampler(SamplingParams(presence_penalty=1.0))
    with pytest.raises(ValueError, match="history token id 7 is out of range"):
        sampler.sample(np.zeros(5), generated=[7])
