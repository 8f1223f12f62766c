"""Self-test of the e2e harness with a BARE mitmdump (redirect addon only, no pouch).

Proves that real clients reach the fake api.openai.com through mitmproxy with the right
SNI/Host, that the fake speaks the wire format (usage chunk only when asked, caps, errors,
aborts), and that ``--allow-hosts`` leaves other hosts tunnelled untouched.
"""

from __future__ import annotations

import pytest

from fake_openai import fake_text

pytestmark = pytest.mark.e2e

CHAT_URL = "https://api.openai.com/v1/chat/completions"


def _usage(prompt: int, completion: int, cached: int = 0, reasoning: int = 0) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "cached_tokens": cached, "reasoning_tokens": reasoning}


def _flat(u: dict) -> dict:
    return {"prompt_tokens": u["prompt_tokens"], "completion_tokens": u["completion_tokens"],
            "total_tokens": u["total_tokens"],
            "cached_tokens": (u.get("prompt_tokens_details") or {}).get("cached_tokens"),
            "reasoning_tokens": (u.get("completion_tokens_details") or {}).get("reasoning_tokens")}


def test_sdk_non_stream_reaches_fake_with_real_sni_and_host(e2e, fake, bare_proxy):
    env = e2e.client_env(bare_proxy)
    r = e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_completion_tokens": 50,
                             "extra_headers": {"x-fake-chunks": "4", "x-fake-prompt-tokens": "120",
                                               "x-fake-cached-tokens": "100", "x-fake-reasoning-tokens": "6"}},
                    env)
    assert r["ok"], r["error"]
    assert r["content"] == fake_text(4)
    assert r["finish_reason"] == "stop"
    assert _flat(r["usage"]) == _usage(120, 10, cached=100, reasoning=6)

    conns = fake.connections()
    assert [c["sni"] for c in conns] == ["api.openai.com"]
    (req,) = fake.requests("/v1/chat/completions")
    assert req["method"] == "POST"
    assert req["headers"]["host"] == "api.openai.com"
    assert req["headers"]["authorization"] == "Bearer sk-test-pouch-e2e"
    assert req["headers"]["user-agent"].startswith("OpenAI/Python")
    assert req["body"]["model"] == "gpt-4o-mini" and req["body"]["max_completion_tokens"] == 50
    assert "stream" not in req["body"]


@pytest.mark.parametrize("include_usage", [False, True])
def test_sdk_stream_usage_chunk_only_when_asked(e2e, fake, bare_proxy, include_usage):
    args = {"model": "gpt-4o-mini",
            "extra_headers": {"x-fake-chunks": "5", "x-fake-prompt-tokens": "7", "x-fake-delay-ms": "150"}}
    if include_usage:
        args["stream_options"] = {"include_usage": True}
    r = e2e.run_sdk("chat_stream", args, e2e.client_env(bare_proxy))
    assert r["ok"], r["error"]
    assert r["content"] == fake_text(5)
    # role chunk + 5 content chunks + finish chunk (+ usage chunk)
    assert r["chunks"] == 7 + include_usage
    assert r["any_empty_choices"] is include_usage
    assert r["empty_choices_chunks"] == int(include_usage)
    if include_usage:
        assert _flat(r["usage"]) == _usage(7, 5)
    else:
        assert r["usage"] is None
    # stream_large_bodies=1: chunks arrive as they are produced, not buffered to the end
    t = r["chunk_times"]
    assert t[5] - t[1] >= 0.45, t

    (req,) = fake.requests("/v1/chat/completions")
    assert req["body"]["stream"] is True
    assert ("stream_options" in req["body"]) is include_usage
    assert fake.connections()[0]["sni"] == "api.openai.com"
    done = fake.wait_for("stream_done")
    assert done["usage_sent"] is include_usage


def test_sdk_modes_all_work_through_proxy(e2e, fake, bare_proxy):
    env = e2e.client_env(bare_proxy)
    hdr = {"x-fake-chunks": "3", "x-fake-prompt-tokens": "11"}
    cases = {
        "chat_stream_helper": {"stream_options": {"include_usage": True}},
        "async_chat": {},
        "async_chat_stream": {"stream_options": {"include_usage": True}},
        "responses": {},
        "responses_stream": {},
        "responses_stream_helper": {},
        "completions": {},
        "completions_stream": {"stream_options": {"include_usage": True}},
        "embeddings": {"input": ["a b c", "d e"]},
        "models": {},
    }
    results = e2e.run_sdk_batch([(mode, {**extra, "extra_headers": hdr}) for mode, extra in cases.items()], env)
    for mode, r in zip(cases, results):
        assert r["ok"], (mode, r["error"])
        if mode == "models":
            assert "gpt-4o-mini" in r["models"]
            continue
        if mode == "embeddings":
            assert r["embeddings"] == 2 and r["usage"] == {"prompt_tokens": 11, "total_tokens": 11}
            continue
        assert r["content"] == fake_text(3), mode
        u = r["usage"]
        if mode.startswith("responses"):
            assert (u["input_tokens"], u["output_tokens"], u["total_tokens"]) == (11, 3, 14), mode
        else:
            assert (u["prompt_tokens"], u["completion_tokens"]) == (11, 3), mode
    assert results[0]["helper_content"] == fake_text(3) and results[0]["any_empty_choices"]
    assert results[4]["events"][-1] == "response.completed"
    r = e2e.run_sdk("chat_stream_helper", {"extra_headers": hdr}, env)  # the plain one-call CLI path
    assert r["ok"] and r["helper_content"] == fake_text(3) and r["usage"] is None
    paths = {q["path"] for q in fake.requests()}
    assert paths == {"/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings", "/v1/models"}
    assert {c["sni"] for c in fake.connections()} == {"api.openai.com"}


def test_fake_honours_and_ignores_output_cap(e2e, fake, bare_proxy):
    env = e2e.client_env(bare_proxy)
    hdr = {"x-fake-chunks": "10", "x-fake-reasoning-tokens": "2", "x-fake-prompt-tokens": "5"}
    capped, ignored, resp, n2 = e2e.run_sdk_batch([
        ("chat", {"max_tokens": 4, "extra_headers": hdr}),
        ("chat_stream", {"max_completion_tokens": 4, "extra_headers": {**hdr, "x-fake-ignore-cap": "1"}}),
        ("responses", {"max_output_tokens": 3, "extra_headers": hdr}),
        ("chat", {"n": 2, "max_tokens": 3, "extra_headers": {"x-fake-chunks": "2", "x-fake-prompt-tokens": "5"}}),
    ], env)
    assert capped["ok"] and capped["content"] == fake_text(2) and capped["finish_reason"] == "length"
    assert _flat(capped["usage"]) == _usage(5, 4, reasoning=2)
    assert ignored["ok"] and ignored["content"] == fake_text(10)
    assert ignored["finish_reason"] == "stop"
    assert resp["ok"] and resp["status"] == "incomplete" and resp["content"] == fake_text(1)
    assert (resp["usage"]["output_tokens"], resp["usage"]["output_tokens_details"]["reasoning_tokens"]) == (3, 2)
    assert n2["ok"] and n2["choices"] == 2 and n2["usage"]["completion_tokens"] == 4


def test_curl_through_proxy(e2e, fake, bare_proxy):
    env = e2e.client_env(bare_proxy)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two three"}]}
    c = e2e.run_curl(CHAT_URL, env=env, json_body=body, headers={"authorization": "Bearer sk-x"})
    assert c.rc == 0 and c.status == 200, c.stderr
    assert c.issuer and "mitmproxy" in c.issuer
    data = c.json()
    assert data["choices"][0]["message"]["content"] == fake_text(3)
    assert data["usage"]["prompt_tokens"] == 3  # word-count rule: "one two three"

    c = e2e.run_curl(CHAT_URL, env=env, json_body={**body, "stream": True, "stream_options": {"include_usage": True}},
                     headers={"x-fake-chunks": "2"})
    assert c.rc == 0 and c.status == 200 and c.headers["content-type"].startswith("text/event-stream")
    events = c.sse_data()
    assert events[-1] == "[DONE]"
    assert '"choices": []' in events[-2] and '"completion_tokens": 2' in events[-2]

    c = e2e.run_curl("https://api.openai.com/v1/chat/completions", env=env, json_body=body,
                     headers={"x-fake-status": "429"})
    assert c.status == 429 and c.json()["error"]["code"] == "rate_limit_exceeded"

    reqs = fake.requests("/v1/chat/completions")
    assert len(reqs) == 3
    assert all(r["headers"]["host"] == "api.openai.com" for r in reqs)
    assert reqs[0]["headers"]["authorization"] == "Bearer sk-x"
    assert reqs[0]["body"] == body


def test_upstream_abort_gives_client_connection_error(e2e, fake, bare_proxy):
    env = e2e.client_env(bare_proxy)
    r = e2e.run_sdk("chat_stream", {"extra_headers": {"x-fake-chunks": "8", "x-fake-die-after": "2"}}, env)
    assert not r["ok"]
    assert r["error"]["class"] == "APIConnectionError"
    assert r["content"] == fake_text(2)
    assert fake.wait_for("died")["after"] == 2

    c = e2e.run_curl(CHAT_URL, env=env, json_body={"model": "gpt-4o-mini", "messages": [], "stream": True},
                     headers={"x-fake-chunks": "8", "x-fake-die-after": "3"})
    assert c.rc == 18, (c.rc, c.stderr[-500:])  # transfer closed with outstanding read data remaining
    assert sum('"content": " ' in d for d in c.sse_data()) == 3


def test_client_disconnect_is_logged_and_fake_survives(e2e, fake, bare_proxy):
    env = e2e.client_env(bare_proxy)
    r = e2e.run_sdk("chat_stream_disconnect_after:3",
                    {"extra_headers": {"x-fake-chunks": "20", "x-fake-delay-ms": "100"}}, env)
    assert r["ok"] and r["chunks"] == 3 and r["content"] == fake_text(2)
    gone = fake.wait_for("client_disconnected", timeout=5)
    sent = [e for e in fake.events_for(gone["req"]) if e["ev"] == "chunk_sent" and e["kind"] == "content"]
    assert 2 <= len(sent) < 20
    # the fake keeps serving
    r = e2e.run_sdk("chat", {}, env)
    assert r["ok"] and r["content"] == fake_text(3)


def test_sdk_gets_status_errors(e2e, fake, bare_proxy):
    env = e2e.client_env(bare_proxy)
    r = e2e.run_sdk("chat", {"extra_headers": {"x-fake-status": "400"}}, env)
    assert not r["ok"]
    assert r["error"]["class"] == "BadRequestError" and r["error"]["status_code"] == 400
    assert len(fake.requests()) == 1  # a 400 is not retried
    r = e2e.run_sdk("chat", {"client": {"max_retries": 0}, "extra_headers": {"x-fake-status": "500"}}, env)
    assert r["error"]["class"] == "InternalServerError" and r["error"]["status_code"] == 500


def test_other_host_outside_allow_hosts_is_tunnelled_untouched(e2e, fake):
    proxy = e2e.start_proxy(pouch=False, fake=fake, allow_hosts=r"^api\.openai\.com:\d+$")
    env = e2e.client_env(proxy)

    # other.test: a client trusting ONLY the fake CA succeeds -> mitmproxy did not intercept
    c = e2e.run_curl("https://other.test/ping", env=env, cacert=e2e.certs.ca_cert)
    assert c.rc == 0 and c.status == 200 and c.text == "pong", c.stderr[-2000:]
    assert c.issuer and "pouch throwaway test CA" in c.issuer
    # ...and one trusting only the mitmproxy CA fails
    c = e2e.run_curl("https://other.test/ping", env=env)
    assert c.rc == 60, c.stderr[-1000:]

    # api.openai.com is still intercepted
    c = e2e.run_curl("https://api.openai.com/ping", env=env)
    assert c.rc == 0 and c.text == "pong" and "mitmproxy" in (c.issuer or "")

    snis = [x["sni"] for x in fake.connections()]
    assert "other.test" in snis and "api.openai.com" in snis
    hosts = [r["headers"]["host"] for r in fake.requests("/ping")]
    assert hosts == ["other.test", "api.openai.com"]
