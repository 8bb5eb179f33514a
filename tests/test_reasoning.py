"""Reasoning models (Qwen3, SmolLM3): `enable_thinking` reaches the template, and a reply's `<think>…</think>`
block is kept out of the answer and returned as reasoning: by Model.chat / chat_stream, by the server
(`reasoning_content`, as vLLM and llama.cpp's server) and in the REPL (`/think on|off`).

The model is a tiny random GGUF whose replies are forced: the sampler is replaced by a script of token ids
(the encoding of a chosen reply text), so everything else (the generation loop, stop handling, the stream,
the server, the REPL) runs as it does for a real model."""

from __future__ import annotations

import io
import json
import random
from collections.abc import Iterator
from pathlib import Path

import gguf
import pytest
from gguf_fixtures import write_llama_gguf

import llmrun
import llmrun.generate
from builders import make_config, random_tensors
from llmrun.chat import ChatDelta, ChatTemplate, ReasoningSplitter, tokenize_chat
from llmrun.errors import InvalidArgumentError
from llmrun.repl import Repl
from llmrun.tokenizer import TokenType

TEMPLATES = Path(__file__).resolve().parent / "data" / "chat_templates"
QWEN3 = (TEMPLATES / "qwen3.jinja").read_text()
# DeepSeek-R1's way (and Qwen3's thinking-only variants): the generation prompt opens the think block.
OPENS_THINKING = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
                  "{% if add_generation_prompt %}<|im_start|>assistant\n<think>\n{% endif %}")
CONTROLS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
CHARS = [chr(c) for c in range(32, 127)]


def think_vocab() -> tuple[list[str], list[float], list[int]]:
    """<unk> <s> </s> <|im_start|> <|im_end|> (control), <think> and </think> (user-defined: Qwen3's are
    non-special added tokens), 256 byte pieces and printable ASCII."""
    pieces = [*CONTROLS, "<think>", "</think>", *(f"<0x{b:02X}>" for b in range(256)),
              *(c.replace(" ", "\u2581") for c in CHARS)]
    types = ([TokenType.UNKNOWN] + [TokenType.CONTROL] * 4 + [TokenType.USER_DEFINED] * 2 + [TokenType.BYTE] * 256
             + [TokenType.NORMAL] * len(CHARS))
    return pieces, [0.0] * len(pieces), [int(t) for t in types]


def write_model(path: Path, template: str) -> Path:
    pieces, _, _ = vocab = think_vocab()
    cfg = make_config(vocab_size=len(pieces), max_seq_len=4096)
    write_llama_gguf(path, cfg, random_tensors(cfg, seed=5), vocab=vocab, extra_kv={
        "tokenizer.chat_template": (template, gguf.GGUFValueType.STRING),
        "tokenizer.ggml.add_space_prefix": (False, gguf.GGUFValueType.BOOL),
        "tokenizer.ggml.eot_token_id": (CONTROLS.index("<|im_end|>"), gguf.GGUFValueType.UINT32)})
    return path


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llmrun.Model]:
    with llmrun.load(write_model(tmp_path_factory.mktemp("think") / "qwen3.gguf", QWEN3), n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def smollm3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llmrun.Model]:
    path = write_model(tmp_path_factory.mktemp("think") / "smollm3.gguf", (TEMPLATES / "smollm3.jinja").read_text())
    with llmrun.load(path, n_threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def opener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[llmrun.Model]:
    path = write_model(tmp_path_factory.mktemp("think") / "opener.gguf", OPENS_THINKING)
    with llmrun.load(path, n_threads=1) as model:
        yield model


class Script:
    """Replaces the sampler: each generation emits the ids of `reply`, then <|im_end|>."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, model: llmrun.Model) -> None:
        self.model = model
        self.queue: list[int] = []
        self.end = model.tokenizer.piece_to_id("<|im_end|>")
        script = self

        def sample(sampler: object, logits: object, history: object = (), generated: object = ()) -> int:
            return script.queue.pop(0) if script.queue else script.end

        monkeypatch.setattr(llmrun.generate.Sampler, "sample", sample)

    def reply(self, text: str) -> None:
        self.queue = self.model.tokenizer.encode(text, add_bos=False)


REPLY = "<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello there!"
MESSAGES = [{"role": "user", "content": "Hi"}]


# --- the splitter ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_splitter_finds_tags_split_anywhere(seed: int) -> None:
    """Pieces of 1-4 characters, so the tags arrive cut at every place."""
    rng = random.Random(seed)
    cases = [("<think>\nA.\n\nB.\n</think>\n\nAnswer.", False, "A.\n\nB.", "Answer."),
             ("  \n<think>x</think>y", False, "x", "y"),
             ("A.\n</think>\n\nAnswer.", True, "A.", "Answer."),  # the prompt opened the block
             ("\n<think>\nnever closed\n", False, "never closed", ""),
             ("Answer <think>not reasoning</think>", False, "", "Answer <think>not reasoning</think>"),
             ("<thin", False, "", "<thin"),
             ("<think></think>", False, "", ""),
             ("\n  ", False, "", "\n  ")]  # a blank reply stays a (blank) answer
    for text, inside, reasoning, content in cases:
        splitter, deltas, i = ReasoningSplitter(inside), [], 0
        while i < len(text):
            n = rng.randint(1, 4)
            deltas += splitter.feed(text[i:i + n])
            i += n
        deltas += splitter.flush()
        assert all(bool(d.content) != bool(d.reasoning) for d in deltas), deltas
        assert "".join(d.reasoning for d in deltas) == reasoning, text
        assert "".join(d.content for d in deltas) == content, text
        assert splitter.saw_block == (inside or text.lstrip().startswith("<think>"))


# --- Model.chat / chat_stream ------------------------------------------------------------------------------

def test_chat_returns_reasoning_apart_from_the_answer(qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, qwen3)
    script.reply(REPLY)
    reply = qwen3.chat(MESSAGES)
    assert reply["message"] == {"role": "assistant", "content": "Hello there!",
                                "reasoning_content": "The user greets me.\nI greet back."}
    assert reply["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == len(qwen3.tokenizer.encode(REPLY, add_bos=False))


def test_chat_stream_yields_the_answer_and_deltas_the_reasoning(qwen3: llmrun.Model,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, qwen3)
    script.reply(REPLY)
    stream = qwen3.chat_stream(MESSAGES)
    assert "".join(stream) == "Hello there!"  # plain iteration: the answer only, as before
    assert stream.reasoning == "The user greets me.\nI greet back." and stream.content == "Hello there!"
    script.reply(REPLY)
    deltas = list(qwen3.chat_stream(MESSAGES).deltas())
    kinds = ["r" if d.reasoning else "c" for d in deltas]
    assert kinds == sorted(kinds, reverse=True) and "r" in kinds and "c" in kinds  # reasoning first, then answer
    assert "".join(d.reasoning for d in deltas) == "The user greets me.\nI greet back."
    assert all(isinstance(d, ChatDelta) for d in deltas)


def test_a_reply_without_a_think_block_has_no_reasoning(qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    Script(monkeypatch, qwen3).reply("Just an answer.")
    reply = qwen3.chat(MESSAGES, enable_thinking=False)
    assert reply["message"] == {"role": "assistant", "content": "Just an answer."}  # no reasoning_content key


def test_max_tokens_inside_the_think_block(qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    Script(monkeypatch, qwen3).reply(REPLY)
    reply = qwen3.chat(MESSAGES, max_tokens=12)
    assert reply["finish_reason"] == "length"
    assert reply["message"]["content"] == ""
    assert reply["message"]["reasoning_content"] == "The user g"  # "<think>", "\n", then ten characters


def test_a_generation_prompt_that_opens_the_block(opener: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """The template wrote "<think>\\n" itself: the model's output starts inside the block."""
    Script(monkeypatch, opener).reply("Thinking.\n</think>\n\nDone.")
    reply = opener.chat(MESSAGES)
    assert reply["message"] == {"role": "assistant", "content": "Done.", "reasoning_content": "Thinking."}


def test_smollm3_thinks_by_default_and_answers_at_once_without(smollm3: llmrun.Model,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, smollm3)
    script.reply(REPLY)
    assert smollm3.chat(MESSAGES)["message"]["reasoning_content"] == "The user greets me.\nI greet back."
    # /no_think: the generation prompt holds the closed, empty block; the reply is all answer
    prompt = smollm3.tokenizer.decode(smollm3.chat_prompt(MESSAGES, enable_thinking=False))
    assert "Reasoning Mode: /no_think" in prompt and prompt.endswith("assistant\n<think>\n\n</think>\n")
    script.reply("Hello.")
    assert smollm3.chat(MESSAGES, enable_thinking=False)["message"] == {"role": "assistant", "content": "Hello."}


def test_enable_thinking_reaches_the_template(qwen3: llmrun.Model) -> None:
    tok = qwen3.tokenizer
    default = tok.decode(qwen3.chat_prompt(MESSAGES))
    off = tok.decode(qwen3.chat_prompt(MESSAGES, enable_thinking=False))
    on = tok.decode(qwen3.chat_prompt(MESSAGES, enable_thinking=True))
    # control tokens decode to nothing; <think> and </think> are (user-defined) text
    assert default == on == "user\nHi\nassistant\n"
    assert off == "user\nHi\nassistant\n<think>\n\n</think>\n\n"
    with pytest.raises(InvalidArgumentError, match="enable_thinking"):
        qwen3.chat_prompt(MESSAGES, enable_thinking="no")  # type: ignore[arg-type]


def test_earlier_reasoning_is_dropped_from_the_prompt_exactly(qwen3: llmrun.Model) -> None:
    """Qwen3's template keeps only the answer of an earlier reply: the prompt still lines up exactly with the
    rendered text (no fallback that would put the reasoning back)."""
    template = ChatTemplate(QWEN3)
    msgs = [*MESSAGES, {"role": "assistant", "content": "<think>\nsecret plan\n</think>\n\nHello!"},
            {"role": "user", "content": "Again"}]
    prompt = tokenize_chat(template, qwen3.tokenizer, msgs, add_bos=False)
    assert prompt.exact and "secret plan" not in prompt.text
    assert "secret plan" not in qwen3.tokenizer.decode(prompt.ids)
    assert "<|im_start|>assistant\nHello!<|im_end|>" in prompt.text


def test_templates_without_thinking_keep_the_text(qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    Script(monkeypatch, qwen3).reply(REPLY)
    reply = qwen3.chat(MESSAGES, chat_format="chatml")
    assert reply["message"] == {"role": "assistant", "content": REPLY}
    assert not ChatTemplate.builtin("chatml").thinks and ChatTemplate(QWEN3).thinks


# --- the server --------------------------------------------------------------------------------------------

pytest.importorskip("starlette")


@pytest.fixture
def server(qwen3: llmrun.Model) -> Iterator[object]:
    from test_server import serving

    from llmrun.server import ServerConfig
    with serving(qwen3, ServerConfig(model_name="qwen3")) as running:
        yield running


def test_server_reasoning_content(server: object, qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, qwen3)
    script.reply(REPLY)
    body = {"messages": MESSAGES}
    r = server.post("/v1/chat/completions", body, key=None)  # type: ignore[attr-defined]
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"] == {"role": "assistant", "content": "Hello there!",
                                                 "reasoning_content": "The user greets me.\nI greet back."}
    script.reply(REPLY)
    r = server.post("/v1/chat/completions", {**body, "stream": True}, key=None)  # type: ignore[attr-defined]
    events = [json.loads(line[6:]) for line in r.text.splitlines()
              if line.startswith("data: ") and line != "data: [DONE]"]
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets me.\nI greet back."
    assert "".join(d.get("content") or "" for d in deltas) == "Hello there!"
    assert not any("content" in d and "reasoning_content" in d for d in deltas)


def test_server_enable_thinking(server: object, qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, qwen3)
    n_off = len(qwen3.chat_prompt(MESSAGES, enable_thinking=False))
    n_on = len(qwen3.chat_prompt(MESSAGES))
    post = server.post  # type: ignore[attr-defined]
    for extra, n in [({"chat_template_kwargs": {"enable_thinking": False}}, n_off), ({"enable_thinking": False}, n_off),
                     ({"chat_template_kwargs": {"enable_thinking": True}}, n_on), ({}, n_on)]:
        script.reply("Ok.")
        r = post("/v1/chat/completions", {"messages": MESSAGES, **extra}, key=None)
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == n, (extra, r.text)
    for bad, match in [({"chat_template_kwargs": {"tools_mode": 1}}, "only enable_thinking"),
                       ({"chat_template_kwargs": []}, "must be an object"),
                       ({"enable_thinking": "yes"}, "true or false"),
                       ({"enable_thinking": True, "chat_template_kwargs": {"enable_thinking": False}}, "disagree")]:
        r = post("/v1/chat/completions", {"messages": MESSAGES, **bad}, key=None)
        assert r.status_code == 400 and match in r.json()["error"]["message"], (bad, r.text)


# --- the REPL ----------------------------------------------------------------------------------------------

def test_repl_think_switch_and_display(qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    script = Script(monkeypatch, qwen3)
    seen: list[bool | None] = []
    chat_stream = qwen3.chat_stream

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(kwargs.get("enable_thinking"))  # type: ignore[arg-type]
        script.reply(REPLY)
        return chat_stream(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(qwen3, "chat_stream", spy)
    lines = iter(["Hi", "/think off", "Hi again", "/think", "/think maybe", "/help"])

    def read_line(prompt: str) -> str:
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    out, err = io.StringIO(), io.StringIO()
    Repl(qwen3, read_line=read_line, out=out, err=err).run()
    assert seen == [None, False]
    assert out.getvalue().count("<think>\nThe user greets me.\nI greet back.\n</think>\n\nHello there!\n") == 2
    assert "(thinking off)" in err.getvalue() and "(thinking: off)" in err.getvalue()
    assert "/think takes on or off" in err.getvalue() and "/think on|off" in out.getvalue()


def test_repl_keeps_reasoning_out_of_the_conversation(qwen3: llmrun.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    Script(monkeypatch, qwen3).reply(REPLY)
    repl = Repl(qwen3, out=io.StringIO(), err=io.StringIO())
    repl.turn("Hi")
    assert repl.messages == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there!"}]

