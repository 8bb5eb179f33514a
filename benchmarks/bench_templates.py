"""pytest-benchmark suite: what rendering chat templates in a separate process costs, and how fast runaway
templates stop (the speed claims tests/test_chat.py used to assert itself).

    pytest benchmarks/bench_templates.py --benchmark-only

- render_*: one chat turn's rendering (a ChatML conversation of 8 messages) in the long-lived worker process
  (what llmrun does), in this process (the sandbox's Jinja alone: the worker's own share), in a freshly
  started worker (what a process per render would cost, and what the first render and a render after a kill
  pay once) and in a child forked for it.
- stop_*: the seconds until a runaway template fails; the sandbox's own checks stop the first kind within the
  budget given (1 s here), the process limits the second kind within TIME_LIMIT_S and the kill grace.
"""

from __future__ import annotations

import os

import pytest
from test_chat import HOSTILE

from llmrun import template_sandbox, template_worker
from llmrun.chat import FORMATS, ChatTemplate
from llmrun.errors import ChatTemplateError
from llmrun.template_sandbox import TemplateFailure, compile_template, render_sandboxed

MESSAGES = [{"role": "system", "content": "You are a helpful assistant."}] + [
    {"role": "user" if i % 2 == 0 else "assistant", "content": f"Message {i}: " + "some words " * 40}
    for i in range(7)]
CONTEXT = {"messages": MESSAGES, "bos_token": "<s>", "eos_token": "</s>", "add_generation_prompt": True}

# The cases tests/test_chat.py::test_runaway_templates_stop checks for a reason: the sandbox's checks stop them.
RUNAWAY = {
    "nested loops": "{% set s = 'x' * 4000 %}{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
    "range": "{% for a in range(10000) %}{% for b in range(10000) %}{% endfor %}{% endfor %}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
    "big integers": "{% set ns = namespace(x=7) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
}


def test_render_in_the_worker(benchmark) -> None:
    template = compile_template(FORMATS["chatml"])
    assert render_sandboxed(template, [CONTEXT])[0].startswith("<|im_start|>system")
    benchmark(render_sandboxed, template, [CONTEXT])


def test_render_in_this_process(benchmark) -> None:
    """The same rendering without the process around it (what the in-process sandbox cost)."""
    compiled = template_worker.compile_template(FORMATS["chatml"])

    def render() -> str:
        template_worker._budget = template_worker._Limits(template_sandbox.TIME_LIMIT_S,
                                                          template_sandbox.MAX_OUTPUT_CHARS)
        return template_worker.render(compiled, CONTEXT)

    assert render() == render_sandboxed(compile_template(FORMATS["chatml"]), [CONTEXT])[0]
    benchmark(render)


def test_render_in_a_new_worker(benchmark) -> None:
    """Start a worker, render once, stop it: a process per render, or the first render after a kill."""
    request = {"source": FORMATS["chatml"], "seconds": 5.0, "max_chars": template_sandbox.MAX_OUTPUT_CHARS,
               "contexts": [CONTEXT]}
    line = template_sandbox.json.dumps(request).encode() + b"\n"

    def cold() -> None:
        worker = template_sandbox._Worker()
        worker.ask(b"", template_sandbox.START_TIMEOUT_S)
        assert "texts" in worker.ask(line, 5.0)
        worker.close()

    benchmark.pedantic(cold, rounds=10)


def test_render_in_a_forked_child(benchmark) -> None:
    """Fork, render in the child, send the text back: the other way to bound a render. A lower bound here (a
    small process); forking a process that holds a model's threads is unsafe besides, and costs more the more
    memory it maps."""
    compiled = template_worker.compile_template(FORMATS["chatml"])

    def forked() -> str:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: render, write, leave at once
            template_worker._budget = template_worker._Limits(5.0, template_sandbox.MAX_OUTPUT_CHARS)
            os.write(write, template_worker.render(compiled, CONTEXT).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            text = f.read().decode()
        os.waitpid(pid, 0)
        return text

    assert forked().startswith("<|im_start|>system")
    benchmark.pedantic(forked, rounds=50)


@pytest.mark.parametrize("source", RUNAWAY.values(), ids=RUNAWAY)
def test_stop_by_the_sandbox_checks(benchmark, source: str) -> None:
    def run() -> None:
        with pytest.raises(TemplateFailure):
            render_sandboxed(compile_template(source), [{}], seconds=1.0, max_chars=1 << 20)

    benchmark.pedantic(run, rounds=3)


@pytest.mark.parametrize("source", HOSTILE.values(), ids=HOSTILE)
def test_stop_by_the_process_limits(benchmark, source: str) -> None:
    """At the default budget (TIME_LIMIT_S): each ends within it and the kill grace, failing at a limit."""
    def run() -> str:
        try:
            ChatTemplate(source).render(MESSAGES)
        except ChatTemplateError as e:
            return str(e)
        return "rendered"

    benchmark.extra_info["outcome"] = benchmark.pedantic(run, rounds=1)
