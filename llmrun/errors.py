"""The exceptions llmrun raises. Every public error derives from `LLMError`."""

from __future__ import annotations

import re
from collections.abc import Mapping


class LLMError(Exception):
    """Base class of every error llmrun raises on purpose. `param` names the API argument at fault, if one is
    (the message names it too), so that a front end can speak of its own option instead (`for_flags`)."""

    def __init__(self, message: str = "", *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param

    def for_flags(self, flags: Mapping[str, str]) -> str:
        """The message with the argument's name replaced by the front end's option for it (flags maps
        argument names to options, e.g. {"n_ctx": "-c"}); the plain message where there is none. Where the
        message spells the argument as in a call (`tokenizer=`) only those places change, else every
        whole-word occurrence."""
        message = str(self)
        flag = flags.get(self.param) if self.param else None
        if flag is None:
            return message
        name = rf"(?<![\w-]){re.escape(self.param)}\b"
        if re.search(name + "=", message):
            return re.sub(name + "=", flag, message)
        return re.sub(name, flag, message)


class ModelFormatError(LLMError, ValueError):
    """A model file is missing, truncated, corrupt or not in a supported format."""


class TokenizerError(LLMError, ValueError):
    """A tokenizer file is corrupt, or text/ids cannot be tokenized/decoded."""


class ContextOverflowError(LLMError, ValueError):
    """The tokens asked for do not fit in the model's context window: `n_tokens` tokens in a context of `n_ctx`
    positions, on a model trained for `max_ctx` (None where that is unknown or does not apply)."""

    def __init__(self, message: str = "", *, param: str | None = None, n_tokens: int | None = None,
                 n_ctx: int | None = None, max_ctx: int | None = None) -> None:
        super().__init__(message, param=param)
        self.n_tokens, self.n_ctx, self.max_ctx = n_tokens, n_ctx, max_ctx


class InvalidArgumentError(LLMError, ValueError):
    """An argument is out of range or of the wrong kind (a token id, max_tokens, n_ctx, ...)."""


class KernelError(LLMError, RuntimeError):
    """The C kernel reported an error (bad arguments, out of memory)."""


class KVCacheFullError(LLMError, RuntimeError):
    """The KV cache's pool of blocks lacks the blocks a batch needs (the C library's LLM_ERR_KV_FULL): nothing was
    changed; free a sequence (or wait for one to finish) and try again, or make the pool larger (n_kv)."""


class SamplingError(LLMError, ValueError):
    """Bad sampling parameters, logits or history."""


class ChatTemplateError(LLMError, ValueError):
    """A chat template does not compile, fails while rendering, refuses the conversation, or tried to leave
    its sandbox (nothing it asked for outside the sandbox was run)."""


class HubError(LLMError, OSError):
    """A model on the Hugging Face Hub cannot be had: the repository, file or quantization does not exist, is
    gated or private, the Hub cannot be reached (or HF_HUB_OFFLINE forbids it) and the cache lacks the model,
    or a download failed or arrived corrupt."""
