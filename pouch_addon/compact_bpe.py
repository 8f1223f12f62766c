"""An exact token counter for tiktoken's byte-level BPE encodings in a few MiB (issue 16 §4).

Why: tiktoken's Rust ``CoreBPE`` holds its ranks in a HashMap of 200k byte strings, ~41 MiB of
the proxy's resident memory for o200k_base, more than the rest of the proxy. A stream metered
near its cap needs exact counts but only of its own short output text, at microseconds per
chunk; it does not need tiktoken's speed on megabyte inputs. So the stream meter counts with
this table instead (``tokens.StreamTokenCounter``), and tiktoken is loaded only where large
inputs are counted exactly.

How, and why it is exact: it does what tiktoken's ``encode_ordinary`` does, step by step.
- The text is split with the encoding's own pre-tokenizer regex (``PATTERNS``: tiktoken's
  ``pat_str``, copied so that counting never imports tiktoken, ~7 MiB; a unit test pins them
  to tiktoken's spec), run by the ``regex`` package (tiktoken's own dependency). A ``str``
  with lone surrogates is first repaired as tiktoken does (UTF-16 round trip, U+FFFD).
- The one place the two can differ is the regex's Unicode tables: ``regex`` knows newer
  Unicode versions than tiktoken's Rust regex, so a character assigned since then is a letter
  to one and unassigned to the other, and the split differs (seen with U+0558).
  Every code point where the two disagree is unassigned in Python's own ``unicodedata``
  (Unicode 14.0 on Python 3.11; measured over all 1.1M code points, ``bench/compact_bpe_bench.py
  --probe``, and sampled in the unit tests). So a text holding such a code point (``suspect``)
  is not counted exactly: ``count`` returns its UTF-8 byte length, never below tiktoken's
  count (every token encodes at least one byte), and ``StreamTokenCounter`` bounds the rest of
  its stream that way (cutting earlier, never later).
- Each piece is one token when its UTF-8 bytes are a token (one lookup); otherwise it is
  byte-pair merged as tiktoken's ``_byte_pair_merge`` does: repeatedly merge the adjacent pair
  whose joined bytes have the lowest rank, the leftmost of equal ranks, until no joined pair is
  a token. The count is the number of parts left.

The table: every token's bytes concatenated in rank order (the shipped files number their
tokens 0..n-1, checked on load), an ``array`` of their offsets, and an open-addressing hash
table (an ``array`` of token index + 1, linear probing on Python's ``hash`` of the bytes). For
o200k_base that is 1.4 MB + 0.8 MB + 2 MiB, against tiktoken's ~41 MiB; a lookup is a hash,
an array index and a ``bytes.startswith`` (no slice is allocated). The ~5k tokens of one or two
bytes (the first look-ups of every merge) are also in a dict, and the counts of the last 2048
pieces are cached: 5.1 MiB resident in all (``bench/compact_bpe_bench.py``).

Loading it is a plain Python loop over the shipped file (~0.2-0.5 s for o200k_base): run it in
a worker thread; being Python bytecode, it hands the GIL back every switch interval (5 ms), so
it never stalls the event loop for long (tiktoken's CoreBPE construction holds the GIL
throughout).
"""

from __future__ import annotations

import io
import unicodedata
from heapq import heapify, heappop, heappush
from array import array
from binascii import a2b_base64
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    import regex

__all__ = ["PATTERNS", "CompactBPE", "CompactTableError", "suspect"]

#: tiktoken's pre-tokenizer of each shipped encoding (``pat_str`` in tiktoken_ext/openai_public.py)
PATTERNS: dict[str, str] = {
    "o200k_base": "|".join([
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
        r"\p{N}{1,3}",
        r" ?[^\s\p{L}\p{N}]+[\r\n/]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]),
    "cl100k_base": (
        r"'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"
        r"|\s++$|\s*[\r\n]|\s+(?!\S)|\s"
    ),
}

def suspect(text: str) -> bool:
    """``text`` holds a code point unassigned in Python's Unicode database, where tiktoken's
    pre-tokenizer and the ``regex`` package may split differently (see the module docstring).
    Printable text has none (an unassigned code point is not printable): one C call for most."""
    if text.isascii() or text.isprintable():
        return False
    category = unicodedata.category
    return any(category(ch) == "Cn" for ch in text if not ch.isprintable())


_NONE = 1 << 62  # "not a token": above every rank, like tiktoken's Rank::MAX
_CACHE_PIECES = 2048
#: longer pieces are merged with a heap (a run of letters without a break: O(n log n), not O(n^2);
#: 1.3-2.5x faster from 300 bytes, slower below ~100)
_LONG_PIECE = 128


class CompactTableError(ValueError):
    """The encoding file does not have the layout the compact table relies on."""


def _ranker(blob: bytes, offsets: array, table: array) -> Callable[[bytes], int]:
    """The rank of a byte string, ``_NONE`` if it is no token: a closure over the table (no
    attribute look-ups per call), with the tokens of one or two bytes (~5k, the first look-ups of
    every merge) in a dict (~0.3 MiB)."""
    mask = len(table) - 1
    startswith = blob.startswith
    short = {blob[offsets[i]:offsets[i + 1]]: i for i in range(len(offsets) - 1) if offsets[i + 1] - offsets[i] <= 2}
    short_get = short.get

    def rank(piece: bytes) -> int:
        n = len(piece)
        if n <= 2:
            return short_get(piece, _NONE)
        slot = hash(piece) & mask
        index = table[slot]
        while index:
            start = offsets[index - 1]
            if offsets[index] - start == n and startswith(piece, start):
                return index - 1
            slot = (slot + 1) & mask
            index = table[slot]
        return _NONE

    return rank


class CompactBPE:
    """One encoding's ranks, compactly; :meth:`count` equals ``len(tiktoken encode_ordinary)``."""

    __slots__ = ("name", "pieces", "_blob", "_offsets", "_table", "_cache", "_rank")

    def __init__(self, name: str, pieces: regex.Pattern[str], blob: bytes, offsets: array,
                 table: array) -> None:
        self.name = name
        self.pieces = pieces  # the pre-tokenizer (StreamTokenCounter splits with it too)
        self._blob = blob
        self._offsets = offsets
        self._table = table
        self._rank = _ranker(blob, offsets, table)
        # the tokens of recent pieces: a stream's counter re-counts its unsettled tail on every
        # chunk, and words recur; bounded (emptied when full: ~0.3 MiB at most), races harmless
        self._cache: dict[str, int] = {}

    @classmethod
    def from_tiktoken_file(cls, name: str, data: bytes) -> CompactBPE:
        """Build from the text of a ``.tiktoken`` file (see :meth:`from_tiktoken_lines`)."""
        return cls.from_tiktoken_lines(name, io.BytesIO(data))

    @classmethod
    def from_tiktoken_lines(cls, name: str, lines: Iterable[bytes]) -> CompactBPE:
        """Build from the lines of a ``.tiktoken`` file (base64 token, space, rank), as they are
        read: neither the file nor a list of 200k token objects is held (their freed memory
        would stay resident, fragmented: ~3 MiB); the caller checks the file's SHA-256."""
        import regex

        blob = bytearray()
        offsets = array("I", [0])
        for line in lines:
            if not line.strip():
                continue
            token, rank = line.split()
            if int(rank) != len(offsets) - 1:
                raise CompactTableError(f"{name}: rank {int(rank)} on line {len(offsets)}; the compact "
                                        "table needs the ranks 0..n-1 in file order")
            blob += a2b_base64(token)
            offsets.append(len(blob))
        blob = bytes(blob)
        size = 1 << max(4, ((len(offsets) - 1) * 5 // 2).bit_length())  # at most 40% full
        table = array("I", bytes(4 * size))
        mask = size - 1
        for index in range(1, len(offsets)):
            slot = hash(blob[offsets[index - 1]:offsets[index]]) & mask
            while table[slot]:
                slot = (slot + 1) & mask
            table[slot] = index
        return cls(name, regex.compile(PATTERNS[name]), blob, offsets, table)

    def rank(self, piece: bytes) -> int | None:
        """The token whose bytes are ``piece``, or None."""
        r = self._rank(piece)
        return None if r == _NONE else r

    def _merge(self, piece: bytes) -> list[int]:
        """tiktoken's ``_byte_pair_merge``: the start of every part of ``piece`` (and its end).

        ``ranks[i]`` is the rank of parts ``i`` and ``i + 1`` joined; each round merges the
        lowest (``list.index``: the leftmost of equal ones, as tiktoken's strict ``<`` scan),
        then re-ranks the merged part with its two neighbours."""
        if len(piece) > _LONG_PIECE:
            return self._merge_long(piece)
        rank = self._rank
        starts = list(range(len(piece) + 1))
        ranks = [rank(piece[i:i + 2]) for i in range(len(piece) - 1)]
        ranks.append(_NONE)
        while True:
            low = min(ranks)
            if low == _NONE:
                return starts
            i = ranks.index(low)
            if i > 0:
                ranks[i - 1] = rank(piece[starts[i - 1]:starts[i + 2]])
            ranks[i] = rank(piece[starts[i]:starts[i + 3]]) if i + 3 < len(starts) else _NONE
            del starts[i + 1]
            del ranks[i + 1]

    def _merge_long(self, piece: bytes) -> list[int]:
        """:meth:`_merge` for a long piece, in O(n log n): the same choices from a heap of
        (rank, start) pairs, so the lowest rank and, of equal ones, the leftmost part comes out
        first, as in tiktoken's scan; an entry whose part was merged or re-ranked since is
        skipped (a part's new rank is that of different bytes: never its old rank)."""
        rank = self._rank
        n = len(piece)
        after = list(range(1, n + 2))    # the start of the next part
        before = list(range(-1, n + 1))  # the start of the previous part (-1: none)
        ranks = [rank(piece[i:i + 2]) for i in range(n - 1)]
        heap = [(r, i) for i, r in enumerate(ranks) if r != _NONE]
        ranks += (_NONE, _NONE)
        heapify(heap)
        while heap:
            r, i = heappop(heap)
            if ranks[i] != r:
                continue
            j = after[i]       # the part merged into part i
            k = after[j]       # the part after it
            ranks[j] = -1      # gone
            after[i], before[k] = k, i
            if k < n:
                ranks[i] = r = rank(piece[i:after[k]])
                if r != _NONE:
                    heappush(heap, (r, i))
            else:
                ranks[i] = _NONE
            p = before[i]
            if p >= 0:
                ranks[p] = r = rank(piece[p:k])
                if r != _NONE:
                    heappush(heap, (r, p))
        starts, i = [], 0
        while i < n:
            starts.append(i)
            i = after[i]
        starts.append(n)
        return starts

    @staticmethod
    def _utf8(text: str) -> str:
        """``text`` as tiktoken encodes it: lone surrogates (unencodable) become U+FFFD."""
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        return text

    def count(self, text: str) -> int:
        """``len(encoding.encode_ordinary(text))``; for a ``suspect`` text its UTF-8 length, an
        upper bound."""
        if suspect(text):
            return len(text.encode("utf-8", "surrogatepass"))
        n = 0
        cache = self._cache
        for piece in self.pieces.findall(self._utf8(text)):
            k = cache.get(piece)
            if k is None:
                raw = piece.encode("utf-8")
                k = 1 if len(raw) == 1 or self._rank(raw) != _NONE else len(self._merge(raw)) - 1
                if len(cache) >= _CACHE_PIECES:
                    cache.clear()
                cache[piece] = k
            n += k
        return n

    def token_lengths(self, text: str) -> list[int]:
        """The UTF-8 byte length of each token of ``text``, in order (a ``suspect`` text is
        not tokenised: the caller checks first)."""
        out: list[int] = []
        for piece in self.pieces.findall(self._utf8(text)):
            raw = piece.encode("utf-8")
            if len(raw) == 1 or self._rank(raw) != _NONE:
                out.append(len(raw))
            else:
                starts = self._merge(raw)
                out.extend(b - a for a, b in zip(starts, starts[1:]))
        return out

    def resident_bytes(self) -> int:
        """The table's size (blob, offsets, hash table), for the bench."""
        return (len(self._blob) + self._offsets.itemsize * len(self._offsets)
                + self._table.itemsize * len(self._table))
