"""Chat templates run in a child process with hard limits on time and memory.

A chat template is a program inside a downloaded file (GGUF `tokenizer.chat_template`, a folder's
tokenizer_config.json), so it is untrusted code. CVE-2024-34359 was exactly that: llama-cpp-python rendered
such templates with a plain `jinja2.Environment`, and `{{ ''.__class__.__mro__[1].__subclasses__() }}` reached
`os.system`. Two layers keep a template in check:

- Jinja's sandbox, made stricter (llmrun/template_worker.py): no unsafe attribute, and in-Jinja checks on time
  and on the size of what a template builds, so that the usual runaway (a huge loop, `'x' * 10**9`) stops
  early with a readable reason.
- The process: every compile and render happens in one long-lived worker process (a fresh interpreter in
  isolated mode, `-I`, that imports only the standard library and jinja2), whose address space is limited
  to what it uses at start plus MEMORY_LIMIT_BYTES and whose CPU time is limited per request; this process
  kills it when a request outlasts its budget (and starts a new one for the next request). This is what
  holds for every filter and conversion, C-level ones included (sorting or printing a huge list): no
  template can use more than MEMORY_LIMIT_BYTES, nor more than its budget (TIME_LIMIT_S and KILL_GRACE_S)
  of wall-clock time, and a render left behind by a parent that died is ended by its CPU limit.

A template's data cross as JSON (messages, tools: plain data) and its output comes back as a string, capped
at MAX_OUTPUT_CHARS. One request may render several contexts (a chat prompt and its markup alone, chat.py)
within one budget. Requests take turns on the one worker. A warm worker answers a render in well under a
millisecond more than the render itself (benchmarks/bench_templates.py); starting one costs a Python start-up
and the jinja2 import (about 0.1 s), paid once per process and again only after a kill. Where the platform has
no `resource` module (Windows) the wall-clock kill is the only bound.

`compile_template` and `render_sandboxed` turn every failure into `TemplateFailure` with a readable reason;
chat.py wraps that in ChatTemplateError.
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MAX_OUTPUT_CHARS", "MEMORY_LIMIT_BYTES", "TIME_LIMIT_S", "SandboxedTemplate", "TemplateFailure",
           "compile_template", "render_sandboxed"]

# A rendered prompt must fit the context: 128k tokens (the longest context of the model families llmrun runs)
# is about half a million characters of text, so 4M characters (32 per token) leave room for long tokens and
# whitespace runs, and stay small enough to copy around in milliseconds. Any string or list a template builds
# is capped at this size too.
MAX_OUTPUT_CHARS = 4 << 20
MEMORY_LIMIT_BYTES = 512 << 20  # address space a template may use beyond the worker's own (about 25 MB)
TIME_LIMIT_S = 5.0  # one compile or render; real templates take milliseconds
KILL_GRACE_S = 0.5  # at most: the worker's own checks usually stop a slow render first, with a clearer reason
START_TIMEOUT_S = 60.0  # a Python start-up and the jinja2 import, on a machine that may be busy
_WORKER = Path(__file__).with_name("template_worker.py")
# The worker runs the worker file by path, without importing llmrun itself (numpy, the C kernel: time, and
# address space its memory limit would count). It starts in isolated mode (-I): neither the working directory
# (where a downloaded json.py or jinja2.py may lie) nor PYTHON* variables nor the user's site directory are on
# its import path; the folders where this process finds jinja2 are added after its own (the standard library
# and the environment's site-packages come first).
_BOOT = ("import json, runpy, sys; path, extra = sys.argv[1], json.loads(sys.argv[2]); del sys.argv[1:3]; "
         "sys.path += [p for p in extra if p not in sys.path]; runpy.run_path(path, run_name='__main__')")
_NEEDS = ("jinja2", "markupsafe")  # what the worker imports beyond the standard library


class TemplateFailure(Exception):
    """Why a template could not be compiled or rendered (syntax, sandbox, limit, or its own raise_exception)."""


class SandboxedTemplate:
    """A template that compiled in the worker: its source (the worker keeps the compiled form)."""

    def __init__(self, source: str) -> None:
        self.source = source


def _import_folders() -> list[str]:
    """The folders this process would import the worker's packages from (found, not imported)."""
    folders: list[str] = []
    for name in _NEEDS:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:  # .../site-packages/jinja2/__init__.py
            folder = str(Path(spec.origin).parent.parent)
            if folder not in folders:
                folders.append(folder)
    return folders


class _Worker:
    """The child process and the pipe to it. One request at a time (the caller holds _lock)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, str(_WORKER), json.dumps(_import_folders()),
             str(MEMORY_LIMIT_BYTES)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.killed = False

    def ask(self, request: bytes, seconds: float) -> dict[str, Any]:
        """Sends `request` (a JSON line; b"" sends nothing and waits for the start-up line) and returns the
        reply; the worker is killed if none comes within `seconds` and a grace (half of it, at most KILL_GRACE_S)."""
        timer = threading.Timer(seconds + min(seconds / 2, KILL_GRACE_S), self.kill)
        timer.start()
        try:
            if request:
                self.proc.stdin.write(request)  # type: ignore[union-attr]
                self.proc.stdin.flush()  # type: ignore[union-attr]
            line = self.proc.stdout.readline()  # type: ignore[union-attr]
        except OSError:  # the worker is gone (killed, crashed): its pipe broke
            line = b""
        except BaseException:  # Ctrl-C while waiting: the worker's answer would go to the next request
            self.kill()
            raise
        finally:
            timer.cancel()
        if not line:
            killed = self.killed
            self.kill()
            status = self.proc.wait()
            if killed:
                raise TemplateFailure(f"rendering took longer than {seconds:g} s (an endless or huge computation?)")
            if status < 0:
                raise TemplateFailure(f"the template's process was ended by signal {-status} (past its CPU time "
                                      f"or its memory limit of {MEMORY_LIMIT_BYTES >> 20} MiB)")
            raise TemplateFailure(f"the template's process exited with status {status}")
        return json.loads(line)

    def kill(self) -> None:
        self.killed = True
        self.proc.kill()

    def alive(self) -> bool:
        return not self.killed and self.proc.poll() is None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]  # the worker ends at the end of its input
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


_lock = threading.Lock()
_worker: _Worker | None = None


def _ask(request: dict[str, Any], seconds: float) -> list[str]:
    """The worker's texts for `request`, started (or restarted) as needed; TemplateFailure otherwise."""
    global _worker
    try:
        line = json.dumps(request).encode("ascii") + b"\n"
    except (TypeError, ValueError) as e:
        raise TemplateFailure(f"a template's variables must be plain JSON data: {e}") from None
    with _lock:
        if _worker is None or not _worker.alive():  # none yet, or killed last time
            try:
                worker = _Worker()
                worker.ask(b"", START_TIMEOUT_S)
            except (OSError, TemplateFailure) as e:
                raise TemplateFailure(f"cannot start the chat template process ({sys.executable}): {e}") from None
            _worker = worker
        reply = _worker.ask(line, seconds)
    if "error" in reply:
        raise TemplateFailure(reply["error"])
    return reply["texts"]


@atexit.register
def _stop_worker() -> None:
    if _worker is not None:
        _worker.close()


def _forget_worker() -> None:
    """In a child made by fork: the parent's worker (and its lock, perhaps held mid-render) are the parent's;
    the child closes its copies of the pipes (the worker ends when the parent closes its own) and starts anew.

    It closes the raw files under the buffered pipe objects: closing those would flush what a thread of the
    parent has written but not yet flushed (a request the parent then sends again: two replies to one
    request), and a thread of the parent may have held their lock when it forked. A buffered file whose raw
    file is closed counts as closed, so nothing is flushed when it is collected either."""
    global _lock, _worker
    if _worker is not None:
        for pipe in (_worker.proc.stdin, _worker.proc.stdout):
            pipe.raw.close()  # type: ignore[union-attr]
        _worker.proc.returncode = 0  # not this process's child: nothing to wait for
    _lock, _worker = threading.Lock(), None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_worker)


def compile_template(source: str) -> SandboxedTemplate:
    """Compiles a chat template in the sandbox; TemplateFailure for a syntax error."""
    if not isinstance(source, str):
        raise TemplateFailure(f"a chat template must be text, got {type(source).__name__}")
    _ask({"source": source, "seconds": TIME_LIMIT_S, "max_chars": MAX_OUTPUT_CHARS}, TIME_LIMIT_S)
    return SandboxedTemplate(source)


def render_sandboxed(template: SandboxedTemplate, contexts: Sequence[Mapping[str, Any]], seconds: float | None = None,
                     max_chars: int = MAX_OUTPUT_CHARS) -> list[str]:
    """Renders `template` once with each of `contexts` (JSON-able data), all of them within one budget of
    `seconds` (default TIME_LIMIT_S), each output within `max_chars`; TemplateFailure says what went wrong."""
    seconds = TIME_LIMIT_S if seconds is None else seconds
    return _ask({"source": template.source, "seconds": seconds, "max_chars": max_chars,
                 "contexts": [dict(c) for c in contexts]}, seconds)
