"""Plumbing: the real Anthropic and Gemini clients reach the fake providers through a BARE mitmdump.

No pouch here (``start_proxy(pouch=False)``: mitmdump, the test redirect addon and nothing else),
so these tests hold whether or not pouch supports the providers yet. They prove that each
client (anthropic SDK, google-genai, curl, Claude Code, Gemini CLI) talks to its fake through the
proxy, under the provider's own host name, and that the usage the fake recorded is exactly the
usage the client saw, so provider tests through pouch can compare pouch's ledger with the fake.
"""

from __future__ import annotations

import json

import pytest
from fake_openai import fake_text
from harness import ANTHROPIC_CLIENT, GENAI_CLIENT

pytestmark = pytest.mark.e2e

A_HOST = "api.anthropic.com"
G_HOST = "generativelanguage.googleapis.com"


def _final_usages(fake) -> list[dict]:  # noqa: ANN001
    """The usage each /v1/messages or generate call reported, in request order."""
    return [e["usage"] for e in fake.responses() if "planned_usage" in e or e.get("usage")]


def _subset(expected: dict, got: dict | None) -> bool:
    return got is not None and all(got.get(k) == v for k, v in expected.items())


def test_three_fakes_run_at_once_and_each_host_reaches_its_own(e2e, anthropic_fake, gemini_fake):
    openai_fake = e2e.start_fake()
    proxy = e2e.start_proxy(pouch=False)
    assert proxy.routes == {"api.openai.com": openai_fake, A_HOST: anthropic_fake, G_HOST: gemini_fake}
    env = e2e.client_env(proxy)
    for host, fake in (("api.openai.com", openai_fake), (A_HOST, anthropic_fake), (G_HOST, gemini_fake)):
        c = e2e.run_curl(f"https://{host}/ping", env=env)
        assert c.status == 200 and c.text == "pong", (host, c.stderr[-500:])
        assert c.issuer and "mitmproxy" in c.issuer            # decrypted by the proxy
        req = fake.requests("/ping")[-1]
        assert req["headers"]["host"] == host
        assert fake.connections()[-1]["sni"] == host
    assert [len(f.requests()) for f in (openai_fake, anthropic_fake, gemini_fake)] == [1, 1, 1]


def test_anthropic_sdk_create_stream_tools_thinking(e2e, anthropic_fake):
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.client_env(proxy)
    hdr = {"x-fake-prompt-tokens": "120", "x-fake-cached-tokens": "30", "x-fake-cache-write-tokens": "20",
           "x-fake-cache-write-1h-tokens": "10", "x-fake-chunks": "4"}
    calls = [("create", {"extra_headers": hdr}), ("stream", {"extra_headers": hdr}),
             ("stream_helper", {"extra_headers": hdr}), ("tools", {"extra_headers": hdr}),
             ("tools_stream", {"extra_headers": hdr}), ("thinking", {"extra_headers": hdr}),
             ("thinking_stream", {"extra_headers": hdr}), ("count_tokens", {"extra_headers": hdr})]
    results = e2e.run_sdk_batch(calls, env, script=ANTHROPIC_CLIENT)
    for r in results:
        assert r["ok"], r["error"]
    reported = _final_usages(anthropic_fake)
    assert len(reported) == 7
    expect_out = [4, 4, 4, 4 + 8, 4 + 8, 5 + 4, 5 + 4]     # text, + one tool call, + 5 thinking tokens
    for r, u, out in zip(results, reported, expect_out):
        assert u["input_tokens"] == 60 and u["cache_read_input_tokens"] == 30
        assert u["cache_creation_input_tokens"] == 30
        assert u["cache_creation"] == {"ephemeral_5m_input_tokens": 20, "ephemeral_1h_input_tokens": 10}
        assert u["output_tokens"] == out
        assert _subset(u, r["usage"]), (r["mode"], u, r["usage"])       # what the SDK saw
        assert r["content"] == fake_text(4)
    for r in (results[3], results[4]):     # create and stream (input_json_delta pieces joined) agree
        assert [(t["name"], t["input"]) for t in r["tool_uses"]] == [("search", {"query": "zero one"})]
    assert results[4]["stop_reason"] == "tool_use"
    assert results[5]["thinking"] == fake_text(5).strip() and results[6]["thinking"] == fake_text(5)
    assert results[1]["start_usage"]["output_tokens"] == 1                 # message_start placeholder
    assert results[1]["events"][0] == "message_start" and results[1]["events"][-1] == "message_stop"
    assert results[7]["input_tokens"] == 120
    reqs = anthropic_fake.requests()
    assert all(q["headers"]["host"] == A_HOST for q in reqs)
    assert {q["key_in"] for q in reqs} == {"authorization"}        # anthropic 2.x: Authorization: Bearer
    assert {q["api_key"] for q in reqs} == {"sk-ant-test-pouch-e2e"}
    assert reqs[0]["body"]["max_tokens"] == 64 and reqs[1]["body"]["stream"] is True
    assert reqs[5]["body"]["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert reqs[-1]["path"] == "/v1/messages/count_tokens"


def test_anthropic_stream_usage_variants_and_failures(e2e, anthropic_fake):
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.client_env(proxy)
    base = {"x-fake-prompt-tokens": "50", "x-fake-chunks": "6"}
    calls = [
        # message_delta with output_tokens only (older API): the SDK keeps message_start's input
        ("stream", {"extra_headers": {**base, "x-fake-delta-usage": "output"}}),
        # input grows in message_delta (tool streams): the last value wins
        ("stream", {"extra_headers": {**base, "x-fake-input-growth": "7"}}),
        # the cap cuts the output
        ("stream", {"max_tokens": 2, "extra_headers": base}),
        # lie / omit
        ("create", {"extra_headers": {**base, "x-fake-report-output-tokens": "99"}}),
        ("create", {"extra_headers": {**base, "x-fake-omit-usage": "1"}}),
        # an error event mid-stream, a typed status error, a dead connection
        ("stream", {"extra_headers": {**base, "x-fake-stream-error": "2"}}),
        ("create", {"client": {"max_retries": 0}, "extra_headers": {**base, "x-fake-status": "529"}}),
        ("stream", {"client": {"max_retries": 0}, "extra_headers": {**base, "x-fake-die-after": "2"}}),
    ]
    r = e2e.run_sdk_batch(calls, env, script=ANTHROPIC_CLIENT)
    assert r[0]["ok"] and len(r[0]["delta_usages"]) == 1
    assert {k: v for k, v in r[0]["delta_usages"][0].items() if v is not None} == {"output_tokens": 6}
    assert r[0]["usage"]["input_tokens"] == 50 and r[0]["usage"]["output_tokens"] == 6
    assert r[1]["start_usage"]["input_tokens"] == 50 and r[1]["usage"]["input_tokens"] == 57
    assert r[2]["content"] == fake_text(2) and r[2]["stop_reason"] == "max_tokens"
    assert r[2]["usage"]["output_tokens"] == 2
    assert r[3]["usage"]["output_tokens"] == 99 and r[3]["content"] == fake_text(6)
    assert r[4]["ok"] and r[4]["usage"] is None
    assert not r[5]["ok"] and r[5]["content"] == fake_text(2) and "Overloaded" in r[5]["error"]["message"]
    assert r[6]["error"]["status_code"] == 529 and r[6]["error"]["class"] == "OverloadedError"
    assert r[6]["error"]["body"]["error"]["type"] == "overloaded_error"
    assert not r[7]["ok"] and r[7]["content"] == fake_text(2)
    assert anthropic_fake.entries("died")[-1]["after"] == 2


def test_genai_generate_and_stream(e2e, gemini_fake):
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.client_env(proxy)
    hdr = {"x-fake-prompt-tokens": "90", "x-fake-cached-tokens": "40", "x-fake-chunks": "5",
           "x-fake-reasoning-tokens": "3", "x-fake-tool-use-prompt-tokens": "2"}
    thinking = {"max_output_tokens": 100, "thinking_config": {"include_thoughts": True, "thinking_budget": 50}}
    calls = [("generate", {"extra_headers": hdr}), ("stream", {"extra_headers": hdr}),
             ("stream", {"extra_headers": hdr, "config": thinking}),
             ("stream", {"extra_headers": {**hdr, "x-fake-tool-calls": "lookup"}}),
             ("async_stream", {"extra_headers": hdr, "config": {"max_output_tokens": 2, "candidate_count": 2}}),
             ("count_tokens", {"extra_headers": hdr})]
    results = e2e.run_sdk_batch(calls, env, script=GENAI_CLIENT)
    for r in results:
        assert r["ok"], r["error"]
    reported = _final_usages(gemini_fake)
    assert len(reported) == 5
    for r, u in zip(results, reported):
        assert _subset(u, r["usage"]), (r["mode"], u, r["usage"])
    full = {"promptTokenCount": 90, "cachedContentTokenCount": 40, "candidatesTokenCount": 5,
            "thoughtsTokenCount": 3, "toolUsePromptTokenCount": 2, "totalTokenCount": 100}
    assert _subset(full, reported[0]) and _subset(full, reported[1]) and _subset(full, reported[2])
    assert results[0]["content"] == results[1]["content"] == fake_text(5)
    # running totals: one usageMetadata per chunk, candidates growing, the last one final
    assert [u["candidatesTokenCount"] for u in results[1]["usages"]] == [1, 2, 3, 4, 5]
    assert results[2]["thoughts"] == fake_text(3) and results[2]["chunks"] == 3 + 5
    assert results[3]["function_calls"] == [{"name": "lookup", "args": {"query": "zero one"}}]
    assert reported[3]["candidatesTokenCount"] == 5 + 8
    # maxOutputTokens 2 with 3 thoughts first: no text, MAX_TOKENS; two candidates double the counts
    assert results[4]["finish_reason"] == "MAX_TOKENS" and reported[4]["thoughtsTokenCount"] == 4
    assert results[5]["total_tokens"] == 90
    reqs = gemini_fake.requests()
    assert all(q["headers"]["host"] == G_HOST for q in reqs)
    assert {q["key_in"] for q in reqs} == {"header"} and {q["api_key"] for q in reqs} == {"gm-test-pouch-e2e"}
    paths = [q["path"] for q in reqs]
    assert paths[0].endswith("/models/gemini-2.5-flash:generateContent")
    assert paths[1].endswith("/models/gemini-2.5-flash:streamGenerateContent?alt=sse")
    assert paths[5].endswith(":countTokens")
    # google-genai 3.x sends a nested config dict as written (snake_case inside camelCase)
    assert reqs[2]["body"]["generationConfig"] == {"maxOutputTokens": 100, "thinkingConfig": {
        "include_thoughts": True, "thinking_budget": 50}}


def test_curl_anthropic(e2e, anthropic_fake):
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.client_env(proxy)
    url = f"https://{A_HOST}/v1/messages"
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "messages": [{"role": "user", "content": "a b c"}]}
    hdrs = {"x-api-key": "sk-ant-curl", "anthropic-version": "2023-06-01", "x-fake-chunks": "3"}
    c = e2e.run_curl(url, env=env, headers=hdrs, json_body=body)
    assert c.status == 200 and c.json()["usage"] == anthropic_fake.responses()[-1]["usage"]
    assert c.json()["usage"]["input_tokens"] == 3 and c.json()["content"][0]["text"] == fake_text(3)
    c = e2e.run_curl(url + "?beta=true", env=env, headers=hdrs, json_body={**body, "stream": True})
    events = [json.loads(d) for d in c.sse_data()]
    assert [e["type"] for e in events][:2] == ["message_start", "ping"] and events[-1]["type"] == "message_stop"
    delta = [e for e in events if e["type"] == "message_delta"][-1]
    assert delta["usage"]["output_tokens"] == anthropic_fake.responses()[-1]["usage"]["output_tokens"] == 3
    assert "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta") == fake_text(3)
    req = anthropic_fake.requests()[-1]
    assert req["path"] == "/v1/messages?beta=true" and req["key_in"] == "x-api-key" and req["api_key"] == "sk-ant-curl"
    c = e2e.run_curl(f"https://{A_HOST}/api/claude_code/settings", env=env, headers=hdrs)
    assert c.status == 404 and c.json()["error"]["type"] == "not_found_error" and c.json()["type"] == "error"
    c = e2e.run_curl(url, env=env, headers={**hdrs, "x-fake-status": "429"}, json_body=body)
    assert c.status == 429 and c.json()["error"]["type"] == "rate_limit_error"
    c = e2e.run_curl(url + "/count_tokens", env=env, headers=hdrs, json_body=body)
    assert c.status == 200 and c.json() == {"input_tokens": 3}


def test_curl_gemini_sse_json_array_and_query_key(e2e, gemini_fake):
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.client_env(proxy)
    base = f"https://{G_HOST}/v1beta/models/gemini-2.5-pro"
    body = {"contents": [{"role": "user", "parts": [{"text": "one two three four"}]}],
            "generationConfig": {"maxOutputTokens": 20}}
    c = e2e.run_curl(base + ":streamGenerateContent?alt=sse", env=env,
                     headers={"x-goog-api-key": "gk-header", "x-fake-chunks": "3"}, json_body=body)
    chunks = [json.loads(d) for d in c.sse_data()]
    assert c.status == 200 and len(chunks) == 3
    assert chunks[-1]["usageMetadata"] == gemini_fake.responses()[-1]["usage"]
    assert chunks[-1]["usageMetadata"]["promptTokenCount"] == 4
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    # without alt=sse: one JSON array, streamed in pieces
    c = e2e.run_curl(base + ":streamGenerateContent?key=gk-query", env=env, headers={"x-fake-chunks": "3"},
                     json_body=body)
    arr = c.json()
    assert c.status == 200 and isinstance(arr, list) and len(arr) == 3
    assert c.headers["content-type"].startswith("application/json")
    assert arr[-1]["usageMetadata"] == gemini_fake.responses()[-1]["usage"]
    assert "".join(x["candidates"][0]["content"]["parts"][0]["text"] for x in arr) == fake_text(3)
    q = gemini_fake.requests()[-1]
    assert q["key_in"] == "query" and q["api_key"] == "gk-query" and q["path"].endswith("?key=gk-query")
    assert gemini_fake.requests()[-2]["key_in"] == "header"
    sent = [e for e in gemini_fake.entries("chunk_sent") if e["req"] == q["req"]]
    assert len(sent) == 4                                          # 3 array elements + the closing "]"
    c = e2e.run_curl(f"https://{G_HOST}/v1/models/gemini-2.5-pro:generateContent", env=env,
                     headers={"x-goog-api-key": "gk", "x-fake-status": "400"}, json_body=body)
    assert c.status == 400 and c.json()["error"]["status"] == "INVALID_ARGUMENT"
    c = e2e.run_curl(f"https://{G_HOST}/v1beta/models/gemini-2.5-pro:countTokens", env=env,
                     headers={"x-goog-api-key": "gk"}, json_body=body)
    assert c.json()["totalTokens"] == 4


def test_claude_code_completes_a_prompt(e2e, anthropic_fake, agent_clis):
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.agent_env(proxy)
    r = e2e.run_claude("say hello", env, args=("--output-format", "json"))
    assert r.rc == 0, r.stderr[-3000:]
    out = r.json()
    assert out["result"] == fake_text(3) and out["is_error"] is False
    msgs = anthropic_fake.requests("/v1/messages")
    assert len(msgs) == 1
    q = msgs[0]
    assert q["path"] == "/v1/messages?beta=true" and q["headers"]["host"] == A_HOST
    assert q["key_in"] == "x-api-key" and q["api_key"] == env["ANTHROPIC_API_KEY"]
    assert q["body"]["stream"] is True and isinstance(q["body"]["max_tokens"], int)
    assert q["body"]["model"].startswith("claude-")
    reported = anthropic_fake.responses()
    usage = [e["usage"] for e in reported if e.get("usage")][-1]
    assert out["usage"]["input_tokens"] == usage["input_tokens"] and out["usage"]["output_tokens"] == 3
    # with CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC only the two settings GETs besides the call
    others = sorted(x["path"] for x in anthropic_fake.requests() if not x["path"].startswith("/v1/messages"))
    assert others == ["/api/claude_code/policy_limits", "/api/claude_code/settings"]


def test_claude_code_shows_an_api_error_to_the_user(e2e, anthropic_fake, agent_clis):
    """What a 402 in Anthropic's shape looks like in Claude Code (pouch will answer like this)."""
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.agent_env(proxy, extra={"ANTHROPIC_CUSTOM_HEADERS": "x-fake-status: 402"})
    r = e2e.run_claude("say hello", env)
    assert r.rc == 1
    assert "402" in r.stdout and "fake error 402" in r.stdout
    assert len(anthropic_fake.requests("/v1/messages")) == 1              # one attempt, no retry


def test_gemini_cli_completes_a_prompt(e2e, gemini_fake, agent_clis):
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.agent_env(proxy)
    r = e2e.run_gemini("say hello", env, args=("--output-format", "json"))
    assert r.rc == 0, r.stderr[-3000:]
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["response"].strip() == fake_text(3).strip()
    reqs = gemini_fake.requests()
    assert reqs and all(q["headers"]["host"] == G_HOST for q in reqs)
    assert {q["key_in"] for q in reqs} == {"header"} and {q["api_key"] for q in reqs} == {env["GEMINI_API_KEY"]}
    streams = [q for q in reqs if ":streamGenerateContent?alt=sse" in q["path"]]
    assert len(streams) == 1 and streams[0]["path"].startswith("/v1beta/models/gemini-")
    # the stats Gemini CLI shows are the fake's usage
    by_model = out["stats"]["models"]
    model = streams[0]["path"].split("/models/")[1].split(":")[0]
    final = [e["usage"] for e in gemini_fake.responses() if e.get("req") == streams[0]["req"]][0]
    assert by_model[model]["tokens"]["prompt"] == final["promptTokenCount"]
    assert by_model[model]["tokens"]["candidates"] == final["candidatesTokenCount"] == 3


def test_gemini_cli_shows_an_api_error_and_can_send_its_key_as_bearer(e2e, gemini_fake, agent_clis):
    """What a 402 in Google's shape looks like in Gemini CLI, and the other place its key can be."""
    proxy = e2e.start_proxy(pouch=False)
    env = e2e.agent_env(proxy, extra={"GEMINI_CLI_CUSTOM_HEADERS": "x-fake-status: 402",
                                      "GEMINI_API_KEY_AUTH_MECHANISM": "bearer"})
    r = e2e.run_gemini("say hello", env)
    assert r.rc != 0
    assert "402" in r.stdout + r.stderr and "fake error 402" in r.stdout + r.stderr
    reqs = gemini_fake.requests()
    # bearer adds Authorization; its SDK still sends x-goog-api-key too: a key to swap in both
    assert reqs and {q["key_in"] for q in reqs} == {"authorization+header"}
    assert all(q["keys"] == {"authorization": env["GEMINI_API_KEY"], "header": env["GEMINI_API_KEY"]} for q in reqs)


def test_pouch_proxy_gets_a_route_per_fake_and_openai_still_works(e2e, anthropic_fake, gemini_fake, tmp_path):
    """With pouch, each provider host is routed by its own repeatable ``pouch_route`` (whether
    pouch decrypts that host is pouch's business; the OpenAI path must be unchanged)."""
    from decimal import Decimal

    from pouch_addon.budget import Ledger

    openai_fake = e2e.start_fake()
    home = tmp_path / "home"
    Ledger(home).set_budget(Decimal("1"))
    proxy = e2e.start_proxy(home)
    routes = [a.split("=", 1)[1] for a in proxy.cmd if a.startswith("pouch_route=")]
    assert sorted(routes) == sorted([f"api.openai.com={openai_fake.address}", f"{A_HOST}={anthropic_fake.address}",
                                     f"{G_HOST}={gemini_fake.address}"])
    r = e2e.run_sdk("chat", {"max_tokens": 5, "extra_headers": {"x-fake-chunks": "2"}}, e2e.client_env(proxy))
    assert r["ok"], r["error"]
    assert r["content"] == fake_text(2) and openai_fake.requests("/v1/chat/completions")
    assert proxy.alive()
