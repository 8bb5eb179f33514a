"""The chat REPL: end to end through a stdin pipe on stories260K, Ctrl-C by SIGINT, and in-process for the
cases a pipe cannot time (Ctrl-C mid-reply, a context that fills up)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import llmrun
from builders import make_config, random_tensors, write_model
from commands import LLMRUN
from llmrun import template_sandbox
from llmrun.repl import Repl

STORY = ", there was a little girl named Lily"


def chat(models_dir: Path, *args: str, input: str) -> subprocess.CompletedProcess:
    return subprocess.run([*LLMRUN, "chat", str(models_dir / "stories260K.bin"), "-z", str(models_dir / "tok512.bin"),
                           "--temperature", "0", "-t", "1", *args], input=input, capture_output=True, text=True,
                          timeout=120)


def test_pipe_session_with_commands(models_dir: Path, tmp_path: Path) -> None:
    saved = tmp_path / "talk.json"
    script = "\n".join(["Once upon a time", "/stats", f"/save {saved}", "/reset", "Once upon \\", "a time",
                        f"/load {saved}", "/system Tell a story.", "/stats", "/bogus", "/exit", "never read"]) + "\n"
    r = chat(models_dir, "-n", "12", input=script)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert "no chat template; using the plain format" in r.stderr
    assert r.stdout.count(STORY) == 2  # the first turn, and the same turn after /reset (two lines joined by \)
    assert "last reply: 12 tokens, finish length; prompt 5 tokens (0 from the cache)" in r.stdout
    assert "prefill" in r.stdout and "time to first token" in r.stdout
    assert json.loads(saved.read_text()) == [{"role": "user", "content": "Once upon a time"},
                                             {"role": "assistant", "content": r.stdout.split("\n")[0][2:]}]
    assert "(conversation reset)" in r.stderr and "(loaded 2 messages" in r.stderr
    assert "3 messages" in r.stdout  # the loaded exchange and the system prompt
    assert "unknown command" in r.stderr


def test_load_rejects_bad_transcripts(models_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad_role.json").write_text(json.dumps([{"role": "wizard", "content": "x"}]))
    (tmp_path / "not_json.json").write_text("[{")
    script = f"/load {tmp_path / 'bad_role.json'}\n/load {tmp_path / 'not_json.json'}\n/load {tmp_path / 'no'}\n"
    r = chat(models_dir, input=script)
    assert r.returncode == 0
    lines = [line for line in r.stderr.splitlines() if "cannot load" in line]
    assert len(lines) == 3 and "role must be one of" in lines[0]


def test_chat_format_option(models_dir: Path) -> None:
    r = chat(models_dir, "--chat-format", "chatml", "--system", "Be brief.", "-n", "5", input="Hi\n")
    assert r.returncode == 0 and "format chatml" in r.stderr and "no chat template" not in r.stderr
    r = chat(models_dir, "--chat-format", "nope", input="")
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.fixture(scope="module")
def slow_model(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Path:
    """A random model with the Llama 2 vocabulary whose classifier rows for <unk>, BOS and EOS are zero:
    it never ends a reply on its own, so a reply runs until it is stopped."""
    cfg = make_config(dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=32000,
                      max_seq_len=4096)
    t = random_tensors(cfg, seed=7, tied=False)
    t["output"][:3] = 0
    return write_model(tmp_path_factory.mktemp("slow") / "slow.bin", cfg, t)


def read_until(proc: subprocess.Popen, seen: bytes, done: callable, timeout: float = 60) -> bytes:
    deadline = time.monotonic() + timeout
    while not done(seen):
        assert time.monotonic() < deadline, seen
        seen += proc.stdout.read() or b""
        time.sleep(0.05)
    return seen


def test_sigint_stops_the_reply_and_keeps_the_session(slow_model: Path, models_dir: Path, tmp_path: Path) -> None:
    saved = tmp_path / "after.json"
    proc = subprocess.Popen([*LLMRUN, "chat", str(slow_model), "-z", str(models_dir / "tokenizer.bin"),
                             "--temperature", "0", "-t", "1", "--chat-format", "llama-2"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        proc.stdin.write(b"Hello there\n")
        proc.stdin.flush()
        seen = read_until(proc, b"", lambda s: s.startswith(b"> ") and len(s) > 40)  # some of the reply
        proc.send_signal(signal.SIGINT)
        seen = read_until(proc, seen, lambda s: b"[stopped]\n> " in s)  # back at the prompt
        proc.stdin.write(f"/save {saved}\n/exit\n".encode())
        proc.stdin.flush()
        assert proc.wait(timeout=60) == 0
        os.set_blocking(proc.stdout.fileno(), True)
        seen += proc.stdout.read()
    finally:
        proc.kill()
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["user", "assistant"] and len(messages[1]["content"]) > 10


# --- in-process -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stories(models_dir: Path) -> Iterator[llmrun.Model]:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1) as model:
        yield model


def lines(*items: str | BaseException):
    """A read_line that returns (or raises) the items in turn, then EOFError (Ctrl-D)."""
    it = iter(items)

    def read_line(prompt: str) -> str:
        item = next(it, EOFError())
        if isinstance(item, BaseException):
            raise item
        return item
    return read_line


class InterruptAfter(io.StringIO):
    """stdout that raises KeyboardInterrupt (as Ctrl-C would) at its n-th write."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def write(self, text: str) -> int:
        self.n -= 1
        if self.n == 0:
            raise KeyboardInterrupt
        return super().write(text)


def test_ctrl_c_mid_reply_keeps_the_partial_reply(stories: llmrun.Model) -> None:
    out, err = InterruptAfter(4), io.StringIO()
    repl = Repl(stories, sampling={"temperature": 0, "max_tokens": 50}, read_line=lines("Once upon a time"),
                out=out, err=err)
    assert repl.run() == 0
    assert out.getvalue().endswith(" [stopped]\n")
    assert [m["role"] for m in repl.messages] == ["user", "assistant"]
    assert repl.messages[1]["content"] == out.getvalue()[: -len(" [stopped]\n")] != ""
    assert STORY.startswith(repl.messages[1]["content"])


def test_ctrl_c_at_the_prompt_and_before_the_first_token(stories: llmrun.Model) -> None:
    out, err = InterruptAfter(1), io.StringIO()  # the very first write (the first piece) is interrupted
    repl = Repl(stories, sampling={"temperature": 0, "max_tokens": 5},
                read_line=lines(KeyboardInterrupt(), "Once upon a time"), out=out, err=err)
    assert repl.run() == 0
    assert "(Ctrl-D or /exit quits)" in err.getvalue()
    assert repl.messages == []  # a reply stopped before its first token takes its question with it


def test_turns_reuse_the_cache(stories: llmrun.Model) -> None:
    repl = Repl(stories, chat_format="chatml", system="A story.", sampling={"temperature": 0, "max_tokens": 8},
                read_line=lines(*["Once upon a time"] * 5), out=io.StringIO(), err=io.StringIO())
    prompts, reused = [], []
    real_turn = repl.turn

    def turn(text: str) -> None:
        real_turn(text)
        prompts.append(repl.last.stats.prompt_tokens)
        reused.append(repl.last.stats.reused_tokens)

    repl.turn = turn
    repl.run()
    assert len(prompts) == 5 and prompts == sorted(prompts)
    for before, after, got in zip(prompts[:-1], prompts[1:], reused[1:], strict=True):
        # the previous prompt and its reply (at most the last token or two are re-tokenized) come from the cache
        assert before + 8 - 2 <= got < after


def test_a_full_context_drops_the_oldest_turns(models_dir: Path) -> None:
    with llmrun.load(models_dir / "stories260K.bin", tokenizer=models_dir / "tok512.bin", n_threads=1,
                     n_ctx=96) as model:
        out, err = io.StringIO(), io.StringIO()
        repl = Repl(model, chat_format="chatml", system="Stories.", sampling={"temperature": 0, "max_tokens": 16},
                    read_line=lines(*[f"Tell story {i}" for i in range(8)], "word " * 200, "/stats", "Last one"),
                    out=out, err=err)
        assert repl.run() == 0
        assert "dropped the oldest" in err.getvalue()
        assert "your message needs" in err.getvalue()  # the 200-word message alone does not fit
        assert repl.system == "Stories." and repl.messages[-2] == {"role": "user", "content": "Last one"}
        assert len(repl.messages) < 18
        assert len(model.chat_prompt(repl.conversation())) <= 96


def test_stats_after_ctrl_c_and_after_reset(stories: llmrun.Model) -> None:
    out, err = InterruptAfter(4), io.StringIO()
    repl = Repl(stories, sampling={"temperature": 0, "max_tokens": 50},
                read_line=lines("Once upon a time", "/stats", "/reset", "/stats"), out=out, err=err)
    assert repl.run() == 0
    first, second = out.getvalue().split("context: ")[1:]
    assert "finish cancelled" in first and "None" not in first  # the reply stopped by Ctrl-C
    assert second.startswith("0 of ") and "last reply" not in second  # a fresh conversation holds nothing


def test_a_turn_renders_its_prompt_once_and_stats_renders_nothing(stories: llmrun.Model,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rendering request to the template process has a time budget: a turn makes one (measuring the
    conversation, then generating from it, used to make two), /stats after a turn none (it made two each time),
    and /stats after /load one however often it is asked."""
    requests: list[str] = []
    ask = template_sandbox._ask
    monkeypatch.setattr(template_sandbox, "_ask",
                        lambda request, seconds: requests.append(request) or ask(request, seconds))
    counts: dict[str, list[int]] = {}
    repl = Repl(stories, chat_format="chatml", sampling={"temperature": 0, "max_tokens": 8},
                read_line=lines("Once upon a time", "/stats", "/stats", "/system Be brief.", "/stats", "/stats"),
                out=io.StringIO(), err=io.StringIO())
    real_turn, real_command = repl.turn, repl.command

    def counted(name: str, run: Callable[[str], object]) -> Callable[[str], object]:
        def call(text: str) -> object:
            before = len(requests)
            result = run(text)
            counts.setdefault(name, []).append(len(requests) - before)
            return result
        return call

    repl.turn, repl.command = counted("turn", real_turn), counted("command", real_command)
    stories.chat_template("chatml")  # compiled before counting
    assert repl.run() == 0
    assert counts == {"turn": [1], "command": [0, 0, 0, 1, 0]}, counts
    first, _, third, _ = repl.out.getvalue().split("context: ")[1:]
    assert int(first.split()[0]) == repl.last.usage["total_tokens"]  # the last prompt and its reply
    assert int(third.split()[0]) == len(stories.chat_prompt(repl.conversation(), chat_format="chatml"))


def test_generate_stats_after_ctrl_c(slow_model: Path, models_dir: Path) -> None:
    proc = subprocess.Popen([*LLMRUN, "generate", str(slow_model), "-z", str(models_dir / "tokenizer.bin"), "-p",
                             "Hello", "--temperature", "0", "-t", "1", "--stats"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        os.set_blocking(proc.stdout.fileno(), False)
        read_until(proc, b"", lambda s: len(s) > 40)  # the prompt and some of the continuation
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert b"finish: cancelled" in stderr and b"None" not in stderr, stderr
