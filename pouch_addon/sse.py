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
