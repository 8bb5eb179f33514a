"""The `llmrun` command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from commands import LLMRUN

GOLDEN = json.loads((Path(__file__).parent / "data" / "llama2c_greedy.json").read_text())


def llmrun(*args: object, input: str | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMRUN, *map(str, args)], input=input, capture_output=True, text=True,
                          timeout=timeout)


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
                          "-t", "0"), "n_threads")


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


