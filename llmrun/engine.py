"""Engine: owns one C context (csrc/forward.c) for a ModelSpec and knows what its KV cache holds.

The engine is the only place that talks to the C library. It passes the spec's arrays to C as borrowed
pointers (no copies), keeps them alive as long as the context, and remembers which tokens are in the KV
cache so that a request sharing a prefix with the previous one only computes the rest.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ._library import ffi, lib
from .errors import ContextOverflowError, InvalidArgumentError, KernelError, KVCacheFullError
from .formats.mapping import advise_huge_pages
from .rope import rope_tables
from .spec import (
    FFN_ACTIVATIONS,
    LAYER_ROPES,
    REPACKED_FORMS,
    ROPE_STYLES,
    TENSOR_TYPES,
    LayerWeights,
    ModelConfig,
    ModelSpec,
    Tensor,
)

# Instruction set name -> the C library's code, as the library names them (csrc/llmrun.h). The codes are
# names, not ranks: which ones this CPU runs is asked of the library (available_isas).
ISA_NAMES = {ffi.string(lib.llm_isa_name(code)).decode(): code for code in range(lib.LLM_ISA_COUNT)}

MAX_THREADS = lib.LLM_MAX_THREADS  # threads one context may use (the C library's limit)

# Tokens per batch of prompt processing (and per C call, so that Ctrl-C, delivered between calls, is
# prompt): each weight matrix is read once per batch.
DEFAULT_BATCH = 512

# evaluate_all keeps the logits it returned (for a later call on a longer text) up to this size.
MAX_KEPT_LOGITS_BYTES = 256 << 20


def best_isa() -> str:
    """Name of the fastest instruction set this CPU supports."""
    return ffi.string(lib.llm_isa_name(lib.llm_isa_best())).decode()


def available_isas() -> list[str]:
    """Every instruction set this CPU can run the kernels with, the portable reference first."""
    return [name for name, code in ISA_NAMES.items() if lib.llm_isa_supported(code)]


def _isa_code(isa: str | None) -> int:
    """The C library's code of instruction set `isa`; None: the LLMRUN_ISA environment variable if set (to measure
    on one machine what a CPU without the best level gets: LLMRUN_ISA=avx2, =scalar), else the best this CPU has."""
    where = "isa"
    if isa is None:
        isa = os.environ.get("LLMRUN_ISA") or None
        where = "the LLMRUN_ISA environment variable"
    if isa is None:
        return lib.LLM_ISA_AUTO
    code = ISA_NAMES.get(isa)
    if code is None:
        raise InvalidArgumentError(f"{where} must be one of {sorted(ISA_NAMES)}, got {isa!r}", param="isa")
    if not lib.llm_isa_supported(code):
        raise InvalidArgumentError(f"{where} asks for {isa!r} kernels, which this CPU or build cannot run "
                                   f"(available: {', '.join(available_isas())})", param="isa")
    return code


def isa_for(isa: str | None) -> str:
    """The name of the level an Engine created with `isa` runs (None: LLMRUN_ISA, else the best); InvalidArgumentError
    as the Engine would raise it."""
    code = _isa_code(isa)
    return best_isa() if code == lib.LLM_ISA_AUTO else ffi.string(lib.llm_isa_name(code)).decode()


def _c_config(cfg: ModelConfig, where: object) -> tuple[object, list[object]]:
    """The C library's llm_config for a model's hyperparameters (without RoPE frequencies and attention factor),
    and the arrays it points to, which must stay alive while it is used. KernelError (naming `where`, the model)
    for an option the C library cannot be given: an unknown name, a per-layer list that is not one entry per
    layer or a window beyond int32 (C checks the values themselves)."""
    for name in ("layer_ropes", "layer_windows"):
        n = len(getattr(cfg, name))
        if n not in (0, cfg.n_layers):
            raise KernelError(f"{where}: {name} has {n} entries for {cfg.n_layers} layers")
    if not all(isinstance(w, (int, np.integer)) and not isinstance(w, bool) and -2**31 <= w < 2**31
               for w in cfg.layer_windows):
        raise KernelError(f"{where}: layer_windows {cfg.layer_windows!r}: each window must be an int32")
    config = ffi.new("llm_config *", {
        "dim": cfg.dim, "hidden_dim": cfg.hidden_dim, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads,
        "n_kv_heads": cfg.n_kv_heads, "head_dim": cfg.head_dim, "vocab_size": cfg.vocab_size,
        "rope_theta": cfg.rope_theta, "norm_eps": cfg.norm_eps, "rope_style": ROPE_STYLES[cfg.rope_style],
        "rope_dim": cfg.rope_dim, "rope_theta_local": cfg.rope_theta_local,
        "ffn_activation": _code(where, "ffn_activation", FFN_ACTIVATIONS, cfg.ffn_activation),
        "embed_scale": cfg.embed_scale, "attn_scale": 0.0 if cfg.attn_scale is None else cfg.attn_scale,
        "attn_softcap": cfg.attn_softcap, "final_softcap": cfg.final_softcap,
        "residual_scale": cfg.residual_scale, "logit_scale": cfg.logit_scale,
    })
    arrays = []
    if cfg.layer_ropes:
        arrays.append(ffi.new("int32_t[]", [_code(where, "layer_ropes", LAYER_ROPES, r) for r in cfg.layer_ropes]))
        config.layer_ropes = arrays[-1]
    if cfg.layer_windows:
        arrays.append(ffi.new("int32_t[]", [int(w) for w in cfg.layer_windows]))
        config.layer_windows = arrays[-1]
    return config, arrays


def _code(where: object, field: str, table: dict[str, int], name: str) -> int:
    """The C library's code of option value `name`; KernelError for one it does not know."""
    if name not in table:
        raise KernelError(f"{where}: {field} {name!r} is not one of {', '.join(table)}")
    return table[name]


def _c_params(n_ctx: int, n_batch: int, n_threads: int, isa: int, n_seq: int, n_kv: int | None) -> object:
    """The C library's llm_ctx_params (n_kv None: 0, the library's default of n_ctx)."""
    return ffi.new("llm_ctx_params *", {"n_ctx": n_ctx, "n_seq": n_seq, "n_kv": 0 if n_kv is None else n_kv,
                                        "n_batch": n_batch, "n_threads": n_threads, "isa": isa})


def context_bytes(cfg: ModelConfig, n_ctx: int, n_batch: int, n_threads: int, n_seq: int = 1,
                  n_kv: int | None = None) -> int | None:
    """The memory an Engine with these sizes allocates besides the weights (the KV pool of n_kv positions,
    default n_ctx; activations, buffers), as the C library counts it before allocating anything (a sliding-window
    layer's pool holds about its window per sequence); None where it cannot tell (a config or size it would refuse:
    creating the engine then says why)."""
    try:
        config, _keep = _c_config(cfg, "the model")
        params = _c_params(n_ctx, n_batch, n_threads, lib.LLM_ISA_AUTO, n_seq, n_kv)
    except (KernelError, OverflowError, TypeError):
        return None
    n = lib.llm_ctx_bytes(config, params)
    if n == lib.LLM_ERR_NOMEM:
        return 1 << 62  # more than any memory
    return n if n >= 0 else None


class Engine:
    """One model instance: weights (borrowed), `n_seq` sequences of up to `n_ctx` positions each whose keys and
    values share a pool of n_kv positions (default n_ctx) in blocks of `block_size`, `n_threads` threads, batches
    of up to `n_batch` tokens. Sequence 0 is the single-sequence API's (evaluate, hidden ...); `batch` runs
    tokens of any sequences together."""

    def __init__(self, spec: ModelSpec, n_ctx: int, n_threads: int, isa: str | None = None,
                 n_batch: int = DEFAULT_BATCH, n_seq: int = 1, n_kv: int | None = None) -> None:
        cfg = spec.config
        for name, value, low in (("n_seq", n_seq, 1), ("n_kv", 0 if n_kv is None else n_kv, 0)):
            if not _is_int(value) or not low <= value < 2**31:
                raise InvalidArgumentError(f"{name} must be an int in [{low}, {2**31 - 1}], got {value!r}", param=name)
        self.spec = spec
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_batch = min(n_batch, n_ctx)
        self.vocab_size = cfg.vocab_size
        self._keepalive: list[object] = []  # cffi buffers over the spec's arrays
        self._lock = threading.Lock()
        self._cached: list[int] = []  # the tokens whose keys/values are in the cache, positions 0..
        self._rows: np.ndarray | None = None  # logits after each of _cached[:len(_rows)], kept by evaluate_all
        self.tokens_computed = 0  # positions run through the model so far (what the cache saved is not)
        self._ctx = ffi.NULL

        config, arrays = _c_config(cfg, spec.path)
        self._keepalive.extend(arrays)  # llm_create copies them; kept until then
        rope_freqs, attn_factor = rope_tables(spec, n_ctx)
        config.rope_attn_factor = attn_factor
        if rope_freqs is not None:
            freqs = np.ascontiguousarray(rope_freqs, dtype=np.float32)
            if freqs.shape != (cfg.rotary_dim // 2,):
                raise KernelError(f"{spec.path}: rope_freqs has shape {freqs.shape}, expected ({cfg.rotary_dim // 2},)")
            config.rope_freqs = ffi.from_buffer("float[]", freqs)  # llm_create copies it
            self._keepalive.append(config.rope_freqs)
        layers = ffi.new("llm_layer[]", cfg.n_layers)
        for i, layer in enumerate(spec.layers):
            for name in ("attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w_gate", "w_down", "w_up"):
                self._fill(getattr(layers[i], name), getattr(layer, name))
            for name in LayerWeights.OPTIONAL:  # left NULL where the model has none
                if getattr(layer, name) is not None:
                    self._fill(getattr(layers[i], name), getattr(layer, name))
        weights = ffi.new("llm_weights *")
        self._fill(weights.token_embd, spec.token_embd)
        self._fill(weights.output_norm, spec.output_norm)
        if spec.output is not None:
            self._fill(weights.output, spec.output)
        weights.layers = layers

        isa_code = _isa_code(isa)
        err = ffi.new("char[]", 512)
        out = ffi.new("llm_ctx **")
        params = _c_params(n_ctx, n_batch, n_threads, isa_code, n_seq, n_kv)
        rc = lib.llm_create(config, weights, params, out, err, len(err))
        if rc != 0:
            raise KernelError(f"{spec.path}: cannot create the model context: {ffi.string(err).decode()}")
        self._ctx = out[0]
        self.isa = ffi.string(lib.llm_isa_name(lib.llm_ctx_isa(self._ctx))).decode()
        self.n_seq = int(n_seq)
        # the pool's positions, in whole blocks (a windowed layer's pool may hold fewer: llmrun.h)
        self.n_kv = -(-(n_kv or n_ctx) // lib.LLM_KV_BLOCK) * lib.LLM_KV_BLOCK
        self.block_size: int = lib.LLM_KV_BLOCK

    def _fill(self, dst: object, tensor: Tensor) -> None:
        """Points a C llm_tensor at a numpy array without copying it."""
        data = tensor.data
        if not data.flags.c_contiguous:
            raise KernelError(f"{self.spec.path}: tensor is not contiguous in memory")
        ttype = TENSOR_TYPES[tensor.type]
        if data.dtype != ttype.dtype:
            raise KernelError(f"{self.spec.path}: tensor of type {tensor.type} has numpy dtype {data.dtype}")
        buf = ffi.from_buffer(data)
        self._keepalive.append(buf)
        rows, cols = tensor.shape
        dst.data = buf
        dst.type = ttype.code
        dst.rows = rows
        dst.cols = cols

    # ------------------------------------------------------------------------------------------------

    @property
    def cached_tokens(self) -> list[int]:
        """The tokens the KV cache holds now (a copy)."""
        return list(self._cached)

    def reusable_prefix(self, tokens: list[int]) -> int:
        """How many of `tokens` evaluate() would take from the cache instead of computing."""
        with self._lock:  # the C context may be freed or written by another thread meanwhile
            return self._reusable_prefix(tokens)

    def _reusable_prefix(self, tokens: list[int]) -> int:
        return self._resumable(min(common_prefix(self._cached, tokens), len(tokens) - 1))

    def _resumable(self, keep: int) -> int:
        """`keep` cached tokens, or 0 where the sliding-window layers no longer hold the keys that the positions
        after them attend to (llm_seq_resume_min of sequence 0): no shorter prefix would do, so start over.
        Called with the lock held."""
        if keep <= 0 or not self._ctx:
            return 0
        return keep if keep >= lib.llm_seq_resume_min(self._ctx, 0) else 0

    def evaluate(self, tokens: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        """Logits (vocab_size,) after the last of `tokens` in sequence 0, computing only what the cache lacks. They
        are written into `out` (a float32 array of vocab_size that the caller owns and reuses) when given."""
        tokens = tokens if type(tokens) is list else list(tokens)
        if out is None:
            out = np.empty(self.vocab_size, dtype=np.float32)
        elif out.shape != (self.vocab_size,) or out.dtype != np.float32 or not out.flags.c_contiguous:
            raise InvalidArgumentError(f"out must be a contiguous float32 array of shape ({self.vocab_size},)",
                                       param="out")
        with self._lock:
            keep = self._reusable_prefix(tokens)  # the last token always runs: we need its logits
            self.check_tokens(tokens, keep)
            self._run(tokens, keep, out, all_logits=False)
        return out

    def evaluate_all(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits (len(tokens), vocab_size) after each token. Rows for a prefix that the previous
        evaluate_all computed (and the cache still holds) are reused; the rest are computed."""
        tokens = list(tokens)
        self.check_tokens(tokens)
        out = np.empty((len(tokens), self.vocab_size), dtype=np.float32)
        with self._lock:
            keep = 0
            if self._rows is not None:
                keep = min(common_prefix(self._cached, tokens), len(self._rows))
                if keep < len(tokens):  # the rest is computed from position keep on
                    keep = self._resumable(keep)
                out[:keep] = self._rows[:keep]
            if keep < len(tokens):
                self._run(tokens, keep, out, all_logits=True)
            # the caller owns `out`: keep a copy, unless it is large (a long text times a 128k vocabulary)
            self._rows = out.copy() if out.nbytes <= MAX_KEPT_LOGITS_BYTES else None
        return out

    def check_tokens(self, tokens: list[int], start: int = 0) -> None:
        """Validates tokens[start:] (evaluate() skips the ones the cache holds: they were checked)."""
        if not tokens:
            raise InvalidArgumentError("no tokens to evaluate", param="tokens")
        if len(tokens) > self.n_ctx:
            raise ContextOverflowError(f"{len(tokens)} tokens do not fit in the context of {self.n_ctx}",
                                       n_tokens=len(tokens), n_ctx=self.n_ctx, max_ctx=self.spec.max_context)
        for i in range(start, len(tokens)):
            t = tokens[i]
            if isinstance(t, (bool, np.bool_)) or not isinstance(t, (int, np.integer)):
                raise InvalidArgumentError(f"token at index {i} must be an int, got {type(t).__name__}",
                                           param="tokens")
            if not 0 <= t < self.vocab_size:
                raise InvalidArgumentError(f"token {t} at index {i} is outside the vocabulary [0, {self.vocab_size})",
                                           param="tokens")

    def _run(self, tokens: list[int], start: int, logits: np.ndarray, all_logits: bool) -> None:
        """Runs tokens[start:] at positions start.. of sequence 0 in chunks of n_batch; the cache then holds
        tokens[:end]."""
        if not self._ctx:
            raise KernelError("the model has been closed")
        self._cached = self._cached[:start]
        if self._rows is not None:
            self._rows = self._rows[:start]
        pos = start
        while pos < len(tokens):
            end = min(pos + self.n_batch, len(tokens))
            ids = np.asarray(tokens[pos:end], dtype=np.int32)
            if all_logits:
                out = ffi.from_buffer("float[]", logits[pos:], require_writable=True)
            elif end == len(tokens):
                out = ffi.from_buffer("float[]", logits, require_writable=True)
            else:
                out = ffi.NULL
            rc = lib.llm_forward(self._ctx, ffi.from_buffer("int32_t[]", ids), len(ids), pos, out,
                                 1 if all_logits else 0)
            self._check(rc)
            self._cached.extend(tokens[pos:end])
            self.tokens_computed += end - pos
            pos = end

    def _check(self, rc: int, what: str = "forward pass") -> None:
        """KVCacheFullError (the pool lacks blocks: nothing changed) or KernelError with the C library's message for
        a failed call."""
        if rc == lib.LLM_ERR_KV_FULL:
            raise KVCacheFullError(f"{what} failed: {ffi.string(lib.llm_last_error(self._ctx)).decode()}")
        if rc != 0:
            raise KernelError(f"{what} failed: {ffi.string(lib.llm_last_error(self._ctx)).decode()}")

    def hidden(self, tokens: Sequence[int]) -> np.ndarray:
        """Final hidden states (len(tokens), dim) float32 after the final norm, without the classifier: the
        tokens run from position 0 (the cache is overwritten and then holds them), in batches of n_batch."""
        tokens = list(tokens)
        self.check_tokens(tokens)
        out = np.empty((len(tokens), self.spec.config.dim), dtype=np.float32)
        with self._lock:
            if not self._ctx:
                raise KernelError("the model has been closed")
            self._cached, self._rows = [], None
            for pos in range(0, len(tokens), self.n_batch):
                ids = np.asarray(tokens[pos:pos + self.n_batch], dtype=np.int32)
                rc = lib.llm_forward_hidden(self._ctx, ffi.from_buffer("int32_t[]", ids), len(ids), pos,
                                            ffi.from_buffer("float[]", out[pos:], require_writable=True))
                self._check(rc)
                self._cached.extend(tokens[pos:pos + len(ids)])
                self.tokens_computed += len(ids)
        return out

    # --- several sequences ---------------------------------------------------------------------------

    def batch(self, tokens: Sequence[int] | np.ndarray, seqs: Sequence[int] | np.ndarray,
              positions: Sequence[int] | np.ndarray, outputs: Sequence[bool] | np.ndarray) -> np.ndarray:
        """Runs n <= n_batch tokens of any sequences together (llm_batch): token i extends sequence seqs[i] at
        positions[i]; each sequence's entries come in the order of their positions, consecutive, the first
        continuing the sequence, rewinding it or starting it over at 0. Returns the logits (n_outputs, vocab_size)
        float32 of the entries whose outputs[i] is true, in order. InvalidArgumentError for arguments of the wrong
        kind, length or range; KVCacheFullError when the pool lacks the blocks (nothing changed); KernelError with
        the library's message for what only it checks (a gap in positions, a position past a sequence's end)."""
        entries, n_out = self._entries(tokens, seqs, positions, outputs)
        logits = np.empty((n_out, self.vocab_size), dtype=np.float32)
        self._batch(entries, logits, None)
        return logits

    def batch_hidden(self, tokens: Sequence[int] | np.ndarray, seqs: Sequence[int] | np.ndarray,
                     positions: Sequence[int] | np.ndarray, outputs: Sequence[bool] | np.ndarray) -> np.ndarray:
        """As `batch`, the final hidden states (n_outputs, dim) float32 after the final norm instead of logits (the
        classifier does not run)."""
        entries, n_out = self._entries(tokens, seqs, positions, outputs)
        hidden = np.empty((n_out, self.spec.config.dim), dtype=np.float32)
        self._batch(entries, None, hidden)
        return hidden

    def _entries(self, tokens: object, seqs: object, positions: object, outputs: object) -> tuple[np.ndarray, int]:
        """The (n, 4) int32 llm_batch_entry rows of a batch's arguments, validated, and the number of outputs."""
        columns = []
        for name, values, high in (("tokens", tokens, self.vocab_size), ("seqs", seqs, self.n_seq),
                                   ("positions", positions, self.n_ctx), ("outputs", outputs, 2)):
            array = np.asarray(values)
            if array.ndim != 1 or (array.size and array.dtype.kind not in ("iu" if name != "outputs" else "iub")):
                raise InvalidArgumentError(f"{name} must be a sequence of {'bools' if name == 'outputs' else 'ints'}, "
                                           f"got {array.dtype} of shape {array.shape}", param=name)
            if columns and array.size != columns[0].size:
                raise InvalidArgumentError(f"{name} has {array.size} entries, tokens {columns[0].size}", param=name)
            bad = np.flatnonzero((array < 0) | (array >= high)) if array.size else []
            if len(bad):
                raise InvalidArgumentError(f"{name}[{bad[0]}] is {array[bad[0]]}, outside [0, {high})", param=name)
            columns.append(array)
        n = columns[0].size
        if not 1 <= n <= self.n_batch:
            raise InvalidArgumentError(f"a batch holds 1 to {self.n_batch} tokens (n_batch), got {n}", param="tokens")
        entries = np.stack([c.astype(np.int32) for c in columns], axis=1)
        entries[:, 3] = columns[3] != 0
        return np.ascontiguousarray(entries), int(np.count_nonzero(columns[3]))

    def _batch(self, entries: np.ndarray, logits: np.ndarray | None, hidden: np.ndarray | None,
               clear: Sequence[int] = ()) -> None:
        """llm_batch of validated entries under the lock; the sequences `clear` are emptied before the lock is let
        go (whatever happened), so that their blocks are never seen held by another caller."""
        with self._lock:
            if not self._ctx:
                raise KernelError("the model has been closed")
            out = [ffi.NULL if a is None or not a.size else ffi.from_buffer("float[]", a, require_writable=True)
                   for a in (logits, hidden)]
            try:
                rc = lib.llm_batch(self._ctx, ffi.from_buffer("llm_batch_entry[]", entries), len(entries), *out)
            finally:
                for s in clear:
                    lib.llm_seq_keep(self._ctx, s, 0)
            self._check(rc, "batch")
            self.tokens_computed += len(entries)
            if (entries[:, 1] == 0).any():  # sequence 0 changed under the single-sequence API: it starts over
                self._cached, self._rows = [], None

    def _seq(self, seq: object, name: str = "seq") -> int:
        if not _is_int(seq) or not 0 <= seq < self.n_seq:
            raise InvalidArgumentError(f"{name} must be a sequence id in [0, {self.n_seq}), got {seq!r}", param=name)
        return int(seq)

    def _length(self, seq: int, n: object) -> int:
        """n checked against sequence seq's length (lock held)."""
        length = lib.llm_seq_length(self._ctx, seq)
        if not _is_int(n) or not 0 <= n <= length:
            raise InvalidArgumentError(f"n must be an int in [0, {length}] (sequence {seq} holds {length} "
                                       f"positions), got {n!r}", param="n")
        return int(n)

    def seq_keep(self, seq: int, n: int) -> None:
        """Keeps the first n positions of sequence `seq` and gives the blocks of the rest back (n = 0 clears it)."""
        seq = self._seq(seq)
        with self._lock:
            self._open()
            self._check(lib.llm_seq_keep(self._ctx, seq, self._length(seq, n)), "seq_keep")
            if seq == 0:
                self._cached = self._cached[:n]
                if self._rows is not None:
                    self._rows = self._rows[:n]

    def seq_copy(self, src: int, dst: int, n: int) -> None:
        """Sequence dst becomes the first n positions of sequence src, sharing its blocks (nothing is computed; a
        shared block is copied when either writes into it)."""
        src, dst = self._seq(src, "src"), self._seq(dst, "dst")
        if src == dst:
            raise InvalidArgumentError(f"src and dst are both {src}: a sequence cannot be copied onto itself",
                                       param="dst")
        with self._lock:
            self._open()
            self._check(lib.llm_seq_copy(self._ctx, src, dst, self._length(src, n)), "seq_copy")
            if dst == 0:
                self._cached, self._rows = [], None

    def seq_length(self, seq: int) -> int:
        """The positions sequence `seq` holds."""
        seq = self._seq(seq)
        with self._lock:
            self._open()
            return int(lib.llm_seq_length(self._ctx, seq))

    def seq_resume_min(self, seq: int) -> int:
        """The earliest position from which sequence `seq` can be continued or rewound (sliding-window layers drop
        blocks no later query sees); 0 while nothing was dropped."""
        seq = self._seq(seq)
        with self._lock:
            self._open()
            return int(lib.llm_seq_resume_min(self._ctx, seq))

    def kv_usage(self) -> tuple[int, int]:
        """The KV pool's blocks in use and its blocks in all (summed over the layer groups)."""
        used, total = ffi.new("int64_t *"), ffi.new("int64_t *")
        with self._lock:
            self._open()
            lib.llm_kv_usage(self._ctx, used, total)
        return int(used[0]), int(total[0])

    def hidden_texts(self, texts: Sequence[Sequence[int]], seqs: Sequence[int]) -> list[np.ndarray]:
        """Final hidden states of several texts at once, (len(text), dim) each: text i runs as sequence seqs[i]
        from position 0, all in one batch (at most n_batch tokens in all), each attending to its own text only; the
        sequences are cleared afterwards. InvalidArgumentError for no or an empty text, more texts than seqs, a
        repeated or bad sequence id, a bad token or too many tokens."""
        texts = [list(t) for t in texts]
        seqs = list(seqs)
        if not texts or any(not t for t in texts):
            raise InvalidArgumentError("hidden_texts needs at least one text, and no empty one", param="texts")
        if len(texts) > len(seqs):
            raise InvalidArgumentError(f"{len(texts)} texts for {len(seqs)} sequences", param="seqs")
        seqs = [self._seq(s, "seqs") for s in seqs[:len(texts)]]
        if len(set(seqs)) != len(seqs):
            raise InvalidArgumentError(f"seqs {seqs} repeats a sequence: each text needs its own", param="seqs")
        ids = [i for t in texts for i in t]
        self.check_tokens(ids)
        if len(ids) > self.n_batch:
            raise InvalidArgumentError(f"the texts hold {len(ids)} tokens; one batch holds 1..{self.n_batch}",
                                       param="texts")
        entries = np.ones((len(ids), 4), dtype=np.int32)
        entries[:, 0] = ids
        entries[:, 1] = np.repeat(seqs, [len(t) for t in texts])
        entries[:, 2] = np.concatenate([np.arange(len(t)) for t in texts])
        out = np.empty((len(ids), self.spec.config.dim), dtype=np.float32)
        self._batch(entries, None, out, clear=seqs)
        return np.split(out, np.cumsum([len(t) for t in texts])[:-1])

    def _open(self) -> None:
        if not self._ctx:
            raise KernelError("the model has been closed")

    def reset(self) -> None:
        """Forgets what sequence 0 holds and gives its blocks back to the pool: the next evaluation computes every
        token."""
        with self._lock:
            self._cached = []
            self._rows = None
            if self._ctx:
                lib.llm_seq_keep(self._ctx, 0, 0)

    def close(self) -> None:
        """Frees the C context (KV cache, threads). Safe to call twice."""
        with self._lock:
            if self._ctx:
                lib.llm_free(self._ctx)
                self._ctx = ffi.NULL
            self._keepalive.clear()
            self._cached = []
            self._rows = None

    def __del__(self) -> None:
        if getattr(self, "_ctx", None):
            lib.llm_free(self._ctx)
            self._ctx = ffi.NULL


def repackable(tensor: Tensor, floats: bool = True) -> bool:
    """Whether llm_repack takes this matrix: a type with a repacked form (the 32-value block types, and the
    float types unless `floats` is False) and rows a multiple of 8 (other matrices keep their file's layout,
    which every kernel also runs)."""
    rows, _ = tensor.shape
    if not floats and TENSOR_TYPES[tensor.type].block_elems == 1:  # a float type
        return False
    return tensor.data.ndim == 2 and tensor.type in REPACKED_FORMS and rows % 8 == 0 and rows > 0


def repack_candidates(spec: ModelSpec, floats: bool = True) -> list[tuple[object, str]]:
    """(owner, attribute) of every matrix load(repack=True) repacks: the layers' matrices and a separate output
    matrix (the float ones only if `floats`). Never the token embedding, which is read a row at a time (and may
    be the tied output)."""
    found: list[tuple[object, str]] = []
    if spec.output is not None and spec.output is not spec.token_embd and repackable(spec.output, floats):
        found.append((spec, "output"))
    for layer in spec.layers:
        for name in ("wq", "wk", "wv", "wo", "w_gate", "w_down", "w_up"):
            if repackable(getattr(layer, name), floats):
                found.append((layer, name))
    return found


def repack_bytes(spec: ModelSpec, floats: bool = True) -> int:
    """Bytes of the matrices repack_model would copy (the anonymous memory it would take)."""
    return sum(getattr(owner, name).data.nbytes for owner, name in repack_candidates(spec, floats))


def repack_model(spec: ModelSpec, n_threads: int, floats: bool = True) -> int:
    """Replaces every repack_candidates matrix of `spec` by its repacked copy (llm_repack, csrc/llmrun.h) in new
    anonymous memory, a C call per tensor on `n_threads` threads (cffi releases the GIL); returns how many.
    The file pages the old arrays mapped are then given back to the system (their mapping dropped, not their
    data: the file is read-only and nothing reads those pages again)."""
    found = repack_candidates(spec, floats)
    # one mapping for all of them, so that small matrices sit in huge pages too; each 64-byte aligned
    offsets, total = [], 0
    for owner, name in found:
        offsets.append(total)
        total += -(-getattr(owner, name).data.nbytes // 64) * 64
    arena = _anonymous(total)

    def one(item: tuple[tuple[object, str], int]) -> None:
        (owner, name), offset = item
        tensor: Tensor = getattr(owner, name)
        rows, cols = tensor.shape
        out = arena[offset:offset + tensor.data.nbytes].view(tensor.data.dtype).reshape(tensor.data.shape)
        out_type = ffi.new("int32_t *")
        rc = lib.llm_repack(TENSOR_TYPES[tensor.type].code, ffi.from_buffer(tensor.data), rows, cols,
                            ffi.from_buffer(out), out_type)
        if rc != 0:
            raise KernelError(f"{spec.path}: cannot repack a {tensor.type} matrix of shape {tensor.shape}")
        setattr(owner, name, Tensor(out, ffi.string(lib.llm_type_name(out_type[0])).decode()))
        _drop_file_pages(tensor.data)

    with ThreadPoolExecutor(max_workers=max(1, n_threads)) as pool:
        list(pool.map(one, zip(found, offsets, strict=True)))
    return len(found)


def _anonymous(nbytes: int) -> np.ndarray:
    """nbytes of new anonymous memory (uint8), advised MADV_HUGEPAGE where the system has it: a decode step
    streams every weight once, and with 4 KiB pages walks the page tables for each (the file mappings ask for
    huge pages too, formats/mapping.py; numpy's own allocations get none where THP is "madvise", the common
    default, which measured 20-30% slower decoding). Private, not shared: counted as the process's RssAnon."""
    if nbytes == 0 or not hasattr(mmap, "MAP_ANONYMOUS"):
        return np.empty(nbytes, dtype=np.uint8)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    advise_huge_pages(buf)
    return np.frombuffer(buf, dtype=np.uint8)  # keeps the mapping alive as long as the array


def _drop_file_pages(array: np.ndarray) -> None:
    """Unmaps the whole pages inside `array` if it is a view of a file mapping (np.memmap): the resident
    memory goes back to the page cache, which the system may reclaim. Anonymous memory is left alone (there
    MADV_DONTNEED would zero it). Best effort: a system without madvise keeps the pages."""
    base = array
    while base is not None and not isinstance(base, np.memmap):
        base = getattr(base, "base", None)
    if base is None or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    start = -(-array.ctypes.data // page) * page
    end = (array.ctypes.data + array.nbytes) // page * page
    if end > start:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_DONTNEED)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token lists: C-speed slice comparisons (the usual case, a cache
    holding the request so far, is one), by bisection where they differ."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    low, high = 0, n  # a[:low] == b[:low], a[:high] != b[:high]
    while high - low > 1:
        mid = (low + high) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid
    return low
