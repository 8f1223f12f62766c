"""POST one streaming request through ``HTTPS_PROXY`` and hang up the moment a marker arrives.

Stdlib only: CONNECT, TLS (trusting ``SSL_CERT_FILE``), HTTP/1.1, then read the response until
``--until`` (e.g. ``response.completed`` or ``[DONE]``) has been received and close the socket at
once, without reading the rest of the body -- what an app does when it stops at the final event.
Prints one JSON line: ``{"status", "headers", "body" (text received), "hung_up": bool}``.

    python sse_hangup.py URL --json-body '{...}' [--header 'k: v' ...] --until MARKER
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import urllib.parse


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("--json-body", required=True)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--until", required=True)
    ns = ap.parse_args()
    url = urllib.parse.urlsplit(ns.url)
    proxy = urllib.parse.urlsplit(os.environ["HTTPS_PROXY"])
    host, port = url.hostname, url.port or 443
    raw = socket.create_connection((proxy.hostname, proxy.port), timeout=30)
    raw.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += raw.recv(4096)
    assert b" 200" in head.split(b"\r\n", 1)[0], head
    ctx = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    sock = ctx.wrap_socket(raw, server_hostname=host)
    body = ns.json_body.encode()
    lines = [f"POST {url.path} HTTP/1.1", f"Host: {host}", "content-type: application/json",
             f"authorization: Bearer {os.environ.get('OPENAI_API_KEY', '')}", f"content-length: {len(body)}",
             *ns.header]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
    got = b""
    marker = ns.until.encode()
    hung_up = False
    while True:
        data = sock.recv(65536)
        if not data:
            break
        got += data
        if marker in got:
            hung_up = True
            break
    head, _, rest = got.partition(b"\r\n\r\n")
    status_line, *hdrs = head.decode("latin-1").split("\r\n")
    sock.close()  # hang up now: the rest of the body is never read
    print(json.dumps({"status": int(status_line.split()[1]),
                      "headers": dict(h.lower().split(": ", 1) for h in hdrs if ": " in h),
                      "body": rest.decode("utf-8", "replace"), "hung_up": hung_up}))


if __name__ == "__main__":
    main()
