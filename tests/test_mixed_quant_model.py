"""One GGUF model whose tensors use every weight type llmrun runs, as a Q4_K_M download mixes Q4_K, Q6_K,
Q5_0, Q8_0 and F32: it loads, and its logits match the numpy reference forward pass on the weights as
stored (decoded by the official `gguf` package, which shares no code with llmrun), on every instruction
set, for a prompt processed as one batch and token by token.

The block-quantized weights are random blocks (tests/gguf_fixtures.random_blocks): every bit pattern of the
packed values and sub-block scales occurs, including ones a quantizer rarely writes.

Tolerance: the C products quantize each activation vector to 8 bits per block of 32 or 256 values before
multiplying (the reference does not), a relative error of about 1/254 per value that averages out over a
dot product; through two layers the logits stay within 3% of the largest logit, as test_gguf.py states for
Q8_0 and Q4_0. A wrong block decode (a swapped nibble, an off-by-one scale) is off by O(100%).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf_fixtures import decode_tensor, random_blocks, write_llama_gguf

from builders import make_config, random_tensors
from llmrun.engine import Engine, available_isas
from llmrun.formats import read_model
from reference import forward as reference_forward

# Widths that are multiples of 256, so every type fits every matrix; 2 layers so each type appears in a
# product of every kind (q/k/v, output, gate/up, down) or as the embedding / classifier.
CFG = make_config(dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, max_seq_len=64)
TOKENS = [1, 17, 42, 5, 88, 23, 64, 9, 31, 70, 2, 55]

TYPES = {
    "token_embd.weight": "q6_k",  # the embedding row lookup of a K-quant
    "output.weight": "q4_k",
    "blk.0.attn_q.weight": "q4_1", "blk.0.attn_k.weight": "q5_0", "blk.0.attn_v.weight": "q5_1",
    "blk.0.attn_output.weight": "iq4_nl", "blk.0.ffn_gate.weight": "q2_k", "blk.0.ffn_up.weight": "q3_k",
    "blk.0.ffn_down.weight": "q5_k",
    "blk.1.attn_q.weight": "iq4_xs", "blk.1.attn_k.weight": "q8_0", "blk.1.attn_v.weight": "q4_0",
    "blk.1.attn_output.weight": "q6_k", "blk.1.ffn_gate.weight": "f16", "blk.1.ffn_up.weight": "bf16",
    "blk.1.ffn_down.weight": "f32",
}
OURS = {"attn_q": "wq", "attn_k": "wk", "attn_v": "wv", "attn_output": "wo", "ffn_gate": "w_gate",
        "ffn_up": "w_up", "ffn_down": "w_down"}
GGUF_ENCODABLE = {"f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}  # gguf.quants.quantize


def _write_mixed_model(path: Path) -> dict[str, np.ndarray]:
    """Writes the model; returns the float weights it holds (tests/builders.py names), as stored."""
    weights = random_tensors(CFG, seed=11, tied=False)
    rng = np.random.default_rng(5)
    stored = {}
    for name, ttype in TYPES.items():
        if ttype in GGUF_ENCODABLE:
            continue
        rows, cols = _tensor(weights, name).shape
        stored[name] = (random_blocks(rows, cols, ttype, rng, std=float(_tensor(weights, name).std())), ttype)
    written = write_llama_gguf(path, CFG, weights, "f32", types=TYPES, stored=stored)
    values = {k: v.copy() for k, v in weights.items()}
    for name, array in written.items():
        decoded = decode_tensor(array, TYPES.get(name, "f32")).reshape(_tensor(weights, name).shape)
        if name.startswith("blk."):
            _, layer, short, _ = name.split(".")
            values[OURS.get(short, short)][int(layer)] = decoded
        else:
            values[name.removesuffix(".weight")] = decoded
    return values


def _tensor(weights: dict[str, np.ndarray], gguf_name: str) -> np.ndarray:
    if gguf_name.startswith("blk."):
        _, layer, short, _ = gguf_name.split(".")
        return weights[OURS.get(short, short)][int(layer)]
    return weights[gguf_name.removesuffix(".weight")]


@pytest.fixture(scope="module")
def mixed_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    path = tmp_path_factory.mktemp("mixed") / "mixed.gguf"
    values = _write_mixed_model(path)
    return path, reference_forward(CFG, values, TOKENS)


def test_every_type_is_read_as_written(mixed_model: tuple[Path, np.ndarray]) -> None:
    spec = read_model(mixed_model[0])
    assert spec.token_embd.type == "q6_k" and spec.output is not None and spec.output.type == "q4_k"
    for name, ttype in TYPES.items():
        if name.startswith("blk."):
            _, layer, short, _ = name.split(".")
            assert getattr(spec.layers[int(layer)], OURS[short]).type == ttype, name


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("n_batch", [64, 1])
def test_logits_match_the_reference(mixed_model: tuple[Path, np.ndarray], isa: str, n_batch: int) -> None:
    """n_batch 64: the prompt in one batch (matrix-matrix kernels); 1: token by token (matrix-vector)."""
    path, want = mixed_model
    got = Engine(read_model(path), n_ctx=64, n_threads=2, isa=isa, n_batch=n_batch).evaluate_all(TOKENS)
    assert np.abs(got - want).max() <= 3e-2 * np.abs(want).max(), f"{isa}, n_batch {n_batch}"


def test_the_tolerance_catches_a_wrong_decode(mixed_model: tuple[Path, np.ndarray]) -> None:
    """The check above is not loose: the reference on weights decoded with one K-quant's sub-block scales
    shifted by one (a classic unpacking bug) is far outside it."""
    path, want = mixed_model
    values = _write_mixed_model(path.with_name("again.gguf"))
    shifted = values["w_down"][0].reshape(CFG.dim, -1, 32)
    values["w_down"][0] = np.roll(shifted, 1, axis=1).reshape(CFG.dim, -1)  # Q5_K: sub-blocks of 32
    wrong = reference_forward(CFG, values, TOKENS)
    assert np.abs(wrong - want).max() > 3 * 3e-2 * np.abs(want).max()
