"""Token sampling: turn one step's logits into one token id.

The parameters and their defaults follow llama.cpp's command-line defaults
(``--temp 0.8 --top-k 40 --top-p 0.95 --min-p 0.05 --repeat-penalty 1.0 --repeat-last-n 64``),
and the order of the filters follows llama.cpp's default sampler chain:

1. **Repetition penalty** (CTRL / llama.cpp style) over the last ``repeat_last_n`` ids of
   ``history`` (``-1`` = the whole history, ``0`` = off). Every *distinct* id in that window is
   penalised once, however often it occurs: a positive logit is divided by ``repeat_penalty``, a
   zero or negative one is multiplied by it, so a penalty > 1 always makes the token less likely.
2. **Greedy**: if ``temperature == 0`` the result is the argmax of the penalised logits (ties go to
   the lowest id, as with ``np.argmax``) and no random numbers are drawn.
3. **Top-k**: keep the ``top_k`` highest logits (``0`` = off). Ties at the cut go to the lowest ids.
4. **Top-p** (nucleus): with the softmax (temperature 1) of the survivors sorted by decreasing
   probability, keep the smallest prefix whose cumulative probability is ``>= top_p``; at least one
   token always survives (``1.0`` = off).
5. **Min-p**: keep tokens whose probability is ``>= min_p * p_max`` (``0.0`` = off). This is tested
   in logit space, ``logit >= max_logit + log(min_p)``, which is exact and cannot underflow.
6. **Temperature**: divide the survivors' logits by ``temperature``.
7. **Draw** one token from the softmax of the survivors with the sampler's own
   :class:`numpy.random.Generator` (inverse CDF with one uniform draw per token).

As in llama.cpp, top-p and min-p look at the temperature-1 distribution; temperature only reshapes
the distribution among the tokens that survived. Logits equal to ``-inf`` are allowed (masking) and
such tokens are never sampled; ``NaN`` and ``+inf`` logits are rejected.

Implementation notes: everything is vectorised numpy (no Python loop over the vocabulary) and
nothing of vocabulary size is ever sorted in the common case. Min-p is a plain threshold and each
of top-k, top-p and min-p keeps a prefix of the tokens sorted by decreasing logit, so min-p is
applied first as a cheap pre-filter; this is exact because top-p still normalises over the whole
top-k set, as in the chain above. Top-k uses ``np.argpartition``, restricted to the logits above a
threshold guessed from a strided sample (falling back to the whole vocabulary if the guess admits
fewer than ``k``). Top-p sorts only the 64, 512, ... most likely candidates until their cumulative
mass reaches ``top_p``. Every shortcut gives bit-for-bit the result of the naive full sort, and all
ties are broken towards the lowest token id. The caller's logits are never written to: they are
copied once, as float64. float64 costs about one extra memory pass compared
with float32 (well under 0.1 ms at a 128k vocabulary) and keeps the cumulative sums of top-p and the
penalty/temperature arithmetic free of float32 rounding, so results do not depend on the input dtype
(float16/32/64 all give the same tokens for the same values).

A :class:`Sampler` is deterministic: the same seed and the same sequence of ``sample`` calls give
the same tokens.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from llmrun.errors import InvalidArgumentError, SamplingError

__all__ = ["Sampler", "SamplingError", "SamplingParams"]

_SEED_LIMIT = 2**64
# Top-k guesses its threshold from a strided sample of about this many logits (see _top_k_ids).
_SAMPLE_SIZE = 1024
# Top-p first sorts only this many of the most likely candidates, then 8 times more, ... (_nucleus).
_NUCLEUS_START = 64


def _is_int(value: object) -> bool:
    """Tell whether ``value`` is a Python/numpy integer (bools are not)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_plain_vector(logits: object) -> bool:
    """A non-empty 1-D float32/float64 numpy array (what the engine hands the sampler)."""
    return (isinstance(logits, np.ndarray) and logits.ndim == 1 and logits.size > 0
            and logits.dtype in (np.float32, np.float64))


def _is_real(value: object) -> bool:
    """Tell whether ``value`` is a Python/numpy int or float (bools are not)."""
    return _is_int(value) or isinstance(value, (float, np.floating))


def _describe(value: object) -> str:
    """``repr`` of a rejected value, with its type when that is not obvious from the repr."""
    if isinstance(value, (bool, np.bool_)) or not _is_real(value):
        return f"{value!r} ({type(value).__name__})"
    return repr(value)


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings; defaults are llama.cpp's. Every field is validated on construction (SamplingError
    naming the field in its message and `param`). This class is the one definition of the sampling
    parameters and their defaults: `Model`'s generation methods take one plus keyword overrides of its
    fields (`with_overrides`), and the CLI builds its options from the fields' metadata.

    Attributes:
        temperature: Softmax temperature, ``>= 0``; ``0`` means greedy (argmax).
        top_k: Keep the ``top_k`` most likely tokens, ``>= 0``; ``0`` = off.
        top_p: Nucleus threshold in ``(0, 1]``; ``1.0`` = off.
        min_p: Keep tokens with ``p >= min_p * p_max``, in ``[0, 1]``; ``0.0`` = off.
        repeat_penalty: Repetition penalty, ``> 0``; ``1.0`` = off.
        repeat_last_n: How many recent history ids the penalty looks at, ``>= -1``;
            ``0`` = off, ``-1`` = the whole history.
        seed: Seed of the sampler's random generator, ``None`` (fresh OS entropy) or an int in
            ``[0, 2**64)``.
        presence_penalty: Subtracted once from the logit of every id already generated, in
            ``[-2, 2]`` (OpenAI's range); ``0.0`` = off.
        frequency_penalty: Subtracted from the logit of every generated id once per occurrence, in
            ``[-2, 2]``; ``0.0`` = off.
    """

    # metadata["help"] is what `llmrun --help` says of each field (the CLI builds its options from them)
    temperature: float = field(default=0.8, metadata={"help": "softmax temperature; 0 = greedy"})
    top_k: int = field(default=40, metadata={"help": "keep the K most likely tokens; 0 = off"})
    top_p: float = field(default=0.95, metadata={"help": "keep the smallest set of tokens with this much "
                                                          "probability; 1 = off"})
    min_p: float = field(default=0.05, metadata={"help": "keep tokens at least this fraction as likely as the "
                                                          "most likely one; 0 = off"})
    repeat_penalty: float = field(default=1.0, metadata={"help": "penalize recently seen tokens; 1 = off"})
    repeat_last_n: int = field(default=64, metadata={"help": "how many recent tokens the penalty looks at; "
                                                              "-1 = all, 0 = off"})
    seed: int | None = field(default=None, metadata={"help": "random seed, for reproducible runs"})
    presence_penalty: float = field(default=0.0, metadata={"help": "subtracted from the logits of tokens "
                                                                    "already generated, in [-2, 2]"})
    frequency_penalty: float = field(default=0.0, metadata={"help": "subtracted once per earlier occurrence "
                                                                     "in the generated text, in [-2, 2]"})

    def __post_init__(self) -> None:
        """Validate every field and normalise numpy scalars to Python ``float``/``int``."""
        self._set_float("temperature", "must be a finite number >= 0", lambda v: v >= 0)
        self._set_int("top_k", "must be an int >= 0", 0, None)
        self._set_float("top_p", "must be in (0, 1]", lambda v: 0 < v <= 1)
        self._set_float("min_p", "must be in [0, 1]", lambda v: 0 <= v <= 1)
        self._set_float("repeat_penalty", "must be a finite number > 0", lambda v: v > 0)
        self._set_int("repeat_last_n", "must be an int >= -1", -1, None)
        self._set_float("presence_penalty", "must be a number in [-2, 2]", lambda v: -2 <= v <= 2)
        self._set_float("frequency_penalty", "must be a number in [-2, 2]", lambda v: -2 <= v <= 2)
        if self.seed is not None:
            self._set_int("seed", "must be None or an int in [0, 2**64)", 0, _SEED_LIMIT)

    def with_overrides(self, **overrides: object) -> SamplingParams:
        """These parameters with the fields named in `overrides` replaced: one new, validated SamplingParams
        (this one when there is nothing to override). An unknown name is an InvalidArgumentError naming it."""
        unknown = [name for name in overrides if name not in _FIELDS]
        if unknown:
            raise InvalidArgumentError(f"unknown argument {unknown[0]!r}: not a sampling parameter "
                                       f"({', '.join(_FIELDS)})", param=unknown[0])
        return dataclasses.replace(self, **overrides) if overrides else self

    def _set_float(self, name: str, rule: str, in_range: Callable[[float], bool]) -> None:
        """Check a float field (finite, not bool, ``in_range``) and store it as ``float``."""
        value = getattr(self, name)
        try:
            number = float(value) if _is_real(value) else math.nan
        except OverflowError:  # an int too large for a float
            number = math.nan
        if not math.isfinite(number) or not in_range(number):
            raise SamplingError(f"{name} {rule}, got {_describe(value)}", param=name)
        object.__setattr__(self, name, number)

    def _set_int(self, name: str, rule: str, low: int, high: int | None) -> None:
        """Check an int field (not bool, ``low <= value < high``) and store it as ``int``."""
        value = getattr(self, name)
        if not _is_int(value) or int(value) < low or (high is not None and int(value) >= high):
            raise SamplingError(f"{name} {rule}, got {_describe(value)}", param=name)
        object.__setattr__(self, name, int(value))


_FIELDS = tuple(f.name for f in dataclasses.fields(SamplingParams))


class Sampler:
    """Draws token ids from logits according to a :class:`SamplingParams`.

    The sampler owns a :class:`numpy.random.Generator` seeded from ``params.seed``, so two samplers
    built from equal params with a seed return the same tokens for the same calls. Not thread-safe:
    use one sampler per generation stream.
    """

    def __init__(self, params: SamplingParams) -> None:
        """Create a sampler; ``params.seed`` seeds its random generator (``None`` = OS entropy)."""
        if not isinstance(params, SamplingParams):
            raise TypeError(f"params must be a SamplingParams, got {type(params).__name__}")
        self._params = params
        self._rng = np.random.default_rng(params.seed)
        self._log_min_p = math.log(params.min_p) if params.min_p > 0 else -math.inf
        self._penalized = (params.repeat_penalty != 1.0 or params.presence_penalty != 0.0
                           or params.frequency_penalty != 0.0)

    @property
    def params(self) -> SamplingParams:
        """The (immutable) parameters this sampler was built with."""
        return self._params

    def sample(self, logits: np.ndarray, history: Sequence[int] = (), generated: Sequence[int] = ()) -> int:
        """Return the next token id.

        Args:
            logits: 1-D float array (float16/32/64) of unnormalised scores, one per vocabulary id.
                Not modified; read-only arrays are fine. ``-inf`` entries are never sampled.
            history: Token ids generated/seen so far, oldest first; only the last
                ``repeat_last_n`` are used, and only when the repetition penalty is on.
            generated: The ids this generation produced so far (a suffix of ``history``); the presence
                and frequency penalties count them, and only when they are on.

        Raises:
            SamplingError: (a ``ValueError``) for logits that are not a non-empty 1-D float array,
                contain NaN or +inf, or are all -inf, and for penalised history ids outside
                ``[0, len(logits))``.
        """
        p = self._params
        if p.temperature == 0.0 and not self._penalized and _is_plain_vector(logits):
            # Greedy decoding with nothing to adjust: the argmax of the caller's array is the answer. A NaN
            # or +inf would win the argmax, so a non-finite winner goes the long way (which rejects it).
            best = int(np.argmax(logits))
            if math.isfinite(logits[best]):
                return best
        x = _copy_logits(logits)
        self._apply_repeat_penalty(x, history)
        self._apply_presence_frequency(x, generated)
        top = float(x.max())
        if top == -math.inf:
            raise SamplingError("all logits are -inf: no token can be sampled")
        if p.temperature == 0.0:
            return int(np.argmax(x))

        ids, weights = self._survivors(x, top)
        if ids.size == 1:
            return int(ids[0])
        cdf = np.cumsum(weights)
        pick = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        if pick >= ids.size:  # guard against rounding: fall back to the last non-zero weight
            pick = int(np.flatnonzero(weights)[-1])
        return int(ids[pick])

    def _survivors(self, x: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
        """Run top-k, top-p, min-p and temperature on the penalised logits ``x`` (maximum ``top``).

        Returns the surviving ids, in the fixed order the inverse CDF walks them (decreasing
        probability when top-p is on, increasing id otherwise), and their unnormalised sampling
        weights ``exp((logit - top) / temperature)``.
        """
        p = self._params
        ids, vals, nucleus_total = self._top_k_min_p(x, top)
        if p.top_p < 1.0:
            ids, vals = _nucleus(ids, vals, top, nucleus_total, p.top_p)
        return ids, np.exp((vals - top) / p.temperature)

    def _top_k_min_p(self, x: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray, float]:
        """Apply top-k and min-p to the penalised logits ``x`` (whose maximum is ``top``).

        Returns the surviving ids (increasing, all finite), their logits, and, when top-p is on, the
        sum of ``exp(logit - top)`` over the top-k survivors: top-p runs between top-k and min-p, so
        it normalises over the top-k set even though min-p is applied here first. That reordering is
        exact: top-p and min-p each keep a prefix of the candidates sorted by decreasing logit, so
        applying both keeps the shorter prefix whatever the order. Min-p is a cheap threshold, so
        it also serves as a pre-filter that spares ``np.argpartition`` most of the vocabulary.
        """
        p = self._params
        k = p.top_k if 0 < p.top_k < x.size else 0  # 0: no top-k cut
        want_total = p.top_p < 1.0
        if self._log_min_p > -math.inf:
            ids = np.flatnonzero(x >= top + self._log_min_p)  # never includes -inf
            if k and ids.size > k:  # the k largest all pass min-p: top-k binds
                ids = np.sort(_top_k_within(x, ids, k))
                vals = x[ids]
                return ids, vals, float(np.exp(vals - top).sum()) if want_total else 0.0
            # Min-p binds (the top-k set, if any, contains every min-p survivor).
            total = 0.0
            if want_total:
                in_top_k = x if not k else x[_top_k_ids(x, k)]
                total = float(np.exp(in_top_k - top).sum())
            return ids, x[ids], total
        if k:
            ids = np.sort(_top_k_ids(x, k))
            vals = x[ids]
            finite = vals > -math.inf
            if not finite.all():
                ids, vals = ids[finite], vals[finite]
        else:
            finite = x > -math.inf
            if finite.all():
                ids, vals = np.arange(x.size), x
            else:
                ids = np.flatnonzero(finite)
                vals = x[ids]
        return ids, vals, float(np.exp(vals - top).sum()) if want_total else 0.0

    def _apply_repeat_penalty(self, x: np.ndarray, history: Sequence[int]) -> None:
        """Penalise, in place on the private copy ``x``, each distinct id in the recent history."""
        p = self._params
        if p.repeat_penalty == 1.0 or p.repeat_last_n == 0 or len(history) == 0:
            return
        window = history if p.repeat_last_n == -1 else _last(history, p.repeat_last_n)
        ids = _check_history(window, x.size)
        vals = x[ids]
        penalised = np.where(vals > 0, vals / p.repeat_penalty, vals * p.repeat_penalty)
        # A tiny penalty could overflow a large positive logit to +inf; keep it finite.
        x[ids] = np.minimum(penalised, np.finfo(np.float64).max)

    def _apply_presence_frequency(self, x: np.ndarray, generated: Sequence[int]) -> None:
        """Subtract, in place on the private copy ``x``, the presence and frequency penalties of each
        generated id: ``presence * (count > 0) + frequency * count``."""
        p = self._params
        if (p.presence_penalty == 0.0 and p.frequency_penalty == 0.0) or len(generated) == 0:
            return
        _check_history(generated, x.size)  # every id in the vocabulary
        ids, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
        # -inf (masked) stays -inf; a negative penalty cannot overflow a finite float64 logit by 2 * n_ctx
        x[ids] -= p.presence_penalty + p.frequency_penalty * counts


def _copy_logits(logits: np.ndarray) -> np.ndarray:
    """Validate ``logits`` and return a private float64 copy."""
    arr = np.asarray(logits)
    if arr.ndim != 1:
        raise SamplingError(f"logits must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        raise SamplingError("logits must not be empty")
    if arr.dtype.kind != "f":
        raise SamplingError(f"logits must be a float array, got dtype {arr.dtype}")
    x = arr.astype(np.float64)  # always a fresh, writable copy
    top = x.max()  # NaN propagates through max, so one pass checks both NaN and +inf
    if math.isnan(top):
        raise SamplingError(f"logits contain NaN (first at id {int(np.flatnonzero(np.isnan(x))[0])})")
    if top == math.inf:
        raise SamplingError(f"logits contain +inf (first at id {int(np.argmax(x))})")
    return x


def _last(history: Sequence[int], n: int) -> Sequence[int]:
    """Return the last ``n`` (> 0) items of ``history``, also for sequences without slicing (deque)."""
    try:
        return history[-n:]
    except TypeError:
        return list(itertools.islice(history, max(0, len(history) - n), None))


def _check_history(window: Sequence[int], vocab_size: int) -> np.ndarray:
    """Return the distinct ids of ``window`` as an int array, checking each is in the vocabulary."""
    try:
        ids: np.ndarray | None = np.asarray(window)
    except (TypeError, ValueError):  # e.g. ragged nested sequences
        ids = None
    if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        # Slow path, only for unusual input (Python ints beyond int64, non-integers): find the culprit.
        for token in window:
            if not _is_int(token):
                raise SamplingError(f"history must hold integer token ids, got {_describe(token)}")
            if not 0 <= int(token) < vocab_size:
                raise _out_of_range(int(token), vocab_size)
        ids = np.asarray([int(t) for t in window], dtype=np.intp)
    if ids.size == 0:
        return ids.astype(np.intp)
    bad = np.flatnonzero((ids < 0) | (ids >= vocab_size))
    if bad.size:
        raise _out_of_range(int(ids[bad[0]]), vocab_size)
    return np.unique(ids).astype(np.intp)


def _out_of_range(token: int, vocab_size: int) -> SamplingError:
    """Build the error for a penalised history id outside the vocabulary."""
    return SamplingError(
        f"history token id {token} is out of range for the repetition penalty (vocabulary size {vocab_size})"
    )


def _nucleus(
    ids: np.ndarray, vals: np.ndarray, top: float, total: float, top_p: float
) -> tuple[np.ndarray, np.ndarray]:
    """Top-p: return the smallest prefix, by decreasing logit, whose probability mass is ``>= top_p``.

    ``ids`` (increasing) and ``vals`` are the candidates, ``total`` is the sum of
    ``exp(logit - top)`` that normalises their probabilities (it may include tokens that min-p
    already removed). Ties are ordered by increasing id, and at least one token is kept. The
    result is in decreasing-probability order.

    The nucleus is usually tiny, so rather than sorting every candidate this sorts only the ``m``
    largest (``m`` = 64, 512, ...) and grows ``m`` until their cumulative mass reaches ``top_p``.
    The ``m`` largest are a prefix of the full sorted order, and ``np.cumsum`` adds in order, so
    the cut is exactly the one a full sort would give.
    """
    m = _NUCLEUS_START
    while True:
        if m < ids.size:
            local = np.sort(_top_k_ids(vals, m))  # ties at the cut go to the lowest ids
            sub_ids, sub_vals = ids[local], vals[local]
        else:
            sub_ids, sub_vals = ids, vals
        # sub_ids is increasing, so a stable sort orders by decreasing logit, then increasing id.
        order = np.argsort(-sub_vals, kind="stable")
        sub_ids, sub_vals = sub_ids[order], sub_vals[order]
        cum = np.cumsum(np.exp(sub_vals - top)) / total
        n_keep = int(np.searchsorted(cum, top_p, side="left")) + 1
        if n_keep <= sub_ids.size or m >= ids.size:
            n_keep = min(n_keep, sub_ids.size)
            return sub_ids[:n_keep], sub_vals[:n_keep]
        m *= 8


def _top_k_ids(x: np.ndarray, k: int) -> np.ndarray:
    """Return the ids of the ``k`` largest entries of ``x`` (unordered), ties going to the lowest ids.

    Partitioning the whole vocabulary is the slow part of sampling, so a threshold is first guessed
    from a strided sample of about ``_SAMPLE_SIZE`` logits, aiming at roughly ``2k`` survivors; only
    the logits at or above it are partitioned. If fewer than ``k`` pass, the whole array is
    partitioned instead, so the result is always exact.
    """
    n = x.size
    stride = n // _SAMPLE_SIZE
    if stride >= 2 and 4 * k <= n:
        sample = x[::stride]
        j = min(sample.size, 2 * k // stride + 2)  # rank, within the sample, of the guessed threshold
        guess = np.partition(sample, sample.size - j)[sample.size - j]
        near = np.flatnonzero(x >= guess)
        if near.size >= k:
            return _top_k_within(x, near, k)
    return _top_k_within(x, None, k)


def _top_k_within(x: np.ndarray, cand: np.ndarray | None, k: int) -> np.ndarray:
    """Return the ids of the ``k`` largest entries of ``x`` among ``cand``, ties to the lowest ids.

    ``cand`` is an increasing array of ids that must include every id whose value is >= the k-th
    largest value of ``x`` (``None`` = all ids). Requires ``k <= len(cand)``.
    """
    vals = x if cand is None else x[cand]
    m = vals.size
    if m == k:
        return np.arange(m) if cand is None else cand
    part = np.argpartition(vals, m - k)[m - k :]
    part_vals = vals[part]
    cut = part_vals.min()
    above = part[part_vals > cut]
    # argpartition picks arbitrarily among values equal to the cut; take the lowest such ids.
    ties = np.flatnonzero(vals == cut)[: k - above.size]
    local = np.concatenate((above, ties))
    return local if cand is None else cand[local]
