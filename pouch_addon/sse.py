"""Incremental Server-Sent-Events framing for a proxied stream. Pure: bytes in, events out.

mitmproxy hands the stream over in arbitrary pieces (TCP reads / HTTP chunks): one piece may hold
several events, half an event, or half a UTF-8 character. ``SSEParser.feed`` returns the events
completed so far and keeps the rest; ``flush`` ends the stream.

Parsing follows the SSE spec the way the OpenAI / Anthropic SDKs implement it:

- lines end in ``\\r\\n``, ``\\n`` or ``\\r``; a blank line ends an event;
- lines starting with ``:`` are comments (ignored, but kept in ``raw``);
- ``field:value`` with one leading space of the value stripped; a line without ``:`` is a field
  with an empty value; several ``data`` lines are joined with ``\\n``;
- ``event`` names the event; ``id``, ``retry`` and unknown fields are ignored;
- a UTF-8 byte-order mark at the very start of the stream is skipped (kept in ``raw``).

Every byte of the stream ends up in exactly one event's ``raw`` (or in ``flush``'s leftover), so
forwarding the ``raw`` of every event reproduces the stream byte for byte, and an event can be
dropped by not forwarding its ``raw``. Blocks without a ``data`` field (a keep-alive comment,
an extra blank line) are returned too, with ``has_data=False``, so they can be forwarded at once.

Cost: a ``feed`` looks for line ends only in the bytes that arrived since the last line end
(``rfind``), then splits the newly completed lines in one ``bytes.splitlines`` call; every byte is
scanned and copied a bounded number of times, so a ``feed`` is O(len(chunk)) however the stream
is cut (a long line arriving in many small chunks is not rescanned), and UTF-8 is decoded once per
complete event (so a character split across chunks is never decoded in halves).

Fast path: ``feed`` runs for every chunk of every metered stream, and LLM APIs send "\n" line
ends and events of one ``data:`` line (``event:`` + ``data:`` for Responses and Anthropic; Gemini
sends one ``data:`` line per chunk with "\r\n" line ends, framed inline too). A chunk without
"\r" is cut at its blank lines with one ``bytes.split`` (a chunk of exactly one event with a
few ``find`` calls, no split at all), an event begun in earlier chunks is framed again from its
held bytes when it ends, and a partial tail is only stored. Any other shape (several lines,
other fields, a "\r", a byte-order mark, an oversize event) falls back to the general path
above, which gives the same events however the stream is cut -- so the result is identical.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SSEEvent", "SSEParser", "SSEError", "MAX_EVENT_BYTES"]

#: an event (its raw bytes) larger than this is refused: an SSE event of an LLM API is a few KiB
MAX_EVENT_BYTES = 8 * 1024 * 1024

_BOM = b"\xef\xbb\xbf"


class SSEError(ValueError):
    """The stream cannot be framed safely (an event over the size limit).

    ``events`` holds the events completed in the same ``feed`` before the problem, so a caller can
    still forward them. The parser must not be fed again after raising.
    """

    def __init__(self, message: str, events: list[SSEEvent] | None = None) -> None:
        super().__init__(message)
        self.events: list[SSEEvent] = list(events or [])


@dataclass(slots=True)
class SSEEvent:
    event: str | None  # the ``event:`` field (last one wins), None when absent
    data: str          # the ``data:`` lines joined with "\n" ("" when none)
    raw: bytes         # the exact bytes of the event incl. its terminating blank line
    has_data: bool = True  # False: no ``data`` field (comments / blank lines only, or event/id only)


class SSEParser:
    """Feed it bytes as they arrive; get complete events back."""

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        if max_event_bytes <= 0:
            raise ValueError("max_event_bytes must be positive")
        self.max_event_bytes = max_event_bytes
        self._reset()
        self._bom_checked = False

    def _reset(self) -> None:
        self._buf = bytearray()  # bytes from the start of the current event on
        self._start = 0          # start of the current event in _buf (compacted once per feed)
        self._pos = 0            # start of the next unprocessed line
        self._scan = 0           # where to look for the next line end (no line end in [_pos, _scan))
        self._event: bytes | None = None
        self._data: list[bytes] = []

    # -- public ----------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return the events they complete (the partial tail is kept)."""
        if not chunk:
            return []
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if self._buf:
            if self._bom_checked and 13 not in chunk:
                return self._feed_lf(chunk)
            return self._feed(chunk)
        if not self._bom_checked:
            if chunk[0] == 0xEF:
                return self._feed(chunk)  # perhaps a byte-order mark
            self._bom_checked = True  # what _skip_bom decides for a stream not starting with 0xEF
        if 13 in chunk:  # "\r"
            # Gemini frames each event as ONE "data:<line>\r\n\r\n": the same event, inline
            end = len(chunk) - 4
            if (end > 4 and chunk.find(13) == end and chunk.find(10) == end + 1 and chunk.endswith(b"\r\n\r\n")
                    and chunk.startswith(b"data:") and end + 4 <= self.max_event_bytes):
                data = chunk[6:end] if chunk[5] == 32 else chunk[5:end]
                return [SSEEvent(None, data.decode("utf-8", "replace"), chunk)]
            return self._feed(chunk)
        # The usual chunk: the parser is empty and the chunk is ONE event, "data:<line>\n\n" or
        # "event:<line>\ndata:<line>\n\n" (what _lines + _line + _make give for it, inline)
        end = len(chunk) - 2
        nl = chunk.find(10)  # "\n"
        if nl == end:
            if chunk[-1] == 10 and chunk.startswith(b"data:") and end + 2 <= self.max_event_bytes:
                data = chunk[6:end] if chunk[5] == 32 else chunk[5:end]
                return [SSEEvent(None, data.decode("utf-8", "replace"), chunk)]
        elif (0 < nl < end and chunk[-1] == 10 and chunk.startswith(b"event:")
              and chunk.startswith(b"data:", nl + 1) and chunk.find(10, nl + 1) == end
              and end + 2 <= self.max_event_bytes):
            name = chunk[7:nl] if chunk[6] == 32 else chunk[6:nl]
            data = chunk[nl + 7:end] if chunk[nl + 6] == 32 else chunk[nl + 6:end]
            return [SSEEvent(name.decode("utf-8", "replace"), data.decode("utf-8", "replace"), chunk)]
        return self._feed_lf(chunk)

    def at_boundary(self) -> bool:
        """Nothing is held and the byte-order mark is settled: the next byte starts an event (a
        caller may frame a chunk that is exactly one event itself, leaving the parser as it is)."""
        return self._bom_checked and not self._buf

    def flush(self) -> tuple[list[SSEEvent], bytes]:
        """End of stream: the remaining events (a final one without its blank line included) and
        any leftover bytes that form no event (e.g. a trailing comment). Resets the parser."""
        if not self._bom_checked:
            self._skip_bom()
        events: list[SSEEvent] = []
        self._lines(events, final=True)
        if self._pos < len(self._buf):  # a last line without a line end
            self._line(bytes(self._buf[self._pos:]).rstrip(b"\r\n"))
            self._pos = self._scan = len(self._buf)
        leftover = b""
        if self._data:
            raw = bytes(self._buf[self._start:])
            if len(raw) > self.max_event_bytes:
                raise SSEError(self._too_big(len(raw), complete=True), events)
            events.append(self._make(raw))
        elif self._start < len(self._buf):
            leftover = bytes(self._buf[self._start:])
        self._reset()
        self._bom_checked = False
        return events, leftover

    # -- the fast path: no "\r" in the chunk -------------------------------------------------------
    def _feed_lf(self, chunk: bytes) -> list[SSEEvent]:
        """``feed`` of a chunk without "\r" (the byte-order mark already handled).

        The events that end in the chunk are cut out with ``bytes.split(b"\n\n")`` by
        ``_whole_events`` when each is one of the usual shapes; any other shape goes through the
        general ``_feed``. An unfinished event held from earlier chunks (without "\r") is parsed
        again from its bytes together with the chunk that ends it (each byte at most once more),
        and an unfinished tail is only stored (its lines are parsed when it ends, or by the
        general path). The general parser gives the same events however the stream is cut, and
        wherever the stream so far ends in a blank line the parser is empty (the last line is
        blank, no "\r" can pair with its "\n"), so the pieces can be framed separately.
        """
        buf = self._buf
        if buf:
            if chunk.find(b"\n\n") < 0 and not (chunk[0] == 10 and buf[-1] == 10):
                return self._feed(chunk)  # the held event goes on
            if buf[0] == 0xEF or 13 in buf:  # a byte-order mark's bytes (as data), a "\r"
                return self._feed(chunk)
            chunk = bytes(buf) + chunk
            buf.clear()  # _reset
            self._start = self._pos = self._scan = 0
            self._event = None
            if self._data:
                self._data = []
        end = chunk.rfind(b"\n\n") + 2
        if end == len(chunk):  # the common case: whole events only
            events = self._whole_events(chunk)
            return self._feed(chunk) if events is None else events
        events = []
        if end > 1:
            whole = chunk[:end]
            fast = self._whole_events(whole)
            if fast is None:
                events = self._feed(whole)  # may raise: nothing earlier to add
            else:
                events = fast
        tail = chunk[end:] if end > 1 else chunk
        if len(tail) > self.max_event_bytes:  # the general path raises the error
            try:
                return events + self._feed(tail)
            except SSEError as exc:
                exc.events[:0] = events  # the events completed earlier in this feed
                raise
        # the parser is empty: store the tail with its lines unparsed (_pos == _scan == 0)
        self._buf += tail
        return events

    def _whole_events(self, seg: bytes) -> list[SSEEvent] | None:
        """The events of ``seg`` -- whole events ending in a blank line, "\n" line ends only, the
        parser empty -- when every one is ``data:<line>``, ``event:<line>`` + ``data:<line>`` or
        a one-line ``:comment``; None otherwise (nothing consumed; the caller uses ``_feed``)."""
        if len(seg) > self.max_event_bytes:
            return None  # the general path reports which event is too big
        parts = seg.split(b"\n\n")
        if parts.pop():  # "\n\n\n": a blank line more
            return None
        single = len(parts) == 1
        events: list[SSEEvent] = []
        for part in parts:
            if 10 not in part:  # one line
                if part.startswith(b"data:"):
                    name = None
                    data = part[6:] if part[5:6] == b" " else part[5:]
                elif part.startswith(b":"):  # a keep-alive comment
                    events.append(SSEEvent(None, "", seg if single else part + b"\n\n", False))
                    continue
                else:
                    return None
            else:
                nl = part.find(10)
                if not part.startswith(b"event:") or not part.startswith(b"data:", nl + 1) \
                        or part.find(10, nl + 1) >= 0:
                    return None
                name = (part[7:nl] if part[6:7] == b" " else part[6:nl]).decode("utf-8", "replace")
                data = part[nl + 7:] if part[nl + 6:nl + 7] == b" " else part[nl + 6:]
            events.append(SSEEvent(name, data.decode("utf-8", "replace"), seg if single else part + b"\n\n"))
        return events

    # -- the general path ------------------------------------------------------------------------
    def _feed(self, chunk: bytes) -> list[SSEEvent]:
        self._buf += chunk
        if not self._bom_checked:
            if len(self._buf) < len(_BOM) and _BOM.startswith(bytes(self._buf)):
                return []  # could still be a split byte-order mark
            self._skip_bom()
        events: list[SSEEvent] = []
        try:
            self._lines(events, final=False)
        finally:
            # drop the bytes of the events already returned (one move per feed, not per event)
            if self._start:
                del self._buf[: self._start]
                self._pos -= self._start
                self._scan -= self._start
                self._start = 0
        if len(self._buf) > self.max_event_bytes:
            raise SSEError(self._too_big(len(self._buf), complete=False), events)
        return events

    # -- internals -------------------------------------------------------------------------------
    def _skip_bom(self) -> None:
        self._bom_checked = True
        if self._buf.startswith(_BOM):
            self._pos = self._scan = len(_BOM)

    def _lines(self, events: list[SSEEvent], *, final: bool) -> None:
        """Process every complete line in ``_buf[_pos:]``: one ``splitlines`` over the lines that
        ended since the last call (``bytes.splitlines`` knows exactly ``\\r``, ``\\n``, ``\\r\\n``)."""
        buf = self._buf
        end = len(buf)
        scan = self._scan
        last = max(buf.rfind(b"\n", scan), buf.rfind(b"\r", scan))
        if last < 0:
            self._scan = end
            return
        if last == end - 1 and buf[last] == 0x0D and not final:
            # a trailing "\r" may be the first half of "\r\n": only the lines before it are done
            self._scan = last
            last = max(buf.rfind(b"\n", scan, last), buf.rfind(b"\r", scan, last))
            if last < 0:
                return
        else:
            self._scan = last + 1
        stop = last + 1
        off = self._pos
        self._pos = stop
        for line in bytes(buf[off:stop]).splitlines(True):
            off += len(line)
            content = line.rstrip(b"\r\n")
            if content:
                self._line(content)
                continue
            # a blank line ends the event
            raw_len = off - self._start
            if raw_len > self.max_event_bytes:
                raise SSEError(self._too_big(raw_len, complete=True), events)
            events.append(self._make(bytes(buf[self._start:off])))
            self._start = off
            self._event = None
            self._data = []

    def _line(self, line: bytes) -> None:
        if line.startswith(b"data:"):  # the common case first
            self._data.append(line[6:] if line[5:6] == b" " else line[5:])
            return
        if line[0] == 0x3A:  # ":" comment
            return
        colon = line.find(b":")
        if colon < 0:
            name, value = line, b""
        else:
            name = line[:colon]
            value = line[colon + 2:] if line[colon + 1:colon + 2] == b" " else line[colon + 1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
        # id, retry and unknown fields: ignored

    def _make(self, raw: bytes) -> SSEEvent:
        name = None if self._event is None else self._event.decode("utf-8", "replace")
        parts = self._data
        data = (parts[0] if len(parts) == 1 else b"\n".join(parts)).decode("utf-8", "replace")
        return SSEEvent(name, data, raw, bool(self._data))

    def _too_big(self, size: int, *, complete: bool) -> str:
        what = "an SSE event of" if complete else "an unfinished SSE event of at least"
        return (f"{what} {size} bytes exceeds the limit of {self.max_event_bytes} bytes; "
                "refusing to buffer it")
