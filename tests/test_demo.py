"""The built-in demo model (llmrun/demo/): what runs when MODEL is omitted and what `llmrun.load("demo")`
loads, and the README's first command on a fresh install."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli import in_process, one_line_error

import llmrun
from llmrun.hub import DEMO_HINT, DEMO_MODEL

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = json.loads((Path(__file__).parent / "data" / "llama2c_greedy.json").read_text())
STORY = next(c for c in GOLDEN["cases"] if c["prompt"] == "Once upon a time")["stdout"]  # llama2.c's run.c stdout


def test_demo_files_are_stories260K_and_tok512() -> None:
    """The hashes ../shared/models/README.md records for stories260K.bin and tok512.bin."""
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(DEMO_MODEL) == "b0a507e7ad0f626624f17112325e66691f9076d622e1d3274d103d00299f2696"
    assert digest(DEMO_MODEL.with_name("tokenizer.bin")) == \
        "037cb335abb25d1fa9e8ecae30ed2a3a8ace9302862ebcdc05d51a6bbb10c312"


def test_load_demo() -> None:
    with llmrun.load("demo") as model:
        assert model.info.n_params == 260_032 and model.info.vocab_size == 512
        assert "Once upon a time" + model.generate("Once upon a time", max_tokens=None, temperature=0) + "\n" == STORY


def test_commands_without_model_run_the_demo(capsys: pytest.CaptureFixture[str]) -> None:
    """One line on stderr says it is the demo and how to get a real model; stdout is llama2.c's story."""
    r = in_process(capsys, "generate", "-p", "Once upon a time", "--temperature", "0")
    assert r.returncode == 0 and r.stdout == STORY and r.stderr == DEMO_HINT + "\n"
    r = in_process(capsys, "info")
    assert r.returncode == 0 and "stories260K.bin" in r.stdout and r.stderr == DEMO_HINT + "\n"
    r = in_process(capsys, "bench", "-p", "8", "-n", "4", "-r", "1", "-t", "1")
    assert r.returncode == 0 and "stories260K.bin" in r.stdout and r.stderr.startswith(DEMO_HINT + "\n")


def test_a_local_file_named_demo_wins(models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    shutil.copy(models_dir / "stories260K-q8_0.gguf", tmp_path / "demo")
    with llmrun.load("demo") as model:
        assert model.info.dtype != "f32" and model.info.path == "demo"


def readme_commands() -> list[str]:
    """The README's commands: its first indented code lines, in order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^    (\S.*)$", text.split("## ")[0], flags=re.M)


def test_readme_opens_with_the_demo_and_the_tests() -> None:
    demo, tests = readme_commands()[:2]
    assert demo == 'pip install . && llmrun generate -p "Once upon a time" --temperature 0'
    assert tests == 'pip install ".[test]" && pytest'
    assert f"\n{tests}\n" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command, verbatim


@pytest.mark.slow
def test_readme_first_command_on_a_fresh_install(tmp_path: Path) -> None:
    """The README's first command, verbatim, in a new virtual environment, from a copy of the sources without
    anything built: it installs the package and prints llama2.c's story (pip's own lines come first)."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "*.so",
                                                              "__pycache__", ".pytest_cache", ".ruff_cache",
                                                              ".benchmarks", "_kernel.c"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
    command = readme_commands()[0]
    r = subprocess.run(["bash", "-c", f". {venv}/bin/activate && {command}"], cwd=src, capture_output=True,
                       text=True, timeout=900,
                       env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")})
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.endswith("\n" + STORY), r.stdout[-2000:]
    assert r.stderr.endswith(DEMO_HINT + "\n"), r.stderr[-2000:]


def test_perplexity_without_its_text_says_so(capsys: pytest.CaptureFixture[str], models_dir: Path) -> None:
    """With MODEL optional, `perplexity MODEL.gguf` (the text forgotten) must not score the file as the demo's
    text."""
    one_line_error(in_process(capsys, "perplexity", str(models_dir / "stories260K-q8_0.gguf")),
                   "looks like a model, not a text: usage: llmrun perplexity [MODEL] TEXTFILE")
