"""The OpenAI API's shapes, without a web framework: request bodies checked field by field into requests the
model can run, and the response, chunk and error bodies built from what the model generated.

Every client mistake becomes an `APIError` (status, message, param, code) whose `body()` is OpenAI's error
shape, so the server answers it with a 4xx instead of failing. Unknown fields are ignored (clients send
extras such as `user` or `metadata`); known fields of the wrong type or out of range are refused. Features
llmrun does not have (logit_bias, the deprecated `functions`, suffix) are refused with a 400 that says so rather
than silently ignored.
"""

from __future__ import annotations

import base64
import math
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .chat import validate_messages
from .errors import InvalidArgumentError, LLMError
from .generate import TokenLogprob, logprob_entry
from .tokenizer import Tokenizer
from .tools import validate_tool_choice, validate_tools

MAX_STOP_STRINGS = 16
MAX_CHOICES = 16  # `n`: each choice is a generation of its own, holding a slot of the scheduler
MAX_LEGACY_LOGPROBS = 5  # /v1/completions `logprobs` (OpenAI's limit)
MAX_EMBEDDING_INPUTS = 2048  # /v1/embeddings `input` items (OpenAI's limit)
MAX_TOP_LOGPROBS = 20  # /v1/chat/completions `top_logprobs`
CHAT_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}


class APIError(Exception):
    """A request the server refuses, with the HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        """{"error": {"message", "type", "param", "code"}}, as OpenAI answers errors."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


# --- requests ---------------------------------------------------------------------------------------------

@dataclass
class GenerationRequest:
    """What both endpoints share: the model asked for, streaming, the token limit and sampling arguments
    (only the ones the client gave: the rest keep Model's defaults)."""

    model: str | None
    stream: bool
    include_usage: bool
    max_tokens: int | None
    sampling: dict[str, Any] = field(default_factory=dict)
    logprobs: int | None = None  # alternatives per token; None: no logprobs
    response_format: dict[str, Any] | None = None  # structured output (llmrun/structured.py); None: text
    n: int = 1  # choices: generations of the same prompt (with a seed, choice i samples with seed + i)


@dataclass
class CompletionRequest(GenerationRequest):
    prompt: str | list[int] = ""
    echo: bool = False


@dataclass
class ChatRequest(GenerationRequest):
    messages: list[dict[str, Any]] = field(default_factory=list)
    enable_thinking: bool | None = None  # None: the chat template's default
    tools: list[dict[str, Any]] | None = None  # OpenAI function tools (llmrun/tools.py)
    tool_choice: str | dict[str, Any] | None = None  # "auto" (None), "none", "required" or a named function


def _describe(value: object) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(body: Mapping[str, Any], name: str, low: int, high: int | None, default: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < low or (high is not None and value > high):
        upper = f", at most {high}" if high is not None else ""
        raise bad_request(f"{name} must be an integer >= {low}{upper}, got {_describe(value)}", param=name)
    return value


def _finite(value: float) -> bool:
    """math.isfinite, also for integers too large for a float (OverflowError there)."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _number(body: Mapping[str, Any], name: str, rule: str, ok: Callable[[float], bool]) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if not (_is_int(value) or isinstance(value, float)) or not _finite(value) or not ok(value):
        raise bad_request(f"{name} must be a number {rule}, got {_describe(value)}", param=name)
    return float(value)


def _optional_bool(body: Mapping[str, Any], name: str) -> bool | None:
    """A true/false field, None when absent."""
    return None if body.get(name) is None else _bool(body, name)


def _bool(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad_request(f"{name} must be true or false, got {_describe(value)}", param=name)
    return value


def _refuse_unless(body: Mapping[str, Any], name: str, allowed: Callable[[Any], bool], what: str) -> None:
    value = body.get(name)
    if value is not None and not allowed(value):
        raise bad_request(f"{name}: {what}", param=name)


def _stop(body: Mapping[str, Any]) -> list[str] | None:
    value = body.get("stop")
    if value is None:
        return None
    stops = [value] if isinstance(value, str) else value
    if (not isinstance(stops, list) or len(stops) > MAX_STOP_STRINGS
            or not all(isinstance(s, str) and s for s in stops)):
        raise bad_request(f"stop must be a non-empty string or a list of at most {MAX_STOP_STRINGS} non-empty "
                          f"strings, got {_describe(value)}", param="stop")
    return stops or None


def _common(body: object, default_max_tokens: int | None) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """Checks the fields both endpoints share; returns the body and GenerationRequest's keyword arguments."""
    if not isinstance(body, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(body).__name__}")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"model must be a string, got {_describe(model)}", param="model")
    _refuse_unless(body, "logit_bias", lambda v: isinstance(v, dict) and not v, "logit_bias is not supported")
    stream = _bool(body, "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request(f"stream_options must be an object, got {_describe(options)}", param="stream_options")
    include_usage = stream and _bool(options or {}, "include_usage")
    sampling: dict[str, Any] = {
        "temperature": _number(body, "temperature", "in [0, 2]", lambda v: 0 <= v <= 2),
        "top_p": _number(body, "top_p", "in (0, 1]", lambda v: 0 < v <= 1),
        "presence_penalty": _number(body, "presence_penalty", "in [-2, 2]", lambda v: -2 <= v <= 2),
        "frequency_penalty": _number(body, "frequency_penalty", "in [-2, 2]", lambda v: -2 <= v <= 2),
        "seed": _int(body, "seed", 0, 2**64 - 1),
        "stop": _stop(body),
        # extensions (llama.cpp's samplers)
        "top_k": _int(body, "top_k", 0, None),
        "min_p": _number(body, "min_p", "in [0, 1]", lambda v: 0 <= v <= 1),
        "repeat_penalty": _number(body, "repeat_penalty", "in (0, 10]", lambda v: 0 < v <= 10),
        "repeat_last_n": _int(body, "repeat_last_n", -1, None),
    }
    kwargs = {"model": model, "stream": stream, "include_usage": include_usage,
              "response_format": _response_format(body),
              "max_tokens": _int(body, "max_tokens", 0, None, default_max_tokens),
              "n": _int(body, "n", 1, MAX_CHOICES, 1),
              "sampling": {k: v for k, v in sampling.items() if v is not None}}
    return body, kwargs


def _response_format(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """OpenAI's response_format: {"type": "text"} (None), {"type": "json_object"} or {"type": "json_schema",
    "json_schema": {"name", "schema", "strict"}}; its shape is checked here, the schema when it is compiled."""
    from .structured import from_request

    value = body.get("response_format")
    try:
        return value if from_request(value) is not None else None
    except LLMError as e:
        raise bad_request(str(e), param="response_format") from None


def parse_completion(data: object) -> CompletionRequest:
    """A /v1/completions body: prompt (a string, token ids, or a list of one of either), max_tokens (default
    16, as OpenAI), logprobs (0-5 alternatives), echo, and the shared sampling fields."""
    body, kwargs = _common(data, default_max_tokens=16)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        raise bad_request("only one prompt per request is supported", param="prompt")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt))):
        raise bad_request(f"prompt must be a string or a non-empty list of token ids, got {_describe(prompt)}",
                          param="prompt")
    _refuse_unless(body, "suffix", lambda v: v == "", "suffix (insertion) is not supported")
    _refuse_unless(body, "best_of", lambda v: _is_int(v) and v == 1, "only best_of = 1 is supported")
    echo = _bool(body, "echo")
    logprobs = _int(body, "logprobs", 0, MAX_LEGACY_LOGPROBS)
    if echo and logprobs is not None:
        raise bad_request("logprobs of the echoed prompt are not supported (echo with logprobs)", param="echo")
    return CompletionRequest(**kwargs, prompt=prompt, echo=echo, logprobs=logprobs)


def parse_chat(data: object) -> ChatRequest:
    """A /v1/chat/completions body: messages (roles system/developer/user/assistant, content a string or a
    list of text parts), max_completion_tokens or max_tokens (default: until the context is full), logprobs
    and top_logprobs, enable_thinking (top level or in chat_template_kwargs), and the shared sampling
    fields."""
    body, kwargs = _common(data, default_max_tokens=None)
    limit = _int(body, "max_completion_tokens", 0, None)
    if limit is not None:
        kwargs["max_tokens"] = limit
    _refuse_unless(body, "functions", lambda v: isinstance(v, list) and not v,
                   "functions (the deprecated form) is not supported: use tools")
    _refuse_unless(body, "function_call", lambda v: v == "none", "function_call is not supported: use tool_choice")
    _refuse_unless(body, "parallel_tool_calls", lambda v: isinstance(v, bool), "parallel_tool_calls must be a boolean")
    try:
        tools = validate_tools(body["tools"]) if body.get("tools") is not None else None
        tool_choice = body.get("tool_choice")
        validate_tool_choice(tool_choice, tools)
    except InvalidArgumentError as e:
        raise bad_request(str(e), param=e.param) from None
    logprobs = None
    if _bool(body, "logprobs"):
        logprobs = _int(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, 0)
    elif body.get("top_logprobs") is not None:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    return ChatRequest(**kwargs, messages=_messages(body.get("messages")), logprobs=logprobs,
                       enable_thinking=_enable_thinking(body), tools=tools, tool_choice=tool_choice)


def _enable_thinking(body: Mapping[str, Any]) -> bool | None:
    """A reasoning model's thinking switch: `chat_template_kwargs.enable_thinking` (vLLM's and llama.cpp's
    server's field) or a top-level `enable_thinking`; both must agree. Other template variables are refused
    by name (llmrun's templates take only this switch from a client)."""
    kwargs = body.get("chat_template_kwargs")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise bad_request(f"chat_template_kwargs must be an object, got {_describe(kwargs)}",
                          param="chat_template_kwargs")
    others = sorted(k for k in kwargs or {} if k != "enable_thinking")
    if others:
        raise bad_request(f"chat_template_kwargs: only enable_thinking is supported, got {', '.join(others)}",
                          param="chat_template_kwargs")
    nested = _optional_bool(kwargs or {}, "enable_thinking")
    top = _optional_bool(body, "enable_thinking")
    if nested is not None and top is not None and nested != top:
        raise bad_request("enable_thinking and chat_template_kwargs.enable_thinking disagree",
                          param="enable_thinking")
    return top if top is not None else nested


def _messages(value: object) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise bad_request(f"messages must be a non-empty list, got {_describe(value)}", param="messages")
    out = []
    for i, message in enumerate(value):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(f"{param} must be an object with role and content", param=param)
        role = message.get("role")
        role = CHAT_ROLES.get(role) if isinstance(role, str) else None
        if role is None:
            raise bad_request(f"{param}.role must be one of {', '.join(CHAT_ROLES)}, got "
                              f"{_describe(message.get('role'))}", param=f"{param}.role")
        content = message.get("content")
        msg: dict[str, Any] = {"role": role}
        if role == "assistant" and message.get("tool_calls"):
            msg["content"] = "" if content is None else _content(content, f"{param}.content")
            msg["tool_calls"] = message["tool_calls"]  # checked by validate_messages
        else:
            msg["content"] = _content(content, f"{param}.content")
        if role == "tool":
            msg["tool_call_id"] = message.get("tool_call_id")
            if not isinstance(msg["tool_call_id"], str):
                raise bad_request(f"{param}.tool_call_id must be a string", param=f"{param}.tool_call_id")
        out.append(msg)
    try:
        validate_messages(out)
    except InvalidArgumentError as e:
        raise bad_request(str(e), param="messages") from None
    return out


def _content(value: object, param: str) -> str:
    """A message's text: a string, or a list of {"type": "text", "text": ...} parts joined by newlines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                       and isinstance(p.get("text"), str) for p in value):
        return "\n".join(p["text"] for p in value)
    raise bad_request(f"{param} must be a string or a list of text parts, got {_describe(value)}", param=param)


# --- responses --------------------------------------------------------------------------------------------

# --- embeddings -------------------------------------------------------------------------------------------

@dataclass
class EmbeddingRequest:
    """A /v1/embeddings body: the texts (strings, or token-id lists used as given), the encoding and the
    dimensions asked for (None: the model's)."""

    model: str | None
    input: list[str] | list[list[int]]
    encoding_format: str = "float"
    dimensions: int | None = None


def parse_embeddings(data: object) -> EmbeddingRequest:
    """`input`: a string, a list of strings, a list of token ids (one text) or a list of lists of ids, none
    empty, at most MAX_EMBEDDING_INPUTS; `encoding_format` "float" (default) or "base64"; `dimensions` (only
    the model's own: llmrun does not truncate embeddings); `model` any string; `user` ignored."""
    if not isinstance(data, dict):
        raise bad_request(f"the request body must be a JSON object, got {type(data).__name__}")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise bad_request(f"model must be a string, got {_describe(model)}", param="model")
    value = data.get("input")
    if isinstance(value, str):
        texts: list[Any] = [value]
    elif isinstance(value, list) and value and all(_is_int(t) for t in value):
        texts = [value]  # one tokenized text
    elif isinstance(value, list) and value and (all(isinstance(t, str) for t in value) or all(
            isinstance(t, list) and all(_is_int(i) for i in t) for t in value)):
        texts = value
    else:
        raise bad_request("input must be a string, a list of strings, a list of token ids or a list of lists of "
                          f"token ids, not empty, got {_describe(value)}", param="input")
    if len(texts) > MAX_EMBEDDING_INPUTS:
        raise bad_request(f"input has {len(texts)} items, more than {MAX_EMBEDDING_INPUTS}", param="input")
    for i, text in enumerate(texts):
        if len(text) == 0:
            raise bad_request(f"input[{i}] is empty", param="input")
    encoding = data.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise bad_request(f"encoding_format must be 'float' or 'base64', got {_describe(encoding)}",
                          param="encoding_format")
    dimensions = _int(data, "dimensions", 1, None)
    return EmbeddingRequest(model=model, input=texts, encoding_format=encoding, dimensions=dimensions)


def embedding_response(vectors: np.ndarray, encoding_format: str, model: str, prompt_tokens: int) -> dict[str, Any]:
    """OpenAI's embedding list; base64 is the little-endian float32 bytes (as the openai client decodes it)."""
    def encode(row: np.ndarray) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(np.ascontiguousarray(row, dtype="<f4").tobytes()).decode("ascii")
        return row.astype(np.float32).tolist()

    data = [{"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def model_card(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": "llmrun"}


def _token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    return tokenizer.surface(token, at_start=False)[0]


def chat_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprob]) -> dict[str, Any]:
    """Chat's logprobs: {"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}], "refusal": None};
    "bytes" is each token's own UTF-8 bytes (part of a character for a byte token), "token" their text with
    U+FFFD for an incomplete character (generate.logprob_entry)."""
    def item(token: int, logprob: float) -> dict[str, Any]:
        return logprob_entry(tokenizer, token, logprob)

    return {"content": [{**item(e.token, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top]}
                        for e in entries], "refusal": None}


def completion_logprobs(tokenizer: Tokenizer, entries: list[TokenLogprob], offset: int) -> dict[str, Any]:
    """The legacy completions logprobs: {"tokens", "token_logprobs", "top_logprobs", "text_offset"}; offsets
    count characters from `offset` (the text already returned)."""
    def text(token: int) -> str:
        return _token_bytes(tokenizer, token).decode("utf-8", errors="replace")

    tokens, offsets = [], []
    for e in entries:
        offsets.append(offset)
        tokens.append(text(e.token))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{text(t): v for t, v in e.top} for e in entries], "text_offset": offsets}
