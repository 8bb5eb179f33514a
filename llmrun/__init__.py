"""llmrun: local, offline inference for Llama-family language models.

    import llmrun
    with llmrun.load("stories260K.bin", tokenizer="tok512.bin") as model:
        for piece in model.stream("Once upon a time", temperature=0):
            print(piece, end="", flush=True)

`llmrun.load("demo")` runs the tiny model the package ships; `llmrun.load("owner/repo:Q4_K_M")` a model of the
Hugging Face Hub, downloaded into the Hugging Face cache the first time (llmrun/hub.py).
"""

from . import _library  # noqa: F401  (first: a missing or foreign C library fails here, clearly)
from .aio import AsyncStream
from .chat import ChatDelta, ChatStream, ChatTemplate, load_template_from_folder
from .errors import (
    ChatTemplateError,
    ContextOverflowError,
    HubError,
    InvalidArgumentError,
    KernelError,
    KVCacheFullError,
    LLMError,
    ModelFormatError,
    SamplingError,
    TokenizerError,
)
from .generate import Generation, GenerationStats
from .model import Model, ModelInfo, load
from .sampling import SamplingParams
from .scheduler import ServingStats
from .structured import Grammar

__version__ = "0.1.0"

__all__ = [
    "AsyncStream", "ChatDelta", "ChatStream", "ChatTemplate", "ChatTemplateError", "load_template_from_folder",
    "ContextOverflowError", "Generation", "GenerationStats", "Grammar", "HubError", "InvalidArgumentError",
    "KernelError", "KVCacheFullError", "LLMError", "Model",
    "ModelFormatError", "ModelInfo", "SamplingError", "SamplingParams", "ServingStats", "TokenizerError", "load",
    "__version__",
]
