"""``EventTemplate``: a stream event that repeats but for a few values, read without the JSON
scanner. Pure.

Within one stream a provider repeats every byte of its text events but a few values: the text
(and Anthropic's block index, Gemini's running token counts). A template is learnt from one event
the meter parsed: its ``data`` cut into literal pieces around *holes* (the JSON string or integer
values at a few key paths), and checked by parsing ``data`` with other values in the holes: that
must give the parsed object with exactly those values changed, else no template.

:meth:`EventTemplate.match` then reads an event's ``data`` as the literal pieces with, in each
hole, a JSON string (decoded by ``json``'s own C ``scanstring``, strict, as ``json.loads`` does) or
a JSON integer (``0|[1-9][0-9]{0,17}``). A match means the event parses to the learnt object with
those values (the JSON tokens around a hole are the learnt event's, and what fills a hole is one
token of the same kind: the check above rules out a literal that would extend it), so the meter
does what the object did to its state, with these values, without parsing the event. Anything
else (another shape, an escape ``scanstring`` refuses, a float, a huge integer) does not match and
is parsed as before. When the learnt event was a chunk of its own in one of the SSE parser's
inline framings (``data: ...`` + a blank line, or ``event: NAME`` + ``data: ...``), ``header`` and
``tail`` let the meter frame a chunk that is exactly one such event itself.
"""

from __future__ import annotations

import json
import re
from json.decoder import scanstring
from typing import Any

__all__ = ["EventTemplate", "learn", "STR", "INT"]

STR, INT = 0, 1
#: a JSON integer the matcher takes (no sign; at most 18 digits, beyond that: parsed)
_INT = re.compile(r"0|[1-9][0-9]{0,17}")


#: a string hole without escapes (the common case), and an integer hole, as regex groups; the
#: literals around them are groups of their length, compared with the learnt ones afterwards, so
#: the pattern depends only on the lengths (cached: a stream's own ids do not cost a compile)
_PLAIN = '([^"\\\\\x00-\x1f]*+)'
_DIGITS = "(0|[1-9][0-9]{0,17}+)"
_patterns: dict[tuple, Any] = {}


def _pattern(kinds: tuple[int, ...], lengths: tuple[int, ...], raw: bool) -> Any:
    key = (kinds, lengths, raw)
    rx = _patterns.get(key)
    if rx is None:
        if len(_patterns) > 256:
            _patterns.clear()
        pat = f"(.{{{lengths[0]}}})" + "".join((_PLAIN if k is STR else _DIGITS) + f"(.{{{n}}})"
                                                for k, n in zip(kinds, lengths[1:]))
        rx = _patterns[key] = re.compile(pat.encode() if raw else pat, re.DOTALL)
    return rx


class EventTemplate:
    """Literal pieces and holes of one event shape (see the module docstring).

    ``first`` is the literal before the first hole; ``holes`` the kind of each hole and the
    literal after it (a string hole's opening quote ends the literal before it, its closing
    quote starts the one after it). Exactly one hole is a string (``text_at``). ``rx`` matches
    ``data`` whose string hole has no escape (``raw_rx`` the whole chunk ``header`` + data +
    ``tail``), its literal groups then compared with ``lits`` (``raw_lits``); :meth:`values` also
    takes escapes. ``info`` is the meter's own (what the learnt object did that does not depend
    on the holes)."""

    __slots__ = ("event", "header", "tail", "first", "holes", "min_len", "info", "rx", "raw_rx",
                 "lits", "raw_lits", "text_at", "paths")

    def __init__(self, event: str | None, header: bytes | None, tail: bytes, first: str,
                 holes: tuple[tuple[int, str], ...], info: Any, paths: tuple[tuple, ...] = ()) -> None:
        self.paths = paths  # the key path of each hole, in the order of the holes
        self.event = event
        self.header = header
        self.tail = tail
        self.first = first
        self.holes = holes
        self.min_len = len(first) + sum(len(lit) for _, lit in holes)
        self.info = info
        kinds = tuple(kind for kind, _ in holes)
        if kinds.count(STR) != 1:
            raise ValueError("a template has exactly one string hole")
        self.text_at = 2 * kinds.index(STR) + 1  # in the regex's groups
        # the regex's literals keep a string hole's closing quote (the values() pieces do not)
        lits = [first, *(('"' + lit) if kind is STR else lit for kind, lit in holes)]
        self.lits = tuple(lits)
        self.rx = _pattern(kinds, tuple(len(x) for x in lits), False)
        self.raw_rx = self.raw_lits = None
        if header is not None:
            blits = [x.encode("utf-8") for x in lits]
            blits[0] = header + blits[0]
            blits[-1] += tail
            self.raw_lits = tuple(blits)
            self.raw_rx = _pattern(kinds, tuple(len(x) for x in blits), True)

    def values(self, data: str) -> list[Any] | None:
        """Literals and hole values, alternating as :meth:`match`'s groups (the string decoded,
        the integers as digit strings) when ``data`` has this shape, escapes in the string hole
        included; else None."""
        if len(data) < self.min_len or not data.startswith(self.first):
            return None
        pos = len(self.first)
        values: list[Any] = [self.first]
        for kind, lit in self.holes:
            if kind is STR:
                try:
                    value, pos = scanstring(data, pos)
                except ValueError:
                    return None
            else:
                m = _INT.match(data, pos)
                if m is None:
                    return None
                pos = m.end()
                value = m.group()
            if not data.startswith(lit, pos):
                return None
            pos += len(lit)
            values += (value, lit)
        return values if pos == len(data) else None

    def match(self, data: str) -> tuple[str, Any] | None:
        """(the string value, the hole values) when ``data`` has this shape, else None. The hole
        values are at odd places (the integers as digit strings: ``int()`` them)."""
        m = self.rx.fullmatch(data)
        if m is not None:
            g = m.groups()
            if g[::2] == self.lits:
                return g[self.text_at], g
        if "\\" in data:  # an escape in the string (or a shape that does not match anyway)
            v = self.values(data)
            if v is not None:
                return v[self.text_at], v
        return None

    def match_raw(self, chunk: bytes) -> tuple[str, Any] | None:
        """:meth:`match` of a whole chunk ``header`` + data + ``tail`` (``header`` is not None)."""
        m = self.raw_rx.fullmatch(chunk)
        if m is not None:
            g = m.groups()
            if g[::2] == self.raw_lits:
                try:
                    return g[self.text_at].decode("utf-8"), g
                except UnicodeDecodeError:
                    return None
        if b"\\" in chunk and chunk.startswith(self.header) and chunk.endswith(self.tail):
            try:
                data = chunk[len(self.header):len(chunk) - len(self.tail)].decode("utf-8")
            except UnicodeDecodeError:
                return None
            v = self.values(data)
            if v is not None:
                return v[self.text_at], v
        return None


def _get(obj: Any, path: tuple) -> Any:
    for step in path:
        obj = obj[step]
    return obj


def _replaced(obj: Any, path: tuple, value: Any) -> Any:
    """A copy of ``obj`` with the value at ``path`` replaced (the containers on the path copied)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if obj.__class__ is dict:
        return {**obj, head: _replaced(obj[head], rest, value)}
    out = list(obj)
    out[head] = _replaced(obj[head], rest, value)
    return out


def _hole(data: str, key: str, value: Any) -> tuple[int, int] | None:
    """Where the value of the only member ``key`` lies in ``data`` (a string's span without its
    quotes), when it reads back as ``value``; else None. ``"key":`` cannot lie inside a JSON
    string (a quote there is escaped), so the only occurrence is the member."""
    needle = f'"{key}":'
    at = data.find(needle)
    if at < 0 or data.find(needle, at + 1) >= 0:
        return None
    pos = at + len(needle)
    if data.startswith(" ", pos):
        pos += 1
    if value.__class__ is str:
        if not data.startswith('"', pos):
            return None
        try:
            got, end = scanstring(data, pos + 1)
        except ValueError:
            return None
        return (pos + 1, end - 1) if got == value else None
    m = _INT.match(data, pos)
    if m is None or int(m.group()) != value:
        return None
    return pos, m.end()


def _framing(event: str | None, data: str, raw: bytes) -> tuple[bytes | None, bytes]:
    """(header, tail) when ``raw`` is one of the SSE parser's inline framings of the event, so
    that header + data + tail frames to (``event``, ``data``) alone; else (None, b"")."""
    try:
        enc = data.encode("utf-8")
    except UnicodeEncodeError:
        return None, b""
    for tail in (b"\n\n", b"\r\n\r\n"):
        if raw.endswith(enc + tail):
            header = raw[:len(raw) - len(enc) - len(tail)]
            if header == b"data: " and event is None:
                return header, tail
            if tail == b"\n\n" and event is not None and header == b"event: " + event.encode("utf-8") + b"\ndata: ":
                return header, tail
    return None, b""


def learn(event: str | None, data: str, raw: bytes, obj: dict[str, Any], paths: list[tuple],
          info: Any) -> EventTemplate | None:
    """The template of ``data`` (parsed to ``obj``) with holes at ``paths`` (each ends in the key
    of a string or int value), or None when the shape cannot be made safe (see the module doc).
    The holes are in the order they appear in ``data`` (``EventTemplate.paths``), not of ``paths``."""
    if "\n" in data or "\r" in data:
        return None
    spans = []
    for path in paths:
        value = _get(obj, path)
        if value.__class__ is not str and value.__class__ is not int:
            return None
        span = _hole(data, path[-1], value)
        if span is None:
            return None
        spans.append((span, path, value))
    spans.sort(key=lambda s: s[0])
    for (a, _, _), (b, _, _) in zip(spans, spans[1:]):
        if b[0] < a[1] + 1:
            return None
    # the pieces, and the check: other values in the holes parse to obj with those values
    lits: list[str] = []
    pos = 0
    filled: list[str] = []
    expect: Any = obj
    holes = []
    for (start, end), path, value in spans:
        lits.append(data[pos:start])
        pos = end
        if value.__class__ is str:
            other = "q" if value != "q" else "r"
            holes.append(STR)
        else:
            other = value + 1
            holes.append(INT)
        filled.append(lits[-1] + (other if value.__class__ is str else str(other)))
        expect = _replaced(expect, path, other)
    filled.append(data[pos:])
    try:
        if json.loads("".join(filled)) != expect:
            return None
    except ValueError:
        return None
    # the literal after a string hole starts after its closing quote (``scanstring`` consumes it);
    # the one before it ends with its opening quote
    after = [*lits[1:], data[pos:]]
    pieces = tuple((kind, lit[1:] if kind is STR else lit) for kind, lit in zip(holes, after))
    if holes.count(STR) != 1:
        return None
    header, tail = _framing(event, data, raw)
    return EventTemplate(event, header, tail, lits[0], pieces, info, tuple(path for _, path, _ in spans))
