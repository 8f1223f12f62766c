"""Decode a compressed response stream as it arrives, in bounded pieces. Pure: bytes in, bytes out.

pouch asks providers for ``accept-encoding: identity``, but a provider (or a CDN in front of it)
may compress an SSE stream anyway. The meter must read the events, so the stream is decoded
chunk by chunk before it is framed (``StreamMeter``):

- ``gzip`` / ``x-gzip`` (several members too) and ``deflate`` (zlib-wrapped, or raw as some
  servers send it) with ``zlib.decompressobj``, whose ``max_length`` bounds every call's output;
- ``zstd`` with ``zstandard`` (a dependency of mitmproxy): its decompressor takes no output
  limit, so it is fed the compressed bytes ``ZSTD_SLICE`` (256) at a time; a zstd block is at
  most 128 KiB of output and costs at least 4 input bytes, so one slice yields at most 65
  blocks, about 8 MiB, before the per-chunk bound is checked. The window is limited to 8 MiB
  (RFC 8878's limit for HTTP), which bounds its memory;
- anything else, ``br`` included (the installed ``brotli`` decompressor has no output limit, and
  a few bytes of brotli can expand to megabytes), and layered encodings, are not decoded:
  :func:`stream_decoder` raises :class:`UndecodableStream` and the caller fails closed.

Output comes in pieces of at most ``PIECE`` bytes, so the meter can cut off after any piece
without decoding the rest; one input chunk may produce at most ``MAX_CHUNK_OUTPUT`` bytes (a
compression bomb raises :class:`UndecodableStream`). Real SSE compresses 5-30x, so an upstream
read of 64 KiB stays far below it.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

__all__ = ["UndecodableStream", "StreamDecoder", "DecodingMeter", "stream_decoder", "PIECE", "MAX_CHUNK_OUTPUT",
           "UNDECODABLE"]

#: the error code a stream meter sends when it cannot decode its stream
UNDECODABLE = "undecodable_stream"

#: the most decoded bytes handed to the meter at once
PIECE = 64 * 1024
#: the most decoded bytes one input chunk may produce (same as ``sse.MAX_EVENT_BYTES``)
MAX_CHUNK_OUTPUT = 8 * 1024 * 1024
#: compressed bytes fed to the zstd decompressor per call (bounds one call's output, see above)
ZSTD_SLICE = 256
#: the largest zstd window accepted
ZSTD_MAX_WINDOW = 8 * 1024 * 1024

_GZIP = 16 + zlib.MAX_WBITS


class UndecodableStream(ValueError):
    """The stream cannot be decoded safely: an unknown or unbounded encoding, corrupt data, or
    more output per chunk than ``MAX_CHUNK_OUTPUT``."""


def stream_decoder(content_encoding: str | None) -> StreamDecoder | None:
    """The decoder for a ``content-encoding`` header value; None for no encoding (``identity``)."""
    names = [n.strip().lower() for n in (content_encoding or "").split(",")]
    names = [n for n in names if n and n != "identity"]
    if not names:
        return None
    if len(names) > 1:
        raise UndecodableStream(f"content-encoding {content_encoding!r}: layered encodings are not decoded")
    name = names[0]
    if name in ("gzip", "x-gzip", "deflate", "zstd"):
        return StreamDecoder(name)
    raise UndecodableStream(f"content-encoding {name!r} cannot be decoded as it streams")


class StreamDecoder:
    """One stream's decoder; see the module docstring."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._head = b""  # deflate: the first bytes, until its wrapping is known
        if encoding in ("gzip", "x-gzip"):
            self._z = zlib.decompressobj(_GZIP)
        elif encoding == "deflate":
            self._z = None  # zlib-wrapped or raw: decided on the first two bytes
        elif encoding == "zstd":
            import zstandard  # mitmproxy's own dependency

            self._zstd_error = zstandard.ZstdError
            self._z = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).decompressobj(
                read_across_frames=True)
        else:
            raise UndecodableStream(f"content-encoding {encoding!r} cannot be decoded as it streams")
        self.decoded = 0  # bytes of output so far

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes of ``chunk``, in pieces of at most ``PIECE`` bytes (the caller may stop
        early). Raises ``UndecodableStream`` on corrupt data or too much output for one chunk."""
        budget = MAX_CHUNK_OUTPUT
        try:
            pieces = self._zstd(chunk) if self.encoding == "zstd" else self._zlib(chunk)
            for piece in pieces:
                budget -= len(piece)
                if budget < 0:
                    raise UndecodableStream(
                        f"a {len(chunk)}-byte {self.encoding} chunk expands to more than {MAX_CHUNK_OUTPUT} bytes")
                self.decoded += len(piece)
                yield piece
        except zlib.error as exc:
            raise UndecodableStream(f"corrupt {self.encoding} stream: {exc}") from None
        except ValueError as exc:
            if isinstance(exc, UndecodableStream):
                raise
            raise UndecodableStream(f"corrupt {self.encoding} stream: {exc}") from None
        except Exception as exc:
            if self.encoding == "zstd" and isinstance(exc, self._zstd_error):
                raise UndecodableStream(f"corrupt zstd stream: {exc}") from None
            raise

    def _zlib(self, data: bytes) -> Iterator[bytes]:
        z = self._z
        if z is None:  # deflate: RFC 9110 says zlib format; some servers send raw deflate
            data = self._head + data
            if len(data) < 2:
                self._head = data
                return
            self._head = b""
            cmf, flg = data[0], data[1]
            zlib_wrapped = cmf & 0x0F == 8 and (cmf << 8 | flg) % 31 == 0
            z = self._z = zlib.decompressobj(zlib.MAX_WBITS if zlib_wrapped else -zlib.MAX_WBITS)
        while True:
            out = z.decompress(data, PIECE)
            data = z.unconsumed_tail
            if out:
                yield out
            if z.eof:
                rest = z.unused_data
                if not rest:
                    return
                if self.encoding == "deflate":
                    raise UndecodableStream("data after the end of a deflate stream")
                z = self._z = zlib.decompressobj(_GZIP)  # the next gzip member
                data = rest
                continue
            if not data and len(out) < PIECE:
                return  # all input consumed and no output held back

    def _zstd(self, data: bytes) -> Iterator[bytes]:
        z = self._z
        for i in range(0, len(data), ZSTD_SLICE):
            out = z.decompress(data[i:i + ZSTD_SLICE])
            for j in range(0, len(out), PIECE):
                yield out[j:j + PIECE]


class DecodingMeter:
    """What every stream meter does with a compressed stream (mixed into ``metering.StreamMeter``
    and ``providers.streams.ProviderStreamMeter``): decode it in bounded pieces and meter each as
    a plain chunk with the class's own ``feed``, stopping at a cut-off; fail closed (cut at once,
    the error event only) when it cannot be decoded. The host class provides ``cut``,
    ``_cut_event(code, message)`` and ``_join(out)``."""

    cut: bool
    undecodable: str | None = None  # why the stream cannot be decoded (fail closed)
    _decoder: StreamDecoder | None = None

    def _setup_decoding(self, content_encoding: str | None) -> None:
        try:
            self._decoder = stream_decoder(content_encoding)
        except UndecodableStream as exc:
            self.undecodable = str(exc)
        if self._decoder is not None or self.undecodable is not None:
            self.feed = self._feed_encoded  # type: ignore[method-assign]  # the plain path keeps no test

    def _feed_encoded(self, chunk: bytes) -> list[bytes]:
        if self.cut or not chunk:
            return []
        if self.undecodable is not None:
            return self._fail_undecodable()
        plain = type(self).feed  # the class's own feed (the instance's is this method)
        out: list[bytes] = []
        try:
            for piece in self._decoder.decode(chunk):  # type: ignore[union-attr]
                out += plain(self, piece)  # type: ignore[attr-defined]
                if self.cut:
                    break
        except UndecodableStream as exc:
            self.undecodable = str(exc)
            out += self._fail_undecodable()
        return self._join(out)  # type: ignore[attr-defined]

    def _fail_undecodable(self) -> list[bytes]:
        self.cut = True
        return [self._cut_event(UNDECODABLE, f"pouch: {self.undecodable}; the response cannot be metered, "  # type: ignore[attr-defined]
                                             "stream cut off")]
