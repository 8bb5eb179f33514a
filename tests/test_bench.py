"""`llmrun bench` and `llmrun perplexity` (llmrun/bench.py)."""

from __future__ import annotations

import http.server
import json
import math
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from test_cli import in_process
from test_cli import llmrun as run_cli

import llmrun
import llmrun.loadtest
from llmrun.bench import perplexity, run_bench
from llmrun.cli import build_parser
from llmrun.loadtest import CHUNKS, USAGE, WARMUP_PROMPT, LoadConfig, client_prompts, percentile, run_load

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


# --- serving under load: llmrun/loadtest.py and `llmrun bench --concurrency` -------------------------------------
# Structure and token counts only: timings are whatever the machine gives (benchmarks/serving.py measures).


class FakeServer(http.server.BaseHTTPRequestHandler):
    """An OpenAI-style streaming server without usage chunks: TOKENS text chunks per completion, one event each,
    as llama-server sends them (the load generator then counts chunks); a prompt containing "fail" gets 500."""

    TOKENS = 3
    bodies: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeServer.bodies.append(body)
        if "fail" in body["prompt"]:
            self.send_error(500, "no")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        events = [{"choices": [{"index": 0, "text": "", "finish_reason": None}]}]  # no text: not the first token
        events += [{"choices": [{"index": 0, "text": f" t{i}", "finish_reason": None}]} for i in range(self.TOKENS)]
        events += [{"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}]
        for event in events:
            self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_server() -> Iterator[str]:
    FakeServer.bodies = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeServer)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_client_prompts_are_fixed_per_client() -> None:
    four = client_prompts(4, seed=0, words=(3, 12))
    assert client_prompts(2, seed=0, words=(3, 12)) == four[:2]  # client i's prompt at every concurrency
    assert client_prompts(4, seed=1, words=(3, 12)) != four
    assert all(3 <= len(p.split()) <= 12 for p in four) and len({len(p.split()) for p in client_prompts(20)}) > 1


def test_percentile() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5
    assert percentile([float(i) for i in range(101)], 95) == 95.0


def test_load_generator_counts_chunks_without_usage(fake_server: str) -> None:
    result = run_load(LoadConfig(fake_server + "/v1", concurrency=3, requests_per_client=2, max_tokens=5,
                                 model="m", warmup_requests=1))
    assert len(result.requests) == 6 and result.errors == 0 and sorted(r.client for r in result.requests) == \
        [0, 0, 1, 1, 2, 2]
    assert result.count_source == CHUNKS and result.completion_tokens == 6 * FakeServer.TOKENS
    assert all(r.text_chunks == FakeServer.TOKENS and r.finish_reason == "length" for r in result.requests)
    assert all(r.ttft_s is not None and r.ttft_s <= r.duration_s for r in result.requests)
    assert result.tokens_per_second > 0 and result.ttft_p50_s is not None and result.ttft_p95_s is not None
    # 1 warm-up + 6; each client always sent its own prompt, greedy, streaming, asking for usage
    bodies = FakeServer.bodies
    assert len(bodies) == 7 and bodies[0]["prompt"] == WARMUP_PROMPT
    prompts = client_prompts(3)
    assert sorted(b["prompt"] for b in bodies[1:]) == sorted(prompts * 2)
    assert all(b["stream"] is True and b["temperature"] == 0 and b["max_tokens"] == 5 and b["model"] == "m"
               and b["stream_options"] == {"include_usage": True} for b in bodies[1:])


def test_load_generator_counts_errors(fake_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llmrun.loadtest, "WORDS", ["fail"])  # every client's prompt gets 500
    result = run_load(LoadConfig(fake_server, concurrency=2, requests_per_client=2))
    assert result.errors == 4 and result.completion_tokens == 0 and result.ttft_p50_s is None
    assert all(m.startswith("HTTP 500") for m in result.error_messages)
    with pytest.raises(ConnectionError, match="warm-up"):
        run_load(LoadConfig("http://127.0.0.1:9", concurrency=1))  # nothing listens on the discard port
    with pytest.raises(llmrun.InvalidArgumentError, match="concurrency"):
        run_load(LoadConfig(fake_server, concurrency=0))
    with pytest.raises(llmrun.InvalidArgumentError, match="server URL"):
        run_load(LoadConfig("localhost:8080"))


def test_load_generator_against_llmrun_serve(models_dir: Path) -> None:
    pytest.importorskip("uvicorn")
    from llmrun.server import ServerConfig, create_app, serving_in_thread

    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as model:
        with serving_in_thread(create_app(model, ServerConfig(model_name="stories")), log_level="warning") as url:
            for c in (1, 2):
                result = run_load(LoadConfig(url, concurrency=c, requests_per_client=2, max_tokens=8))
                assert len(result.requests) == 2 * c and result.errors == 0, result.error_messages
                assert result.count_source == USAGE
                for r in result.requests:
                    assert r.completion_tokens == 8 or r.finish_reason == "stop"
                    assert r.prompt_tokens is not None and r.prompt_tokens > 1
                    assert (r.ttft_s is not None) == (r.completion_tokens > 0)
                assert result.completion_tokens == sum(r.completion_tokens for r in result.requests) > 0
                assert result.summary()["concurrency"] == c


def test_bench_concurrency_command(models_dir: Path, capsys: pytest.CaptureFixture[str], fake_server: str) -> None:
    pytest.importorskip("uvicorn")
    model = (models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin", "-t", "1")
    r = run_cli("bench", *model, "--concurrency", "1,2", "--requests", "2", "--max-tokens", "8", "--json")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(row["concurrency"], row["requests"], row["errors"]) for row in rows] == [(1, 2, 0), (2, 4, 0)]
    assert all(0 < row["completion_tokens"] <= 8 * row["requests"] and row["count_source"] == "usage"
               for row in rows)
    r = in_process(capsys, "bench", "--url", fake_server, "--concurrency", "1,2", "--requests", "1")
    assert r.returncode == 0, r.stderr
    assert "| clients | requests | tokens | t/s | x vs 1 client | TTFT p50 ms | TTFT p95 ms |" in r.stdout
    table = [line.split("|")[1:4] for line in r.stdout.splitlines() if re.match(r"\| \d", line)]
    assert [[cell.strip() for cell in row] for row in table] == [["1", "1", "3"], ["2", "2", "6"]]
    assert "counted from text chunks" in r.stdout
    for args, message in ((("--concurrency", "0"), "--concurrency values must be >= 1"),
                          (("--concurrency", "1", "--max-tokens", "0"), "--max-tokens must be >= 1"),
                          (("--concurrency", "1", "-t", "1,2"), "-t takes one thread count")):
        r = in_process(capsys, "bench", "--url", fake_server, *args)
        assert r.returncode == 1 and message in r.stderr, r.stderr


def test_bench_concurrency_serves_with_parallel_slots(models_dir: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The served model gets parallel = the largest concurrency (or --parallel) and KV room for every request at
    once."""
    import llmrun.cli

    real_load = llmrun.cli.load
    calls: list[dict] = []

    def recording_load(path: object, **kwargs: object) -> object:
        calls.append(kwargs)
        return real_load(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(llmrun.cli, "load", recording_load)
    model = (models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin", "-t", "1")
    for extra, parallel in (((), 2), (("--parallel", "3"), 3)):
        r = in_process(capsys, "bench", *model, "--concurrency", "1,2", "--requests", "1", "--max-tokens", "4",
                       *extra)
        assert r.returncode == 0, r.stderr
        call = calls.pop()
        assert call["parallel"] == parallel and call["n_ctx"] is not None
        assert call["kv_size"] >= parallel * call["n_ctx"] and call["n_ctx"] >= 4 * 64 + 4
