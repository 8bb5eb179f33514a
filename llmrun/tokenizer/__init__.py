"""Tokenizers: the `Tokenizer` interface, its two implementations and the streaming decoder.

- `Tokenizer` (base.py): what every caller uses (encode, decode, special ids, pieces).
- `SentencePieceTokenizer` (spm.py): SentencePiece BPE with byte fallback (Llama 2, llama2.c, GGUF "llama").
- `BPETokenizer` (bpe.py): merge-rank BPE as Hugging Face `tokenizers` runs it (tokenizer.json, GGUF "gpt2").
- `StreamDecoder` (stream.py): token ids in, text out, never half a UTF-8 character.

Readers that build a tokenizer from a file live with the file formats (llmrun.formats).
"""

from llmrun.tokenizer.base import END_OF_TURN_TEXTS, Tokenizer
from llmrun.tokenizer.bpe import BPETokenizer
from llmrun.tokenizer.spm import SentencePieceTokenizer, TokenType
from llmrun.tokenizer.stream import StreamDecoder

__all__ = ["END_OF_TURN_TEXTS", "BPETokenizer", "SentencePieceTokenizer", "StreamDecoder", "TokenType", "Tokenizer"]
