"""A Jinja environment for chat templates taken from model files: sandboxed and with resource limits.

A chat template is a program inside a downloaded file (GGUF `tokenizer.chat_template`, a folder's
tokenizer_config.json), so it is untrusted code. CVE-2024-34359 was exactly that: llama-cpp-python rendered
such templates with a plain `jinja2.Environment`, and `{{ ''.__class__.__mro__[1].__subclasses__() }}` reached
`os.system`. Here templates run in jinja2's `ImmutableSandboxedEnvironment` (what Hugging Face transformers
uses), made stricter:

- reaching an unsafe attribute (`__class__`, `__globals__`, `mro`, ...) raises at once instead of quietly
  rendering as an undefined value, so a probing template fails loudly;
- a render has a wall-clock budget, checked on every template line (a trace hook on the template's own
  code), on attribute/item access, calls and output, so nested loops cannot hang the caller;
- `range()` is capped per call and per render, and strings and lists the template builds (`*`, `+`, `~`,
  `%`, `format`, `center`, `join`, `replace`, ...) and its output are capped in size, checked before the
  big value is made where the size is predictable and after every call otherwise.

`render_sandboxed` turns every failure into `TemplateFailure` with a readable reason; chat.py wraps that in
ChatTemplateError. What stays outside: the host's memory is only protected by the size caps above, not by
an OS limit, and a single C-level operation already started (one huge regex, say) is not interrupted.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import threading
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

__all__ = ["TemplateFailure", "compile_template", "render_sandboxed", "MAX_OUTPUT_CHARS", "TIME_LIMIT_S"]

MAX_OUTPUT_CHARS = 16 << 20  # of one rendered prompt, and of any string or list a template builds
MAX_RANGE = 10_000  # items of one range()
MAX_RANGE_TOTAL = 1_000_000  # range() items in one render
TIME_LIMIT_S = 5.0  # one render; real templates take milliseconds
MAX_FORMAT_WIDTH = 10_000  # a width or precision in a format string
MAX_INT_BITS = 1 << 16  # of an integer a template computes (real templates count messages)
_TEMPLATE_FILE = "<chat template>"
_WIDTH = re.compile(r"\d{5,}|%[-#0 +]*\*")  # a long number (a width of 10,000+) or a '*' width in a format
_AMPLIFIERS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "join", "format",
                         "format_map", "indent", "wordwrap", "truncate"})


class TemplateFailure(Exception):
    """Why a template could not be compiled or rendered (syntax, sandbox, limit, or its own raise_exception)."""


class _Limits:
    """The budget of one render."""

    def __init__(self, seconds: float, max_chars: int) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.max_chars = max_chars
        self.range_left = MAX_RANGE_TOTAL
        self.ticks = 0

    def tick(self) -> None:
        self.ticks += 1
        if not self.ticks & 255 and time.monotonic() > self.deadline:
            raise TemplateFailure(f"rendering took longer than {self.seconds:g} s (an endless or huge loop?)")

    def size(self, n: int, what: str = "a value") -> None:
        if n > self.max_chars:
            raise TemplateFailure(f"the template built {what} of {n:,} items, more than the limit of "
                                  f"{self.max_chars:,}")


_state = threading.local()


def _limits() -> _Limits:
    limits = getattr(_state, "limits", None)
    if limits is None:  # rendered outside render_sandboxed (e.g. by jinja's own helpers): default budget
        limits = _state.limits = _Limits(TIME_LIMIT_S, MAX_OUTPUT_CHARS)
    return limits


def _check_result(value: Any) -> Any:
    if isinstance(value, (str, list, tuple, dict, bytes)):
        _limits().size(len(value))
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_format(fmt: object) -> None:
    if isinstance(fmt, str) and _WIDTH.search(fmt):
        raise TemplateFailure(f"format string {fmt[:40]!r} asks for a width above {MAX_FORMAT_WIDTH:,} characters")


def _check_amplifier(name: str, target: Any, args: tuple, kwargs: Mapping[str, Any]) -> None:
    """Refuses a str method / filter call whose result would exceed the size cap, before it is made."""
    limits = _limits()
    ints = [a for a in (*args, *kwargs.values()) if isinstance(a, int) and not isinstance(a, bool)]
    if name in ("format", "format_map"):
        _check_format(target)
        for a in args:
            _check_format(a)
    if ints and max(ints) > MAX_FORMAT_WIDTH:
        raise TemplateFailure(f"{name}() with {max(ints):,}: above the limit of {MAX_FORMAT_WIDTH:,}")
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
        raise TemplateFailure(f"range() of {len(rng):,} items, more than the limit of {MAX_RANGE:,}")
    limits.range_left -= len(rng)
    if limits.range_left < 0:
        raise TemplateFailure(f"more than {MAX_RANGE_TOTAL:,} range() items in one render")
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
        raise TemplateFailure(f"tojson indent {indent} is above 64")
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
            raise TemplateFailure(f"power with exponent {right}: above the limit of 256")
        if _is_int(left) and _is_int(right):  # big-integer arithmetic is one uninterruptible C call: size it first
            bits = {"*": left.bit_length() + right.bit_length(),
                    "**": left.bit_length() * max(right, 0) if left not in (0, 1, -1) else 1}.get(operator, 0)
            if bits > MAX_INT_BITS:
                raise TemplateFailure(f"an integer {operator} of about {bits:,} bits: above the limit of "
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
    """Compiles a chat template in the sandbox; TemplateFailure for a syntax error."""
    if not isinstance(source, str):
        raise TemplateFailure(f"a chat template must be text, got {type(source).__name__}")
    try:
        env = ChatTemplateEnvironment()
        code = env.compile(source, filename=_TEMPLATE_FILE)
        return env.template_class.from_code(env, code, env.make_globals(None), None)
    except TemplateSyntaxError as e:
        raise TemplateFailure(f"syntax error on line {e.lineno}: {e.message}") from None
    except (TemplateError, RecursionError, MemoryError, ValueError) as e:
        raise TemplateFailure(f"cannot compile: {e}") from None


def render_sandboxed(template: jinja2.Template, context: Mapping[str, Any], seconds: float = TIME_LIMIT_S,
                     max_chars: int = MAX_OUTPUT_CHARS) -> str:
    """Renders `template` with `context` inside the limits; TemplateFailure says what went wrong."""
    limits = _Limits(seconds, max_chars)
    previous_limits = getattr(_state, "limits", None)
    _state.limits = limits
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
    except TemplateFailure:
        raise
    except SecurityError as e:
        raise TemplateFailure(f"blocked by the sandbox: {e}") from None
    except TemplateError as e:  # the template's own raise_exception(), or a jinja runtime error
        raise TemplateFailure(str(e) or type(e).__name__) from None
    except RecursionError:
        raise TemplateFailure("recursion too deep") from None
    except MemoryError:
        raise TemplateFailure("out of memory") from None
    except Exception as e:  # a template is a program: any of its errors is a broken template
        raise TemplateFailure(f"{type(e).__name__}: {e}") from None
    finally:
        sys.settrace(old_trace)
        _state.limits = previous_limits
    return "".join(parts)
