"""A response pouch does not bill reaches the client as it arrives (issue 16 §3, the probe gap).

pouch needs the body of a billed answer (to price it) but not of a free one (``GET /v1/models``):
buffering that body put mitmproxy's ``response`` event walk and a loop turn between the
provider's bytes and the client's, which under metered streams made an unrelated request wait
longer than through bare mitmdump (``stream_large_bodies``). The fake holds the second half of
the body until the test opens a gate: the head must reach the client before that.
"""

from __future__ import annotations

import json
import socket
import ssl

from harness import Harness
from pouch_addon.budget import Ledger
from decimal import Decimal as D


def _tunnel(proxy) -> ssl.SSLSocket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=20)
    sock.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.split(b" ")[1] == b"200", head
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx.wrap_socket(sock, server_hostname="api.openai.com")


def test_free_response_head_is_forwarded_before_its_body_is_whole(e2e: Harness, fake, tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D("1"))
    proxy = e2e.start_proxy(home, {})
    gate = tmp_path / "gate"
    tls = _tunnel(proxy)
    try:
        tls.sendall(f"GET /v1/models HTTP/1.1\r\nHost: api.openai.com\r\nx-fake-hold-body: {gate}\r\n\r\n".encode())
        tls.settimeout(10)  # a bound for a hung proxy, not a speed claim: the fake holds the rest until the gate opens
        got = b""
        try:
            while b"\r\n\r\n" not in got:
                data = tls.recv(65536)
                assert data, "connection closed before the response head"
                got += data
        except socket.timeout:
            raise AssertionError("pouch held a free response until its body was whole: no head came while "
                                 "the provider held the rest of the body") from None
        head, _, body = got.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        length = int(next(v for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:])
                          if k.strip().lower() == b"content-length"))
        assert len(body) < length  # the provider's first half only: the rest is held
        gate.write_text("open")
        while len(body) < length:
            data = tls.recv(65536)
            assert data, "connection closed before the body's end"
            body += data
        assert [m["id"] for m in json.loads(body)["data"]][:2] == ["gpt-4o", "gpt-4o-mini"]
    finally:
        tls.close()
    assert [r["path"] for r in fake.requests()] == ["/v1/models"]
