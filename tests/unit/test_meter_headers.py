"""``meter.content_type_and_encoding``: what mitmproxy's ``Headers.get`` returns, in one pass."""

from __future__ import annotations

import pytest
from mitmproxy import http

from pouch_addon.addons.meter import content_type_and_encoding


@pytest.mark.parametrize("fields", [
    [],
    [(b"Content-Type", b"text/event-stream; charset=utf-8")],
    [(b"content-type", b"application/json"), (b"Content-Encoding", b"gzip"), (b"content-length", b"12")],
    [(b"CONTENT-TYPE", b"a"), (b"x-content-type", b"no"), (b"Content-Type", b"b"), (b"content-encoding", b"br"),
     (b"Content-Encoding", b"gzip")],
    [(b"content-type", "text/plain; name=\u00e9".encode()), (b"content-encoding", b"\xff\xfe")],
    [(b"content-typ", b"x"), (b"content-encodings", b"y")],
])
def test_as_mitmproxys_headers_get(fields):
    headers = http.Headers(fields)
    assert content_type_and_encoding(headers) == (headers.get("content-type", ""), headers.get("content-encoding"))
