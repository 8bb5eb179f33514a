"""The `llmrun` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from commands import LLMRUN
from llmrun import load
from llmrun.cli import build_parser, main
from llmrun.sampling import SamplingParams

GOLDEN = json.loads((Path(__file__).parent / "data" / "llama2c_greedy.json").read_text())


def llmrun(*args: object, input: str = "", timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs the command; its standard input is `input` (a pipe: chat reads its lines, generate -f - its text)."""
    return subprocess.run([*LLMRUN, *map(str, args)], input=input, capture_output=True, text=True,
                          timeout=timeout)


def in_process(capsys: pytest.CaptureFixture[str], *args: object) -> subprocess.CompletedProcess:
    """The command run by its entry point in this process (no interpreter start-up: for the many short runs),
    with an empty standard input."""
    stdin, sys.stdin = sys.stdin, io.StringIO("")
    try:
        code = main([str(a) for a in args])
    except SystemExit as e:  # argparse: --help, usage errors
        code = e.code
    finally:
        sys.stdin = stdin
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def one_line_error(result: subprocess.CompletedProcess, text: str) -> None:
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("llmrun: error:") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr


@pytest.mark.parametrize("case", GOLDEN["cases"][:3], ids=lambda c: c["prompt"][:20] or "empty")
def test_generate_prints_llama2c_story(models_dir: Path, case: dict) -> None:
    r = llmrun("generate", models_dir / "stories260K.bin", "--tokenizer", models_dir / "tok512.bin",
               "-p", case["prompt"], "--temperature", "0")
    assert r.returncode == 0, r.stderr
    assert r.stdout == case["stdout"]


def test_generate_stats_and_no_echo(models_dir: Path) -> None:
    r = llmrun("generate", models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin", "-p", "Lily",
               "--temperature", "0", "-n", "20", "--stats", "--no-echo", "-t", "1")
    assert r.returncode == 0, r.stderr
    assert not r.stdout.startswith("Lily") and len(r.stdout) > 20
    assert "prompt tokens: 2" in r.stderr and "generated tokens: 20" in r.stderr
    assert "prefill:" in r.stderr and "decode:" in r.stderr and "tokens/s" in r.stderr


def test_info(models_dir: Path) -> None:
    r = llmrun("info", models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin")
    assert r.returncode == 0, r.stderr
    assert "260,032" in r.stdout and "llama2.c v0" in r.stdout and "1,056,540 bytes" in r.stdout
    assert "dim 64, hidden 172, layers 5, heads 8, kv heads 4" in r.stdout


def test_errors_are_one_readable_line(tmp_path: Path, models_dir: Path) -> None:
    one_line_error(llmrun("generate", tmp_path / "missing.bin"), "no such model file")
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 1000, dtype=np.uint8).tobytes())
    one_line_error(llmrun("info", garbage), str(garbage))
    one_line_error(llmrun("generate", models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin",
                          "--temperature", "-2"), "temperature")
    one_line_error(llmrun("generate", models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin",
                          "-t", "0"), "-t must be")


def test_help() -> None:
    for args in ([], ["generate"], ["chat"], ["info"]):
        r = llmrun(*args, "--help")
        assert r.returncode == 0 and "usage: llmrun" in r.stdout
    assert llmrun().returncode == 2  # no command: argparse's usage error


def test_chat_continues_the_conversation(models_dir: Path) -> None:
    r = llmrun("chat", models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin", "--temperature", "0",
               "-n", "30", input="Once upon a time\nThe dog\n")
    assert r.returncode == 0, r.stderr
    assert ", there was a little girl named Lily" in r.stdout
    assert r.stdout.count("> ") == 3  # two turns, then the prompt that read end-of-input




@pytest.mark.parametrize("family", ["gemma3", "qwen3"])
def test_chat_runs_a_family_folder(family: str) -> None:
    """`llmrun chat` on a tiny Gemma 3 / Qwen3 folder: its own chat template, two turns, thinking off; the first
    reply is the one Model.chat gives (greedy)."""
    folder = Path(__file__).parent / "data" / "hf" / family
    r = llmrun("chat", folder, "--temperature", "0", "-n", "8", "--think", "off", "-t", "1",
               input="Hello there\nAnd then?\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("> ") == 3
    with load(folder, n_threads=1) as model:
        reply = model.chat([{"role": "user", "content": "Hello there"}], temperature=0, max_tokens=8,
                           enable_thinking=False)
    text = reply["message"]["content"].replace("\r\n", "\n").replace("\r", "\n").strip()  # as text-mode stdout reads
    assert text and text in r.stdout


# --- the options and messages users compare with llama.cpp's ---------------------------------------------

def stories(models_dir: Path) -> list[object]:
    return [models_dir / "stories260K.bin", "-z", models_dir / "tok512.bin", "-t", "1"]


def test_sampling_options_come_from_sampling_params(capsys: pytest.CaptureFixture[str]) -> None:
    """Each SamplingParams field is an option with the field's default and its help text (one definition)."""
    args = build_parser().parse_args(["generate", "model.gguf"])
    for f in dataclasses.fields(SamplingParams):
        assert getattr(args, f.name) == (-1 if f.default is None else f.default), f.name  # -1: a random seed
    help_text = " ".join(in_process(capsys, "generate", "--help").stdout.split())
    for f in dataclasses.fields(SamplingParams):
        assert " ".join(f.metadata["help"].split()) in help_text, f.name


def test_errors_speak_of_the_cli_options(capsys: pytest.CaptureFixture[str], models_dir: Path, tmp_path: Path) -> None:
    one_line_error(in_process(capsys, "generate", *stories(models_dir), "-c", "0"), "-c must be")
    one_line_error(in_process(capsys, "generate", *stories(models_dir), "--top-p", "0"), "--top-p must be in (0, 1]")
    one_line_error(in_process(capsys, "generate", *stories(models_dir), "-n", "-5"), "-n must be")
    alone = tmp_path / "stories260K.bin"  # without the tokenizer.bin that sits beside it in models_dir
    alone.write_bytes((models_dir / "stories260K.bin").read_bytes())
    r = in_process(capsys, "generate", alone, "-p", "Once")
    one_line_error(r, "pass -z/--tokenizer")
    for name in ("n_ctx", "tokenizer=", "top_p", "max_tokens"):
        assert name not in r.stderr


def test_context_overflow_advice(capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    """A prompt too long for -c: raise -c up to the model's 512; too long for 512 itself: no such advice."""
    long = "Lily and Tom went to the park. " * 100
    r = in_process(capsys, "generate", *stories(models_dir), "-c", "64", "-p", long)
    one_line_error(r, "more than the context of 64")
    assert "-c" in r.stderr and "512" in r.stderr and "n_ctx" not in r.stderr
    r = in_process(capsys, "generate", *stories(models_dir), "-p", long)
    one_line_error(r, "more than the context of 512")
    assert "-c" not in r.stderr and "n_ctx" not in r.stderr and "larger" not in r.stderr


def test_seed_minus_one_is_random(capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    args = ("generate", *stories(models_dir), "-s", "-1", "--temperature", "1.5", "-n", "30", "--no-echo")
    runs = [in_process(capsys, *args) for _ in range(3)]
    assert all(r.returncode == 0 and r.stdout.strip() for r in runs), [r.stderr for r in runs]
    assert len({r.stdout for r in runs}) > 1  # three identical 30-token samples at temperature 1.5: not random


def test_ctx_above_the_trained_context_warns(capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    r = in_process(capsys, "generate", *stories(models_dir), "-c", "1024", "-p", "Once", "-n", "4",
                   "--temperature", "0")
    assert r.returncode == 0 and r.stdout.startswith("Once")
    warnings = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "-c 1024" in warnings[0] and "512" in warnings[0], r.stderr


def test_a_file_of_no_known_format_says_so_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    one_line_error(in_process(capsys, "info", garbage), "not a GGUF / llama2.c / safetensors file")


def test_chat_without_a_tokenizer_fails_at_start(models_dir: Path, tmp_path: Path) -> None:
    alone = tmp_path / "stories260K.bin"
    alone.write_bytes((models_dir / "stories260K.bin").read_bytes())
    r = llmrun("chat", alone, input="Hello\n")
    one_line_error(r, "-z/--tokenizer")
    assert r.stdout == ""  # no prompt was shown: nothing was asked of the user


def test_prompt_from_stdin_and_from_a_file(models_dir: Path, tmp_path: Path) -> None:
    args = ("generate", *stories(models_dir), "--temperature", "0", "-n", "12")
    expected = llmrun(*args, "-p", "Once upon a time").stdout
    assert expected.startswith("Once upon a time") and len(expected) > len("Once upon a time") + 10
    assert llmrun(*args, "-f", "/dev/stdin", input="Once upon a time").stdout == expected
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Once upon a time\n")  # the trailing newline is dropped, as llama.cpp's -f does
    assert llmrun(*args, "-f", prompt).stdout == expected
    assert llmrun(*args, "-f", "-", input="Once upon a time\n").stdout == expected
    one_line_error(llmrun(*args, "-p", "x", "-f", prompt), "not both")


def test_help_names_every_model_format(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("generate", "chat", "bench", "perplexity", "serve", "info", "quantize"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "Hugging Face" in text and "llama architecture" not in text, command


def test_info_shows_a_missing_bos_as_none(capsys: pytest.CaptureFixture[str]) -> None:
    r = in_process(capsys, "info", Path(__file__).parent / "data" / "hf" / "qwen2-bias")
    assert r.returncode == 0, r.stderr
    assert "bos none" in r.stdout and "None" not in r.stdout


@pytest.mark.parametrize("folder", ["llama3-gqa", "llama-tied", "qwen2-bias"])
def test_quantize_counts_every_tensor(capsys: pytest.CaptureFixture[str], tmp_path: Path, folder: str) -> None:
    """Hugging Face folders: the progress counts what the file gets (RoPE factors, biases), [n/n] at the end."""
    r = in_process(capsys, "quantize", Path(__file__).parent / "data" / "hf" / folder, tmp_path / "out.gguf",
                   "--type", "q8_0")
    assert r.returncode == 0, r.stderr
    counts = [tuple(map(int, m.groups())) for m in re.finditer(r"^\[\s*(\d+)/(\d+)\]", r.stderr, re.MULTILINE)]
    total = counts[0][1]
    assert [i for i, _ in counts] == list(range(1, total + 1)) and {n for _, n in counts} == {total}


def test_serve_alias_and_model_name_are_one_option() -> None:
    assert build_parser().parse_args(["serve", "m.gguf", "--alias", "tiny"]).alias == "tiny"
    assert build_parser().parse_args(["serve", "m.gguf", "-a", "tiny"]).alias == "tiny"
    assert build_parser().parse_args(["serve", "m.gguf", "--model-name", "tiny"]).alias == "tiny"


def test_standard_input_is_a_prompt_only_when_asked(models_dir: Path) -> None:
    """As llama.cpp's llama-cli and llama-completion, which take a prompt from -p or -f only: a piped standard
    input is read with -f - (or -f /dev/stdin), else left alone. So a shell loop keeps the lines it feeds
    itself, and a pipe that never closes does not hold the command up."""
    args = ("generate", *stories(models_dir), "--temperature", "0", "-n", "6")
    from_bos = llmrun(*args).stdout
    assert llmrun(*args, input="Lily and Tom\n").stdout == from_bos
    assert llmrun(*args, "-f", "-", input="Lily and Tom\n").stdout.startswith("Lily and Tom")
    loop = (f'printf "one\\ntwo\\n" | while read word; do {shlex.join(LLMRUN)} {shlex.join(map(str, args))} '
            f'> /dev/null || echo failed; echo "[$word]"; done')
    r = subprocess.run(["bash", "-c", loop], capture_output=True, text=True, timeout=120)
    assert r.stdout == "[one]\n[two]\n", r.stderr
    proc = subprocess.Popen([*LLMRUN, *map(str, args)], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert proc.wait(timeout=60) == 0  # a hang guard: with standard input still open, it ends
    finally:
        proc.kill()
        proc.stdin.close()


def test_generate_help_says_where_the_prompt_comes_from(capsys: pytest.CaptureFixture[str]) -> None:
    text = " ".join(in_process(capsys, "generate", "--help").stdout.split())
    assert "-f - " in text and "/dev/stdin" in text and "not read otherwise" in text


def test_seed_errors_speak_of_minus_one(capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    for seed in ("-2", str(2**64)):
        one_line_error(in_process(capsys, "generate", *stories(models_dir), "-s", seed),
                       f"-s must be -1 (random) or an int in [0, 2**64), got {seed}")


def test_a_file_that_is_not_utf8_is_named(capsys: pytest.CaptureFixture[str], models_dir: Path,
                                          tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("Once upon a time in a caf\u00e9\n".encode("latin-1"))
    for r in (in_process(capsys, "generate", *stories(models_dir), "-f", latin1),
              in_process(capsys, "perplexity", *stories(models_dir), latin1)):
        one_line_error(r, f"{latin1}: not UTF-8 text")
        assert "byte 0xe9 at offset 25" in r.stderr and "codec" not in r.stderr


def test_info_speaks_of_the_tokenizer_option(capsys: pytest.CaptureFixture[str], models_dir: Path,
                                             tmp_path: Path) -> None:
    alone = tmp_path / "stories260K.bin"  # without the tokenizer.bin that sits beside it in models_dir
    alone.write_bytes((models_dir / "stories260K.bin").read_bytes())
    r = in_process(capsys, "info", alone)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("tokenizer"))
    assert "pass -z/--tokenizer" in row and "tokenizer=" not in row


def test_options_are_never_abbreviated() -> None:
    """`--ctx` is gone (-c / --ctx-size): argparse must not take it, nor any prefix, for an option."""
    for argv in (["generate", "m.gguf", "--ctx", "128"], ["generate", "m.gguf", "--max", "5"],
                 ["bench", "m.gguf", "--rep", "2"], ["serve", "m.gguf", "--api", "k"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 2, argv
    assert build_parser().parse_args(["generate", "m.gguf", "--ctx-size", "128"]).ctx_size == 128
