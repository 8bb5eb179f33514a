"""llmrun: local, offline inference for Llama-family language models.

    import llmrun
    with llmrun.load("stories260K.bin", tokenizer="tok512.bin") as model:
        for piece in model.stream("Once upon a time", temperature=0):
            print(piece, end="", flush=True)
"""

from pathlib import Path as _Path

try:
    from . import _kernel  # noqa: F401  (the C library, built by cffi: llmrun/_kernel*.so)
except ImportError:
    # Run from a source checkout without the built extension, this folder shadows an installed llmrun and
    # the import would otherwise fail deep inside the package with a misleading "circular import".
    if not any(_Path(__file__).parent.glob("_kernel*")):
        raise ImportError(f"llmrun's C library (llmrun/_kernel*.so) is not built in {_Path(__file__).parent}: run "
                          "`pip install -e .` in the repository to build it in place, or run from another directory "
                          "to use the installed llmrun") from None
    raise

from .chat import ChatStream, ChatTemplate, load_template_from_folder
from .errors import (
    ChatTemplateError,
    ContextOverflowError,
    InvalidArgumentError,
    KernelError,
    LLMError,
    ModelFormatError,
    SamplingError,
    TokenizerError,
)
from .generate import Generation, GenerationStats
from .model import Model, ModelInfo, load
from .sampling import SamplingParams

__version__ = "0.1.0"

__all__ = [
    "ChatStream", "ChatTemplate", "ChatTemplateError", "load_template_from_folder",
    "ContextOverflowError", "Generation", "GenerationStats", "InvalidArgumentError", "KernelError", "LLMError", "Model",
    "ModelFormatError", "ModelInfo", "SamplingError", "SamplingParams", "TokenizerError", "load", "__version__",
]
