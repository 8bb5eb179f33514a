"""The byte-level tokenizers of the new families, by their GGUF pre-tokenizer names, against llama.cpp
(llama-cpp-python, vocab only: live where it is installed, and always its ids recorded by
tests/make_llama_cpp_tokens.py, see tests/llama_cpp_tokens.py), and Phi-4-mini's o200k split from tokenizer.json
against `tokenizers`:

- Qwen3: "qwen2" (as Qwen2); SmolLM3: Llama 3's tokenizer ("llama-bpe", or "smaug-bpe" in some conversions);
- Granite 3: "refact" (digits one by one, then GPT-2's split: what llama.cpp's converter names Granite's);
- Phi-4-mini: "gpt-4o" (o200k). Phi-3 and Gemma are SentencePiece vocabularies (test_gemma_tokenizer.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import pytest
from gguf_fixtures import write_llama_gguf

pytest.importorskip("tokenizers")

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

import hf_tokenizers  # noqa: E402
import llmrun  # noqa: E402
from builders import make_config, random_tensors  # noqa: E402
from llama_cpp_tokens import check_as_llama_cpp  # noqa: E402
from llmrun.formats.hf_tokenizer import load_tokenizer_json  # noqa: E402
from llmrun.tokenizer.pretokenize import O200K_PATTERN  # noqa: E402

CORPUS = hf_tokenizers.corpus(320) + ["ÉLÉPHANT éléphant Straße STRASSE", "ǅemal ǈ Ǉ", "I'LL WE'VE they'RE",
                                      "a/b\n/c", "x\r\n\r\ny", "١٢٣٤ ௧௨௩", "कि क्षि", "Ⅻ ⅻ ǲ"]


def o200k_style() -> Tokenizer:
    """A byte-level BPE with Phi-4-mini's pre-tokenizer: Split(o200k, isolated) then ByteLevel without its
    own regex."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(O200K_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(hf_tokenizers.training_text(), trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<|endoftext|>", "<|user|>", "<|end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tok


def test_o200k_tokenizer_json_encodes_as_tokenizers(tmp_path: Path) -> None:
    ref = o200k_style()
    ref.save(str(tmp_path / "tokenizer.json"))
    ours = load_tokenizer_json(tmp_path / "tokenizer.json")
    assert ours.pre_name == "gpt-4o"  # what a GGUF written from it names its pre-tokenizer
    ref.encode_special_tokens = True
    bad = [s for s in CORPUS if ref.encode(s, add_special_tokens=False).ids != ours.encode(s, add_bos=False)]
    assert not bad, f"{len(bad)} of {len(CORPUS)} differ, e.g. {bad[0]!r}"


def gguf_vocab(ref: Tokenizer) -> tuple[list[str], list[str], list[int]]:
    vocab = ref.get_vocab(with_added_tokens=True)
    tokens = sorted(vocab, key=vocab.get)
    added = {t.content: t.special for t in ref.get_added_tokens_decoder().values()}
    types = [3 if added.get(t) else 4 if t in added else 1 for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m for m in json.loads(ref.to_str())["model"]["merges"]]
    return tokens, merges, types


PRE_TOKENIZERS = [("qwen2", "qwen2"), ("deepseek-r1-qwen", "qwen2"), ("llama-bpe", "llama3"), ("smaug-bpe", "llama3"),
                  ("refact", "smollm"), ("smollm", "smollm"), ("gpt-4o", "o200k")]


def write_pre_tokenizer_gguf(path: Path, pre: str, style: str) -> Path:
    """A tiny llama GGUF with a byte-level BPE vocabulary of `style` under GGUF pre-tokenizer name `pre`."""
    ref = o200k_style() if style == "o200k" else hf_tokenizers.byte_level(style)
    tokens, merges, types = gguf_vocab(ref)
    cfg = make_config(vocab_size=len(tokens))
    write_llama_gguf(path, cfg, random_tensors(cfg), vocab=(tokens, [0.0] * len(tokens), types),
                     tokenizer_model="gpt2", extra_kv={
                         "tokenizer.ggml.pre": (pre, gguf.GGUFValueType.STRING),
                         "tokenizer.ggml.merges": (merges, gguf.GGUFValueType.ARRAY)})
    return path


PRE_TEXTS = [s for s in CORPUS if s]


@pytest.mark.parametrize(("pre", "style"), PRE_TOKENIZERS)
def test_gguf_pre_tokenizers_split_as_llama_cpp(tmp_path: Path, pre: str, style: str) -> None:
    path = write_pre_tokenizer_gguf(tmp_path / f"{pre}.gguf", pre, style)
    with llmrun.load(path, n_threads=1) as model:
        check_as_llama_cpp(f"pre-{pre}", path, PRE_TEXTS, lambda s: model.tokenize(s, add_bos=False), special=False)


# --- Phi-3: control tokens that swallow the newline after them ------------------------------------------------

PHI3_TEMPLATE = (Path(__file__).resolve().parent / "data" / "chat_templates" / "phi3.jinja").read_text()
PHI3_ROLES = ["<|assistant|>", "<|system|>", "<|end|>", "<|user|>"]
PHI3_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  Hello there, how are you?"},
             {"role": "assistant", "content": "Fine.\n"}, {"role": "user", "content": "Tell me more."}]


def phi3_style() -> Tokenizer:
    """Llama 2's SentencePiece-style BPE with Phi-3's added tokens: <|endoftext|>, then the role and end
    markers with rstrip (they take the newline the template writes after them)."""
    tok = hf_tokenizers.sentencepiece_style()
    tok.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False, rstrip=True) for t in PHI3_ROLES])
    return tok


def phi3_files(folder: Path) -> tuple[Tokenizer, Any, str, Path]:
    """Phi-3's tokenizer.json in `folder`, read by llmrun, the chat rendered by its template, and the GGUF
    converted from it by llmrun's writer functions (named so that llama.cpp applies its Phi-3 rule)."""
    from llmrun.chat import ChatTemplate
    from llmrun.formats.gguf_writer import gguf_pieces, sentencepiece_from_bpe

    ref = phi3_style()
    ref.save(str(folder / "tokenizer.json"))
    ours = load_tokenizer_json(folder / "tokenizer.json")
    text = ChatTemplate(PHI3_TEMPLATE).render(PHI3_CHAT, "<s>", "<|endoftext|>")
    spm = sentencepiece_from_bpe(ours)
    cfg = make_config(vocab_size=spm.vocab_size)
    path = folder / "phi3.gguf"
    write_llama_gguf(path, cfg, random_tensors(cfg), vocab=([p.decode() for p in gguf_pieces(spm)],
                                                            spm.scores.tolist(), [int(t) for t in spm.token_types]),
                     extra_kv={"general.name": ("Phi-3 Mini Test", gguf.GGUFValueType.STRING),
                               "tokenizer.chat_template": (PHI3_TEMPLATE, gguf.GGUFValueType.STRING)})
    return ref, ours, text, path


def test_phi3_chat_prompt_is_what_tokenizers_and_llama_cpp_make(tmp_path: Path) -> None:
    """transformers renders the template and encodes the text (the markers' rstrip eats the newlines);
    llama.cpp does the same by its Phi-3 rule, on a GGUF named so; llmrun's chat prompt from either file
    is the same ids."""
    from llmrun.chat import ChatTemplate, tokenize_chat

    ref, ours, text, path = phi3_files(tmp_path)
    want = ref.encode(text, add_special_tokens=True).ids  # <s> from the post-processor, as add_bos
    # the newlines and spaces after the markers are gone (the space before a word is SentencePiece's prefix)
    assert ours.decode(want) == "Be brief. Hello there, how are you? Fine.\n Tell me more."
    assert tokenize_chat(ChatTemplate(PHI3_TEMPLATE), ours, PHI3_CHAT).ids == want

    with llmrun.load(path, n_threads=1) as model:
        assert model.tokenizer.strips(model.tokenizer.piece_to_id("<|end|>")) == (False, True)
        assert model.tokenizer.strips(model.tokenizer.piece_to_id("<|endoftext|>")) == (False, False)
        assert model.chat_prompt(PHI3_CHAT) == want
        assert model.tokenize(text, special=True) == want
        check_as_llama_cpp("phi3-chat", path, [text], lambda s: model.tokenize(s, special=True), special=True,
                           add_bos=True)
