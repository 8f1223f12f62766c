"""Which requests to an LLM host are billed, free, unknown or refused; where a request goes."""

import pytest

from pouch_addon.endpoints import (
    REFUSAL_NAMES, HeaderIndex, canonical_path, classify, folded, header_index, misdirected, refusal, split_authority,
)

WS = [("Upgrade", "websocket"), ("Connection", "Upgrade")]


@pytest.mark.parametrize("target,path", [
    ("/v1/chat/completions", "/v1/chat/completions"),
    ("/v1//chat/completions/", "/v1/chat/completions"),
    ("//v1/chat/completions?x=1#f", "/v1/chat/completions"),
    ("/v1/chat%2Fcompletions", "/v1/chat/completions"),
    ("/v1/chat%252Fcompletions", "/v1/chat/completions"),
    ("/v1/./chat/completions", "/v1/chat/completions"),
    ("/v1/models/../chat/completions", "/v1/chat/completions"),
    ("/../../v1/chat/completions", "/v1/chat/completions"),
    ("/V1/Chat/Completions", "/v1/chat/completions"),
    ("/v1/chat/completions;jsessionid=1", "/v1/chat/completions"),
    ("/v1\\chat\\completions", "/v1/chat/completions"),
    ("https://api.openai.com/v1/chat/completions?x", "/v1/chat/completions"),
    ("/", "/"),
])
def test_canonical_path(target, path):
    assert canonical_path(target) == path


@pytest.mark.parametrize("method,target,has_body,kind", [
    ("POST", "/v1/chat/completions", True, "billed"),
    ("POST", "/v1//chat/completions/", True, "billed"),
    ("POST", "/v1/respons%65s", True, "billed"),
    ("POST", "/v1/moderations", True, "free"),
    ("POST", "/v1/responses/input_tokens", True, "free"),
    ("POST", "/v1/batches", True, "unknown"),
    ("POST", "/v1/realtime/sessions", True, "unknown"),
    ("GET", "/v1/models", False, "free"),
    ("HEAD", "/v1/models/gpt-4o", False, "free"),
    ("GET", "/v1/files?limit=3", False, "free"),
    ("GET", "/v1/responses/resp_1/input_items", False, "free"),
    ("GET", "/v1/chat/completions", False, "free"),  # lists stored completions
    ("GET", "/v1/chat/completions", True, "unknown"),  # a body: not known to be free
    ("GET", "/v1/realtime?model=gpt-4o-realtime-preview", False, "unknown"),
    ("GET", "/v1/audio/speech", False, "unknown"),
    ("GET", "/ping", False, "unknown"),
    ("OPTIONS", "/v1/chat/completions", False, "free"),
    ("OPTIONS", "/v1/chat/completions", True, "unknown"),
    ("DELETE", "/v1/files/abc", False, "unknown"),
    ("get", "/v1/models", False, "unknown"),
])
def test_free_is_an_allow_list(method, target, has_body, kind):
    assert classify(method, target, has_body=has_body) == kind


@pytest.mark.parametrize("method,target,headers,has_body,code", [
    ("GET", "/v1/realtime?model=x", WS, False, "pouch_unmetered_upgrade"),
    ("GET", "/v1/models", [("UPGRADE", "WebSocket")], False, "pouch_unmetered_upgrade"),
    ("GET", "/v1/models", [("connection", "keep-alive, UPGRADE")], False, "pouch_unmetered_upgrade"),
    ("POST", "/v1/chat/completions", WS, True, "pouch_unmetered_upgrade"),
    ("TRACE", "/v1/models", [], False, "pouch_method_not_allowed"),
    ("CONNECT", "api.openai.com:443", [], False, "pouch_method_not_allowed"),
    ("post", "/v1/chat/completions", [], True, "pouch_method_not_allowed"),
    ("GET", "/v1/models", [("X-HTTP-Method-Override", "POST")], False, "pouch_method_override"),
    ("POST", "/v1/moderations", [("x-method-override", "PUT")], True, "pouch_method_override"),
    ("GET", "/v1/models", [("X-HTTP-Method", "POST")], False, "pouch_method_override"),
    ("GET", "/v1/chat/completions?a=1&_method=POST", [], False, "pouch_method_override"),
    ("GET", "/v1/chat/completions", [], True, "pouch_body_not_allowed"),
    ("DELETE", "/v1//responses", [], True, "pouch_body_not_allowed"),
    ("PUT", "/v1/embeddings", [], True, "pouch_body_not_allowed"),
])
def test_refused_whatever_unknown_endpoints_says(method, target, headers, has_body, code):
    r = refusal(method, target, headers, has_body=has_body)
    assert r is not None and r.code == code and r.message.startswith("pouch:") and 400 <= r.status < 500


@pytest.mark.parametrize("method,target,headers,has_body", [
    ("POST", "/v1/chat/completions", [("Connection", "keep-alive")], True),
    ("GET", "/v1/models", [("Connection", "close")], False),
    ("DELETE", "/v1/files/abc", [], False),
    ("GET", "/v1/files", [], True),  # unknown (not free), not refused outright
])
def test_ordinary_requests_are_not_refused(method, target, headers, has_body):
    assert refusal(method, target, headers, has_body=has_body) is None


@pytest.mark.parametrize("value,addr", [
    ("api.openai.com", ("api.openai.com", 443)),
    ("API.OpenAI.com.", ("api.openai.com", 443)),
    ("api.openai.com:443", ("api.openai.com", 443)),
    ("api.openai.com:8443", ("api.openai.com", 8443)),
    ("[::1]:9443", ("::1", 9443)),
    ("127.0.0.1", ("127.0.0.1", 443)),
    ("api.openai.com, evil.example", None),  # two Host headers, joined
    ("user@api.openai.com", None),
    ("", None),
])
def test_split_authority(value, addr):
    assert split_authority(value, 443) == addr


def test_misdirected_names_the_first_claim_that_disagrees():
    dest = ("api.openai.com", 443)
    assert misdirected(dest, ["api.openai.com.", "API.OPENAI.COM:443"], 443) is None
    assert misdirected(dest, [], 443) is None
    assert misdirected(dest, ["api.openai.com", "evil.example"], 443) == "evil.example"
    assert misdirected(dest, ["api.openai.com:80"], 443) == "api.openai.com:80"
    assert misdirected(dest, ["api.openai.com, evil.example"], 443) == "api.openai.com, evil.example"


def test_header_index_reads_as_mitmproxys_lookups():
    """The request hooks read headers through one ``header_index`` instead of mitmproxy's lookups:
    each name's value (``folded`` as ``headers.get`` gives it), and whether ``refusal`` could act
    on a header, must be the same for any fields (case, repeats, NUL or non-ASCII in names, odd
    values); the index of a tuple is reused only for that same tuple."""
    import random

    from mitmproxy.http import Headers

    names = [b"Host", b"HOST", b"host", b"Authorization", b"authorization", b"Connection", b"connection",
             b"Upgrade", b"X-HTTP-Method-Override", b"x-method-override", b"X-Http-Method", b"Transfer-Encoding",
             b"Content-Encoding", b"content-length", b"x-goog-api-key", b"x-api-key", b"api-key",
             b"Proxy-Authorization", b"accept", b"ho\0st", b"\0host", b"host\0", b"", b"h\xc3\xb6st",
             b"\xe2\x84\xaaey", b"x-host", b"hostx", b"upgrade\n", b"x-upgrade"]
    values = [b"api.openai.com", b"keep-alive", b"Upgrade", b"keep-alive, UPGRADE", b"", b"gzip",
              b"Bearer sk-1", b"\xff\xfe", b"upgrade\0", b"a, b", b"\xc3", b"\xa9"]
    asked = ["host", "authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key",
             "content-encoding", "transfer-encoding", "connection", "upgrade", "accept", "content-length"]
    rng = random.Random(20)
    for _ in range(4000):
        fields = tuple((rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(0, 8)))
        index = HeaderIndex(fields)
        headers = Headers(fields)
        for name in asked:
            assert folded(index.values.get(name.encode())) == headers.get(name), (fields, name)
        assert index.names == [n.lower() for n, _ in fields]
        plain = any(n.lower() in REFUSAL_NAMES or (n.lower() == b"connection" and b"upgrade" in v.lower())
                    or not n.isascii() for n, v in fields)
        assert index.special or not plain, fields  # flagged whenever a header could matter
        items = list(headers.items(multi=True))
        if not index.special:  # refusal on the real headers equals refusal on none
            for method, target, body in (("POST", "/v1/chat/completions", True), ("GET", "/v1/models", False)):
                assert refusal(method, target, items, has_body=body) == refusal(method, target, [], has_body=body)
    fields = ((b"Host", b"a"),)
    assert header_index(fields) is header_index(fields)
    assert header_index(((b"Host", b"a"),)).values == {b"host": b"a"}
    assert header_index(fields) is not header_index(((b"Host", b"b"),))
