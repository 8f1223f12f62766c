"""The compact BPE table counts exactly what tiktoken counts (issue 16 §4), for every shipped
encoding, on a large varied corpus: prose, code, JSON, CJK, emoji, scripts with combining marks,
whitespace runs, numbers, repeated characters (where the merge order and its tie rule decide
the count), random Unicode and lone surrogates.

tiktoken is the reference here: the test loads both tables (unit tests may; the proxy does not).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from pouch_addon import tokens
from pouch_addon.compact_bpe import PATTERNS, CompactBPE, CompactTableError, suspect

ROOT = Path(__file__).resolve().parents[2]
ENCODINGS = sorted(tokens.SHIPPED_SHA256)


def _repo_texts() -> list[str]:
    files = [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "pouch_addon").glob("*.py"))[:12]]
    return [f.read_text(encoding="utf-8") for f in files if f.is_file()]


def _corpus() -> list[str]:
    rng = random.Random(16)
    texts = _repo_texts()
    texts.append(json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "héllo\n\twörld"}],
                             "numbers": [1, 22, 333, 4444, 55555, 3.14159, -0.5e-10], "nested": {"a": [None, True]}},
                            indent=2))
    texts += [
        "日本語のテキストと漢字、ひらがな、カタカナ。中文文本，标点符号！한국어 문장입니다.",
        "Emoji: 🎉👍🏽👨‍👩‍👧‍👦🏳️‍🌈 ❤️‍🔥 flags 🇫🇷🇯🇵 keycap 1️⃣ and text🙂between",
        "हिन्दी में पाठ, العربية مع التشكيل: مُحَمَّد, עברית, ελληνικά, русский текст, ไทย ภาษา",
        "Combining: e\u0301 a\u0308 n\u0303 Z\u0336a\u0336l\u0336g\u0336o\u0336 \u1e9b\u0323",
        "I'M here, you'RE there, it's HIS, they'll, we'VE, she'd, 'S 's' ''s don't won't",
        "spaces  \t\t \n\n\r\n   \u00a0\u00a0 \u3000\u2028\u2029 \x0b\x0c end   ",
        "numbers 1 12 123 1234 12345 123456 1,234,567.89 0x1F 1e10 ٣٤٥ ४५६ ①②③ ½ ²³",
        "=" * 37 + "-" * 41 + "." * 23 + "_" * 19 + "*" * 17 + "#" * 13 + "~" * 11 + "!" * 9,
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbb hahahahahahahaha lolololol zzzzzzzzzzz",
        "AAAAAAAAAAAAAAAAAAAA ABABABABABAB Mississippi mississippi MISSISSIPPI",
        " " * 100 + "x" + "\n" * 50 + "y" + "\t" * 33,
        "<|endoftext|> <|fim_prefix|> <|endofprompt|> special text is counted as text",
        "lone surrogates \ud83d \udc4d mid\ud800word and a pair \ud83d\ude00 end",
        "def f(x):\n    return {'k': [x**2 for x in range(10)]}  # comment\n\n\nclass A:\n\tpass\r\n",
        "https://example.com/path/to/file.json?query=1&b=%20x#frag user@example.org C:\\Windows\\path",
    ]
    # runs of one or two repeated characters: many equal-rank adjacent pairs (the tie rule)
    for _ in range(400):
        a, b = rng.choice("aAbz01 .=-_*!é日🙂\n\t"), rng.choice("aAbz01 .=-_*!é日🙂\n\t")
        texts.append(rng.choice(["", " ", "x", "\n"]) + (a * rng.randint(1, 40)) + (b * rng.randint(0, 9))
                     + (a + b) * rng.randint(0, 12))
    # random words from a mixed alphabet
    alphabet = "etaoinshrdlucmfwypvbgkjqxz ETAOINSHRD  ,.;:'\"!?()[]{}<>/\\-_=+*&^%$#@`~|\n\t0123456789éüñßøå中文日本語한국🙂👍"
    for _ in range(300):
        texts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120))))
    # random code points: the BMP (including lone surrogates) and beyond
    for _ in range(200):
        texts.append("".join(chr(rng.choice([rng.randrange(0x20, 0x800), rng.randrange(0x800, 0x10000),
                                             rng.randrange(0x10000, 0x110000)]))
                             for _ in range(rng.randint(1, 60))))
    # random bytes, decoded leniently (surrogate escapes and Latin-1)
    for _ in range(100):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 80)))
        texts.append(raw.decode("utf-8", "surrogateescape"))
        texts.append(raw.decode("latin-1"))
    return texts


CORPUS = _corpus()


@pytest.fixture(scope="module", params=ENCODINGS)
def pair(request):
    name = request.param
    return name, tokens._compact(name), tokens.get_encoding(name)


def test_the_patterns_are_tiktokens(pair):
    """The copied pre-tokenizer is tiktoken's (so counting never imports tiktoken)."""
    name, _, encoding = pair
    assert PATTERNS[name] == encoding._pat_str


def test_counts_equal_tiktokens_on_a_varied_corpus(pair):
    """Exact on every text without a code point newer than Python's Unicode database; on those
    (random code points hit some) the UTF-8 length, never below tiktoken's count."""
    name, compact, encoding = pair
    assert sum(len(t) for t in CORPUS) > 150_000
    exact = [text for text in CORPUS if not suspect(text)]
    assert len(exact) > 900
    wrong = [(text[:60], compact.count(text), len(encoding.encode(text, disallowed_special=())))
             for text in exact if compact.count(text) != len(encoding.encode(text, disallowed_special=()))]
    assert wrong == [], f"{name}: {len(wrong)} texts counted differently, e.g. {wrong[:3]}"
    for text in CORPUS:
        if suspect(text):
            assert compact.count(text) == len(text.encode("utf-8", "surrogatepass"))
            assert compact.count(text) >= len(encoding.encode(text, disallowed_special=()))


def test_where_the_pre_tokenizers_disagree_the_text_is_suspect(pair):
    """The ``regex`` package's Unicode tables are newer than tiktoken's Rust regex's: every code
    point where the split differs must be ``suspect`` (a sample of each plane here; all 1.1M
    code points: ``bench/compact_bpe_bench.py --probe``)."""
    name, compact, encoding = pair
    missed = []
    for cp in [*range(0x80, 0x3400, 3), *range(0x3400, 0x110000, 97), 0x0558, 0x1E030, 0x10D40, 0x11F00]:
        if 0xD800 <= cp < 0xE000:
            continue
        for text in (f"a{chr(cp)}", f"{chr(cp)}a", f" {chr(cp)}", f"!{chr(cp)}"):
            if suspect(text):
                continue
            want = [len(encoding.decode_single_token_bytes(t)) for t in encoding.encode_ordinary(text)]
            if compact.token_lengths(text) != want:
                missed.append(hex(cp))
    assert missed == []
    assert suspect("\u0558") and suspect("ok \U000e0284") and not suspect("日本語 🎉\n\t")


def test_token_lengths_equal_tiktokens(pair):
    name, compact, encoding = pair
    for text in [t for t in CORPUS[-300:] + CORPUS[:3] if not suspect(t)]:
        expected = [len(encoding.decode_single_token_bytes(t)) for t in encoding.encode(text, disallowed_special=())]
        assert compact.token_lengths(text) == expected, (name, text[:60])


def test_every_token_is_found_with_its_rank(pair):
    """The hash table holds every token of the file at its rank, and nothing else."""
    name, compact, encoding = pair
    ranks = tokens._read_shipped_ranks(name)
    assert all(compact.rank(token) == rank for token, rank in ranks.items())
    assert compact.rank(b"\x00pouch-no-such-token\xff") is None


def test_a_file_whose_ranks_are_not_dense_is_refused():
    with pytest.raises(CompactTableError, match="rank 5 on line 2"):
        CompactBPE.from_tiktoken_file("o200k_base", b"YQ== 0\nYg== 5\n")


def test_the_stream_counter_equals_count_text_with_either_table(monkeypatch):
    """StreamTokenCounter counts the same fed chunk by chunk, on the compact table (tiktoken not
    loaded) and on tiktoken's encoding (loaded anyway)."""
    rng = random.Random(4)
    text = "".join(CORPUS[:2]) + "".join(t for t in CORPUS[-50:] if not suspect(t)) + "a" * 1500 + " " * 700 + "end"
    chunks, i = [], 0
    while i < len(text):
        n = rng.randint(1, 12)
        chunks.append(text[i:i + n])
        i += n
    expected = tokens.count_text(text, "gpt-4o-mini")
    for loaded in ({}, dict(tokens._LOADED)):
        monkeypatch.setattr(tokens, "_LOADED", loaded)
        counter = tokens.StreamTokenCounter("gpt-4o-mini")
        kind = type(counter._n.__self__).__name__
        for chunk in chunks:
            counter.feed(chunk)
        assert counter.count == expected, kind
        assert kind == ("CompactBPE" if not loaded else "_TiktokenStream")


def test_a_stream_with_a_newer_code_point_is_bounded_from_then_on(monkeypatch):
    """On the compact table, text with a code point tiktoken's regex may split differently
    turns the stream count into an upper bound: that text and all later count as UTF-8 bytes."""
    monkeypatch.setattr(tokens, "_LOADED", {})
    counter = tokens.StreamTokenCounter("gpt-4o-mini")
    counter.feed("Hello there, ")
    exact_so_far = counter.count
    assert not counter.bounded
    counter.feed("new \u0558 letter")
    counter.feed(" and more")
    assert counter.bounded
    assert counter.count == exact_so_far + len("new \u0558 letter and more".encode())
    monkeypatch.undo()
    assert counter.count >= tokens.count_text("Hello there, new \u0558 letter and more", "gpt-4o-mini")


def test_the_compact_build_checks_the_shipped_files_digest(monkeypatch):
    """The compact table reads the shipped file itself (line by line): a file that is not
    tiktoken's published one is refused, as tiktoken's load refuses it."""
    monkeypatch.setattr(tokens, "_COMPACT", {})
    monkeypatch.setitem(tokens.SHIPPED_SHA256, "cl100k_base", "0" * 64)
    with pytest.raises(tokens.EncodingFileError, match="expected tiktoken's published 0000"):
        tokens._compact("cl100k_base")
    assert tokens._COMPACT == {}


def test_long_pieces_merge_as_tiktoken_does(pair, monkeypatch):
    """Pieces over ``_LONG_PIECE`` bytes are merged with a heap: the same tokens as tiktoken and
    as the plain scan (runs of one letter, two alternating, random letters, symbols, spaces)."""
    from pouch_addon import compact_bpe
    name, compact, encoding = pair
    rng = random.Random(12)
    texts = ["a" * 700, "ab" * 300, "=" * 400, " " * 500 + "q", "é" * 200, "Ab" * 150,
             *("".join(rng.choice(letters) for _ in range(rng.randint(130, 600)))
               for letters in ("abcdefghijklmnopqrstuvwxyz", "aab", "=-_", "ABCabc", "aAbBéü") for _ in range(8))]
    for text in texts:
        want = [len(encoding.decode_single_token_bytes(t)) for t in encoding.encode_ordinary(text)]
        assert compact.token_lengths(text) == want, (name, text[:40])
        for piece in compact.pieces.findall(text):
            raw = piece.encode()
            if len(raw) > compact_bpe._LONG_PIECE:
                with monkeypatch.context() as m:
                    m.setattr(compact_bpe, "_LONG_PIECE", 10**9)
                    scan = compact._merge(raw)
                assert compact._merge_long(raw) == scan
