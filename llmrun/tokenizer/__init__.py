"""SentencePiece-compatible tokenization: `Tokenizer` and its streaming decoder.

Readers that build a Tokenizer from a file live with the file formats (llmrun.formats).
"""

from llmrun.tokenizer.spm import Tokenizer, TokenType
from llmrun.tokenizer.stream import StreamDecoder

__all__ = ["Tokenizer", "TokenType", "StreamDecoder"]
