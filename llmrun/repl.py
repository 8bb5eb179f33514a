"""The terminal chat behind `llmrun chat MODEL`: one conversation, rendered with the model's chat template
(or --chat-format), the reply streamed as it is generated.

Each turn renders and tokenizes the whole conversation; the model's KV cache already holds all of it but
the new message, so only that is computed (`/stats` shows how much came from the cache). When the
conversation outgrows the context, the oldest exchanges are dropped (the system prompt stays) with a
notice on stderr. Ctrl-C stops a reply: what was written so far stays in the conversation (a reply stopped
before its first token is dropped together with its question). Ctrl-D or /exit quits.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from .chat import ChatStream, validate_messages
from .errors import ContextOverflowError, LLMError
from .model import Model

HELP = """\
/help            this help
/reset           start the conversation over (the system prompt stays)
/system TEXT     set the system prompt (/system alone removes it); the conversation stays
/save FILE       write the conversation to FILE as JSON: a list of {"role": ..., "content": ...}
/load FILE       continue a conversation saved with /save
/stats           tokens, speed and context use of the last reply
/think on|off    a reasoning model (Qwen3, SmolLM3) thinks before answering, or answers at once
                 (/think alone shows the setting; the template's default until set)
/exit            quit (Ctrl-D too)
End a line with \\ to continue on the next one. Ctrl-C stops a reply and keeps the session."""

PROMPT = "> "
CONTINUE_PROMPT = "... "
DEFAULT_REPLY_ROOM = 256  # tokens kept free for the reply when max_tokens is unlimited (at most n_ctx / 4)


def enable_line_editing() -> None:
    """Arrow keys, editing and a history of this session's lines, where the readline module exists."""
    try:
        import readline  # noqa: F401  (importing it is what makes input() use it)
    except ImportError:  # e.g. Windows without pyreadline: plain input() still works
        pass


class Repl:
    """A chat session on `model`. `sampling` are Model.chat_stream's sampling keyword arguments."""

    def __init__(self, model: Model, chat_format: str | None = None, system: str | None = None,
                 sampling: dict[str, Any] | None = None, read_line: Callable[[str], str] = input,
                 out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.model = model
        self.chat_format = chat_format
        self.system = system or None
        self.sampling = dict(sampling or {})
        self.enable_thinking: bool | None = None  # None: the chat template's default
        self.read_line = read_line
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.messages: list[dict[str, str]] = []  # user and assistant turns, oldest first
        self.last: ChatStream | None = None  # the last reply of this conversation
        self.last_conversation: list[dict[str, str]] = []  # the conversation that reply ended
        self.last_ttft: float | None = None
        self.session_tokens = 0

    # --- the loop ---------------------------------------------------------------------------------------

    def run(self) -> int:
        """Reads lines until Ctrl-D or /exit; returns the exit status (0)."""
        template = self.model.chat_template(self.chat_format)  # a broken template fails here, before input
        info = self.model.info
        self.notice(f"llmrun chat: {info.path} ({info.n_params / 1e6:.1f}M params, context {info.n_ctx}, "
                    f"format {template.name}). /help for commands, Ctrl-C stops a reply, Ctrl-D quits.")
        if self.chat_format is None and not self.model.has_chat_template:
            self.notice("llmrun chat: the model has no chat template; using the plain format (a base model "
                        "continues your text; pick one with --chat-format)")
        while True:
            try:
                text = self.read_message()
            except EOFError:
                self.notice("")
                return 0
            except KeyboardInterrupt:
                self.notice("\n(Ctrl-D or /exit quits)")
                continue
            if text.startswith("/"):
                if not self.command(text):
                    return 0
            elif text.strip():
                self.turn(text)

    def read_message(self) -> str:
        """One message: lines ending in a backslash continue on the next line."""
        lines = []
        line = self.read_line(PROMPT)
        while line.endswith("\\"):
            lines.append(line[:-1])
            line = self.read_line(CONTINUE_PROMPT)
        lines.append(line)
        return "\n".join(lines)

    # --- commands ---------------------------------------------------------------------------------------

    def command(self, text: str) -> bool:
        """Runs a /command; False means quit."""
        name, _, arg = text.strip().partition(" ")
        arg = arg.strip()
        if name in ("/exit", "/quit"):
            return False
        if name == "/help":
            self.say(HELP)
        elif name == "/reset":
            self.messages.clear()
            self.last = None
            self.notice("(conversation reset)")
        elif name == "/system":
            self.system = arg or None
            self.notice(f"(system prompt {'set' if arg else 'removed'})")
        elif name == "/save" and arg:
            self.save(Path(arg))
        elif name == "/load" and arg:
            self.load(Path(arg))
        elif name == "/stats":
            self.say(self.stats_text())
        elif name == "/think":
            self.think(arg)
        else:
            self.notice(f"unknown command or missing argument: {text.strip()!r} (/help lists the commands)")
        return True

    def think(self, arg: str) -> None:
        """/think on|off sets the thinking switch; /think alone reports it."""
        thinks = self.model.chat_template(self.chat_format).thinks
        no_switch = "" if thinks else "; this chat template has no thinking switch"
        if arg in ("on", "off"):
            self.enable_thinking = arg == "on"
            self.notice(f"(thinking {arg}{no_switch})")
        elif not arg:
            state = "the template's default" if self.enable_thinking is None else \
                ("on" if self.enable_thinking else "off")
            self.notice(f"(thinking: {state}{no_switch})")
        else:
            self.notice(f"/think takes on or off, got {arg!r}")

    def conversation(self) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.messages

    def save(self, path: Path) -> None:
        try:
            path.write_text(json.dumps(self.conversation(), ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            self.notice(f"llmrun: cannot save {path}: {e}")
            return
        self.notice(f"(saved {len(self.conversation())} messages to {path})")

    def load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            messages = validate_messages(data) if data != [] else []
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, LLMError) as e:
            self.notice(f"llmrun: cannot load {path}: {e}")
            return
        if messages and messages[0]["role"] == "system":
            self.system = messages.pop(0)["content"] or None
        self.messages = messages
        self.last = None
        self.notice(f"(loaded {len(messages)} messages from {path})")

    def context_used(self) -> int:
        """Tokens the conversation takes in the context. Right after a reply: its prompt and the reply, what
        the KV cache holds (known: nothing is rendered). After /load or /system: the conversation rendered as
        the next prompt (once: the chat template keeps its last prompt)."""
        conversation = self.conversation()
        if not conversation:
            return 0
        if self.last is not None and conversation == self.last_conversation:
            return self.last.usage["total_tokens"]
        try:
            return len(self.model.chat_prompt(conversation, chat_format=self.chat_format,
                                              enable_thinking=self.enable_thinking))
        except LLMError:  # a template that refuses this conversation says so at the next turn
            return 0

    def stats_text(self) -> str:
        n_ctx = self.model.info.n_ctx
        head = f"context: {self.context_used()} of {n_ctx} tokens used; {len(self.conversation())} messages; " \
               f"{self.session_tokens} tokens generated this session"
        if self.last is None:
            return head
        s = self.last.stats
        ttft = "n/a" if self.last_ttft is None else f"{self.last_ttft * 1000:.1f} ms"
        return (f"{head}\nlast reply: {s.generated_tokens} tokens, finish {self.last.finish_reason}; prompt "
                f"{s.prompt_tokens} tokens ({s.reused_tokens} from the cache)\ntime to first token {ttft}; "
                f"prefill {s.prefill_tokens_per_second:.1f} tokens/s; decode {s.decode_tokens_per_second:.1f} "
                f"tokens/s")

    # --- a turn -----------------------------------------------------------------------------------------

    def turn(self, text: str) -> None:
        """Adds the user's message and streams the reply; Ctrl-C stops the reply, errors are reported. A
        reasoning model's thinking is shown between <think> and </think> but kept out of the conversation (as
        its template drops it from earlier turns anyway)."""
        self.messages.append({"role": "user", "content": text})
        stream = None
        shown: list[str] = []  # what the user saw of the answer: the reply kept in the conversation
        thinking = False  # inside the shown <think> block
        stopped = False
        start = time.perf_counter()
        self.last_ttft = None
        try:
            if not self.make_room():
                return
            stream = self.model.chat_stream(self.conversation(), chat_format=self.chat_format,
                                            enable_thinking=self.enable_thinking, **self.sampling)
            for delta in stream.deltas():
                if self.last_ttft is None:
                    self.last_ttft = time.perf_counter() - start
                if delta.reasoning:
                    self.out.write(delta.reasoning if thinking else f"<think>\n{delta.reasoning}")
                    thinking = True
                else:
                    if thinking:
                        self.out.write("\n</think>\n\n")
                        thinking = False
                    self.out.write(delta.content)
                    shown.append(delta.content)
                self.out.flush()
        except KeyboardInterrupt:
            stopped = True
            self.out.write(" [stopped]")
        except LLMError as e:
            self.notice(f"\nllmrun: error: {e}")
            self.messages.pop()
            return
        finally:
            if stream is not None:
                stream.close()
            if thinking:  # the reply ended (or was stopped) while thinking
                self.out.write("\n</think>")
            self.out.write("\n")
            self.out.flush()
        if stream is None or (stopped and not shown):  # stopped before the first piece: forget the question
            self.messages.pop()
            return
        self.messages.append({"role": "assistant", "content": "".join(shown)})
        self.last, self.last_conversation = stream, self.conversation()
        self.session_tokens += stream.usage["completion_tokens"]

    def make_room(self) -> bool:
        """Drops the oldest exchanges until the conversation and room for the reply fit the context; False
        (with a message) if the new message alone does not fit."""
        n_ctx = self.model.info.n_ctx
        max_tokens = self.sampling.get("max_tokens")
        room = min(max_tokens if max_tokens is not None else DEFAULT_REPLY_ROOM, n_ctx // 4)
        dropped = 0
        while True:
            n = len(self.model.chat_prompt(self.conversation(), chat_format=self.chat_format,
                                           enable_thinking=self.enable_thinking))
            if n + room <= n_ctx or len(self.messages) <= 1:
                break
            del self.messages[:2 if len(self.messages) > 2 else 1]
            dropped += 1
        if dropped:
            self.notice(f"(the conversation outgrew the context of {n_ctx} tokens: dropped the oldest "
                        f"{dropped} exchange{'s' if dropped > 1 else ''})")
        if n >= n_ctx:
            self.messages.pop()
            self.notice(f"llmrun: error: {ContextOverflowError.__name__}: your message needs {n} tokens, the "
                        f"context holds {n_ctx}")
            return False
        return True

    # --- output -----------------------------------------------------------------------------------------

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def notice(self, text: str) -> None:
        print(text, file=self.err, flush=True)
