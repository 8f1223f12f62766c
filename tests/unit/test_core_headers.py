"""``core.set_header`` / ``core.set_content``: what mitmproxy's ``headers[...] =`` and ``.content =`` do."""

from __future__ import annotations

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from pouch_addon.addons.core import set_content, set_header

FIELDS = [
    [],
    [(b"Host", b"api.openai.com"), (b"Content-Type", b"application/json"), (b"Content-Length", b"12")],
    [(b"content-length", b"1"), (b"x", b"y"), (b"CONTENT-LENGTH", b"2"), (b"Accept-Encoding", b"gzip, br")],
    [(b"accept-encoding", b"gzip"), (b"Transfer-Encoding", b"chunked")],
    [(b"Content-Encoding", b"gzip"), (b"content-length", b"5")],
    [(b"content-encoding", b"identity")],
    [(b"content-encoding", b"nonsense"), (b"content-length", b"5")],
    [(b"content-lengthx", b"5"), (b"accept-encodin", b"x"), (b"transfer-encodin", b"x")],
]


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("name", [b"accept-encoding", b"content-length"])
def test_set_header_as_mitmproxys(fields, name):
    a, b = http.Headers(fields), http.Headers(fields)
    a[name.decode()] = "identity"
    set_header(b, name, b"identity")
    assert a.fields == b.fields


@pytest.mark.parametrize("fields", FIELDS)
@pytest.mark.parametrize("data", [b"", b'{"model":"gpt-4o","stream":true}'])
def test_set_content_as_mitmproxys(fields, data):
    a, b = tutils.treq(content=b"old body"), tutils.treq(content=b"old body")
    a.headers, b.headers = http.Headers(fields), http.Headers(fields)
    a.content = data
    set_content(b, data)
    assert (a.raw_content, a.headers.fields) == (b.raw_content, b.headers.fields)
