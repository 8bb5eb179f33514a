"""Tests of llmrun.tokenizer: SentencePiece parity, streaming decode, the llama2.c loader, errors.

The oracle is the `sentencepiece` library itself: `tokenizer.model` and our `tokenizer.bin` hold the
same Llama 2 vocabulary, so every encoding must be identical.  For other vocabularies (tok512, and
variants with user-defined / unused pieces or without byte fallback) the test writes a SentencePiece
model proto itself, so sentencepiece is the oracle there too.
"""

from __future__ import annotations

import inspect
import random
import struct
from pathlib import Path

import pytest

from llmrun.errors import InvalidArgumentError, TokenizerError
from llmrun.formats.llama2c_tokenizer import load_llama2c_tokenizer
from llmrun.tokenizer import BPETokenizer, SentencePieceTokenizer, StreamDecoder, Tokenizer, TokenType
from llmrun.tokenizer.bpe import AddedToken

MODELS = Path(__file__).resolve().parents[1].parent / "shared" / "models"
LLAMA_BIN = MODELS / "tokenizer.bin"
LLAMA_MODEL = MODELS / "tokenizer.model"
TOK512_BIN = MODELS / "tok512.bin"


def _need(path: Path) -> Path:
    if not path.is_file():
        pytest.skip(f"test data {path} is not available")
    return path


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return load_llama2c_tokenizer(_need(LLAMA_BIN), 32000)


@pytest.fixture(scope="module")
def sp():
    spm = pytest.importorskip("sentencepiece")
    return spm.SentencePieceProcessor(model_file=str(_need(LLAMA_MODEL)))


@pytest.fixture(scope="module")
def tok512() -> Tokenizer:
    return load_llama2c_tokenizer(_need(TOK512_BIN), 512)


# --------------------------------------------------------------------------- test corpus

HAND_WRITTEN = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\r\n",
    " \n \t ",
    "a",
    " a",
    "a ",
    "  a  ",
    "hello world",
    "Hello, World!",
    "hello  world",
    "hello   world   ",
    "    indented code",
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, there was a little girl named Lily.",
    "café naïve résumé coöperate",
    "e\u0301",  # e + combining acute
    "Ærøskøbing Ελληνικά русский עברית العربية हिन्दी ไทย",
    "中文字符测试",
    "日本語のテキスト、カタカナ。",
    "한국어 문장입니다",
    "龘𠀀𪚥",  # rare CJK, Ext-B: not in the vocabulary -> byte fallback
    "😀",
    "😀😀",
    "👍🏽",
    "👨\u200d👩\u200d👧\u200d👦",
    "👩\u200d💻 coding",
    "🏳️\u200d🌈",
    "🇫🇷🇯🇵",
    "1️⃣",
    "def f(x):\n    return x ** 2\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    '<div class="a">&amp;</div>',
    "SELECT * FROM users WHERE id = 42;",
    "0",
    "1234567890",
    "3.14159265358979",
    "1,000,000.00",
    "2023-11-27T23:31:00Z",
    "...!?;:—–-«»“”‘’",
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31mred\x1b[0m\x7f",
    "\u200b\ufeff\u2028\u2029",
    "\ufffd",
    "<s>",
    "</s>",
    "<unk>",
    "<0x0A>",
    "▁",  # sentencepiece treats a literal '▁' as a space
    "a▁b",
    "▁▁hello",
    "x" * 300,
    " " * 40,
    "ab" * 100,
    "\U0010fffd\U000e0001",
]

ASCII_WORDS = (
    "the a of and to in is it you that he was for on are with as I his they be at one have this from "
    "or had by hot word but what some we can out other were all there when up use your how said an "
    "each she which do their time if will way about many then them write would like so these her "
    "long make thing see him two has look more day could go come did number sound no most people "
    "tokenizer inference runtime Llama quantization transformer attention"
).split()
ACCENTED = ["café", "naïve", "Zürich", "São", "Ærø", "straße", "Ελληνικά", "русский", "עברית", "العربية"]
CJK = ["中文", "字符", "日本語", "カタカナ", "한국어", "龘", "𠀀", "漢字", "的", "是"]
EMOJI = ["😀", "👍", "👍🏽", "👩\u200d💻", "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "🇫🇷", "1️⃣", "❤️", "🤖"]
CODE = ["def f(x):", "return x**2", "if (a && b) {", "}", "x = [1, 2, 3]", "#include <stdio.h>", "i++;"]
SPACES = [" ", "  ", "   ", "\t", "\n", "\r\n", "\n\n", " \t\n", "    "]
DIGITS = ["0", "7", "42", "2024", "3.14", "1,000", "-17", "0xFF", "1e-9"]
PUNCT = [".", ",", "!", "?", "...", "—", "«", "»", '"', "'", "(", ")", ":", ";", "@", "#", "$", "%"]
CONTROL = ["\x00", "\x01", "\x07", "\x1b", "\x7f", "\u200b", "\ufeff", "\u00ad", "\u2028"]
POOLS = [ASCII_WORDS, ACCENTED, CJK, EMOJI, CODE, SPACES, DIGITS, PUNCT, CONTROL]
POOL_WEIGHTS = [10, 2, 2, 2, 2, 4, 2, 3, 1]
# Code point ranges for the random-character strings (no surrogates: they are not valid text).
CHAR_RANGES = [
    (0x20, 0x7E),
    (0x00, 0x1F),
    (0xA0, 0x24F),
    (0x370, 0x52F),
    (0x3040, 0x30FF),
    (0x4E00, 0x9FFF),
    (0xAC00, 0xD7A3),
    (0x1F300, 0x1FAFF),
    (0x20000, 0x2A6DF),
    (0x300, 0x36F),
]


def _random_mix(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 12)):
        pool = rng.choices(POOLS, weights=POOL_WEIGHTS)[0]
        parts.append(rng.choice(pool))
        parts.append(rng.choice(["", " ", " ", " ", "  ", "\n"]))
    return "".join(parts)


def _random_chars(rng: random.Random) -> str:
    out = []
    for _ in range(rng.randint(1, 20)):
        lo, hi = rng.choice(CHAR_RANGES)
        out.append(chr(rng.randint(lo, hi)))
    return "".join(out)


def make_corpus() -> list[str]:
    """Deterministic test strings: the hand-written cases plus seeded random mixes."""
    rng = random.Random(20231127)
    corpus = list(HAND_WRITTEN)
    corpus += [_random_mix(rng) for _ in range(300)]
    corpus += [_random_chars(rng) for _ in range(100)]
    corpus.append("".join(_random_mix(rng) for _ in range(400)))  # one long (~10k char) string
    return corpus


CORPUS = make_corpus()


def parity_failures(ours: Tokenizer, oracle, corpus: list[str]) -> list[tuple[str, list[int], list[int]]]:
    """Strings whose encoding differs from sentencepiece's, with both id lists."""
    failures = []
    for text in corpus:
        got = ours.encode(text, add_bos=False)
        want = oracle.encode(text)
        if got != want:
            failures.append((text, got, want))
    return failures


def _describe(failures: list) -> str:
    return "\n".join(f"{text!r}:\n  ours {got}\n  sp   {want}" for text, got, want in failures[:5])


# --------------------------------------------------------------------------- SentencePiece parity


def test_corpus_is_large_and_varied() -> None:
    assert len(CORPUS) >= 300
    assert len(set(CORPUS)) > 350
    assert any(len(s) > 5000 for s in CORPUS)


def test_encode_matches_sentencepiece(tok: Tokenizer, sp) -> None:
    failures = parity_failures(tok, sp, CORPUS)
    assert not failures, f"{len(failures)} of {len(CORPUS)} strings differ:\n{_describe(failures)}"


def test_decode_round_trips_like_sentencepiece(tok: Tokenizer, sp) -> None:
    for text in CORPUS:
        ids = tok.encode(text)
        assert tok.decode(ids) == sp.decode(ids[1:]), repr(text)
        if "\u2581" not in text:  # sentencepiece reads a literal '▁' as a space, so that cannot round-trip
            assert tok.decode(ids) == text


def test_breaking_the_merge_order_is_detected(tok: Tokenizer, sp) -> None:
    """The parity test must be able to fail: reversed merge priorities must disagree somewhere."""
    broken = SentencePieceTokenizer(list(tok.pieces), -tok.scores, token_types=list(tok.token_types))
    failures = parity_failures(broken, sp, CORPUS)
    assert len(failures) > len(CORPUS) // 4


def test_specific_sentencepiece_behaviour(tok: Tokenizer) -> None:
    assert tok.encode("") == [1]
    assert tok.encode("", add_bos=False) == []
    assert tok.encode("", add_bos=False, add_eos=True) == [2]
    assert tok.encode("hello world", add_eos=True) == [1, 22172, 3186, 2]
    # A leading space is kept: dummy prefix + the space -> '▁' '▁a' (not '▁▁' 'a').
    assert tok.encode(" a") == [1, 29871, 263]
    assert tok.decode([1, 29871, 263]) == " a"
    # Characters outside the vocabulary fall back to one <0xNN> token per UTF-8 byte.
    assert tok.encode("😀", add_bos=False) == [29871, 0xF0 + 3, 0x9F + 3, 0x98 + 3, 0x80 + 3]
    assert tok.encode("\n", add_bos=False) == [29871, 13]
    assert tok.encode("▁") == tok.encode(" ")


def test_whitespace_runs_merge_leftmost_first(tok: Tokenizer, sp) -> None:
    # All '▁▁', '▁▁▁▁', ... pieces share the score -1e9: only the leftmost-first tie rule
    # reproduces sentencepiece here.
    for n in range(1, 40):
        for text in (" " * n, "x" + " " * n + "y", " " * n + "x"):
            assert tok.encode(text, add_bos=False) == sp.encode(text), repr(text)


def test_id_to_piece_matches_sentencepiece(tok: Tokenizer, sp) -> None:
    assert [tok.id_to_piece(i) for i in range(tok.vocab_size)] == [
        sp.id_to_piece(i) for i in range(sp.vocab_size())
    ]


def test_decode_arbitrary_ids_matches_sentencepiece(tok: Tokenizer, sp) -> None:
    """Any id sequence -- control tokens, <unk>, stray bytes, invalid UTF-8 -- decodes as sentencepiece."""
    rng = random.Random(7)
    interesting = [0, 1, 2, 29871, 259, 22172, 3186, 13, 35] + list(range(3, 259))
    for _ in range(300):
        ids = [
            rng.choice(interesting) if rng.random() < 0.7 else rng.randrange(32000)
            for _ in range(rng.randint(0, 12))
        ]
        want = sp.decode(ids)
        assert tok.decode(ids) == want, ids
        assert _stream(tok, ids) == want, ids


def test_from_sentencepiece_pieces_equals_loader(tok: Tokenizer, sp) -> None:
    types = [_sp_type(sp, i) for i in range(sp.vocab_size())]
    pieces = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
    scores = [sp.get_score(i) for i in range(sp.vocab_size())]
    other = SentencePieceTokenizer.from_sentencepiece_pieces(pieces, scores, types)
    assert other.token_types == tok.token_types
    for text in CORPUS[:100]:
        assert other.encode(text) == tok.encode(text)
        assert other.decode(tok.encode(text)) == tok.decode(tok.encode(text))


def _sp_type(sp, i: int) -> int:
    if sp.is_unknown(i):
        return TokenType.UNKNOWN
    if sp.is_control(i):
        return TokenType.CONTROL
    if sp.is_byte(i):
        return TokenType.BYTE
    if sp.is_unused(i):
        return TokenType.UNUSED
    return TokenType.NORMAL


# --------------------------------------------------------------------------- home-made SentencePiece models
# A SentencePiece model is a protobuf ModelProto: field 1 = repeated pieces {1: piece, 2: score,
# 3: type}, 2 = trainer_spec, 3 = normalizer_spec.  We keep tokenizer.model's specs (BPE, identity
# normalization, dummy prefix, byte fallback) and swap in other pieces, so sentencepiece can serve
# as the oracle for vocabularies that come without a .model file.


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return result, pos


def _fields(buf: bytes) -> list[tuple[int, bytes, bytes]]:
    """(field number, whole encoded field, payload of a length-delimited field) for each field."""
    out = []
    pos = 0
    while pos < len(buf):
        start = pos
        key, pos = _read_varint(buf, pos)
        wire = key & 7
        payload = b""
        if wire == 0:
            _, pos = _read_varint(buf, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            payload = buf[pos : pos + length]
            pos += length
        else:
            raise ValueError(f"unsupported wire type {wire}")
        out.append((key >> 3, buf[start:pos], payload))
    return out


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _sp_model_proto(
    template: bytes, pieces: list[tuple[str, float, int]], byte_fallback: bool = True
) -> bytes:
    out = bytearray()
    for piece, score, kind in pieces:
        body = (
            _length_delimited(1, piece.encode())
            + b"\x15"
            + struct.pack("<f", score)
            + b"\x18"
            + _varint(kind)
        )
        out += _length_delimited(1, body)
    for number, encoded, payload in _fields(template):
        if number == 1:
            continue
        if number == 2 and not byte_fallback:  # drop TrainerSpec.byte_fallback (field 35)
            encoded = _length_delimited(2, b"".join(e for n, e, _ in _fields(payload) if n != 35))
        out += encoded
    return bytes(out)


def _oracle_for(tokenizer: Tokenizer, byte_fallback: bool = True):
    spm = pytest.importorskip("sentencepiece")
    template = _need(LLAMA_MODEL).read_bytes()
    pieces = []
    for i in range(tokenizer.vocab_size):
        text = tokenizer.pieces[i].decode()
        if tokenizer.is_control(i):
            text = text.strip()  # llama2.c stores "\n<s>\n"
        pieces.append((text.replace(" ", "\u2581"), float(tokenizer.scores[i]), tokenizer.token_types[i]))
    return spm.SentencePieceProcessor(model_proto=_sp_model_proto(template, pieces, byte_fallback))


def test_tok512_matches_sentencepiece(tok512: Tokenizer) -> None:
    oracle = _oracle_for(tok512)
    failures = parity_failures(tok512, oracle, CORPUS)
    assert not failures, _describe(failures)


def test_user_defined_and_unused_pieces_match_sentencepiece(tok512: Tokenizer) -> None:
    """User-defined pieces are matched whole and never merged; unused pieces are split back."""
    pieces = list(tok512.pieces)
    scores = list(tok512.scores)
    types = list(tok512.token_types)
    for i, piece in enumerate(pieces):
        if piece in (b" the", b"he", b" a", b"ing", b"ed"):
            types[i] = TokenType.UNUSED
        elif piece == b"o":  # a single character that is a user-defined piece
            types[i] = TokenType.USER_DEFINED
    extras = [
        (b"<tool>", TokenType.USER_DEFINED),
        (b"<to", TokenType.USER_DEFINED),  # a prefix of "<tool>": the longest match must win
        (b"foo bar", TokenType.USER_DEFINED),
        (b"  ", TokenType.USER_DEFINED),
        ("中文".encode(), TokenType.USER_DEFINED),
        # A one-character control piece: encoding never produces control ids, so "§" still
        # falls back to bytes.
        ("§".encode(), TokenType.CONTROL),
    ]
    for piece, kind in extras:
        pieces.append(piece)
        scores.append(0.0)
        types.append(kind)
    variant = SentencePieceTokenizer(pieces, scores, token_types=types)
    oracle = _oracle_for(variant)
    corpus = CORPUS + ["<tool>call foo bar the end", "foo barfoo bar", "中文字符", "<tool><tool>"]
    corpus += ["  the  ", "<to<tool", "a§b§"]
    failures = parity_failures(variant, oracle, corpus)
    assert not failures, _describe(failures)
    tool_id = len(pieces) - len(extras)
    assert variant.encode("<tool>x", add_bos=False)[1] == tool_id
    assert variant.encode("§", add_bos=False)[1:] == [0xC2 + 3, 0xA7 + 3]  # "§" is b"\xc2\xa7"


def test_without_byte_fallback_matches_sentencepiece(tok512: Tokenizer) -> None:
    """Without byte pieces, a run of unknown characters becomes a single <unk>."""
    keep = [i for i in range(tok512.vocab_size) if not tok512.is_byte(i)]
    variant = SentencePieceTokenizer(
        [tok512.pieces[i] for i in keep],
        [float(tok512.scores[i]) for i in keep],
        token_types=[tok512.token_types[i] for i in keep],
        byte_fallback=False,
    )
    oracle = _oracle_for(variant, byte_fallback=False)
    failures = parity_failures(variant, oracle, CORPUS)
    assert not failures, _describe(failures)
    assert variant.encode("a😀😀b", add_bos=False).count(0) == 1
    for text in CORPUS[:150]:
        ids = variant.encode(text)
        assert variant.decode(ids) == oracle.decode(ids[1:])


# --------------------------------------------------------------------------- tok512


def test_tok512_loads_and_round_trips(tok512: Tokenizer) -> None:
    assert tok512.vocab_size == 512
    assert (tok512.bos_id, tok512.eos_id, tok512.unk_id) == (1, 2, 0)
    assert tok512.is_control(1) and tok512.is_control(2) and not tok512.is_control(300)
    assert tok512.id_to_piece(1) == "<s>"
    ids = tok512.encode("Once upon a time", add_eos=True)
    assert ids[0] == 1 and ids[-1] == 2
    assert all(259 <= i < 512 for i in ids[1:-1])  # plain English needs no byte fallback
    assert tok512.decode(ids) == "Once upon a time"
    text = "Lily & Tom 🐶 ate 3 pies."
    assert tok512.decode(tok512.encode(text)) == text


def test_tok512_vocab_size_none_reads_to_eof(tok512: Tokenizer) -> None:
    same = load_llama2c_tokenizer(TOK512_BIN)
    assert same.vocab_size == 512
    assert same.pieces == tok512.pieces


# --------------------------------------------------------------------------- streaming


def _stream(tokenizer: Tokenizer, ids: list[int], **kwargs: bool) -> str:
    decoder = StreamDecoder(tokenizer, **kwargs)
    return "".join(decoder.feed(i) for i in ids) + decoder.flush()


@pytest.mark.parametrize(
    "text",
    ["😀", "👨\u200d👩\u200d👧\u200d👦", "龘𠀀", "Hi 😀 there 👍🏽!", "中文 and 日本語", " leading", "a\nb"],
)
def test_stream_emits_whole_characters_once(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    decoder = StreamDecoder(tok)
    chunks = [decoder.feed(i) for i in ids]
    tail = decoder.flush()
    assert tail == ""
    assert "".join(chunks) == text == tok.decode(ids)
    assert not any("\ufffd" in c for c in chunks)


def test_stream_holds_back_byte_fallback_pieces(tok: Tokenizer) -> None:
    for text in ("😀", "龘", "👩\u200d💻"):
        ids = tok.encode(text, add_bos=False)
        assert any(tok.is_byte(i) for i in ids), f"{text!r} should need byte fallback"
    decoder = StreamDecoder(tok)
    # BOS, '▁', then the four byte tokens of U+1F600.
    outputs = [decoder.feed(i) for i in tok.encode("😀")]
    assert outputs == ["", "", "", "", "", "😀"]
    outputs = [decoder.feed(i) for i in tok.encode("龘", add_bos=False)]  # continues the same stream
    assert "".join(outputs) == " 龘" and outputs[-1] == "龘"


def test_stream_equals_decode_on_corpus(tok: Tokenizer) -> None:
    for text in CORPUS[:200]:
        ids = tok.encode(text)
        assert _stream(tok, ids) == tok.decode(ids)
        assert _stream(tok, ids[1:]) == tok.decode(ids[1:])  # a stream not starting with BOS


def test_stream_leading_space_option(tok: Tokenizer) -> None:
    ids = tok.encode("hello world", add_bos=False)
    assert _stream(tok, ids) == "hello world"
    assert _stream(tok, ids, strip_leading_space=False) == " hello world"


def test_stream_flush_replaces_unfinished_character(tok: Tokenizer) -> None:
    decoder = StreamDecoder(tok)
    assert decoder.feed(0xF0 + 3) == "" and decoder.feed(0x9F + 3) == ""
    assert decoder.pending
    assert decoder.flush() == "\ufffd\ufffd"  # one per byte, as sentencepiece's decode
    assert tok.decode([0xF0 + 3, 0x9F + 3]) == "\ufffd\ufffd"
    assert not decoder.pending
    assert decoder.feed(22172) == "hello"  # flushed: a new stream starts, leading space stripped again


# --------------------------------------------------------------------------- errors


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _entry(piece: bytes, score: float = 0.0, length: int | None = None) -> bytes:
    return struct.pack("<fi", score, len(piece) if length is None else length) + piece


def _small_file(*entries: bytes, max_len: int = 8) -> bytes:
    return struct.pack("<I", max_len) + b"".join(entries)


GOOD_ENTRIES = (_entry(b"<unk>"), _entry(b"\n<s>\n"), _entry(b"\n</s>\n"), _entry(b" a", -1.0))


@pytest.mark.parametrize(
    ("name", "data", "vocab_size", "needle"),
    [
        ("empty.bin", b"", None, "too short"),
        ("truncated_entry.bin", _small_file(*GOOD_ENTRIES)[:-1], 4, "entry 3"),
        ("truncated_header.bin", _small_file(*GOOD_ENTRIES)[:-7], None, "truncated at entry 3"),
        ("negative.bin", _small_file(*GOOD_ENTRIES[:3], _entry(b"x", length=-5)), 4, "length=-5"),
        ("huge.bin", _small_file(*GOOD_ENTRIES[:3], _entry(b"x", length=2**31 - 1)), 4, "length=2147483647"),
        ("too_long.bin", _small_file(*GOOD_ENTRIES, max_len=4), 4, "max_token_length=4"),
        (
            "max_len.bin",
            struct.pack("<I", 2**32 - 1) + b"".join(GOOD_ENTRIES),
            4,
            "max_token_length=4294967295",
        ),
        ("too_few.bin", _small_file(*GOOD_ENTRIES), 5, "entry 4 (of 5 expected)"),
        ("too_many.bin", _small_file(*GOOD_ENTRIES), 3, "expected vocab_size=3"),
        ("tiny.bin", _small_file(*GOOD_ENTRIES[:2]), None, "holds 2 entries"),
        ("small_vocab.bin", _small_file(*GOOD_ENTRIES), 2, "vocab_size=2 is out of range"),
        ("big_vocab.bin", _small_file(*GOOD_ENTRIES), 10**9, "vocab_size=1000000000 is out of range"),
    ],
)
def test_malformed_files_raise(
    tmp_path: Path, name: str, data: bytes, vocab_size: int | None, needle: str
) -> None:
    path = _write(tmp_path, name, data)
    with pytest.raises(TokenizerError) as info:
        load_llama2c_tokenizer(path, vocab_size)
    assert str(path) in str(info.value)
    assert needle in str(info.value)


def test_entry_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file of endless tiny entries is refused instead of filling memory."""
    from llmrun.formats import llama2c_tokenizer

    monkeypatch.setattr(llama2c_tokenizer, "MAX_VOCAB_SIZE", 5)
    path = _write(tmp_path, "endless.bin", _small_file(*GOOD_ENTRIES, *[_entry(b"")] * 10))
    with pytest.raises(TokenizerError, match="more than 5 entries") as info:
        load_llama2c_tokenizer(path)
    assert str(path) in str(info.value)
    with pytest.raises(TypeError):
        load_llama2c_tokenizer(path, True)  # type: ignore[arg-type]


def test_well_formed_small_file_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, "ok.bin", _small_file(*GOOD_ENTRIES))
    tokenizer = load_llama2c_tokenizer(path, 4)
    assert tokenizer.encode("a a") == [1, 3, 3]
    assert load_llama2c_tokenizer(path).vocab_size == 4


def test_wrong_vocab_size_for_real_file() -> None:
    path = _need(LLAMA_BIN)
    with pytest.raises(
        TokenizerError, match=r"expected vocab_size=31999 entries, but the file holds at least 32000"
    ):
        load_llama2c_tokenizer(path, 31999)
    with pytest.raises(TokenizerError, match=r"truncated at entry 32000 \(of 32001 expected\)") as info:
        load_llama2c_tokenizer(path, 32001)
    assert str(path) in str(info.value)


def test_missing_file_raises(tmp_path: Path) -> None:
    path = tmp_path / "nope.bin"
    with pytest.raises(TokenizerError, match="nope.bin"):
        load_llama2c_tokenizer(path, 32000)
    with pytest.raises(TokenizerError, match=str(tmp_path)):
        load_llama2c_tokenizer(tmp_path, 32000)  # a directory


@pytest.mark.parametrize("bad", [32000, -1, 10**12])
@pytest.mark.parametrize(
    "call",
    [
        lambda tok, i: tok.decode([1, i]),
        lambda tok, i: tok.piece_bytes(i),
        lambda tok, i: tok.id_to_piece(i),
        lambda tok, i: tok.is_control(i),
        lambda tok, i: StreamDecoder(tok).feed(i),
    ],
    ids=["decode", "piece_bytes", "id_to_piece", "is_control", "stream"],
)
def test_out_of_range_ids_raise(tok: Tokenizer, call, bad: int) -> None:
    with pytest.raises(TokenizerError, match=rf"token id {bad} out of range: valid ids are 0\.\.31999"):
        call(tok, bad)


@pytest.mark.parametrize("bad", [True, 1.5, None, "3"])
def test_ids_that_are_not_integers_are_invalid_arguments(tok: Tokenizer, bad: object) -> None:
    for call in (lambda: tok.decode([1, bad]), lambda: tok.id_to_piece(bad), lambda: StreamDecoder(tok).feed(bad)):
        with pytest.raises(InvalidArgumentError, match=f"token id must be an int, got {type(bad).__name__}"):
            call()


def test_the_tokenizer_interface() -> None:
    """`llmrun.tokenizer.Tokenizer` is the abstract interface every tokenizer implements and every caller
    annotates with; the SentencePiece class is named for what it is."""
    assert inspect.isabstract(Tokenizer)
    assert issubclass(SentencePieceTokenizer, Tokenizer) and issubclass(BPETokenizer, Tokenizer)
    assert not inspect.isabstract(SentencePieceTokenizer) and not inspect.isabstract(BPETokenizer)
    for name in ("encode", "decode", "surface", "vocab_size", "bos_id", "eos_id", "unk_id", "add_dummy_prefix",
                 "is_control", "id_to_piece", "piece_to_id", "piece_bytes"):
        assert hasattr(Tokenizer, name), name
    with pytest.raises(TypeError):
        Tokenizer()  # type: ignore[abstract]


def _small_tokenizers() -> list[Tokenizer]:
    """One tokenizer of each implementation over the same four tokens."""
    spm = SentencePieceTokenizer([b"<unk>", b"<s>", b"</s>", b"a"], [0.0] * 4, add_dummy_prefix=False)
    bpe = BPETokenizer({"<unk>": 0, "a": 3}, [], byte_level=False, bos_id=1, eos_id=2, unk_id=0,
                       added_tokens=[AddedToken(1, "<s>"), AddedToken(2, "</s>")])
    return [spm, bpe]


INTERFACE = ("encode", "decode", "surface", "is_control", "id_to_piece", "piece_to_id", "piece_bytes")


@pytest.mark.parametrize("tokenizer", _small_tokenizers(), ids=["sentencepiece", "bpe"])
def test_implementations_take_the_interfaces_arguments(tokenizer: Tokenizer) -> None:
    """SentencePieceTokenizer.piece_to_id(text) used to differ from the interface's piece_to_id(piece)."""
    for name in INTERFACE:
        assert inspect.signature(getattr(tokenizer, name)) == inspect.signature(getattr(Tokenizer, name).__get__(
            tokenizer)), name
    assert tokenizer.piece_to_id(piece="<s>") == 1
    assert tokenizer.id_to_piece(token_id=3) == "a" and tokenizer.is_control(token_id=1)
    assert tokenizer.encode(text="a", add_bos=True, add_eos=True, special=False) == [1, 3, 2]


@pytest.mark.parametrize("tokenizer", _small_tokenizers(), ids=["sentencepiece", "bpe"])
@pytest.mark.parametrize("call, param", [
    (lambda t: t.piece_to_id(5), "piece"),  # AttributeError from SentencePieceTokenizer
    (lambda t: t.piece_to_id([1]), "piece"),  # TypeError (unhashable) from BPETokenizer
    (lambda t: t.piece_to_id(None), "piece"),
    (lambda t: t.id_to_piece(True), "token_id"),
    (lambda t: t.id_to_piece("1"), "token_id"),
    (lambda t: t.is_control("x"), "token_id"),
    (lambda t: t.piece_bytes(2.0), "token_id"),
    (lambda t: t.surface(None, False), "token_id"),
    (lambda t: t.surface(1, "yes"), "at_start"),
    (lambda t: t.encode("a", add_bos="no"), "add_bos"),  # was taken as true
    (lambda t: t.encode("a", add_eos=None), "add_eos"),
    (lambda t: t.encode("a", special=1), "special"),
    (lambda t: t.encode(b"a"), "text"),
    (lambda t: t.decode(5), "ids"),
    (lambda t: t.decode(["a"]), "ids"),
    (lambda t: StreamDecoder(t).feed("a"), "token_id"),
    (lambda t: StreamDecoder("not a tokenizer"), "tokenizer"),  # AttributeError
])
def test_bad_arguments_are_invalid_argument_errors(tokenizer: Tokenizer, call, param: str) -> None:  # noqa: ANN001
    """Each public method of the interface, in both implementations: InvalidArgumentError naming the argument,
    never a TypeError or AttributeError from inside."""
    with pytest.raises(InvalidArgumentError) as info:
        call(tokenizer)
    assert info.value.param == param


@pytest.mark.parametrize("tokenizer", _small_tokenizers(), ids=["sentencepiece", "bpe"])
@pytest.mark.parametrize("bad", [-1, 4, 10**30])
def test_ids_out_of_range_are_tokenizer_errors_in_both(tokenizer: Tokenizer, bad: int) -> None:
    for call in (tokenizer.id_to_piece, tokenizer.is_control, tokenizer.piece_bytes,
                 lambda i: tokenizer.surface(i, False), lambda i: tokenizer.decode([i])):
        with pytest.raises(TokenizerError, match=rf"token id {bad} out of range: valid ids are 0\.\.3"):
            call(bad)


def test_common_properties_live_in_the_interface() -> None:
    """bos_id, eos_id, unk_id, add_dummy_prefix, byte_fallback and vocab_size used to be written out in both
    implementations; the interface holds them, over what each implementation's constructor gives it."""
    common = ("vocab_size", "bos_id", "eos_id", "unk_id", "add_dummy_prefix", "byte_fallback")
    for name in common:
        assert isinstance(vars(Tokenizer).get(name), property), name
        assert not getattr(vars(Tokenizer)[name].fget, "__isabstractmethod__", False), name
        for implementation in (SentencePieceTokenizer, BPETokenizer):
            assert name not in vars(implementation), f"{implementation.__name__}.{name}"
    for tokenizer in _small_tokenizers():
        assert [getattr(tokenizer, name) for name in common] == [4, 1, 2, 0, tokenizer.add_dummy_prefix,
                                                                 tokenizer.byte_fallback]


def test_bad_text_raises(tok: Tokenizer) -> None:
    with pytest.raises(InvalidArgumentError, match="text must be a str, got bytes"):
        tok.encode(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="text must be a str, got NoneType"):
        tok.encode(None)  # type: ignore[arg-type]
    with pytest.raises(TokenizerError, match="surrogate U\\+D800 at index 2"):
        tok.encode("ab\ud800c")


def test_constructor_validation() -> None:
    pieces = [b"<unk>", b"<s>", b"</s>", b"a"]
    with pytest.raises(TokenizerError, match="expected 4 scores"):
        SentencePieceTokenizer(pieces, [0.0] * 3)
    with pytest.raises(TokenizerError, match="bos_id=9"):
        SentencePieceTokenizer(pieces, [0.0] * 4, bos_id=9)
    with pytest.raises(TokenizerError, match="token_types\\[3\\]=7"):
        SentencePieceTokenizer(pieces, [0.0] * 4, token_types=[2, 3, 3, 7])
    with pytest.raises(TokenizerError, match="type BYTE"):
        SentencePieceTokenizer(pieces, [0.0] * 4, token_types=[2, 3, 3, 6])
    no_specials = SentencePieceTokenizer(pieces, [0.0] * 4, bos_id=None, eos_id=None)
    assert no_specials.encode("", add_bos=True, add_eos=True) == []  # nothing to add
    with pytest.raises(TokenizerError, match="vocabulary is empty"):
        SentencePieceTokenizer([], [])


def test_piece_bytes(tok: Tokenizer) -> None:
    assert tok.piece_bytes(1) == b"" and tok.piece_bytes(2) == b""
    assert tok.piece_bytes(13) == b"\n"
    assert tok.piece_bytes(22172) == b" hello"
    assert tok.piece_bytes(0) == " \u2047 ".encode()
    assert tok.decode([0]) == " \u2047 "


def test_many_user_defined_pieces_cannot_slow_encoding_down() -> None:
    """A hostile vocabulary with 200,000 user-defined pieces sharing a first character: matching costs one
    lookup per distinct piece length, not one per piece (encoding took seconds when every piece was tried)."""
    pieces = [b"<unk>", b"<s>", b"</s>"] + [b"a" + str(i).encode() for i in range(200_000)] + [b"a", b" "]
    types = [2, 3, 3] + [4] * 200_000 + [1, 1]
    tok = SentencePieceTokenizer(pieces, [0.0] * len(pieces), token_types=types)
    # one candidate set per distinct length ("a0" .. "a199999": 2 to 7 characters) is all a position can cost
    assert [length for length, _ in tok._user_defined["a"]] == [7, 6, 5, 4, 3, 2]
    ids = tok.encode("a" * 500 + "a17", add_bos=False)
    assert ids[-1] == 3 + 17  # the longest user-defined match wins: "a17", not "a1"
    # the speed itself is measured by benchmarks/bench_tokenizer.py
