"""The exceptions llmrun raises. Every public error derives from `LLMError`."""

from __future__ import annotations


class LLMError(Exception):
    """Base class of every error llmrun raises on purpose."""


class ModelFormatError(LLMError, ValueError):
    """A model file is missing, truncated, corrupt or not in a supported format."""


class TokenizerError(LLMError, ValueError):
    """A tokenizer file is corrupt, or text/ids cannot be tokenized/decoded."""


class ContextOverflowError(LLMError, ValueError):
    """The tokens asked for do not fit in the model's context window."""


class InvalidArgumentError(LLMError, ValueError):
    """An argument is out of range or of the wrong kind (a token id, max_tokens, n_ctx, ...)."""


class KernelError(LLMError, RuntimeError):
    """The C kernel reported an error (bad arguments, out of memory)."""


class SamplingError(LLMError, ValueError):
    """Bad sampling parameters, logits or history."""


class ChatTemplateError(LLMError, ValueError):
    """A chat template does not compile, fails while rendering, refuses the conversation, or tried to leave
    its sandbox (nothing it asked for outside the sandbox was run)."""
