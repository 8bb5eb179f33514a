"""Tool calls (OpenAI function tools) for chat: validation of `tools` / `tool_choice`, the call syntax of each
template family, parsing a reply into OpenAI `tool_calls`, and the grammars that enforce a call.

The tools reach the model's own chat template as the `tools` variable, as transformers passes it (the list of
{"type": "function", "function": {...}} dicts). Which syntax the reply is read in is chosen from the template's
text:

    "hermes"   <tool_call>{"name": ..., "arguments": {...}}</tool_call> (one or more)  Hermes, Qwen2.5, Qwen3
    "mistral"  [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...] or [TOOL_CALLS]name[CALL_ID]id[ARGS]{...}
    "llama"    {"name": ..., "parameters": {...}}, optionally after <|python_tag|>   Llama 3.1 / 3.2
    "json"     any other template: a reply that is exactly {"name": ..., "arguments"|"parameters": {...}}

The generic JSON form is also accepted by every family. A reply that does not parse (or names a function that
was not offered) is plain content, never an error. `tool_choice` "required" or a named function is enforced with
a grammar (llmrun/structured.py) that makes the model write one call in its family's syntax, with arguments
that match the function's `parameters` schema.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import InvalidArgumentError
from .structured import JSON_OPTIONS, Grammar

MARKERS = {"hermes": "<tool_call>", "mistral": "[TOOL_CALLS]", "llama": "<|python_tag|>"}


def validate_tools(tools: object) -> list[dict[str, Any]]:
    """OpenAI function tools as plain dicts; InvalidArgumentError (param "tools") naming the bad field."""
    if not isinstance(tools, Sequence) or isinstance(tools, (str, bytes, Mapping)):
        raise InvalidArgumentError(f"tools must be a list of function tools, got {type(tools).__name__}",
                                   param="tools")
    out, names = [], set()
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, Mapping) or tool.get("type") != "function":
            raise InvalidArgumentError(f'{where} must be {{"type": "function", "function": {{...}}}}', param="tools")
        fn = tool.get("function")
        if not isinstance(fn, Mapping):
            raise InvalidArgumentError(f"{where}.function must be an object with a name", param="tools")
        name = fn.get("name")
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", name):
            raise InvalidArgumentError(f"{where}.function.name must be 1-64 letters, digits, _ . : or -, got "
                                       f"{name!r}", param="tools")
        if name in names:
            raise InvalidArgumentError(f"{where}.function.name {name!r} is given twice", param="tools")
        names.add(name)
        if "description" in fn and not isinstance(fn["description"], str):
            raise InvalidArgumentError(f"{where}.function.description must be a string", param="tools")
        params = fn.get("parameters")
        if params is not None and not isinstance(params, Mapping):
            raise InvalidArgumentError(f"{where}.function.parameters must be a JSON schema object", param="tools")
        clean = {"name": name}
        if "description" in fn:
            clean["description"] = fn["description"]
        if params is not None:
            clean["parameters"] = json.loads(json.dumps(params))
        out.append({"type": "function", "function": clean})
    return out


def validate_tool_choice(choice: object, tools: list[dict[str, Any]] | None) -> str:
    """"auto", "none", "required", or the name of the function a {"type": "function", "function": {"name"}}
    choice names; InvalidArgumentError (param "tool_choice")."""
    if choice is None:
        return "auto"
    if choice in ("auto", "none", "required"):
        if choice == "required" and not tools:
            raise InvalidArgumentError('tool_choice "required" needs tools', param="tool_choice")
        return str(choice)
    if isinstance(choice, Mapping) and choice.get("type") == "function" and isinstance(choice.get("function"),
                                                                                        Mapping):
        name = choice["function"].get("name")
        if not any(t["function"]["name"] == name for t in tools or []):
            raise InvalidArgumentError(f"tool_choice names function {name!r}, which is not in tools",
                                       param="tool_choice")
        return str(name)
    raise InvalidArgumentError('tool_choice must be "auto", "none", "required" or {"type": "function", '
                               f'"function": {{"name": ...}}}}, got {choice!r}', param="tool_choice")


def tool_format(template_source: str) -> str:
    """The tool-call syntax a chat template's model writes: "hermes", "mistral", "llama" or "json"."""
    if "<tool_call>" in template_source:
        return "hermes"
    if "[TOOL_CALLS]" in template_source:
        return "mistral"
    if "<|python_tag|>" in template_source or '"parameters"' in template_source:
        return "llama"
    return "json"


def new_call_id(fmt: str = "json") -> str:
    """"call_" and 24 hex digits, as OpenAI's; for Mistral 9 letters and digits (its template refuses others)."""
    if fmt == "mistral":
        return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))
    return "call_" + secrets.token_hex(12)


def _call(obj: object, names: set[str] | None) -> dict[str, Any] | None:
    """An OpenAI tool call from a parsed {"name", "arguments"|"parameters"} object, or None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if names is not None and obj["name"] not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except ValueError:
            return None
    if not isinstance(args, dict) or set(obj) - {"name", "arguments", "parameters", "id", "type"}:
        return None
    return {"id": new_call_id(), "type": "function",
            "function": {"name": obj["name"], "arguments": json.dumps(args, ensure_ascii=False)}}


_decoder = json.JSONDecoder()


def _json_values(text: str, separators: str = "") -> list[Any] | None:
    """The JSON values `text` consists of (blank space and `separators` between them), or None."""
    values, pos = [], 0
    while True:
        while pos < len(text) and (text[pos].isspace() or text[pos] in separators):
            pos += 1
        if pos == len(text):
            return values or None
        try:
            value, pos = _decoder.raw_decode(text, pos)
        except ValueError:
            return None
        values.append(value)


def _calls(values: list[Any] | None, names: set[str] | None) -> list[dict[str, Any]] | None:
    if values is None:
        return None
    flat = [v for value in values for v in (value if isinstance(value, list) else [value])]
    calls = [_call(v, names) for v in flat]
    return calls if calls and all(c is not None for c in calls) else None  # type: ignore[return-value]


def parse_tool_calls(text: str, fmt: str, names: set[str] | None = None
                     ) -> tuple[str, list[dict[str, Any]]]:
    """(content, tool_calls) read from a reply in format `fmt`; content is the text before the first call
    (stripped of the blank space next to it). A reply without a well-formed call (or with a call of a name not
    in `names`, when given) is all content: (text, [])."""
    none = (text, [])
    start, calls = -1, None
    if fmt == "hermes" and "<tool_call>" in text:
        start = text.index("<tool_call>")
        rest = text[start:]
        bodies = re.findall(r"<tool_call>(.*?)</tool_call>", rest, flags=re.S)
        leftover = re.sub(r"<tool_call>.*?</tool_call>", "", rest, flags=re.S)
        if leftover.strip() or not bodies:
            return none
        values = [_json_values(b) for b in bodies]
        calls = None if any(v is None or len(v) != 1 for v in values) else \
            _calls([v[0] for v in values if v], names)
    elif fmt == "mistral" and "[TOOL_CALLS]" in text:
        start = text.index("[TOOL_CALLS]")
        calls = []
        for part in text[start:].split("[TOOL_CALLS]")[1:]:
            if "[ARGS]" in part and not part.lstrip().startswith(("[", "{")):  # name[ARGS]{...} (v11 tokenizers)
                name, _, args = part.partition("[ARGS]")
                name = name.partition("[CALL_ID]")[0]
                values = _json_values(args)
                found = _calls([{"name": name.strip(), "arguments": values[0]}], names) \
                    if values and len(values) == 1 else None
            else:
                found = _calls(_json_values(part, ";,"), names)
            if found is None:
                return none
            calls += found
    elif fmt == "llama" and "<|python_tag|>" in text:
        start = text.index("<|python_tag|>")
        calls = _calls(_json_values(text[start + len("<|python_tag|>"):], ";"), names)
    else:
        m = re.search(r'[\[{]\s*\{?\s*"name"\s*:', text) if fmt == "llama" else None
        start = m.start() if m else len(text) - len(text.lstrip())
        calls = _calls(_json_values(text[start:], ";"), names)
    if not calls:
        return none
    for c in calls:
        c["id"] = new_call_id(fmt)
    return text[:start].rstrip(), calls


def _arguments_schema(tool: Mapping[str, Any]) -> Any:
    params = tool["function"].get("parameters")  # none: the function takes no arguments
    return params if params else {"type": "object", "properties": {}, "additionalProperties": False}


def tool_grammar(fmt: str, tools: list[dict[str, Any]], name: str | None = None) -> Grammar:
    """A Lark grammar (llguidance) for exactly one call in the family's syntax, of `name` or of any of `tools`,
    whose arguments match the function's parameters schema."""
    key = "parameters" if fmt == "llama" else "arguments"
    chosen = [t for t in tools if name is None or t["function"]["name"] == name]
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                 key: _arguments_schema(t)},
                "required": ["name", key], "additionalProperties": False} for t in chosen]
    schema = dict(options[0]) if len(options) == 1 else {"anyOf": options}
    schema["x-guidance"] = JSON_OPTIONS  # compact JSON, as in response_format
    body = f"%json {json.dumps(schema)}"
    if fmt == "hermes":
        source = f'start: "<tool_call>\\n" call "\\n</tool_call>"\ncall: {body}\n'
    elif fmt == "mistral":  # the JSON list form (the [TOOL_CALLS] marker is a control token in Mistral's vocab)
        source = f'start: "[" call "]"\ncall: {body}\n'
    else:
        source = f"start: {body}\n"
    return Grammar.lark(source)


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as templates read them: a tool call's `arguments` as an object where it is a JSON object
    string (OpenAI sends a string; Qwen's and Llama's templates write `arguments | tojson`)."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            calls = []
            for c in m["tool_calls"]:
                fn = dict(c["function"])
                try:
                    args = json.loads(fn["arguments"]) if isinstance(fn.get("arguments"), str) else fn.get("arguments")
                except ValueError:
                    args = fn["arguments"]
                fn["arguments"] = args
                calls.append({**c, "function": fn})
            m = {**m, "tool_calls": calls}
        out.append(m)
    return out


class ToolCallSplitter:
    """Holds back a streamed answer from where a tool call may start (the family's marker, or a reply that
    opens with JSON), and parses the held text at the end: `feed(text)` returns the content that is surely
    not a call; `flush()` returns (content, tool_calls) for what was held."""

    def __init__(self, fmt: str, names: set[str] | None) -> None:
        self.fmt, self.names = fmt, names
        self.marker = MARKERS.get(fmt)
        self._held = ""
        self._holding = False
        self._started = False

    def feed(self, text: str) -> str:
        if self._holding:
            self._held += text
            return ""
        text = self._held + text
        self._held = ""
        if not self._started:
            head = text.lstrip()
            if not head:
                self._held = text
                return ""
            self._started = True
            if head[0] in "{[":
                self._holding, self._held = True, text
                return ""
        if self.marker:
            i = text.find(self.marker)
            if i >= 0:
                self._holding, self._held = True, text[i:]
                return text[:i]
            for n in range(min(len(self.marker) - 1, len(text)), 0, -1):
                if text.endswith(self.marker[:n]):
                    self._held = text[-n:]
                    return text[:-n]
        return text

    def flush(self) -> tuple[str, list[dict[str, Any]]]:
        held, self._held = self._held, ""
        if not self._holding:
            return held, []
        content, calls = parse_tool_calls(held, self.fmt, self.names)
        return (content, calls) if calls else (held, [])
