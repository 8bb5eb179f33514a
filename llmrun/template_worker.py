"""The child process that compiles and renders chat templates (llmrun/template_sandbox.py starts it and talks to it).

A chat template is a program inside a downloaded file, so it is untrusted code. Here it runs in jinja2's
`ImmutableSandboxedEnvironment` (what Hugging Face transformers uses), made stricter:

- reaching an unsafe attribute (`__class__`, `__globals__`, `mro`, ...) raises at once instead of quietly
  rendering as an undefined value, so a probing template fails loudly;
- a render has a wall-clock budget, checked on every template line (a trace hook on the template's own
  code), on attribute/item access, calls and output, so nested loops stop with a clear message;
- `range()` is capped per call and per render, and strings and lists the template builds (`*`, `+`, `~`,
  `%`, `format`, `center`, `join`, `replace`, ...) and its output are capped in size, checked before the
  big value is made where the size is predictable and after every call otherwise.

Those checks give a runaway template a readable reason in the common cases. They are not the bound: one C-level
operation (sorting or printing a huge list, a filter's own loop) runs without them. The bound is this process:
its address space is limited (RLIMIT_AS) and so is its CPU time (RLIMIT_CPU, which also ends it if its parent
died mid-render), and the parent kills it when a render outlasts its budget. This file imports nothing but the
standard library and jinja2 (the parent runs it by path, without importing the llmrun package).

Protocol: one JSON object per line on stdin, one per line on stdout. The first line out is {"ready": true}.
Requests: {"source", "seconds", "max_chars"} compiles (and caches) a template; with "contexts" (a list of
variable mappings) as well it also renders it once with each, all within one deadline of "seconds" (each
rendering with its own size and range() counts). Replies: {"texts": [...]} (one rendering per context; none
for a compile) or {"error": ...}. Every line gets exactly one reply, a malformed one an error, so that the
parent's next read is the answer to its next request.
"""

from __future__ import annotations

import functools
import json
import re
import signal
import sys
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError, TemplateError, TemplateSyntaxError
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_RANGE = 10_000  # items of one range()
MAX_RANGE_TOTAL = 1_000_000  # range() items in one render
MAX_FORMAT_WIDTH = 10_000  # a width or precision in a format string
MAX_INT_BITS = 1 << 16  # of an integer a template computes (real templates count messages)
CACHED_TEMPLATES = 16  # compiled templates kept (a server renders the same one or two over and over)
_TEMPLATE_FILE = "<chat template>"
_WIDTH = re.compile(r"\d{5,}|%[-#0 +]*\*")  # a long number (a width of 10,000+) or a '*' width in a format
_AMPLIFIERS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "format",
                         "format_map", "indent", "wordwrap", "truncate"})


class RenderFailure(Exception):
    """Why a template could not be compiled or rendered (syntax, sandbox, limit, or its own raise_exception)."""


class _Limits:
    """The budget of one render."""

    def __init__(self, seconds: float, max_chars: int, deadline: float | None = None) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds if deadline is None else deadline
        self.max_chars = max_chars
        self.range_left = MAX_RANGE_TOTAL
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if not self.ticks & 255 and time.monotonic() > self.deadline:
            raise RenderFailure(f"rendering took longer than {self.seconds:g} s (an endless or huge loop?)")

    def size(self, n: int, what: str = "a value") -> None:
        if n > self.max_chars:
            raise RenderFailure(f"the template built {what} of {n:,} items, more than the limit of "
                                  f"{self.max_chars:,}")


_budget = _Limits(5.0, 4 << 20)  # each request installs its own (_handle): compiling can run filters too


def _limits() -> _Limits:
    return _budget


def _check_result(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict, bytes)):
        _limits().size(len(value))
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_format(fmt: object) -> None:
    if isinstance(fmt, str) and _WIDTH.search(fmt):
        raise RenderFailure(f"format string {fmt[:40]!r} asks for a width above {MAX_FORMAT_WIDTH:,} characters")


def _check_amplifier(name: str, target: Any, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Refuses a str method / filter call whose result would exceed the size cap, before it is made."""
    limits = _limits()
    ints = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    if name in ("format", "format_map"):
        _check_format(target)
        for a in args:
            _check_format(a)
    if ints and max(ints) > MAX_FORMAT_WIDTH:
        raise RenderFailure(f"{name}() with {max(ints):,}: above the limit of {MAX_FORMAT_WIDTH:,}")
    if name == "replace" and isinstance(target, str) and len(args) >= 2 and isinstance(args[1], str):
        count = len(target) + 1 if args[0] == "" else target.count(str(args[0]))
        limits.size(len(target) + count * len(args[1]), "a string")
    if name == "join":  # str.join(items) on a separator, or the filter items | join(separator)
        sep, items = (target, args[0] if args else ()) if isinstance(target, str) else \
            (args[0] if args else kwargs.get("d", ""), target)
        if isinstance(items, (list, tuple)):
            sep_len = len(sep) if isinstance(sep, str) else 0
            limits.size(sum(len(x) for x in items if isinstance(x, str)) + sep_len * max(len(items) - 1, 0),
                        "a string")
    if name == "indent" and isinstance(target, str):  # every line gains up to `width` characters
        width = next((a for a in (*args, *kwargs.values()) if isinstance(a, (int, str))
                      and not isinstance(a, bool)), 4)
        limits.size(len(target) + (width if isinstance(width, int) else len(width)) * (target.count("\n") + 1),
                    "an indented string")


def _counted_range(*args: int) -> range:
    rng = range(*args)
    limits = _limits()
    if len(rng) > MAX_RANGE:
        raise RenderFailure(f"range() of {len(rng):,} items, more than the limit of {MAX_RANGE:,}")
    limits.range_left -= len(rng)
    if limits.range_left < 0:
        raise RenderFailure(f"more than {MAX_RANGE_TOTAL:,} range() items in one render")
    return rng


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    _check_format(fmt)
    return datetime.now().strftime(fmt)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """Hugging Face's tojson: json.dumps with its arguments (not jinja's HTML-escaping one)."""
    if isinstance(indent, int) and indent > 64:
        raise RenderFailure(f"tojson indent {indent} is above 64")
    return _check_result(json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                                    sort_keys=sort_keys))


def _guard_filter(name: str, func: Callable) -> Callable:
    @functools.wraps(func)  # keeps jinja's pass_context/pass_environment marks
    def guarded(*args: Any, **kwargs: Any) -> Any:
        _limits().tick()
        plain = [a for a in args if not isinstance(a, (jinja2.runtime.Context, jinja2.Environment,
                                                       jinja2.nodes.EvalContext))]
        if name in _AMPLIFIERS and plain:
            _check_amplifier(name, plain[0], tuple(plain[1:]), kwargs)
        return _check_result(func(*args, **kwargs))
    return guarded


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask markers): renders its body."""

    tags = {"generation"}

    def parse(self, parser: Any) -> nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.Scope(body, lineno=lineno)


class _CodeGenerator(CodeGenerator):
    """Routes `~` concatenation through a size check (jinja compiles it to a plain str join)."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.checked_concat((")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class ChatTemplateEnvironment(ImmutableSandboxedEnvironment):
    """ImmutableSandboxedEnvironment with Hugging Face's chat-template helpers and the limits above."""

    code_generator_class = _CodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def __init__(self) -> None:
        super().__init__(trim_blocks=True, lstrip_blocks=True, autoescape=False, keep_trailing_newline=False,
                         extensions=[jinja2.ext.loopcontrols, _GenerationTag])
        self.globals.pop("lipsum", None)  # generates text of any size on request
        self.globals.update(range=_counted_range, raise_exception=_raise_exception, strftime_now=_strftime_now)
        self.filters["tojson"] = _tojson
        self.filters = {name: _guard_filter(name, f) for name, f in self.filters.items()}

    def unsafe_undefined(self, obj: Any, attribute: str) -> jinja2.Undefined:
        raise SecurityError(f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is unsafe")

    def getattr(self, obj: Any, attribute: str) -> Any:
        _limits().tick()
        if isinstance(obj, str) and attribute in ("format", "format_map"):  # jinja wraps these: check here
            _check_format(obj)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        _limits().tick()
        return super().getitem(obj, argument)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        _limits().tick()
        target = getattr(__obj, "__self__", None)
        name = getattr(__obj, "__name__", "")
        if isinstance(target, (str, list, tuple)) and name in _AMPLIFIERS:
            _check_amplifier(name, target, args, kwargs)
        return _check_result(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limits = _limits()
        limits.tick()
        sized = (str, list, tuple)
        if operator == "*":
            for seq, n in ((left, right), (right, left)):
                if isinstance(seq, sized) and isinstance(n, int):
                    limits.size(len(seq) * max(n, 0), "a repeated value")
        if operator == "**" and isinstance(right, int) and right > 256 and left not in (0, 1, -1):
            raise RenderFailure(f"power with exponent {right}: above the limit of 256")
        if _is_int(left) and _is_int(right):  # big-integer arithmetic is one uninterruptible C call: size it first
            bits = {"*": left.bit_length() + right.bit_length(),
                    "**": left.bit_length() * max(right, 0) if left not in (0, 1, -1) else 1}.get(operator, 0)
            if bits > MAX_INT_BITS:
                raise RenderFailure(f"an integer {operator} of about {bits:,} bits: above the limit of "
                                      f"{MAX_INT_BITS:,}")
        if operator == "+" and isinstance(left, sized) and isinstance(right, sized):
            limits.size(len(left) + len(right), "a concatenation")
        elif operator == "%" and isinstance(left, str):
            _check_format(left)
        return _check_result(super().call_binop(context, operator, left, right))

    def checked_concat(self, values: tuple) -> str:
        text = "".join(str(v) for v in values)
        _limits().size(len(text), "a string")
        return text


def compile_template(source: str) -> jinja2.Template:
    """Compiles a chat template in the sandbox; RenderFailure for a syntax error. (Compiling can run the
    template's filters on constants, which is one reason it happens in this process too.)"""
    if not isinstance(source, str):
        raise RenderFailure(f"a chat template must be text, got {type(source).__name__}")
    try:
        env = ChatTemplateEnvironment()
        code = env.compile(source, filename=_TEMPLATE_FILE)
        return env.template_class.from_code(env, code, env.make_globals(None), None)
    except TemplateSyntaxError as e:
        raise RenderFailure(f"syntax error on line {e.lineno}: {e.message}") from None
    except (TemplateError, RecursionError, MemoryError, ValueError) as e:
        raise RenderFailure(f"cannot compile: {e}") from None


def render(template: jinja2.Template, context: Mapping[str, Any]) -> str:
    """Renders `template` with `context` inside the current request's limits; RenderFailure says what went
    wrong."""
    limits = _limits()
    old_trace = sys.gettrace()

    def trace_lines(frame: Any, event: str, arg: Any) -> Any:
        limits.tick()
        return trace_lines

    def trace_calls(frame: Any, event: str, arg: Any) -> Any:  # only the template's own code is traced
        return trace_lines if frame.f_code.co_filename == _TEMPLATE_FILE else None

    parts: list[str] = []
    total = 0
    try:
        sys.settrace(trace_calls)
        for chunk in template.generate(**context):
            total += len(chunk)
            limits.size(total, "an output")
            limits.tick()
            parts.append(chunk)
    except RenderFailure:
        raise
    except SecurityError as e:
        raise RenderFailure(f"blocked by the sandbox: {e}") from None
    except TemplateError as e:  # the template's own raise_exception(), or a jinja runtime error
        raise RenderFailure(str(e) or type(e).__name__) from None
    except RecursionError:
        raise RenderFailure("recursion too deep") from None
    except MemoryError:
        raise RenderFailure("out of memory: the template needs more than its memory limit") from None
    except Exception as e:  # a template is a program: any of its errors is a broken template
        raise RenderFailure(f"{type(e).__name__}: {e}") from None
    finally:
        sys.settrace(old_trace)
    return "".join(parts)


# --- the process ------------------------------------------------------------------------------------------

def _limit_memory(budget: int) -> None:
    """Caps this process's address space at what it uses now plus `budget` bytes (Linux; where the size
    cannot be read or the limit set, the parent's wall-clock kill is the only bound)."""
    try:
        import resource

        with open("/proc/self/statm") as f:
            used = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (used + budget, used + budget))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # RLIMIT_CPU's SIGXCPU would otherwise dump core
    except (ImportError, OSError, ValueError):
        pass


def _limit_cpu(seconds: float) -> None:
    """Lets this process use `seconds` more CPU seconds (and a second's slack): past that the kernel ends it,
    even if the parent that would kill it is gone."""
    try:
        import resource

        used = time.process_time()
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(used + seconds) + 2
        if hard == resource.RLIM_INFINITY or soft <= hard:
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
    except (ImportError, OSError, ValueError):
        pass


def _handle(request: Mapping[str, Any], cache: dict[str, jinja2.Template]) -> dict[str, Any]:
    global _budget
    source, seconds, max_chars = request["source"], float(request["seconds"]), int(request["max_chars"])
    _budget = _Limits(seconds, max_chars)  # the request's one deadline, for the compile and every rendering
    deadline = _budget.deadline
    _limit_cpu(seconds)
    if source not in cache:
        if len(cache) >= CACHED_TEMPLATES:
            del cache[next(iter(cache))]
        cache[source] = compile_template(source)
    texts = []
    for context in request.get("contexts", []):
        _budget = _Limits(seconds, max_chars, deadline)
        texts.append(render(cache[source], context))
    return {"texts": texts}


def serve(memory_budget: int) -> None:
    """Answers requests on stdin until it closes (the parent has gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the parent's to handle
    _limit_memory(memory_budget)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    cache: dict[str, jinja2.Template] = {}

    def reply(message: dict[str, Any]) -> None:
        stdout.write(json.dumps(message).encode("ascii") + b"\n")  # ASCII: lone surrogates survive too
        stdout.flush()

    reply({"ready": True})
    for line in stdin:
        try:
            answer = _handle(json.loads(line), cache)
        except RenderFailure as e:
            answer = {"error": str(e)}
        except MemoryError:
            answer = {"error": "out of memory: the template needs more than its memory limit"}
        except Exception as e:  # noqa: BLE001 - a malformed request (not JSON, a field missing or of the wrong
            # kind) still gets its one reply: dying here would fail the parent's request and every later one
            answer = {"error": f"cannot handle the request: {type(e).__name__}: {e}"}
        reply(answer)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
