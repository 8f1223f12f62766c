"""A corpus of hostile requests through one real mitmdump + pouch and the fake provider.

Every case is sent raw inside a CONNECT tunnel to api.openai.com (``raw_client.py``) and must
end in one of:

- **refused**: pouch answered it itself (``x-pouch: blocked``, OpenAI's error shape, a
  ``pouch:`` message, a 4xx) and the fake saw nothing; or mitmproxy refused it as malformed
  HTTP before any addon ran (a 4xx/5xx, the fake saw nothing);
- **billed**: forwarded, and the ledger holds its settle, within its reservation;
- **free**: forwarded with no reservation, only where the case says it is known to be free.

A case may allow more than one outcome (e.g. mitmproxy may or may not accept an odd framing),
but a request that reaches a billed endpoint is never free. After each case the proxy's output
must hold no ``Traceback``.
"""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass
from decimal import Decimal as D
from typing import Callable

import pytest

from harness import Harness, wait_until
from pouch_addon.budget import Ledger
from raw_client import RawResponse, http_request, raw_request

MAX_MB = 2
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
JSON = [("Content-Type", "application/json")]
BILLED = {"billed"}
REFUSED = {"refused"}


def chat(**over) -> bytes:
    return json.dumps({**CHAT, **over}).encode()


def post(path: str = "/v1/chat/completions", body: bytes | None = None, headers=None, **kw) -> bytes:
    return http_request("POST", path, body=chat() if body is None else body, headers=[*JSON, *(headers or [])], **kw)


def framed(head: str, body: bytes) -> bytes:
    """A request with a hand-written head (framing headers as given) and body."""
    return head.replace("\n", "\r\n").encode("latin-1") + b"\r\n" + body


def chunked(body: bytes, size: int = 7) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + size]), body[i:i + size])
                    for i in range(0, len(body), size)) + b"0\r\n\r\n"


def raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()


def zstd(data: bytes) -> bytes:
    import zstandard
    return zstandard.ZstdCompressor().compress(data)


def br(data: bytes) -> bytes:
    import brotli
    return brotli.compress(data)


def bomb(mb: int) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    return z.compress(b'{"model":"gpt-4o-mini","x":"') + b"".join(z.compress(b"a" * (1 << 20)) for _ in range(mb)) + z.flush()


def deep(n: int) -> bytes:
    return b'{"model":"gpt-4o-mini","max_tokens":5,"messages":' + b"[" * n + b"]" * n + b"}"


HEAD = "POST /v1/chat/completions HTTP/1.1\nHost: api.openai.com\nContent-Type: application/json\nConnection: close\n"
BODY = chat()


@dataclass(frozen=True)
class Case:
    name: str
    data: Callable[[], bytes]
    outcomes: frozenset[str]
    code: str | None = None  # the pouch error code expected when refused


def case(name: str, data: Callable[[], bytes], outcomes=BILLED, code: str | None = None) -> Case:
    return Case(name, data, frozenset(outcomes), code)


CASES = [
    # ---- headers and framing
    case("baseline", lambda: post()),
    case("content-length-twice-same", lambda: framed(HEAD + f"Content-Length: {len(BODY)}\nContent-Length: {len(BODY)}\n", BODY),
         {"billed", "refused"}),
    case("content-length-twice-differ", lambda: framed(HEAD + f"Content-Length: {len(BODY)}\nContent-Length: 5\n", BODY),
         REFUSED),
    case("content-length-list", lambda: framed(HEAD + f"Content-Length: {len(BODY)}, {len(BODY)}\n", BODY),
         {"billed", "refused"}),
    case("content-length-negative", lambda: framed(HEAD + "Content-Length: -1\n", BODY), REFUSED),
    case("content-length-short", lambda: framed(HEAD + "Content-Length: 20\n", BODY), REFUSED),
    case("chunked", lambda: framed(HEAD + "Transfer-Encoding: chunked\n", chunked(BODY))),
    case("chunked-and-content-length", lambda: framed(HEAD + "Transfer-Encoding: chunked\nContent-Length: 4\n",
                                                      chunked(BODY)), {"billed", "refused"}),
    case("chunked-upper-case", lambda: framed(HEAD + "Transfer-Encoding: CHUNKED\n", chunked(BODY)), {"billed", "refused"}),
    case("transfer-encoding-gzip-chunked", lambda: framed(HEAD + "Transfer-Encoding: gzip, chunked\n",
                                                          chunked(gzip.compress(BODY))), {"billed", "refused"}),
    case("transfer-encoding-unknown", lambda: framed(HEAD + f"Transfer-Encoding: xchunked\nContent-Length: {len(BODY)}\n",
                                                     BODY), {"billed", "refused"}),
    case("transfer-encoding-twice", lambda: framed(HEAD + "Transfer-Encoding: chunked\nTransfer-Encoding: identity\n",
                                                   chunked(BODY)), {"billed", "refused"}),
    case("chunk-size-lies", lambda: framed(HEAD + "Transfer-Encoding: chunked\n",
                                           b"5\r\n" + BODY + b"\r\n0\r\n\r\n"), REFUSED),
    case("huge-header", lambda: post(headers=[("X-Big", "a" * 200_000)]), {"billed", "refused"}),
    case("many-headers", lambda: post(headers=[(f"X-H{i}", "v") for i in range(3000)]), {"billed", "refused"}),
    case("two-host-headers", lambda: framed(HEAD + "Host: evil.example\n" + f"Content-Length: {len(BODY)}\n", BODY),
         REFUSED),
    case("obs-fold-header", lambda: framed(HEAD + "X-Folded: a\n b\n" + f"Content-Length: {len(BODY)}\n", BODY),
         {"billed", "refused"}),
    case("fake-virtual-key", lambda: post(headers=[("Authorization", "Bearer pk-pouch-" + "0" * 40)]), REFUSED,
         "invalid_api_key"),
    case("text-plain-content-type", lambda: http_request("POST", "/v1/chat/completions", body=BODY,
                                                         headers=[("Content-Type", "text/plain")])),
    case("expect-100-continue", lambda: post(headers=[("Expect", "100-continue")]), {"billed", "refused"}),
    # ---- encodings
    case("gzip", lambda: post(body=gzip.compress(BODY), headers=[("Content-Encoding", "gzip")])),
    case("gzip-upper-case", lambda: post(body=gzip.compress(BODY), headers=[("Content-Encoding", "GZIP")])),
    case("x-gzip", lambda: post(body=gzip.compress(BODY), headers=[("Content-Encoding", "x-gzip")])),
    case("deflate-zlib", lambda: post(body=zlib.compress(BODY), headers=[("Content-Encoding", "deflate")])),
    case("deflate-raw", lambda: post(body=raw_deflate(BODY), headers=[("Content-Encoding", "deflate")])),
    case("br", lambda: post(body=br(BODY), headers=[("Content-Encoding", "br")])),
    case("zstd", lambda: post(body=zstd(BODY), headers=[("Content-Encoding", "zstd")])),
    case("gzip-gzip", lambda: post(body=gzip.compress(gzip.compress(BODY)), headers=[("Content-Encoding", "gzip, gzip")])),
    case("two-encoding-headers", lambda: post(body=br(gzip.compress(BODY)),
                                              headers=[("Content-Encoding", "gzip"), ("Content-Encoding", "br")])),
    case("identity", lambda: post(headers=[("Content-Encoding", "identity")])),
    case("encoding-unknown", lambda: post(headers=[("Content-Encoding", "snappy")]), REFUSED,
         "pouch_unsupported_encoding"),
    case("encoding-in-stack-unknown", lambda: post(body=gzip.compress(BODY), headers=[("Content-Encoding", "gzip, lz4")]),
         REFUSED, "pouch_unsupported_encoding"),
    case("gzip-says-but-plain", lambda: post(headers=[("Content-Encoding", "gzip")]), REFUSED, "pouch_bad_encoding"),
    case("gzip-truncated", lambda: post(body=gzip.compress(BODY)[:-10], headers=[("Content-Encoding", "gzip")]),
         REFUSED, "pouch_bad_encoding"),
    case("gzip-two-members", lambda: post(body=gzip.compress(BODY) + gzip.compress(b" "),
                                          headers=[("Content-Encoding", "gzip")]), REFUSED, "pouch_bad_encoding"),
    case("zstd-corrupt", lambda: post(body=b"\x28\xb5\x2f\xfd garbage", headers=[("Content-Encoding", "zstd")]),
         REFUSED, "pouch_bad_encoding"),
    case("gzip-bomb", lambda: post(body=bomb(3 * MAX_MB), headers=[("Content-Encoding", "gzip")]), REFUSED,
         "pouch_body_too_large"),
    case("br-bomb", lambda: post(body=br(b'{"x":"' + b"a" * (3 * MAX_MB << 20) + b'"}'), headers=[("Content-Encoding", "br")]),
         REFUSED, "pouch_body_too_large"),
    # ---- upgrades and methods
    case("websocket", lambda: http_request("GET", "/v1/realtime?model=gpt-4o-realtime-preview", headers=[
        ("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("Sec-WebSocket-Version", "13")]), REFUSED, "pouch_unmetered_upgrade"),
    case("upgrade-on-billed-post", lambda: post(headers=[("Upgrade", "websocket"), ("Connection", "upgrade")]),
         REFUSED, "pouch_unmetered_upgrade"),
    case("connection-upgrade-only", lambda: http_request("GET", "/v1/models", headers=[("Connection", "upgrade")]),
         REFUSED, "pouch_unmetered_upgrade"),
    case("realtime-without-upgrade", lambda: http_request("GET", "/v1/realtime?model=gpt-4o-realtime-preview"),
         REFUSED, "pouch_unknown_endpoint"),
    case("realtime-sessions", lambda: post("/v1/realtime/sessions", body=b'{"model":"gpt-4o-realtime-preview"}'),
         REFUSED, "pouch_unknown_endpoint"),
    case("get-with-body", lambda: http_request("GET", "/v1/chat/completions", body=BODY, headers=JSON), REFUSED,
         "pouch_body_not_allowed"),
    case("get-chunked-body", lambda: framed("GET /v1/chat/completions HTTP/1.1\nHost: api.openai.com\n"
                                            "Transfer-Encoding: chunked\nConnection: close\n", chunked(BODY)),
         REFUSED, "pouch_body_not_allowed"),
    case("head-with-body", lambda: http_request("HEAD", "/v1/responses", body=BODY, headers=JSON), REFUSED),
    case("patch-billed", lambda: http_request("PATCH", "/v1/responses", body=BODY, headers=JSON), REFUSED,
         "pouch_body_not_allowed"),
    case("method-override", lambda: post("/v1/moderations", body=b'{"input":"x"}',
                                         headers=[("X-HTTP-Method-Override", "POST")]), REFUSED, "pouch_method_override"),
    case("method-override-x-method", lambda: http_request("GET", "/v1/models", headers=[("X-Method-Override", "POST")]),
         REFUSED, "pouch_method_override"),
    case("connect-in-tunnel", lambda: b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n",
         REFUSED),
    case("trace", lambda: http_request("TRACE", "/v1/chat/completions"), REFUSED),
    case("lower-case-post", lambda: http_request("post", "/v1/chat/completions", body=BODY, headers=JSON),
         {"billed", "refused"}),
    case("get-models", lambda: http_request("GET", "/v1/models"), {"free"}),
    case("options", lambda: http_request("OPTIONS", "/v1/chat/completions"), {"free"}),
    case("delete-file", lambda: http_request("DELETE", "/v1/files/file-abc"), REFUSED, "pouch_unknown_endpoint"),
    # ---- paths: any spelling of a billed endpoint is billed (or refused), never free
    case("path-double-slash", lambda: post("/v1//chat/completions")),
    case("path-leading-double-slash", lambda: post("//v1/chat/completions")),
    case("path-trailing-slash", lambda: post("/v1/chat/completions/")),
    case("path-encoded-slash", lambda: post("/v1/chat%2Fcompletions")),
    case("path-double-encoded-slash", lambda: post("/v1/chat%252Fcompletions")),
    case("path-encoded-letters", lambda: post("/v1/%63hat/completions")),
    case("path-dot-segment", lambda: post("/v1/./chat/completions")),
    case("path-dot-dot", lambda: post("/v1/models/../chat/completions")),
    case("path-query", lambda: post("/v1/chat/completions?api-version=1&stream=true")),
    case("path-upper-case", lambda: post("/V1/CHAT/COMPLETIONS")),
    case("path-matrix-param", lambda: post("/v1/chat/completions;jsessionid=1")),
    case("path-backslash", lambda: post("/v1\\chat\\completions")),
    case("path-absolute-form", lambda: post("https://api.openai.com/v1/chat/completions")),
    case("path-responses-encoded", lambda: post("/v1/respons%65s", body=b'{"model":"gpt-4o-mini","input":"hi",'
                                                                        b'"max_output_tokens":5}')),
    # ---- bodies
    case("malformed-json", lambda: post(body=b'{"model": "gpt-4o-mini",'), REFUSED, "pouch_bad_json"),
    case("empty-body", lambda: post(body=b""), REFUSED),
    case("json-null", lambda: post(body=b"null"), REFUSED, "pouch_bad_json"),
    case("json-array", lambda: post(body=b"[1,2]"), REFUSED, "pouch_bad_json"),
    case("not-utf8", lambda: post(body=b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xff"}]}'),
         REFUSED, "pouch_bad_json"),
    case("utf16-body", lambda: post(body=BODY.decode().encode("utf-16")), REFUSED, "pouch_bad_json"),
    case("bom", lambda: post(body=b"\xef\xbb\xbf" + BODY), REFUSED, "pouch_bad_json"),
    case("deep-nesting", lambda: post(body=deep(100_000)), REFUSED),
    case("huge-body", lambda: post(body=chat(messages=[{"role": "user", "content": "a " * (MAX_MB << 20)}])), REFUSED,
         "pouch_body_too_large"),
    case("duplicate-model", lambda: post(body=b'{"model":"o1-pro","model":"gpt-4o-mini","messages":[],"max_tokens":5}'),
         REFUSED, "pouch_duplicate_key"),
    case("duplicate-nested", lambda: post(body=b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[{"role":"user",'
                                               b'"content":"a","role":"system"}]}'), REFUSED, "pouch_duplicate_key"),
    case("nan", lambda: post(body=b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[],"temperature":NaN}'), REFUSED,
         "pouch_bad_json"),
    case("lone-surrogate-key", lambda: post(body=b'{"model":"gpt-4o-mini","max_tokens":5,"messages":[],"\\udc00":1}'),
         REFUSED, "pouch_bad_json"),
    case("max-tokens-string", lambda: post(body=chat(max_tokens="5")), REFUSED),
    case("max-tokens-float", lambda: post(body=chat(max_tokens=5.0)), REFUSED),
    case("max-tokens-huge-float", lambda: post(body=BODY.replace(b'"max_tokens": 5', b'"max_tokens": 1e400')), REFUSED),
    case("max-tokens-negative", lambda: post(body=chat(max_tokens=-1)), REFUSED),
    case("max-tokens-bool", lambda: post(body=chat(max_tokens=True)), REFUSED),
    case("max-tokens-huge", lambda: post(body=chat(max_tokens=10 ** 30))),  # bounded by the model's max output
    case("max-completion-tokens-null", lambda: post(body=chat(max_completion_tokens=None))),
    case("stream-string", lambda: post(body=chat(stream="true")), REFUSED),
    case("stream-int", lambda: post(body=chat(stream=1)), REFUSED),
    case("stream-true", lambda: post(body=chat(stream=True))),
    case("stream-options-string", lambda: post(body=chat(stream=True, stream_options="yes")), {"billed", "refused"}),
    case("n-string", lambda: post(body=chat(n="2")), REFUSED),
    case("n-zero", lambda: post(body=chat(n=0)), REFUSED),
    case("n-huge", lambda: post(body=chat(n=10 ** 9)), REFUSED, "budget_exceeded"),
    case("model-number", lambda: post(body=chat(model=5)), REFUSED),
    case("model-unknown", lambda: post(body=chat(model="gpt-unknown-9000")), REFUSED, "pouch_unknown_model"),
    case("model-missing", lambda: post(body=json.dumps({"messages": CHAT["messages"], "max_tokens": 5}).encode()),
         REFUSED),
    case("service-tier-number", lambda: post(body=chat(service_tier=3)), {"billed", "refused"}),
    case("messages-string", lambda: post(body=chat(messages="hi")), {"billed", "refused"}),
    case("messages-numbers", lambda: post(body=chat(messages=[1, 2])), {"billed", "refused"}),
    case("messages-object", lambda: post(body=chat(messages={"role": "user"})), {"billed", "refused"}),
    case("content-number", lambda: post(body=chat(messages=[{"role": "user", "content": 5}])), {"billed", "refused"}),
    case("content-part-text-number", lambda: post(body=chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": 5}]}])), {"billed", "refused"}),
    case("content-part-image-bad", lambda: post(body=chat(model="gpt-4o", messages=[{"role": "user", "content": [
        {"type": "image_url", "image_url": 5}]}])), {"billed", "refused"}),
    case("name-number", lambda: post(body=chat(messages=[{"role": "user", "content": "x", "name": 7}])),
         {"billed", "refused"}),
    case("tools-string", lambda: post(body=chat(tools="x")), {"billed", "refused"}),
    case("tools-bad-function", lambda: post(body=chat(tools=[{"type": "function", "function": 5}])), {"billed", "refused"}),
    case("responses-input-number", lambda: post("/v1/responses", body=b'{"model":"gpt-4o-mini","input":5,'
                                                                       b'"max_output_tokens":5}'), {"billed", "refused"}),
    case("responses-tools-string", lambda: post("/v1/responses", body=b'{"model":"gpt-4o-mini","input":"x",'
                                                                       b'"tools":"web","max_output_tokens":5}'),
         {"billed", "refused"}),
    case("responses-prompt-string", lambda: post("/v1/responses", body=b'{"model":"gpt-4o-mini","prompt":"x",'
                                                                        b'"max_output_tokens":5}'), {"billed", "refused"}),
    case("embeddings-input-nested", lambda: post("/v1/embeddings", body=b'{"model":"text-embedding-3-small",'
                                                                         b'"input":[[1,2],[3,[4]]]}'), {"billed", "refused"}),
    case("embeddings-input-object", lambda: post("/v1/embeddings", body=b'{"model":"text-embedding-3-small",'
                                                                         b'"input":{"a":1}}'), {"billed", "refused"}),
    case("completions-prompt-number", lambda: post("/v1/completions", body=b'{"model":"gpt-3.5-turbo-instruct",'
                                                                          b'"prompt":5,"max_tokens":5}'), {"billed", "refused"}),
]


@pytest.fixture(scope="module")
def corpus_proxy(tmp_path_factory, e2e_certs, client_python):
    work = tmp_path_factory.mktemp("hostile")
    h = Harness(work, certs=e2e_certs, client_python=client_python)
    try:
        fake = h.start_fake()
        home = work / "home"
        Ledger(home).set_budget(D(100))
        proxy = h.start_proxy(home, {"pouch_max_body_mb": MAX_MB}, fake=fake)
        yield h, fake, proxy, home
    finally:
        h.stop()


def outcome(r: RawResponse, fake_new: list[dict], settles_new: list[dict]) -> str:
    if r.headers.get("x-pouch") == "blocked":
        return "refused"
    if not fake_new and (r.status is None or r.status >= 400):
        return "refused"  # mitmproxy itself refused malformed HTTP before any addon ran
    return "billed" if settles_new else "free"


@pytest.mark.parametrize("c", CASES, ids=[c.name for c in CASES])
def test_hostile_request(corpus_proxy, c: Case):
    h, fake, proxy, home = corpus_proxy
    ledger = Ledger(home)
    n_fake, n_settle = len(fake.requests()), len(ledger.history(kinds=("settle",)))
    out0, err0 = len(proxy.stdout()), len(proxy.stderr())
    r = raw_request(proxy.port, str(proxy.ca), c.data())
    assert r.connect_status == 200, (r.connect_status, r.error, proxy.alive(), proxy.stderr()[-3000:])
    wait_until(lambda: ledger.status().in_flight == 0, 10, "no call in flight")
    fake_new = fake.requests()[n_fake:]
    settles_new = ledger.history(kinds=("settle",))[: len(ledger.history(kinds=("settle",))) - n_settle]
    got = outcome(r, fake_new, settles_new)
    assert got in c.outcomes, (got, r.status, r.error, r.connect_status, r.body[:400], [(q["method"], q["path"]) for q in fake_new])
    if got == "refused":
        assert fake_new == [], fake_new
        if r.headers.get("x-pouch") == "blocked":
            assert 400 <= (r.status or 0) < 500 and r.message.startswith("pouch:") or r.code == "invalid_api_key", r.body
            if c.code is not None:
                assert r.code == c.code, r.body
    elif got == "billed":
        [entry] = settles_new
        assert D(entry["cost"]) <= D(entry["reserved"]), entry
    else:  # free: nothing reserved, and it was no billed endpoint
        assert all(q["method"] != "POST" for q in fake_new), fake_new
    assert ledger.verify() == []
    tail = proxy.stdout()[out0:] + proxy.stderr()[err0:]
    assert "Traceback" not in tail and "crashed" not in tail, tail[-4000:]
