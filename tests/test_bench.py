"""`llmrun bench` and `llmrun perplexity` (llmrun/bench.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from test_cli import llmrun as run_cli

import llmrun
from llmrun.bench import perplexity, run_bench
from llmrun.cli import build_parser

TEXT = (Path(__file__).parent / "data" / "stories.txt").read_text()


def test_perplexity_matches_a_direct_computation(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K-f32.gguf") as m:
        result = perplexity(m, TEXT, ctx=128)
        ids = m.tokenize(TEXT, add_bos=False)
        nll = []
        for c in range(len(ids) // 127):
            chunk = [1] + ids[c * 127:(c + 1) * 127]
            z = m.logits(chunk).astype(np.float64)
            logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
            nll += [-logp[i, chunk[i + 1]] for i in range(len(chunk) - 1)]
    assert result.tokens == len(nll) and result.chunks == len(ids) // 127
    assert math.isclose(result.value, math.exp(np.mean(nll)), rel_tol=1e-9)
    assert 1.0 < result.value < 20.0  # the model knows these simple stories (512-token vocabulary)


def test_quantized_perplexity_stays_close(models_dir: Path) -> None:
    """Measured on tests/data/stories.txt: F32 4.625, Q8_0 4.619 (-0.1%), Q4_0 4.949 (+7%)."""
    ppl = {}
    for kind in ("f32", "q8_0", "q4_0"):
        with llmrun.load(models_dir / f"stories260K-{kind}.gguf") as m:
            ppl[kind] = perplexity(m, TEXT, ctx=128).value
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin") as m:
        assert perplexity(m, TEXT, ctx=128).value == pytest.approx(ppl["f32"], rel=1e-6)
    assert abs(ppl["q8_0"] / ppl["f32"] - 1) < 0.005
    assert abs(ppl["q4_0"] / ppl["f32"] - 1) < 0.15


def test_perplexity_arguments(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K-f32.gguf", n_ctx=64) as m:
        with pytest.raises(llmrun.InvalidArgumentError, match="ctx"):
            perplexity(m, TEXT, ctx=128)  # more than the loaded context
        with pytest.raises(llmrun.InvalidArgumentError, match="fewer than one chunk"):
            perplexity(m, "Once upon a time", ctx=64)


def test_run_bench(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K-q8_0.gguf", n_ctx=64, n_threads=1) as m:
        results = list(run_bench(m, prompts=[16, 32], gens=[8], repetitions=2))
        assert [r.test for r in results] == ["pp16", "pp32", "tg8"]
        assert all(len(r.tokens_per_second) == 2 and r.mean > 0 for r in results)
        with pytest.raises(llmrun.InvalidArgumentError, match="positions"):
            list(run_bench(m, prompts=[100], gens=[], repetitions=1))


def test_bench_and_perplexity_commands(models_dir: Path, tmp_path: Path) -> None:
    r = run_cli("bench", models_dir / "stories260K-f32.gguf", "-p", "16", "-n", "8", "-t", "1,2", "-r", "2", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["threads"], row["test"]) for row in rows] == [(1, "pp16"), (1, "tg8"), (2, "pp16"), (2, "tg8")]
    assert all(row["tokens_per_second"] > 0 and row["params"] == 260_032 for row in rows)
    r = run_cli("bench", models_dir / "stories260K-f32.gguf", "-p", "16", "-n", "8", "-r", "1")
    assert r.returncode == 0 and "| model | size | params | type | threads | test | t/s |" in r.stdout
    assert "pp16" in r.stdout and "tg8" in r.stdout
    text = tmp_path / "stories.txt"
    text.write_text(TEXT)
    r = run_cli("perplexity", models_dir / "stories260K-f32.gguf", text, "-c", "128")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("perplexity 4.6") and "chunk 7/7" in r.stderr
    r = run_cli("bench", models_dir / "stories260K-f32.gguf", "-p", "x")
    assert r.returncode == 1 and "comma-separated integers" in r.stderr


class PublicOnly:
    """A Model seen through its public attributes only."""

    def __init__(self, model: llmrun.Model) -> None:
        self.model = model

    def __getattr__(self, name: str) -> object:
        if name.startswith("_"):
            raise AttributeError(f"{name} is not part of Model's public API")
        return getattr(self.model, name)


def test_bench_and_perplexity_use_only_the_public_api(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K-q8_0.gguf", n_ctx=64, n_threads=1) as m:
        assert [r.test for r in run_bench(PublicOnly(m), prompts=[8], gens=[4], repetitions=1)] == ["pp8", "tg4"]
        assert perplexity(PublicOnly(m), TEXT, ctx=64).value == perplexity(m, TEXT, ctx=64).value


def test_llama_cpp_perplexity(models_dir: Path) -> None:
    """llama-perplexity's scoring, computed here as tools/perplexity/perplexity.cpp does: the whole text
    tokenized with BOS, chunks of ctx tokens whose first becomes BOS, the second half of each scored.
    llama-perplexity (llama.cpp from llama-cpp-python 0.3.36) prints 3.7303 for this file and model with
    `-c 128 -b 128 -fa off -ctk f32 -ctv f32` (3.7300 with its defaults: an f16 KV cache and flash attention);
    benchmarks/perplexity_vs_llama_cpp.py runs the comparison."""
    text = TEXT[:-1] if TEXT.endswith("\n") else TEXT  # llama.cpp's -f drops one trailing newline
    with llmrun.load(models_dir / "stories260K-f32.gguf") as m:
        result = perplexity(m, text, ctx=128, llama_cpp=True)
        ids = m.tokenize(text)
        assert ids[0] == m.tokenizer.bos_id
        nll = []
        for c in range(len(ids) // 128):
            chunk = [m.tokenizer.bos_id] + ids[c * 128 + 1:(c + 1) * 128]
            z = m.logits(chunk).astype(np.float64)
            logp = z - z.max(1, keepdims=True) - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True))
            nll += [-logp[i, chunk[i + 1]] for i in range(64, 127)]
        with pytest.raises(llmrun.InvalidArgumentError, match="2 \\* ctx"):
            perplexity(m, text, ctx=512, llama_cpp=True)  # 928 tokens: fewer than llama.cpp's two chunks
    assert result.tokens == len(nll) == 63 * (len(ids) // 128) and result.chunks == len(ids) // 128
    assert math.isclose(result.value, math.exp(np.mean(nll)), rel_tol=1e-9)
    assert round(result.value, 4) == 3.7303


def test_perplexity_command_takes_c_as_the_chunk_size(models_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "stories.txt"
    text.write_text(TEXT)
    r = run_cli("perplexity", models_dir / "stories260K-f32.gguf", text, "-c", "128", "--llama-cpp-compatible")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("perplexity 3.7303 over 441 tokens (7 chunks of 128")
    assert not hasattr(build_parser().parse_args(["perplexity", "m.gguf", "t.txt"]), "ctx")  # -c is the one option
    with pytest.raises(SystemExit):  # and --ctx is gone: not even taken as an abbreviation of --ctx-size
        build_parser().parse_args(["perplexity", "m.gguf", "t.txt", "--ctx", "128"])


def test_bench_zero_skips_a_test(models_dir: Path) -> None:
    for args, tests in ((("-p", "0", "-n", "8"), ["tg8"]), (("-p", "16,0", "-n", "0"), ["pp16"])):
        r = run_cli("bench", models_dir / "stories260K-f32.gguf", *args, "-r", "1", "-t", "1", "--json")
        assert r.returncode == 0, r.stderr
        assert [json.loads(line)["test"] for line in r.stdout.splitlines()] == tests
    r = run_cli("bench", models_dir / "stories260K-f32.gguf", "-p", "0", "-n", "0")
    assert r.returncode == 1 and "nothing to measure" in r.stderr


def test_perplexity_errors_speak_of_the_cli_options(models_dir: Path, tmp_path: Path) -> None:
    text = tmp_path / "stories.txt"
    text.write_text(TEXT)
    model = (models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin", "-t", "1")
    r = run_cli("perplexity", *model, text, "-c", "1")
    assert r.returncode == 1 and "-c must be at least 2, got 1" in r.stderr, r.stderr
    r = run_cli("perplexity", *model, text, "-c", "512", "--llama-cpp-compatible")
    assert r.returncode == 1 and "needs at least 2 * -c = 1024" in r.stderr, r.stderr
    for result in (r, run_cli("perplexity", *model, text, "-c", "1")):
        assert not re.search(r"\bctx\b", result.stderr), result.stderr


def test_bench_refuses_zero_threads(models_dir: Path) -> None:
    """0 skips a -p or -n test (llama-bench's rule), but 0 threads is no thread count: refused, not skipped."""
    r = run_cli("bench", models_dir / "stories260K-f32.gguf", "-p", "8", "-n", "0", "-r", "1", "-t", "0,1")
    assert r.returncode == 1 and "-t values must be >= 1" in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    r = run_cli("bench", models_dir / "stories260K-f32.gguf", "-p", "8", "-n", "0", "-r", "1", "-t", ",")
    assert r.returncode == 1 and "-t takes comma-separated integers" in r.stderr and r.stdout == ""
