"""Tokenizers of Hugging Face model folders (tokenizer.json and friends) and of GGUF "gpt2" vocabularies.

tokenizer.json (the `tokenizers` library's file): `model` must be BPE (Unigram, WordPiece and WordLevel
are refused); the normalizer, pre-tokenizer and decoder are read for the components Llama-family models use
(pretokenize.py), anything else is refused by name rather than ignored. Byte-level models are the ones
whose pre-tokenizer or decoder is ByteLevel; the others are SentencePiece-style (spaces as '▁', byte
fallback). `added_tokens` become the tokenizer's added tokens (special or not).

tokenizer_config.json gives bos_token, eos_token, add_bos_token, add_eos_token and the chat template
(tokenizer_config.json `chat_template`, a string or a list of {name, template}: "default" is used;
chat_template.jinja beside it wins); generation_config.json's eos_token_id (one id or a list) gives the
end-of-generation ids. Without add_bos_token, BOS is added when the post-processor template starts with a
special token (Llama 3), as `tokenizers` would.

GGUF files with `tokenizer.ggml.model == "gpt2"` store tokens, merges and token types, and only the *name*
of their pre-tokenizer (`tokenizer.ggml.pre`); PRE_TOKENIZERS maps the names llmrun knows to the split
patterns llama.cpp uses for them. An unknown name is an error, never a silent fallback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import TokenizerError
from ..spec import ModelSpec
from ..tokenizer.base import END_OF_TURN_TEXTS
from ..tokenizer.bpe import AddedToken, BPETokenizer
from ..tokenizer.pretokenize import (
    LLAMA3_PATTERN,
    O200K_PATTERN,
    PRE_TOKENIZERS,
    QWEN2_PATTERN,
    ByteLevel,
    Chain,
    Digits,
    Metaspace,
    Normalizer,
    Pattern,
    PreTokenizer,
    Split,
    compile_pattern,
    literal_pattern,
    lowercase_normalizer,
    prepend_normalizer,
    replace_normalizer,
    sequence_normalizer,
    unicode_normalizer,
)

__all__ = ["LLAMA3_PATTERN", "PRE_TOKENIZERS", "QWEN2_PATTERN", "gguf_bpe_tokenizer", "load_folder_tokenizer",
           "load_tokenizer_json", "read_json"]

MAX_JSON_BYTES = 256 * 1024 * 1024
# The normalizer, pre-tokenizer, decoder and post-processor are trees of components (Sequences of Sequences),
# under 10 levels of JSON in real files. Deeper ones are refused before anything recurses through them (a few
# hundred levels exhausted Python's recursion limit).
MAX_COMPONENT_DEPTH = 32
COMPONENTS = ("normalizer", "pre_tokenizer", "decoder", "post_processor")

# GGUF token types (llama.cpp's llama_token_type)
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6


def read_json(path: Path) -> Any:
    """A JSON file, or TokenizerError naming it."""
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise TokenizerError(f"{path}: larger than {MAX_JSON_BYTES} bytes")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON, UTF-8, a 5000-digit int
        raise TokenizerError(f"{path}: cannot read JSON: {e}") from None


# ------------------------------------------------------------------------------------------------
# tokenizer.json
# ------------------------------------------------------------------------------------------------

def load_tokenizer_json(path: str | Path, vocab_size: int | None = None,
                        config: dict[str, Any] | None = None) -> BPETokenizer:
    """A BPETokenizer from a tokenizer.json; `config` is tokenizer_config.json's content (for BOS/EOS)."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise TokenizerError(f"{path}: not a tokenizer.json (no 'model' object)")
    for key in COMPONENTS:
        if _depth(data.get(key)) > MAX_COMPONENT_DEPTH:
            raise TokenizerError(f"{path}: {key} is nested more than {MAX_COMPONENT_DEPTH} levels deep")
    try:
        return _build(path, data, vocab_size, config or {})
    except TokenizerError as e:
        if str(e).startswith(str(path)):
            raise
        raise TokenizerError(f"{path}: {e}") from None
    except (TypeError, ValueError, AttributeError, KeyError, IndexError) as e:  # a field of the wrong shape
        raise TokenizerError(f"{path}: malformed tokenizer.json ({type(e).__name__}: {e})") from None


def _build(path: Path, data: dict[str, Any], vocab_size: int | None, config: dict[str, Any]) -> BPETokenizer:
    model = data["model"]
    kind = model.get("type", "BPE" if "merges" in model else None)
    if kind != "BPE":
        raise TokenizerError(f"tokenizer model type {kind!r} is not supported (llmrun reads BPE tokenizers)")
    for key in ("continuing_subword_prefix", "end_of_word_suffix"):
        if model.get(key):
            raise TokenizerError(f"BPE {key} = {model[key]!r} is not supported")
    if model.get("dropout"):
        raise TokenizerError(f"BPE dropout = {model['dropout']} is not supported (it makes encoding random)")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise TokenizerError("model.vocab must be a non-empty object")
    merges = _merges(model.get("merges", []))
    pre = _pre_tokenizer(data.get("pre_tokenizer"))
    normalizer = _normalizer(data.get("normalizer"))
    decoder = data.get("decoder")
    byte_level = _contains(data.get("pre_tokenizer"), "ByteLevel") or _contains(decoder, "ByteLevel")
    added = [_added_token(t) for t in data.get("added_tokens") or []]
    unk = model.get("unk_token")
    unk_id = vocab.get(unk) if isinstance(unk, str) else None
    bos, eos = _template_specials(data.get("post_processor"))

    tok_ids = {**vocab, **{t.content: t.id for t in added}}
    bos_id = _token_id(config.get("bos_token"), tok_ids, "bos_token") if "bos_token" in config else bos
    eos_id = _token_id(config.get("eos_token"), tok_ids, "eos_token") if "eos_token" in config else eos
    tokenizer = BPETokenizer(
        vocab, merges, byte_level=byte_level, pre_tokenizer=pre, normalizer=normalizer, added_tokens=added,
        bos_id=bos_id, eos_id=eos_id, unk_id=unk_id, byte_fallback=bool(model.get("byte_fallback")),
        fuse_unk=bool(model.get("fuse_unk")), ignore_merges=bool(model.get("ignore_merges")),
        add_dummy_prefix=not byte_level and _strips_first_space(decoder), vocab_size=vocab_size)
    tokenizer.add_bos_default = bool(config.get("add_bos_token", bos is not None and bos_id is not None))
    tokenizer.add_eos_default = bool(config.get("add_eos_token", eos is not None and eos_id is not None))
    tokenizer.pre_name = _pre_name(data.get("pre_tokenizer")) if byte_level else None
    return tokenizer


def _merges(raw: object) -> list[tuple[str, str]]:
    if not isinstance(raw, list):
        raise TokenizerError("model.merges must be a list")
    out = []
    for i, m in enumerate(raw):
        if isinstance(m, str):
            parts = m.split(" ")
            if len(parts) != 2:
                raise TokenizerError(f"merge {i} {m!r} is not two tokens separated by one space")
            out.append((parts[0], parts[1]))
        elif isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m):
            out.append((m[0], m[1]))
        else:
            raise TokenizerError(f"merge {i} {m!r} must be 'a b' or [a, b]")
    return out


def _added_token(t: object) -> AddedToken:
    if not isinstance(t, dict) or not isinstance(t.get("id"), int) or not isinstance(t.get("content"), str):
        raise TokenizerError(f"added token {t!r} must have an integer id and a string content")
    return AddedToken(t["id"], t["content"], special=bool(t.get("special", False)), lstrip=bool(t.get("lstrip")),
                      rstrip=bool(t.get("rstrip")))


def _token_id(value: object, ids: dict[str, int], what: str) -> int | None:
    """tokenizer_config.json's bos_token / eos_token (a string, {"content": ...} or null) as an id."""
    if isinstance(value, dict):
        value = value.get("content")
    if value is None:
        return None
    if not isinstance(value, str) or value not in ids:
        raise TokenizerError(f"tokenizer_config.json {what} = {value!r} is not a token of the vocabulary")
    return ids[value]


def _contains(node: object, kind: str) -> bool:
    """Whether a normalizer/pre-tokenizer/decoder tree has a component of type `kind`."""
    if isinstance(node, dict):
        if node.get("type") == kind:
            return True
        return any(_contains(v, kind) for k, v in node.items() if k in ("pretokenizers", "decoders",
                                                                         "normalizers", "processors"))
    if isinstance(node, list):
        return any(_contains(v, kind) for v in node)
    return False


def _strips_first_space(decoder: object) -> bool:
    """Whether the decoder drops the leading space SentencePiece-style encoding put in (Strip / Metaspace)."""
    if not isinstance(decoder, dict):
        return False
    kind = decoder.get("type")
    if kind == "Sequence":
        return any(_strips_first_space(d) for d in decoder.get("decoders", []))
    if kind == "Strip":
        return decoder.get("content") == " " and int(decoder.get("start", 0)) > 0
    if kind == "Metaspace":
        scheme = decoder.get("prepend_scheme")
        if scheme is None:
            return bool(decoder.get("add_prefix_space", True))
        return scheme != "never"
    return False


def _depth(node: object) -> int:
    """How deep JSON values nest in `node` (a scalar: 0), found without recursion."""
    deepest, stack = 0, [(node, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return deepest


def _pattern(node: dict[str, Any], what: str) -> Pattern:
    pattern = node.get("pattern")
    if isinstance(pattern, dict) and isinstance(pattern.get("Regex"), str):
        return compile_pattern(pattern["Regex"], what)
    if isinstance(pattern, dict) and isinstance(pattern.get("String"), str):
        return literal_pattern(pattern["String"])
    raise TokenizerError(f"{what}: pattern must be {{'Regex': ...}} or {{'String': ...}}, got {pattern!r}")


def _pre_tokenizer(node: object) -> PreTokenizer | None:
    if node is None:
        return None
    if not isinstance(node, dict):
        raise TokenizerError(f"pre_tokenizer must be an object, got {node!r}")
    kind = node.get("type")
    if kind == "Sequence":
        return Chain([p for p in (_pre_tokenizer(n) for n in node.get("pretokenizers", [])) if p is not None])
    if kind == "Split":
        return Split(_pattern(node, "Split pre-tokenizer"), node.get("behavior", "Isolated"),
                     bool(node.get("invert", False)))
    if kind == "ByteLevel":
        return ByteLevel(bool(node.get("add_prefix_space", False)), bool(node.get("use_regex", True)))
    if kind == "Digits":
        return Digits(bool(node.get("individual_digits", False)))
    if kind == "Metaspace":
        scheme = node.get("prepend_scheme")
        if scheme is None:
            scheme = "always" if node.get("add_prefix_space", True) else "never"
        return Metaspace(node.get("replacement", "\u2581"), scheme, bool(node.get("split", True)))
    raise TokenizerError(f"pre-tokenizer {kind!r} is not supported (llmrun reads Split, ByteLevel, Digits, "
                         "Metaspace and Sequence)")


def _normalizer(node: object) -> Normalizer | None:
    if node is None:
        return None
    if not isinstance(node, dict):
        raise TokenizerError(f"normalizer must be an object, got {node!r}")
    kind = node.get("type")
    if kind == "Sequence":
        steps = [s for s in (_normalizer(n) for n in node.get("normalizers", [])) if s is not None]
        return sequence_normalizer(steps)
    if kind == "Replace":
        if not isinstance(node.get("content"), str):
            raise TokenizerError("Replace normalizer needs a string content")
        return replace_normalizer(_pattern(node, "Replace normalizer"), node["content"])
    if kind == "Prepend":
        if not isinstance(node.get("prepend"), str):
            raise TokenizerError("Prepend normalizer needs a string prepend")
        return prepend_normalizer(node["prepend"])
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return unicode_normalizer(kind)
    if kind == "Lowercase":
        return lowercase_normalizer
    raise TokenizerError(f"normalizer {kind!r} is not supported (llmrun reads Replace, Prepend, NFC, NFD, NFKC, "
                         "NFKD, Lowercase and Sequence)")


def _template_specials(node: object) -> tuple[int | None, int | None]:
    """The special token ids a TemplateProcessing post-processor puts before and after a single text."""
    if not isinstance(node, dict):
        return None, None
    if node.get("type") == "Sequence":
        for p in node.get("processors", []):
            found = _template_specials(p)
            if found != (None, None):
                return found
        return None, None
    if node.get("type") != "TemplateProcessing":
        return None, None
    specials = node.get("special_tokens") or {}
    bos = eos = None
    seen_text = False
    for item in node.get("single") or []:
        if "Sequence" in item:
            seen_text = True
        elif "SpecialToken" in item:
            ids = (specials.get(item["SpecialToken"].get("id")) or {}).get("ids") or []
            if len(ids) == 1 and isinstance(ids[0], int):
                if seen_text:
                    eos = ids[0]
                elif bos is None:
                    bos = ids[0]
    return bos, eos


def _pre_name(node: object) -> str | None:
    """The GGUF tokenizer.ggml.pre name of a byte-level pre-tokenizer, when it is one llmrun knows."""
    if not isinstance(node, dict):
        return None
    steps = node.get("pretokenizers", []) if node.get("type") == "Sequence" else [node]
    shape = []
    for s in steps:
        kind = s.get("type")
        if kind == "Split":
            shape.append(("Split", (s.get("pattern") or {}).get("Regex"), s.get("behavior"), s.get("invert")))
        elif kind == "ByteLevel":
            shape.append(("ByteLevel", bool(s.get("add_prefix_space")), bool(s.get("use_regex", True))))
        elif kind == "Digits":
            shape.append(("Digits", bool(s.get("individual_digits"))))
        else:
            return None
    known = {
        (("Split", LLAMA3_PATTERN, "Isolated", False), ("ByteLevel", False, False)): "llama-bpe",
        (("Split", QWEN2_PATTERN, "Isolated", False), ("ByteLevel", False, False)): "qwen2",
        (("Digits", True), ("ByteLevel", False, True)): "smollm",
        (("ByteLevel", False, True),): "gpt-2",
        (("Split", O200K_PATTERN, "Isolated", False), ("ByteLevel", False, False)): "gpt-4o",
    }
    return known.get(tuple(shape))


# ------------------------------------------------------------------------------------------------
# A model folder
# ------------------------------------------------------------------------------------------------

def load_folder_tokenizer(folder: Path, spec: ModelSpec) -> None:
    """Fills `spec`'s tokenizer fields from a Hugging Face folder: the tokenizer (else why there is none),
    add_bos_token, add_eos_token, chat_template and eog_token_ids."""
    config_path = folder / "tokenizer_config.json"
    config = read_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise TokenizerError(f"{config_path}: must be a JSON object")
    spec.chat_template = _chat_template(folder, config)
    path = folder / "tokenizer.json"
    if not path.is_file():
        hint = " (a tokenizer.model alone is not read yet)" if (folder / "tokenizer.model").is_file() else ""
        spec.tokenizer_problem = f"{folder}: no tokenizer.json{hint}; pass token ids to logits() instead"
        return
    tok = load_tokenizer_json(path, vocab_size=spec.config.vocab_size, config=config)
    spec.tokenizer, spec.add_bos_token, spec.add_eos_token = tok, tok.add_bos_default, tok.add_eos_default
    eog = [] if tok.eos_id is None else [tok.eos_id]
    gen_path = folder / "generation_config.json"
    if gen_path.is_file():
        gen = read_json(gen_path)
        ids = gen.get("eos_token_id") if isinstance(gen, dict) else None
        for i in ids if isinstance(ids, list) else [ids] if ids is not None else []:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < tok.vocab_size:
                raise TokenizerError(f"{gen_path}: eos_token_id {i!r} is not a token id of the vocabulary")
            if i not in eog:
                eog.append(i)
    spec.eog_token_ids = tuple(eog)


def _chat_template(folder: Path, config: dict[str, Any]) -> str | None:
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        try:
            return jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{jinja}: cannot read: {e}") from None
    template = config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    return template if isinstance(template, str) else None


# ------------------------------------------------------------------------------------------------
# GGUF "gpt2" vocabularies
# ------------------------------------------------------------------------------------------------

def gguf_bpe_tokenizer(tokens: Sequence[str], merges: Sequence[str], types: Sequence[int] | None, pre: str,
                       bos_id: int | None, eos_id: int | None, unk_id: int | None) -> BPETokenizer:
    """A byte-level BPETokenizer from GGUF tokenizer.ggml.* values (`pre`: tokenizer.ggml.pre)."""
    if pre not in PRE_TOKENIZERS:
        raise TokenizerError(f"tokenizer.ggml.pre = {pre!r} is not a pre-tokenizer llmrun knows (known: "
                             f"{', '.join(sorted(PRE_TOKENIZERS))}); its split rules would be guessed, so the "
                             "model is refused rather than tokenized wrongly")
    patterns, ignore_merges = PRE_TOKENIZERS[pre]
    pre_tok = Chain([Split(compile_pattern(p, f"pre-tokenizer {pre}")) for p in patterns])
    vocab: dict[str, int] = {}
    added: list[AddedToken] = []
    for i, text in enumerate(tokens):
        kind = types[i] if types is not None else TOKEN_NORMAL
        if kind == TOKEN_CONTROL:
            added.append(AddedToken(i, text, special=True))
        elif kind == TOKEN_USER_DEFINED:  # a turn's end is a control token whatever the file says (llama.cpp)
            added.append(AddedToken(i, text, special=text in END_OF_TURN_TEXTS))
        elif kind == TOKEN_UNUSED:
            continue
        else:
            vocab.setdefault(text, i)
    tok = BPETokenizer(vocab, _merges(list(merges)), byte_level=True, pre_tokenizer=pre_tok,
                       added_tokens=[t for t in added if t.content], bos_id=bos_id, eos_id=eos_id, unk_id=unk_id,
                       ignore_merges=ignore_merges, vocab_size=len(tokens))
    tok.pre_name = pre
    return tok
