"""A raw HTTP/1.1 client through the proxy's CONNECT tunnel, for requests no polite client sends.

curl and the SDK normalise what they send (one Host, one Content-Length, origin-form paths);
an attacker does not. ``raw_request`` opens ``CONNECT target`` on the proxy, does TLS with the
given SNI trusting only the proxy's CA, writes the request bytes exactly as given and reads one
response (Content-Length, chunked, or until close; a 101 is returned after its head).
"""

from __future__ import annotations

import json
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any


@dataclass
class RawResponse:
    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    connect_status: int | None = None
    error: str | None = None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str | None:
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    @property
    def message(self) -> str:
        try:
            return str(self.json()["error"]["message"])
        except (ValueError, KeyError, TypeError):
            return self.body[:300].decode("utf-8", "replace")


def _read_head(f) -> tuple[int | None, dict[str, str]]:  # noqa: ANN001
    line = f.readline(65536)
    if not line:
        return None, {}
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
    headers: dict[str, str] = {}
    while True:
        h = f.readline(65536)
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        k = k.strip().lower()
        headers[k] = f"{headers[k]}, {v.strip()}" if k in headers else v.strip()
    return status, headers


def _read_body(f, headers: dict[str, str], status: int | None, head_only: bool) -> bytes:  # noqa: ANN001
    if head_only or status in (101, 204, 304) or (status is not None and status < 200):
        return b""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        out = []
        while True:
            size_line = f.readline(65536)
            if not size_line:
                break
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while f.readline(65536) not in (b"\r\n", b"\n", b""):
                    pass
                break
            out.append(f.read(size))
            f.readline(65536)
        return b"".join(out)
    if "content-length" in headers:
        return f.read(int(headers["content-length"].split(",")[0]))
    return f.read()


def raw_request(proxy_port: int, ca: str, data: bytes, *, connect: str = "api.openai.com:443",
                sni: str | None = "api.openai.com", head_only: bool = False, timeout: float = 15.0) -> RawResponse:
    """Send ``data`` (a whole HTTP/1.1 request, bytes as given) inside a CONNECT tunnel."""
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {connect} HTTP/1.1\r\nHost: {connect}\r\n\r\n".encode())
        f0 = sock.makefile("rb")
        cstatus, _ = _read_head(f0)
        if cstatus != 200:
            return RawResponse(None, connect_status=cstatus, error="CONNECT refused")
        ctx = ssl.create_default_context(cafile=str(ca))
        ctx.set_alpn_protocols(["http/1.1"])
        if sni is None:
            ctx.check_hostname = False
        tls = ctx.wrap_socket(sock, server_hostname=sni)
        tls.sendall(data)
        f = tls.makefile("rb")
        try:
            status, headers = _read_head(f)
            while status is not None and 100 <= status < 200 and status != 101:  # 100 Continue and kin
                status, headers = _read_head(f)
            body = _read_body(f, headers, status, head_only)
        except (OSError, ValueError) as exc:
            return RawResponse(None, connect_status=cstatus, error=repr(exc))
        return RawResponse(status, headers, body, cstatus)
    finally:
        sock.close()


def http_request(method: str, path: str, *, host: str | None = "api.openai.com", body: bytes | None = None,
                 headers: list[tuple[str, str]] | None = None, content_length: bool = True) -> bytes:
    """The bytes of one request; ``headers`` are written in order, as given."""
    lines = [f"{method} {path} HTTP/1.1"]
    if host is not None:
        lines.append(f"Host: {host}")
    for k, v in headers or []:
        lines.append(f"{k}: {v}")
    if body is not None and content_length:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")
