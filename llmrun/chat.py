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
from .tokenizer import Tokenizer

__all__ = ["FORMATS", "ROLES", "ChatPrompt", "ChatStream", "ChatTemplate", "end_of_turn", "load_template_from_folder",
           "tokenize_chat", "validate_messages"]

ROLES = ("system", "user", "assistant")

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
    # A base model continues text: each system/user message starts a new line, a reply continues the line.
    "plain": (
        "{% for message in messages %}{% if not loop.first and message['role'] != 'assistant' %}{{ '\\n' }}"
        "{% endif %}{{ message['content'] }}{% endfor %}"),
}

# Text that ends a turn in known templates; `end_of_turn` keeps those a template mentions.
END_OF_TURN_MARKERS = ("<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>",
                       "<|endoftext|>", "<|END_OF_TURN_TOKEN|>")


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
               add_generation_prompt: bool = True) -> str:
        """The conversation as text. ChatTemplateError when the template fails, refuses the conversation
        (its raise_exception) or breaks a sandbox rule or limit."""
        return self.render_all([messages], bos_token, eos_token, add_generation_prompt)[0]

    def render_all(self, conversations: Sequence[Sequence[Mapping[str, Any]]], bos_token: str = "",
                   eos_token: str = "", add_generation_prompt: bool = True) -> list[str]:
        """Each conversation as text, all rendered within one time budget (TIME_LIMIT_S of the sandbox);
        errors as `render`."""
        contexts = [{"messages": [dict(m) for m in messages], "bos_token": bos_token, "eos_token": eos_token,
                     "add_generation_prompt": add_generation_prompt} for messages in conversations]
        try:
            return render_sandboxed(self._template, contexts)
        except TemplateFailure as e:
            raise ChatTemplateError(f"chat template {self.name!r}: {e}") from None

    @property
    def end_markers(self) -> tuple[str, ...]:
        """The known end-of-turn markers this template's source mentions."""
        return tuple(m for m in END_OF_TURN_MARKERS if m in self.source)

    def __repr__(self) -> str:
        return f"ChatTemplate({self.name!r}, {len(self.source)} chars)"


def validate_messages(messages: object) -> list[dict[str, str]]:
    """Messages as a list of {"role", "content"} dicts (other keys are dropped); InvalidArgumentError for
    anything else: not a list, not a mapping, a role outside ROLES, content that is not a string."""
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
        if not isinstance(content, str):
            raise InvalidArgumentError(f"messages[{i}]: content must be a string, got {type(content).__name__}")
        out.append({"role": role, "content": content})
    return out


@dataclass(frozen=True)
class ChatPrompt:
    """A rendered conversation: its text, its token ids, and whether the ids follow the text exactly (False
    when the template transformed a message in a way that could not be lined up; see the module doc)."""

    text: str
    ids: list[int]
    exact: bool


def tokenize_chat(template: ChatTemplate, tokenizer: Tokenizer, messages: object, add_bos: bool = True,
                  add_generation_prompt: bool = True) -> ChatPrompt:
    """Renders and tokenizes a conversation; control tokens come only from the template's markup. BOS is
    added at the start when `add_bos` and the template did not write it (never twice). Asked for the same
    prompt again (same template, tokenizer, messages and flags), it returns it without rendering anew."""
    msgs = validate_messages(messages)
    key = (tokenizer, json.dumps(msgs), add_bos, add_generation_prompt)
    last = template._last_prompt
    if last is None or last[0] != key:
        last = template._last_prompt = (key, _tokenize_chat(template, tokenizer, msgs, add_bos, add_generation_prompt))
    return dataclasses.replace(last[1], ids=list(last[1].ids))  # the caller's own list of ids


def _tokenize_chat(template: ChatTemplate, tokenizer: Tokenizer, msgs: list[dict[str, str]], add_bos: bool,
                   add_generation_prompt: bool) -> ChatPrompt:
    bos = tokenizer.id_to_piece(tokenizer.bos_id) if tokenizer.bos_id is not None else ""
    eos = tokenizer.id_to_piece(tokenizer.eos_id) if tokenizer.eos_id is not None else ""
    nonce = secrets.token_hex(8).upper()  # letters and digits: survives trim, tojson, escaping, upper/lower
    masked = [{**m, "content": f"LLMRUN{nonce}M{i}X" if m["content"] else ""} for i, m in enumerate(msgs)]
    text, skeleton = template.render_all([msgs, masked], bos, eos, add_generation_prompt)
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
        for shown in dict.fromkeys((content, content.strip(), content.rstrip(), content.lstrip())):
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
    together, tokenized as plain text (as `encode(special=True)` would, for contents without control text)."""
    table, pattern = _special_table(tokenizer)
    ids: list[int] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            ids.extend(tokenizer.encode("".join(run), add_bos=False, add_eos=False, special=False))
            run.clear()

    for text, is_content in segments:
        if is_content or pattern is None:
            run.append(text)
            continue
        for k, fragment in enumerate(pattern.split(text)):
            if k % 2:
                flush()
                ids.append(table[fragment])
            elif fragment:
                run.append(fragment)
    flush()
    return ids


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


class ChatStream(Iterator[str]):
    """A reply being generated: iterate for text deltas. Once exhausted (or closed), `finish_reason`
    ("stop": an end-of-turn token or stop string; "length": max_tokens or a full context; "cancelled": closed
    before it ended, e.g. by Ctrl-C or a client that went away), `usage`, `message`
    and `stats` describe it; `result()` runs it to the end and returns the dict `Model.chat` returns."""

    def __init__(self, generation: Generation, prompt: ChatPrompt, template: ChatTemplate) -> None:
        self.generation = generation
        self.prompt = prompt
        self.template = template
        self._parts: list[str] = []

    def __next__(self) -> str:
        piece = next(self.generation)
        self._parts.append(piece)
        return piece

    def close(self) -> None:
        """Stops generating (Ctrl-C, a closed connection); what was generated so far stays in `content`."""
        self.generation.close()

    @property
    def content(self) -> str:
        return "".join(self._parts)

    @property
    def finish_reason(self) -> str | None:
        return self.generation.finish_reason

    @property
    def stats(self) -> Any:
        return self.generation.stats

    @property
    def message(self) -> dict[str, str]:
        return {"role": "assistant", "content": self.content}

    @property
    def usage(self) -> dict[str, int]:
        prompt, completion = len(self.prompt.ids), len(self.generation.tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def result(self) -> dict[str, Any]:
        """{"message": {"role": "assistant", "content": ...}, "finish_reason": ..., "usage": {...}}."""
        for _ in self:
            pass
        return {"message": self.message, "finish_reason": self.finish_reason, "usage": self.usage}
