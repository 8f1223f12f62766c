"""Which requests to an LLM host are billed, free, unknown or refused; where a request goes."""

import pytest

from pouch_addon.endpoints import canonical_path, classify, misdirected, refusal, split_authority

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
