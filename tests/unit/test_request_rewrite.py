"""The gate's body rewrite: added members are inserted into the client's bytes (plan.rewrite_bytes),
which otherwise stay as sent; a replaced or nested member re-serialises the parsed body."""

from __future__ import annotations

import asyncio
import copy
import json
from decimal import Decimal

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from pouch_addon.addons import make_addons
from pouch_addon.addons.chain import Chain
from pouch_addon.addons.core import CALL
from pouch_addon.budget import Ledger
from pouch_addon.plan import apply_rewrites, parse_body, rewrite_bytes

USAGE = {"stream_options": {"include_usage": True}}


@pytest.mark.parametrize("raw,rewrites", [
    (b'{"model":"m","stream":true}', USAGE),
    (b' \r\n\t{ "model" : "m" , "temperature" : 0.50 }\n', USAGE),
    (b"{}", {"max_completion_tokens": 100}),
    (b'{"model":"m"}', {"max_completion_tokens": 7, "stream_options": {"include_usage": True, "x": "é\\u"}}),
    (b'{"model":"m","t":"\\u00e9"}', {"provider": {"sort": "price", "max_price": {"prompt": 1.5}}}),
])
def test_added_members_make_the_same_object_and_keep_the_clients_bytes(raw, rewrites):
    body = parse_body(raw)
    out = rewrite_bytes(raw, body, rewrites)
    assert out is not None
    expected = copy.deepcopy(body)
    apply_rewrites(expected, rewrites)
    assert parse_body(out) == expected  # strict JSON still: no repeated key, nothing lost
    brace = raw.index(b"{")
    assert out.startswith(raw[:brace + 1]) and out.endswith(raw[brace + 1:])


@pytest.mark.parametrize("raw,rewrites", [
    (b'{"model":"m","stream_options":{"x":1}}', {"stream_options": {"x": 1, "include_usage": True}}),
    (b'{"model":"m","max_tokens":9000}', {"max_tokens": 100}),
    (b'{"model":"m"}', {"generationConfig.maxOutputTokens": 100}),
])
def test_a_replaced_or_nested_member_is_left_to_the_parsed_body(raw, rewrites):
    assert rewrite_bytes(raw, parse_body(raw), rewrites) is None


# -- through the gate: what mitmproxy forwards ---------------------------------------------------

def forwarded(tmp_path, raw: bytes, **headers: str) -> http.Request:
    """Run pouch's request hooks (the real addons, a real local ledger) on one streamed chat call."""
    Ledger(tmp_path).set_budget(Decimal("100"))
    members = make_addons()
    chain = Chain(members)
    client = tflow.tclient_conn()
    client.peername = ("10.0.0.1", 5555)
    connect = tflow.tflow(client_conn=client)
    connect.request = http.Request.make("CONNECT", "http://api.openai.com:443/")
    connect.request.host, connect.request.port = "api.openai.com", 443
    f = tflow.tflow(client_conn=client)
    f.request = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", raw,
                                  {"Host": "api.openai.com", "Authorization": "Bearer sk-test",
                                   "Content-Type": "application/json", **headers})

    async def run() -> None:
        with taddons.context(*members) as tctx:
            tctx.options.update(pouch_home=str(tmp_path), pouch_checkpoint_ms=0)
            for a in members:
                if hasattr(a, "configure"):
                    a.configure(set(tctx.options.keys()))
            client.sni = "api.openai.com"
            chain.http_connect(connect)
            pending = chain.requestheaders(f)  # as mitmproxy: a hook's result is awaited when it is awaitable
            if pending is not None:
                await pending
            await chain.request(f)
    asyncio.run(run())
    assert f.response is None and CALL in f.metadata, f.response and f.response.text
    return f.request


def test_a_streamed_call_is_forwarded_with_the_clients_bytes_plus_stream_options(tmp_path):
    raw = (b'{ "model": "gpt-4o-mini", "stream": true, "max_tokens": 50, "temperature": 0.50,\n'
           b'  "messages": [{"role": "user", "content": "caf\\u00e9"}] }')
    req = forwarded(tmp_path, raw)
    assert req.raw_content == b'{"stream_options":{"include_usage":true},' + raw[1:]
    assert req.headers["content-length"] == str(len(req.raw_content))


def test_a_number_json_cannot_round_trip_is_forwarded_as_the_client_wrote_it(tmp_path):
    # 1e400 parses as an infinite float; written back by json.dumps it would be `Infinity`,
    # which is not JSON: the provider would get a body other than the one pouch priced
    raw = b'{"model":"gpt-4o-mini","stream":true,"max_tokens":50,"temperature":1e400,"messages":[]}'
    req = forwarded(tmp_path, raw)
    assert req.raw_content.endswith(b'"temperature":1e400,"messages":[]}')
    assert parse_body(req.raw_content)["stream_options"] == {"include_usage": True}


def test_a_member_the_client_set_is_still_replaced_through_the_parsed_body(tmp_path):
    raw = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 50, "messages": [],
                      "stream_options": {"include_obfuscation": False}}).encode()
    req = forwarded(tmp_path, raw)
    assert json.loads(req.raw_content)["stream_options"] == {"include_obfuscation": False, "include_usage": True}


def test_a_compressed_body_is_forwarded_decoded_with_the_insertion(tmp_path):
    # planned in a worker thread (not inline): pouch sends the decoded bytes it priced
    # (mitmproxy's Request.make below compresses the body by its content-encoding)
    raw = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "x" * 3000}]}).encode()
    req = forwarded(tmp_path, raw, **{"Content-Encoding": "gzip"})  # Request.make gzips it
    assert "content-encoding" not in req.headers
    assert req.raw_content == b'{"stream_options":{"include_usage":true},' + raw[1:]
    assert req.headers["content-length"] == str(len(req.raw_content))


def test_a_large_body_gets_the_same_insertion(tmp_path):
    # above the inline plan's size (planned in a worker thread), below INLINE_INSERT_BYTES
    raw = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "word " * 12000}]}).encode()
    req = forwarded(tmp_path, raw)
    assert req.raw_content == b'{"stream_options":{"include_usage":true},' + raw[1:]


def test_a_large_body_whose_member_is_replaced_is_re_serialised(tmp_path):
    # planned in a worker thread, below INLINE_INSERT_BYTES, not an insertion: re-serialised there
    raw = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
                      "stream_options": {"include_obfuscation": False},
                      "messages": [{"role": "user", "content": "word " * 12000}]}).encode()
    req = forwarded(tmp_path, raw)
    body = json.loads(req.raw_content)
    assert body["stream_options"] == {"include_obfuscation": False, "include_usage": True}
    assert body["messages"][0]["content"] == "word " * 12000


def test_a_body_above_the_inline_insertion_size_gets_the_insertion_in_a_thread(tmp_path):
    from pouch_addon.addons.gate import INLINE_INSERT_BYTES
    raw = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "word " * (INLINE_INSERT_BYTES // 4)}]}).encode()
    assert len(raw) > INLINE_INSERT_BYTES
    req = forwarded(tmp_path, raw)
    assert req.raw_content == b'{"stream_options":{"include_usage":true},' + raw[1:]


def test_a_small_compressed_body_is_planned_off_the_loop_and_forwarded_decoded(tmp_path):
    # the gate reads content-encoding once for the inline test and the draft: a small gzip body
    # is not planned inline, and what is forwarded is the decoded bytes pouch priced
    raw = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = forwarded(tmp_path, raw, **{"Content-Encoding": "gzip"})
    assert "content-encoding" not in req.headers
    assert req.raw_content == b'{"stream_options":{"include_usage":true},' + raw[1:]


def test_a_body_marked_identity_is_planned_inline_and_forwarded_with_the_insertion(tmp_path):
    raw = json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
                      "messages": [{"role": "user", "content": "hi"}]}).encode()
    req = forwarded(tmp_path, raw, **{"Content-Encoding": " Identity "})
    assert req.raw_content == b'{"stream_options":{"include_usage":true},' + raw[1:]


def test_inline_ok_reads_the_coding_it_is_given_or_the_header():
    from pouch_addon.addons.gate import INLINE_PLAN_BYTES, inline_ok
    small = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", b"{}", {"Content-Encoding": "gzip"})
    small.raw_content = b"{}"  # not compressed by make: only the header matters here
    assert not inline_ok(small) and not inline_ok(small, "gzip")
    assert inline_ok(small, "") and inline_ok(small, "identity")
    del small.headers["content-encoding"]
    assert inline_ok(small)
    large = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", b"x" * (INLINE_PLAN_BYTES + 1))
    assert not inline_ok(large) and not inline_ok(large, "")


def test_set_content_identity_is_what_mitmproxys_setters_make():
    """The gate sets the rewritten body and ``accept-encoding: identity`` from the header index
    instead of mitmproxy's setters: the same fields (order, case, repeats) and body for any headers."""
    import random

    from mitmproxy import http

    from pouch_addon.addons.gate import set_content_identity

    names = [b"Host", b"Content-Length", b"content-length", b"Accept-Encoding", b"accept-encoding",
             b"Transfer-Encoding", b"Content-Encoding", b"Authorization", b"x-a", b"X-A"]
    values = [b"1", b"gzip", b"identity", b"chunked", b"br, gzip", b"v"]
    rng = random.Random(7)
    for _ in range(2000):
        fields = tuple((rng.choice(names), rng.choice(values)) for _ in range(rng.randrange(0, 6)))
        data = rng.choice([None, b"", b'{"a":1}', b"x" * 300])
        ours = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", b"{}")
        ours.headers.fields = fields
        theirs = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", b"{}")
        theirs.headers.fields = fields
        set_content_identity(ours, data)
        if data is not None:
            theirs.content = data
        theirs.headers["accept-encoding"] = "identity"
        assert ours.headers.fields == theirs.headers.fields, (fields, data)
        assert ours.raw_content == theirs.raw_content, (fields, data)
