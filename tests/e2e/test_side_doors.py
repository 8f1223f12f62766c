"""Side doors around the gate, end to end (issue 13, items 1, 2, 8, 9): real mitmdump + pouch,
the fake provider, raw requests through the CONNECT tunnel (``raw_client.py``) and curl.

Each test runs with LLM traffic *paused*, so anything the gate priced answers 402 and anything
that reached the fake slipped past it. What slipped is read from the fake's own log.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import time
import zlib
from decimal import Decimal as D

import pytest

from pouch_addon.budget import Ledger
from pouch_addon.keystore import KeyStore
from pouch_addon.vault import Vault
from harness import wait_until
from raw_client import http_request, raw_request

REAL_KEY = "sk-proj-REALkey0123456789abcdefghijklmnopqrstuv"
PASSPHRASE = "side doors passphrase"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
WS_HEADERS = [("Upgrade", "websocket"), ("Connection", "Upgrade"),
              ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
              ("OpenAI-Beta", "realtime=v1")]


def paused_proxy(e2e, tmp_path, sets=None, *, vault=False):
    home = tmp_path / "home"
    ledger = Ledger(home)
    ledger.set_budget(D(1))
    ledger.set_paused(True)
    vkey = None
    if vault:
        Vault.create(home / "vault.json", None, home / "vault.key").put("openai", REAL_KEY)
        vkey, _ = KeyStore(home).issue("agent", now=time.time())
    proxy = e2e.start_proxy(home, sets or {})
    return home, proxy, vkey


def send(proxy, data: bytes, **kw):
    return raw_request(proxy.port, str(proxy.ca), data, **kw)


def no_traceback(proxy) -> None:
    out = proxy.stdout() + proxy.stderr()
    assert "Traceback" not in out and "mitmproxy has crashed" not in out, out[-3000:]


def not_sent(message: str) -> bool:
    return re.search(r"(not|nothing was) sent", message.lower()) is not None


def reached(fake, path: str) -> list[dict]:
    return [r for r in fake.requests() if r["path"].split("?", 1)[0].rstrip("/") == path]


# ------------------------------------------------------------------ item 1: upgrades and "free" paths

@pytest.mark.parametrize("headers", [
    WS_HEADERS,
    [("UPGRADE", "WebSocket"), ("connection", "keep-alive, upgrade"), ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="),
     ("Sec-WebSocket-Version", "13")],
    [("Upgrade", "websocket"), ("Sec-WebSocket-Key", "x3JJHMbDL1EzLkh9GBhXDw=="), ("Sec-WebSocket-Version", "13")],
], ids=["realtime", "odd-case", "no-connection-header"])
def test_a_websocket_upgrade_to_the_llm_host_is_refused_and_never_carries_the_real_key(e2e, fake, tmp_path, headers):
    home, proxy, vkey = paused_proxy(e2e, tmp_path, vault=True)
    # the control: a free read with the virtual key does reach the provider, with the real key
    r = send(proxy, http_request("GET", "/v1/models", headers=[("Authorization", f"Bearer {vkey}")]))
    assert r.status == 200, (r.status, r.body)
    assert fake.requests("/v1/models")[-1]["headers"]["authorization"] == f"Bearer {REAL_KEY}"

    r = send(proxy, http_request("GET", "/v1/realtime?model=gpt-4o-realtime-preview",
                                 headers=[*headers, ("Authorization", f"Bearer {vkey}")]))
    assert r.status == 403 and r.code == "pouch_unmetered_upgrade", (r.status, r.body)
    assert "upgrade" in r.message.lower() and not_sent(r.message)
    assert reached(fake, "/v1/realtime") == [] and fake.entries("ws_upgraded") == []
    assert REAL_KEY not in json.dumps(fake.requests()[1:])  # only the control carried it
    no_traceback(proxy)


def test_a_plain_curl_websocket_upgrade_is_refused(e2e, fake, tmp_path):
    home, proxy, _ = paused_proxy(e2e, tmp_path)
    c = e2e.run_curl("https://api.openai.com/v1/realtime?model=gpt-4o-realtime-preview", env=e2e.client_env(proxy),
                     headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}, extra_args=["--http1.1"])
    assert c.status == 403 and c.json()["error"]["code"] == "pouch_unmetered_upgrade", (c.status, c.body)
    assert reached(fake, "/v1/realtime") == []
    no_traceback(proxy)


@pytest.mark.parametrize("method,path,headers,body,code", [
    ("GET", "/v1/chat/completions", [("Content-Type", "application/json")], CHAT, "pouch_body_not_allowed"),
    ("DELETE", "/v1/responses", [("Content-Type", "application/json")], CHAT, "pouch_body_not_allowed"),
    ("PUT", "/v1/chat/completions", [("Content-Type", "application/json")], CHAT, "pouch_body_not_allowed"),
    ("GET", "/v1/models", [("X-HTTP-Method-Override", "POST")], None, "pouch_method_override"),
    ("POST", "/v1/moderations", [("X-HTTP-Method-Override", "PUT"), ("Content-Type", "application/json")],
     {"input": "x"}, "pouch_method_override"),
    ("GET", "/v1/chat/completions?_method=POST", [], None, "pouch_method_override"),
    ("TRACE", "/v1/models", [], None, "pouch_method_not_allowed"),
    ("PROPFIND", "/v1/models", [], None, "pouch_method_not_allowed"),
], ids=["get-body", "delete-body", "put-billed", "override-get", "override-free-post", "override-query", "trace",
        "propfind"])
def test_only_requests_known_to_be_free_pass_unpriced(e2e, fake, tmp_path, method, path, headers, body, code):
    # pouch_unknown_endpoints=pass forwards what pouch cannot price: these are refused even so
    home, proxy, _ = paused_proxy(e2e, tmp_path, {"pouch_unknown_endpoints": "pass"})
    data = json.dumps(body).encode() if body is not None else None
    r = send(proxy, http_request(method, path, headers=headers, body=data))
    assert r.status in (400, 403, 405) and r.code == code, (r.status, r.body)
    assert not_sent(r.message)
    assert fake.requests() == []
    no_traceback(proxy)


# ------------------------------------------------------------------ item 2: where the request really goes

@pytest.mark.parametrize("host", ["api.openai.com.", "API.OpenAI.com", "api.openai.com:443"])
def test_a_host_naming_the_tunnels_target_is_gated(e2e, fake, tmp_path, host):
    home, proxy, _ = paused_proxy(e2e, tmp_path)
    r = send(proxy, http_request("POST", "/v1/chat/completions", host=host,
                                 headers=[("Content-Type", "application/json")], body=json.dumps(CHAT).encode()))
    assert r.status == 402 and r.code == "pouch_paused", (r.status, r.body)
    assert fake.requests() == []


@pytest.mark.parametrize("host,target", [
    ("evil.example", "/v1/chat/completions"),
    ("127.0.0.1", "/v1/chat/completions"),
    ("other.test", "/v1/chat/completions"),
    ("api.openai.com:8443", "/v1/chat/completions"),
    ("api.openai.com", "https://evil.example/v1/chat/completions"),
    ("evil.example", "https://api.openai.com/v1/chat/completions"),
    (None, "https://evil.example/v1/chat/completions"),
], ids=["evil", "ip", "other-host", "other-port", "absolute-evil", "absolute-llm-host-evil", "absolute-no-host"])
def test_a_host_that_disagrees_with_the_tunnel_is_refused_421(e2e, fake, tmp_path, host, target):
    home, proxy, _ = paused_proxy(e2e, tmp_path)
    r = send(proxy, http_request("POST", target, host=host, headers=[("Content-Type", "application/json")],
                                 body=json.dumps(CHAT).encode()))
    assert r.status == 421 and r.code == "pouch_misdirected_request", (r.status, r.body)
    assert "api.openai.com" in r.message and not_sent(r.message)
    assert fake.requests() == []
    no_traceback(proxy)


@pytest.mark.parametrize("connect,sni,host", [
    ("127.0.0.1:{fake}", "api.openai.com", "127.0.0.1:{fake}"),
    ("other.test:443", "api.openai.com", "other.test"),
], ids=["ip-with-llm-sni", "other-host-with-llm-sni"])
def test_a_tls_name_that_disagrees_with_the_tunnel_is_refused_421(e2e, fake, tmp_path, connect, sni, host):
    home, proxy, _ = paused_proxy(e2e, tmp_path)
    r = send(proxy, http_request("POST", "/v1/chat/completions", host=host.format(fake=fake.port),
                                 headers=[("Content-Type", "application/json")],
                                 body=json.dumps(CHAT).encode()), connect=connect.format(fake=fake.port), sni=sni)
    assert r.status == 421 and r.code == "pouch_misdirected_request", (r.status, r.connect_status, r.error, r.body)
    assert fake.requests() == []
    no_traceback(proxy)


def test_another_sni_in_a_tunnel_to_a_routed_llm_host_is_still_decrypted_and_refused(e2e, fake, tmp_path):
    """With ``pouch_route`` (the harness routes api.openai.com to the fake), mitmproxy decides whether
    to decrypt after the route replaced the address: a client naming another host in its TLS SNI
    must not get an undecrypted tunnel to the provider. The client here trusts the provider's own
    CA as well as pouch's, as an app that pinned nothing would."""
    home, proxy, _ = paused_proxy(e2e, tmp_path)
    both = tmp_path / "both-cas.pem"
    both.write_bytes(proxy.ca.read_bytes() + e2e.certs.ca_cert.read_bytes())
    r = raw_request(proxy.port, str(both), http_request("POST", "/v1/chat/completions", host="api.openai.com",
                                                        headers=[("Content-Type", "application/json")],
                                                        body=json.dumps(CHAT).encode()),
                    connect="api.openai.com:443", sni="other.test")
    assert fake.requests() == []  # before: the tunnel reached the provider, unbudgeted
    assert r.status == 421 and r.code == "pouch_misdirected_request", (r.status, r.connect_status, r.error, r.body)
    no_traceback(proxy)


def test_plain_http_in_a_tunnel_to_a_routed_llm_host_is_read_and_refused(e2e, fake, tmp_path):
    """Plain text (no TLS) inside ``CONNECT api.openai.com:443`` naming another Host: mitmproxy's
    own check sees only the routed address and that Host, and would pass the bytes through to the
    routed server untouched (a plain-HTTP local server would have answered it unbudgeted). pouch
    reads it as HTTP and refuses it 421, as it does any Host that disagrees with the tunnel."""
    home, proxy, _ = paused_proxy(e2e, tmp_path)
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
    try:
        sock.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        f = sock.makefile("rb")
        assert f.readline().split()[1] == b"200"
        while f.readline() not in (b"\r\n", b""):
            pass
        sock.sendall(http_request("POST", "/v1/chat/completions", host="other.test",
                                  headers=[("Content-Type", "application/json")], body=json.dumps(CHAT).encode()))
        status = f.readline()
        rest = f.read()
    finally:
        sock.close()
    assert fake.requests() == []
    # before: the bytes went to the routed (TLS) server, which dropped them: b'' and no answer
    assert status.split()[1:2] == [b"421"] and b"pouch_misdirected_request" in rest, (status, rest[:300])
    no_traceback(proxy)


def test_a_connect_to_the_host_with_a_trailing_dot_is_still_decrypted_and_gated(e2e, fake, tmp_path):
    home, proxy, _ = paused_proxy(e2e, tmp_path)
    r = send(proxy, http_request("POST", "/v1/chat/completions", host="api.openai.com.",
                                 headers=[("Content-Type", "application/json")], body=json.dumps(CHAT).encode()),
             connect="api.openai.com.:443", sni="api.openai.com")
    assert r.status == 402 and r.code == "pouch_paused", (r.status, r.connect_status, r.error, r.body)
    assert fake.requests() == []


# ------------------------------------------------------------------ item 8: duplicate keys

@pytest.mark.parametrize("raw,key", [
    (b'{"model":"o1-pro","model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5}', "model"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi","content":"' + b"x " * 5000 + b'"}],'
     b'"max_tokens":5}', "content"),
    (b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"max_tokens":50000}',
     "max_tokens"),
], ids=["model", "nested-content", "max-tokens"])
def test_duplicate_json_keys_are_refused(e2e, fake, tmp_path, raw, key):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(5))
    proxy = e2e.start_proxy(home, {})
    r = send(proxy, http_request("POST", "/v1/chat/completions", headers=[("Content-Type", "application/json")],
                                 body=raw))
    assert r.status == 400 and r.code == "pouch_duplicate_key", (r.status, r.body)
    assert f"`{key}`" in r.message and not_sent(r.message)
    assert fake.requests() == []
    no_traceback(proxy)


@pytest.mark.parametrize("raw", [
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"temperature":NaN}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":5,"top_p":Infinity}',
    b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800 hi"}],"max_tokens":5}',
], ids=["nan", "infinity", "lone-surrogate"])
def test_json_that_is_not_strict_json_is_refused(e2e, fake, tmp_path, raw):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(5))
    proxy = e2e.start_proxy(home, {})
    r = send(proxy, http_request("POST", "/v1/chat/completions", headers=[("Content-Type", "application/json")],
                                 body=raw))
    assert r.status == 400 and r.code == "pouch_bad_json", (r.status, r.body)
    assert fake.requests() == []
    no_traceback(proxy)


# ------------------------------------------------------------------ item 9: request content-encoding

def gzip_bomb(size: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b" " * (1 << 20)
    out = [z.compress(b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"')]
    for _ in range(size >> 20):
        out.append(z.compress(block))
    out.append(z.compress(b'"}]}'))
    out.append(z.flush())
    return b"".join(out)


@pytest.mark.parametrize("encoding,body,status,code", [
    ("compress", b"\x1f\x9d\x90" + b"x" * 40, 415, "pouch_unsupported_encoding"),
    ("x-unknown", json.dumps(CHAT).encode(), 415, "pouch_unsupported_encoding"),
    ("gzip", b"\x1f\x8b\x08\x00 this is not gzip", 400, "pouch_bad_encoding"),
    ("br", b"\xff\xff\xff not brotli", 400, "pouch_bad_encoding"),
    ("gzip", gzip.compress(json.dumps(CHAT).encode()) + b"trailing junk", 400, "pouch_bad_encoding"),
    ("gzip", gzip_bomb(40 << 20), 413, "pouch_body_too_large"),
], ids=["compress", "unknown", "corrupt-gzip", "corrupt-br", "gzip-trailing-junk", "gzip-bomb"])
def test_an_undecodable_request_body_is_a_clear_4xx(e2e, fake, tmp_path, encoding, body, status, code):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(5))
    proxy = e2e.start_proxy(home, {"pouch_max_body_mb": 16})
    r = send(proxy, http_request("POST", "/v1/chat/completions", body=body,
                                 headers=[("Content-Type", "application/json"), ("Content-Encoding", encoding)]))
    assert r.status == status and r.code == code, (r.status, r.body)
    assert not_sent(r.message)
    assert fake.requests() == []
    no_traceback(proxy)


def test_stacked_encodings_are_decoded_priced_and_what_was_priced_is_sent(e2e, fake, tmp_path):
    import brotli  # mitmproxy's own dependency

    home = tmp_path / "home"
    Ledger(home).set_budget(D(5))
    proxy = e2e.start_proxy(home, {})
    body = brotli.compress(gzip.compress(json.dumps(CHAT).encode()))
    r = send(proxy, http_request("POST", "/v1/chat/completions", body=body, headers=[
        ("Content-Type", "application/json"), ("Content-Encoding", "gzip, br"), ("x-fake-prompt-tokens", "7")]))
    assert r.status == 200, (r.status, r.body)
    seen = fake.requests("/v1/chat/completions")[-1]
    assert seen["body"]["model"] == "gpt-4o-mini" and seen["body"]["max_tokens"] == 5
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and ledger.history(kinds=("settle",)), 10, "the settle")
    [entry] = ledger.history(kinds=("settle",))
    assert entry["status"] == "ok" and D(entry["cost"]) <= D(entry["reserved"]), entry
    no_traceback(proxy)
