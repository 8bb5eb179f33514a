"""Chat templates: turning a conversation into the token ids an assistant model was fine-tuned on.

- A template is the model's own Jinja program (GGUF `tokenizer.chat_template`, a folder's
  `chat_template.jinja` or tokenizer_config.json `chat_template`) or a built-in format (`FORMATS`). It
  runs in a sandbox with resource limits (llmrun/template_sandbox.py) with the variables and helpers
  Hugging Face provides: messages, add_generation_prompt, bos_token, eos_token, raise_exception,
  strftime_now, tojson(indent, separators, ensure_ascii, sort_keys).
- Special-token safety: only the template's own markup may produce control tokens. `tokenize_chat` renders
  the conversation twice (in one request to the sandbox, under one time budget), once as is and once with
  every message's content replaced by a random sentinel; the second rendering is the template's markup
  alone. It then lines the markup up with the real rendering (a template may `trim` or `strip` contents);
  control-token text is recognised only in the markup, and every message's text is tokenized as plain
  text, so a user who types `<|im_end|>` gets the characters, not the token. Where a template changes
  contents in a way that cannot be lined up, the markup is used with the contents as given (still safe;
  `ChatPrompt.exact` is then False).
- The markup's control tokens swallow the whitespace around them where the tokenizer says so (tokenizer.json
  lstrip/rstrip, llama.cpp's Phi-3 rule), as transformers and llama.cpp tokenize a rendered prompt; and a
  user-defined token the markup uses (Gemma's <start_of_turn> in GGUF files) cannot be spelled by a message.
- Template variables (`variables`, e.g. {"enable_thinking": False}) reach the template as transformers'
  apply_chat_template passes its keyword arguments.
- Reasoning models (templates that write `<think>`): `ChatStream` keeps a reply's leading `<think>…</think>`
  block out of the answer (`ReasoningSplitter`) and reports it as `reasoning` / "reasoning_content".
- `end_of_turn` finds what ends a reply: the tokenizer's EOS and end-of-turn tokens the template uses
  (`<|eot_id|>`, `<|im_end|>`, ...); a marker the vocabulary lacks becomes a stop string.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import secrets
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ChatTemplateError, InvalidArgumentError
from .generate import Generation
from .template_sandbox import TemplateFailure, compile_template, render_sandboxed
from .tokenizer import END_OF_TURN_TEXTS, Tokenizer
from .tools import ToolCallSplitter, template_messages

__all__ = ["FORMATS", "ROLES", "ChatDelta", "ChatPrompt", "ChatStream", "ChatTemplate", "ReasoningSplitter",
           "end_of_turn", "load_template_from_folder", "opens_in_reasoning", "tokenize_chat", "validate_messages"]

ROLES = ("system", "user", "assistant", "tool")

# Built-in formats, as the models' published templates write them (transformers' tokenizer_config.json of
# the reference model named beside each). Jinja source: "\\n" is a newline inside a Jinja string literal.
FORMATS: dict[str, str] = {
    # meta-llama/Llama-2-7b-chat-hf: <s>[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{user} [/INST] {reply} </s>
    "llama-2": (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
        "{% set system_message = false %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if loop.index0 == 0 and system_message != false %}"
        "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
        "{% else %}{% set content = message['content'] %}{% endif %}"
        "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
        "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}"
        "{% endfor %}"),
    # meta-llama/Meta-Llama-3-8B-Instruct
    "llama-3": (
        "{% set loop_messages = messages %}{% for message in loop_messages %}"
        "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
        "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
        "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"),
    # ChatML (OpenAI; Qwen, OpenHermes, SmolLM ...)
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"),
    # HuggingFaceH4/zephyr-7b-beta (also TinyLlama-1.1B-Chat)
    "zephyr": (
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
        "{{ '<|user|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
        "{{ '<|system|>\\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
        "{{ '<|assistant|>\\n'  + message['content'] + eos_token }}\n{% endif %}\n"
        "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"),
    # mistralai/Mistral-7B-Instruct-v0.1: <s>[INST] {user} [/INST]{reply}</s>[INST] ...; that template has no
    # system role: here a system prompt goes before the first user message, separated by a blank line.
    "mistral": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set loop_messages = messages[1:] %}{% else %}{% set system = '' %}"
        "{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}"
        "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% if message['role'] == 'user' %}{% if loop.first and system %}"
        "{{ '[INST] ' + system + '\\n\\n' + message['content'] + ' [/INST]' }}"
        "{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% endif %}"
        "{% else %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}"),
    # google/gemma-3-1b-it (Gemma 2's differs only in refusing a system message): no system role, so the
    # system text opens the first user turn, followed by a blank line; the assistant's role is "model".
    "gemma": (
        "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
        "{% set first_user_prefix = messages[0]['content'] + '\\n\\n' %}{% set loop_messages = messages[1:] %}"
        "{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}"
        "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
        "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
        "{{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else '') }}"
        "{{ message['content'] | trim }}{{ '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"),
    # A base model continues text: each system/user message starts a new line, a reply continues the line.
    "plain": (
        "{% for message in messages %}{% if not loop.first and message['role'] != 'assistant' %}{{ '\\n' }}"
        "{% endif %}{{ message['content'] }}{% endfor %}"),
}

# A reasoning model's reply opens with its thinking between these tags (Qwen3, SmolLM3, DeepSeek-R1 ...).
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# Text that ends a turn in known templates; `end_of_turn` keeps those a template mentions.
END_OF_TURN_MARKERS = END_OF_TURN_TEXTS


class ChatTemplate:
    """A compiled chat template. `ChatTemplate(source)` for a model's own Jinja text (ChatTemplateError if it
    does not compile), `ChatTemplate.builtin(name)` for one of `FORMATS`."""

    def __init__(self, source: str, name: str = "model") -> None:
        try:
            self._template = compile_template(source)
        except TemplateFailure as e:
            raise ChatTemplateError(f"chat template {name!r}: {e}") from None
        self.source = source
        self.name = name
        # tokenize_chat's last prompt, by what it was made from: a chat front end asks for the same prompt
        # more than once (the REPL measures it, then generates from it), and each rendering costs a budget
        self._last_prompt: tuple[tuple, ChatPrompt] | None = None

    @classmethod
    def builtin(cls, name: str) -> ChatTemplate:
        if name not in FORMATS:
            raise InvalidArgumentError(f"unknown chat format {name!r}; choose one of {', '.join(FORMATS)}")
        return cls(FORMATS[name], name=name)

    def render(self, messages: Sequence[Mapping[str, Any]], bos_token: str = "", eos_token: str = "",
               add_generation_prompt: bool = True, variables: Mapping[str, Any] | None = None) -> str:
        """The conversation as text. `variables` are the template's own switches, as transformers'
        `apply_chat_template(**kwargs)` passes them (e.g. {"enable_thinking": False} for Qwen3 and SmolLM3);
        a variable left out keeps the template's default. ChatTemplateError when the template fails, refuses
        the conversation (its raise_exception) or breaks a sandbox rule or limit."""
        return self.render_all([messages], bos_token, eos_token, add_generation_prompt, variables)[0]

    def render_all(self, conversations: Sequence[Sequence[Mapping[str, Any]]], bos_token: str = "",
                   eos_token: str = "", add_generation_prompt: bool = True,
                   variables: Mapping[str, Any] | None = None) -> list[str]:
        """Each conversation as text, all rendered within one time budget (TIME_LIMIT_S of the sandbox);
        arguments and errors as `render`."""
        extra = _check_variables(variables)
        contexts = [{**extra, "messages": [dict(m) for m in messages], "bos_token": bos_token, "eos_token": eos_token,
                     "add_generation_prompt": add_generation_prompt} for messages in conversations]
        try:
            return render_sandboxed(self._template, contexts)
        except TemplateFailure as e:
            raise ChatTemplateError(f"chat template {self.name!r}: {e}") from None

    @property
    def thinks(self) -> bool:
        """Whether the template is a reasoning model's: it writes `<think>` blocks (Qwen3, SmolLM3, DeepSeek-R1
        distills). Replies are then split into reasoning and answer (`ReasoningSplitter`)."""
        return THINK_OPEN in self.source

    @property
    def end_markers(self) -> tuple[str, ...]:
        """The known end-of-turn markers this template's source mentions."""
        return tuple(m for m in END_OF_TURN_MARKERS if m in self.source)

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r}, {len(self.source)} chars)"


# The variables every rendering sets itself; `variables` may not replace them.
_RESERVED_VARIABLES = frozenset({"messages", "bos_token", "eos_token", "add_generation_prompt", "raise_exception",
                                 "strftime_now", "range"})


def _check_variables(variables: Mapping[str, Any] | None) -> dict[str, Any]:
    """Template variables as a dict of JSON data; InvalidArgumentError for a name the rendering sets itself."""
    if variables is None:
        return {}
    if not isinstance(variables, Mapping) or not all(isinstance(k, str) for k in variables):
        raise InvalidArgumentError(f"template variables must be a dict with str keys, got {variables!r}",
                                   param="variables")
    reserved = sorted(_RESERVED_VARIABLES.intersection(variables))
    if reserved:
        raise InvalidArgumentError(f"template variables cannot replace {', '.join(reserved)}", param="variables")
    return dict(variables)


def validate_messages(messages: object) -> list[dict[str, Any]]:
    """Messages as a list of {"role", "content"} dicts (other keys are dropped, but an assistant's
    "tool_calls" and a tool result's "tool_call_id" / "name"); InvalidArgumentError for anything else: not a
    list, not a mapping, a role outside ROLES, content that is not a string (None is allowed for an assistant
    message with tool_calls), a malformed tool call, a tool message without tool_call_id."""
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise InvalidArgumentError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, "
                                   f"got {type(messages).__name__}")
    if not messages:
        raise InvalidArgumentError("messages is empty: a conversation needs at least one message")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InvalidArgumentError(f"messages[{i}] must be a dict with 'role' and 'content', "
                                       f"got {type(m).__name__}")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise InvalidArgumentError(f"messages[{i}]: role must be one of {', '.join(ROLES)}, got {role!r}")
        calls = m.get("tool_calls") if role == "assistant" else None
        if calls and content is None:
            content = ""
        if not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}]: content must be a string, got {type(content).__name__}")
        msg: dict[str, Any] = {"role": role, "content": content}
        if calls:
            msg["tool_calls"] = _check_tool_calls(calls, i)
        if role == "tool":
            call_id = m.get("tool_call_id")
            if not isinstance(call_id, str):
                raise InvalidArgumentError(f"messages[{i}]: a tool message needs tool_call_id (a string)")
            msg["tool_call_id"] = call_id
            if isinstance(m.get("name"), str):
                msg["name"] = m["name"]
        out.append(msg)
    return out


def _check_tool_calls(calls: object, i: int) -> list[dict[str, Any]]:
    """An assistant message's tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}]."""
    if not isinstance(calls, Sequence) or isinstance(calls, (str, bytes, Mapping)):
        raise InvalidArgumentError(f"messages[{i}].tool_calls must be a list")
    out = []
    for j, c in enumerate(calls):
        fn = c.get("function") if isinstance(c, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str) \
                or not isinstance(fn.get("arguments"), (str, Mapping)):
            raise InvalidArgumentError(f"messages[{i}].tool_calls[{j}] must be {{\"id\", \"type\": \"function\", "
                                       f"\"function\": {{\"name\": str, \"arguments\": str}}}}")
        call_id = c.get("id", "")
        if not isinstance(call_id, str):
            raise InvalidArgumentError(f"messages[{i}].tool_calls[{j}].id must be a string")
        out.append({"id": call_id, "type": "function",
                    "function": {"name": fn["name"], "arguments": fn["arguments"] if isinstance(fn["arguments"], str)
                                 else json.dumps(dict(fn["arguments"]))}})
    return out


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered conversation: its text, its token ids, and whether the ids follow the text exactly (False
    when the template transformed a message in a way that could not be lined up; see the module doc)."""

    text: str
    ids: list[int]
    exact: bool


def tokenize_chat(template: ChatTemplate, tokenizer: Tokenizer, messages: object, add_bos: bool = True,
                  add_generation_prompt: bool = True, variables: Mapping[str, Any] | None = None) -> ChatPrompt:
    """Renders and tokenizes a conversation; control tokens come only from the template's markup. BOS is
    added at the start when `add_bos` and the template did not write it (never twice). `variables`: the
    template's switches, as `ChatTemplate.render`. Asked for the same prompt again (same template, tokenizer,
    messages, flags and variables), it returns it without rendering anew."""
    msgs = validate_messages(messages)
    extra = _check_variables(variables)
    try:
        key = (tokenizer, json.dumps(msgs), add_bos, add_generation_prompt, json.dumps(extra, sort_keys=True))
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"template variables must be plain JSON data: {e}", param="variables") from None
    last = template._last_prompt
    if last is None or last[0] != key:
        prompt = _tokenize_chat(template, tokenizer, msgs, add_bos, add_generation_prompt, extra)
        last = template._last_prompt = (key, prompt)
    return dataclasses.replace(last[1], ids=list(last[1].ids))  # the caller's own list of ids


def _tokenize_chat(template: ChatTemplate, tokenizer: Tokenizer, msgs: list[dict[str, str]], add_bos: bool,
                   add_generation_prompt: bool, variables: dict[str, Any]) -> ChatPrompt:
    _check_no_control_text(tokenizer, msgs, variables)
    bos = tokenizer.id_to_piece(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.id_to_piece(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    nonce = secrets.token_hex(8).upper()  # letters and digits: survives trim, tojson, escaping, upper/lower
    masked = [{**m, "content": f"LLMRUN{nonce}M{i}X" if m["content"] else ""} for i, m in enumerate(msgs)]
    text, skeleton = template.render_all([template_messages(msgs), template_messages(masked)], bos, eos,
                                         add_generation_prompt, variables)
    parts = re.split(f"LLMRUN{nonce}M(\\d+)X", skeleton, flags=re.IGNORECASE)
    if any("llmrun" in p.lower() for p in parts[::2]):  # a sentinel was cut or rewritten: contents are lost
        raise ChatTemplateError(f"chat template {template.name!r} rewrites message contents (slices or replaces "
                                f"them) in a way llmrun cannot tokenize safely")
    contents = [m["content"] for m in msgs]
    segments = _line_up(text, parts, contents)
    exact = segments is not None
    if segments is None:
        segments = [(contents[int(p)], True) if k % 2 else (p, False) for k, p in enumerate(parts)]
    ids = _encode_segments(tokenizer, segments)
    if add_bos and tokenizer.bos_id is not None and ids[:1] != [tokenizer.bos_id]:
        ids.insert(0, tokenizer.bos_id)
    return ChatPrompt(text=text if exact else "".join(s for s, _ in segments), ids=ids, exact=exact)


def _check_no_control_text(tokenizer: Tokenizer, msgs: list[dict[str, Any]], variables: dict[str, Any]) -> None:
    """Tools (the `tools` variable) and an assistant's tool_calls are rendered as template markup, where
    control-token text becomes control tokens: InvalidArgumentError if they hold any (a client could end a turn
    or open one)."""
    pattern = _special_table(tokenizer)[1]
    if pattern is None:
        return
    checks = [("tools", variables.get("tools"), "tools")] + [
        (f"messages[{i}].tool_calls", m["tool_calls"], "messages") for i, m in enumerate(msgs) if "tool_calls" in m]
    for what, data, param in checks:
        found = pattern.search(json.dumps(data, ensure_ascii=False)) if data else None
        if found:
            raise InvalidArgumentError(f"{what} contains the control token text {found.group(0)!r}", param=param)


def _line_up(text: str, parts: list[str], contents: list[str]) -> list[tuple[str, bool]] | None:
    """Splits `text` into (piece, is_content) along the markup `parts` (markup, index, markup, ...), allowing
    each content to appear as given or stripped; None if the markup does not line up with `text`."""
    segments: list[tuple[str, bool]] = []
    pos = 0
    for k, part in enumerate(parts):
        if k % 2 == 0:
            if not text.startswith(part, pos):
                return None
            segments.append((part, False))
            pos += len(part)
            continue
        content, after = contents[int(part)], parts[k + 1]
        # as given, trimmed (SmolLM3 trims newlines only), or (reasoning models' templates: Qwen3) without a
        # previous reply's reasoning
        answer = content.rsplit(THINK_CLOSE, 1)[-1].lstrip("\n") if THINK_CLOSE in content else content
        for shown in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip(),
                                    content.lstrip("\n"), answer)):
            if text.startswith(shown, pos) and text.startswith(after, pos + len(shown)):
                break
        else:
            return None
        segments.append((shown, True))
        pos += len(shown)
    return segments if pos == len(text) else None


_SPECIALS: weakref.WeakKeyDictionary[Tokenizer, tuple[dict[str, int], re.Pattern | None]] = \
    weakref.WeakKeyDictionary()


def _special_table(tokenizer: Tokenizer) -> tuple[dict[str, int], re.Pattern | None]:
    """Control-token text -> id, and a regex that finds them (longest first); cached per tokenizer."""
    if tokenizer not in _SPECIALS:
        table: dict[str, int] = {}
        for i in range(tokenizer.vocab_size):
            if tokenizer.is_control(i):
                piece = tokenizer.id_to_piece(i)
                if piece:
                    table.setdefault(piece, i)
        pattern = "|".join(map(re.escape, sorted(table, key=len, reverse=True)))
        _SPECIALS[tokenizer] = (table, re.compile(f"({pattern})") if table else None)
    return _SPECIALS[tokenizer]


def _encode_segments(tokenizer: Tokenizer, segments: list[tuple[str, bool]]) -> list[int]:
    """Control tokens where the markup spells them; every run of text between them, markup and contents
    together, tokenized as plain text (as `encode(special=True)` would, for contents without control text).

    A user-defined token (matched whole in any text, e.g. Gemma's <start_of_turn> in a GGUF vocabulary) that
    the markup uses is markup too: where a content spells it, its first character is tokenized on its own,
    so the content keeps its text but cannot open or close a turn."""
    table, pattern = _special_table(tokenizer)
    markup = "".join(text for text, is_content in segments if not is_content)
    # tags only: a vocabulary's user-defined whitespace runs ("\n\n", Gemma) are text wherever they appear
    markers = [t for t in tokenizer.user_defined_tokens if t in markup and _is_tag(t)]
    defuse = re.compile("|".join(map(re.escape, sorted(markers, key=len, reverse=True)))) if markers else None
    ids: list[int] = []
    run: list[str] = []
    # after a control token that swallows the whitespace after it (Phi-3's rstrip), text starts stripped,
    # as `tokenizers` and llama.cpp tokenize the rendered prompt
    strip_next = False

    def add(text: str) -> None:
        nonlocal strip_next
        if strip_next:
            text = text.lstrip()
            strip_next = not text
        run.append(text)

    def flush(trim_end: bool = False) -> None:
        text = "".join(run)
        run.clear()
        if trim_end:  # the control token after this text swallows the whitespace before it (lstrip)
            text = text.rstrip()
        if text:
            ids.extend(tokenizer.encode(text, add_bos=False, add_eos=False, special=False))

    for text, is_content in segments:
        if is_content and defuse is not None:
            pos = 0
            for m in defuse.finditer(text):
                add(text[pos:m.start()])
                flush()
                ids.extend(_lone_character(tokenizer, m.group()[0]))
                strip_next = False
                pos = m.start() + 1
            add(text[pos:])
            continue
        if is_content or pattern is None:
            add(text)
            continue
        for k, fragment in enumerate(pattern.split(text)):
            if k % 2:
                lstrip, rstrip = tokenizer.strips(table[fragment])
                flush(lstrip)
                ids.append(table[fragment])
                strip_next = rstrip
            elif fragment:
                add(fragment)
    flush()
    return ids


def _is_tag(text: str) -> bool:
    """Whether a token's text looks like markup (`<start_of_turn>`, `<think>`, `[INST]`): letters between
    angle or square brackets, no whitespace."""
    return re.fullmatch(r"[<\[][^\s]*[A-Za-z][^\s]*[>\]]", text) is not None


def _lone_character(tokenizer: Tokenizer, char: str) -> list[int]:
    """The ids of one character tokenized alone: its byte tokens (<0xNN>) where encoding alone would put a
    dummy-prefix space before it, else its plain encoding."""
    if tokenizer.add_dummy_prefix:
        byte_ids = [tokenizer.piece_to_id(f"<0x{b:02X}>") for b in char.encode("utf-8")]
        if None not in byte_ids:
            return byte_ids  # type: ignore[return-value]
    return tokenizer.encode(char, add_bos=False, add_eos=False, special=False)


def end_of_turn(template: ChatTemplate, tokenizer: Tokenizer, eog_ids: frozenset[int] | set[int]
                ) -> tuple[frozenset[int], list[str]]:
    """What ends a reply: `eog_ids` plus the ids of the template's end-of-turn markers, and as stop strings
    the markers that are no single token of this vocabulary."""
    ids = set(eog_ids)
    stops = []
    for marker in template.end_markers:
        token = tokenizer.piece_to_id(marker)
        if token is None:
            stops.append(marker)
        else:
            ids.add(token)
    return frozenset(ids), stops


def load_template_from_folder(path: str | os.PathLike) -> str | None:
    """The chat template of a Hugging Face model folder: `chat_template.jinja`, else tokenizer_config.json's
    `chat_template` (a string, or a list of {"name", "template"} where the one named "default" is taken), else
    None. ChatTemplateError for a file that is there but unreadable or malformed."""
    folder = Path(path)
    jinja_file = folder / "chat_template.jinja"
    config_file = folder / "tokenizer_config.json"
    try:
        if jinja_file.is_file():
            return jinja_file.read_text(encoding="utf-8")
        if not config_file.is_file():
            return None
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ChatTemplateError(f"{folder}: cannot read the chat template: {e}") from None
    if not isinstance(config, dict):
        raise ChatTemplateError(f"{config_file}: expected a JSON object")
    value = config.get("chat_template")
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        named = {t.get("name"): t.get("template") for t in value if isinstance(t, dict)}
        chosen = named.get("default")
        if isinstance(chosen, str):
            return chosen
        raise ChatTemplateError(f"{config_file}: chat_template is a list without a 'default' template "
                                f"(names: {', '.join(map(str, named))})")
    raise ChatTemplateError(f"{config_file}: chat_template must be a string or a list, got {type(value).__name__}")


@dataclass(frozen=True)
class ChatDelta:
    """A piece of a reply as it streams: text of the answer (`content`) or of the model's reasoning before it
    (`reasoning`, the `<think>` block's text), or the reply's tool calls (`tool_calls`); one of them is set."""

    content: str = ""
    reasoning: str = ""
    tool_calls: tuple[dict[str, Any], ...] = ()  # OpenAI tool calls, each complete, in the reply's last delta


class ReasoningSplitter:
    """Splits a reasoning model's reply, fed as text pieces, into its reasoning and its answer.

    The reasoning is a `<think>…</think>` block at the very start of the reply (after blank space), as Qwen3 and SmolLM3
    write it and their templates read it back; a `<think>` anywhere later is answer text. With `inside` the reply starts
    within the block (the template's generation prompt ended with "<think>\n"). Reasoning loses its surrounding newlines
    and an answer after a block its leading blank space, as the templates strip them (a reply without a block is kept as
    written); a reply that never closes its block (max_tokens) is all reasoning. Text that may be the start of a tag is
    held back until the next piece decides it, so a tag split over two tokens is still found."""

    def __init__(self, inside: bool = False) -> None:
        self.state = "reasoning" if inside else "start"  # start -> reasoning -> answer, or start -> answer
        self.saw_block = inside
        self._held = ""  # text not yet emitted: a possible tag prefix, or blank space whose role is undecided
        self._reasoning_started = False

    def feed(self, text: str) -> list[ChatDelta]:
        self._held += text
        out: list[ChatDelta] = []
        if self.state == "start":
            head = self._held.lstrip()
            if head.startswith(THINK_OPEN):
                self.state, self.saw_block = "reasoning", True
                self._held = head[len(THINK_OPEN):]
            elif THINK_OPEN.startswith(head):  # blank, or a prefix of the tag: wait for more
                return out
            else:
                self.state = "answer"
        if self.state == "reasoning":
            end = self._held.find(THINK_CLOSE)
            if end < 0:
                keep = _partial_suffix(self._held, THINK_CLOSE)
                ready, self._held = self._held[:len(self._held) - keep], self._held[len(self._held) - keep:]
                # trailing blank space is held: it is dropped if the block closes right after it
                body = ready.rstrip()
                self._held = ready[len(body):] + self._held
                self._emit_reasoning(body, out)
                return out
            self._emit_reasoning(self._held[:end].rstrip(), out)
            self._held = self._held[end + len(THINK_CLOSE):]
            self.state = "answer-start"
        if self.state == "answer-start":
            self._held = self._held.lstrip()
            if not self._held:
                return out
            self.state = "answer"
        if self._held:
            out.append(ChatDelta(content=self._held))
            self._held = ""
        return out

    def _emit_reasoning(self, text: str, out: list[ChatDelta]) -> None:
        if not self._reasoning_started:
            text = text.lstrip()
            self._reasoning_started = bool(text)
        if text:
            out.append(ChatDelta(reasoning=text))

    def flush(self) -> list[ChatDelta]:
        """What is still held back, at the end of the reply."""
        held, self._held = self._held, ""
        if self.state == "start":  # the reply was blank, or ended inside "<thi": it is all answer
            return [ChatDelta(content=held)] if held else []
        if self.state == "reasoning":  # never closed
            out: list[ChatDelta] = []
            self._emit_reasoning(held.rstrip(), out)
            return out
        return [ChatDelta(content=held)] if held and self.state == "answer" else []


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def opens_in_reasoning(prompt_text: str) -> bool:
    """Whether a rendered prompt leaves the reply inside a `<think>` block (its generation prompt ends with
    one, as DeepSeek-R1's does, and Qwen3's thinking variants)."""
    return prompt_text.rstrip().endswith(THINK_OPEN)


class ChatStream(Iterator[str]):
    """A reply being generated: iterate for the answer's text deltas, or call `deltas()` for `ChatDelta`s
    that also carry the reasoning (a reasoning model's `<think>` block, kept out of the answer) as it
    streams. Once exhausted (or closed), `finish_reason` ("stop": an end-of-turn token or stop string;
    "length": max_tokens or a full context; "cancelled": closed before it ended, e.g. by Ctrl-C or a client
    that went away), `usage`, `message`, `content`, `reasoning` and `stats` describe it; `result()` runs it
    to the end and returns the dict `Model.chat` returns.

    Reasoning is split out when the template is a reasoning model's (`ChatTemplate.thinks`); otherwise every
    delta is content and `reasoning` stays None."""

    def __init__(self, generation: Generation, prompt: ChatPrompt, template: ChatTemplate,
                 tools: ToolCallSplitter | None = None) -> None:
        self.generation = generation
        self._tools = tools
        self._tool_calls: list[dict[str, Any]] = []
        self.prompt = prompt
        self.template = template
        self._parts: list[str] = []
        self._reasoning: list[str] = []
        self._splitter = ReasoningSplitter(opens_in_reasoning(prompt.text)) if template.thinks else None
        self._pending: list[ChatDelta] = []
        self._done = False

    def _next_delta(self) -> ChatDelta:
        while not self._pending:
            if self._done:
                raise StopIteration
            try:
                piece = next(self.generation)
            except StopIteration:
                self._done = True
                if self._splitter is not None:
                    self._pending += self._through_tools(self._splitter.flush())
                if self._tools is not None:
                    content, calls = self._tools.flush()
                    self._pending += [ChatDelta(content=content)] if content else []
                    if calls:
                        self._tool_calls = calls
                        self._pending.append(ChatDelta(tool_calls=tuple(calls)))
                continue
            self._pending += self._through_tools([ChatDelta(content=piece)] if self._splitter is None
                                                 else self._splitter.feed(piece))
        delta = self._pending.pop(0)
        if delta.content:
            self._parts.append(delta.content)
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)
        return delta

    def _through_tools(self, deltas: list[ChatDelta]) -> list[ChatDelta]:
        """Content deltas pass the tool-call splitter (which holds back a call until the reply ends)."""
        if self._tools is None:
            return deltas
        out = []
        for d in deltas:
            if d.content:
                text = self._tools.feed(d.content)
                if text:
                    out.append(ChatDelta(content=text))
            else:
                out.append(d)
        return out

    def deltas(self) -> Iterator[ChatDelta]:
        """The reply's pieces as `ChatDelta`s (answer text or reasoning), as they are generated."""
        while True:
            try:
                yield self._next_delta()
            except StopIteration:
                return

    def __next__(self) -> str:
        """The next piece of the answer's text (reasoning is collected in `reasoning`, not yielded)."""
        while True:
            delta = self._next_delta()
            if delta.content:
                return delta.content

    def close(self) -> None:
        """Stops generating (Ctrl-C, a closed connection); what was generated so far stays in `content`. From
        another thread while this one is being iterated, it is `cancel()`."""
        self.generation.close()

    def cancel(self) -> None:
        """Asks the reply to stop, from any thread or task (Generation.cancel): the iterating thread ends
        within one decode step, finish_reason "cancelled"."""
        self.generation.cancel()

    @property
    def content(self) -> str:
        """The answer's text so far (without the reasoning)."""
        return "".join(self._parts)

    @property
    def reasoning(self) -> str | None:
        """The reasoning so far: the text of the reply's `<think>` block, or None when the reply has none (or
        the template is not a reasoning model's)."""
        if self._splitter is None or not self._splitter.saw_block:
            return None
        return "".join(self._reasoning)

    @property
    def tool_calls(self) -> list[dict[str, Any]]:
        """The reply's tool calls (OpenAI's shape: [{"id", "type": "function", "function": {"name",
        "arguments": a JSON string}}]), known once the reply has ended; [] when it made none."""
        return list(self._tool_calls)

    @property
    def finish_reason(self) -> str | None:
        """As the Generation's, but "tool_calls" when the reply ended ("stop") with tool calls."""
        reason = self.generation.finish_reason
        return "tool_calls" if self._tool_calls and reason == "stop" else reason

    @property
    def stats(self) -> Any:
        return self.generation.stats

    @property
    def message(self) -> dict[str, Any]:
        """{"role": "assistant", "content": ...}, with "reasoning_content" when the reply had reasoning (the
        field vLLM and llama.cpp's server use), and "tool_calls" when it called tools (content None if it
        wrote nothing else, as OpenAI)."""
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self._tool_calls:
            message["content"] = self.content.rstrip() or None  # the blank space before the call goes
            message["tool_calls"] = self.tool_calls
        reasoning = self.reasoning
        if reasoning is not None:
            message["reasoning_content"] = reasoning
        return message

    @property
    def usage(self) -> dict[str, int]:
        prompt, completion = len(self.prompt.ids), len(self.generation.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def result(self) -> dict[str, Any]:
        """{"message": {"role": "assistant", "content": ...[, "reasoning_content": ...]}, "finish_reason": ...,
        "usage": {...}}."""
        for _ in self.deltas():
            pass
        return {"message": self.message, "finish_reason": self.finish_reason, "usage": self.usage}
