"""Anthropic and Gemini through pouch: a real mitmdump with the addon, the fake providers over TLS,
and the clients users run (the anthropic and google-genai SDKs, curl).

Per provider: an exact settle (non-stream and stream, against the usage the fake reported), a
402 that never reaches the provider, a cut-off, a disconnect, 30 concurrent streams against a
small budget (no overspend, nothing left reserved), an unknown model refused, and the free and
refused endpoints. The coding agents (Claude Code, Gemini CLI) are in ``test_agents.py``.
"""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest
from harness import ANTHROPIC_CLIENT, GENAI_CLIENT, wait_until

from pouch_addon.budget import Ledger
from pouch_addon.pricing import PriceTable, Usage, cost

pytestmark = pytest.mark.e2e

TABLE = PriceTable.load()
A_HOST = "api.anthropic.com"
G_HOST = "generativelanguage.googleapis.com"


def settled(home, n: int = 1) -> list[dict]:
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               15, f"{n} settled call(s)")
    assert ledger.verify() == []
    return ledger.history(kinds=("settle",))


def start(e2e, tmp_path, budget="5", sets=None):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(budget))
    proxy = e2e.start_proxy(home, sets or {})
    return home, proxy, e2e.client_env(proxy)


def anthropic_cost(model: str, usage: dict) -> D:
    return cost(TABLE.resolve(model), Usage.from_anthropic(usage))


def gemini_cost(model: str, usage: dict) -> D:
    return cost(TABLE.resolve(model), Usage.from_gemini(usage))


#: a prompt whose bytes bound the 1,200 input tokens the fake reports (a real provider cannot bill
#: more tokens than the request has bytes: see docs/anthropic-input-bound.md)
LONG = [{"role": "user", "content": "word " * 1300}]
GLONG = "word " * 1300


def no_traceback(proxy) -> None:
    assert "Traceback" not in proxy.stderr() + proxy.stdout()


# -- Anthropic -----------------------------------------------------------------------------------
def test_anthropic_sdk_calls_settle_exactly(e2e, anthropic_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    hdr = {"x-fake-prompt-tokens": "1200", "x-fake-cached-tokens": "300", "x-fake-cache-write-tokens": "200",
           "x-fake-cache-write-1h-tokens": "100", "x-fake-chunks": "6"}
    calls = [(mode, {"extra_headers": hdr, "messages": LONG})
             for mode in ("create", "stream", "tools_stream", "thinking_stream", "count_tokens")]
    results = e2e.run_sdk_batch(calls, env, script=ANTHROPIC_CLIENT)
    for r in results:
        assert r["ok"], r["error"]
    entries = sorted(settled(home, 4), key=lambda e: e["ts"])
    billed = [e["usage"] for e in anthropic_fake.responses() if e.get("usage")][:4]
    assert len(entries) == 4  # count_tokens is free: no reservation, no settle
    for entry, usage, r in zip(entries, billed, results):
        assert D(entry["cost"]) == anthropic_cost("claude-sonnet-4-5", usage), (entry, usage)
        assert D(entry["cost"]) <= D(entry["reserved"]) and entry["flags"] == []
        assert entry["provider"] == "anthropic" and entry["model"] == "claude-sonnet-4-5"
        assert entry["cache_write_1h_tokens"] == 100 and entry["cached_tokens"] == 300
        assert r["usage"]["output_tokens"] == usage["output_tokens"]  # the client saw the provider's usage
    assert anthropic_fake.requests()[-1]["path"] == "/v1/messages/count_tokens"
    no_traceback(proxy)


def test_anthropic_402_is_the_sdks_typed_error_and_nothing_is_sent(e2e, anthropic_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path, budget="0.0001", sets={"pouch_fit_caps": False})
    r = e2e.run_anthropic("create", {"max_tokens": 4000, "client": {"max_retries": 0}}, env)
    assert not r["ok"] and r["error"]["status_code"] == 402
    assert "budget exceeded" in r["error"]["message"] and r["error"]["body"]["error"]["type"] == "billing_error"
    Ledger(home).set_paused(True)
    r = e2e.run_anthropic("stream", {"client": {"max_retries": 0}}, env)
    assert not r["ok"] and r["error"]["status_code"] == 402 and "paused" in r["error"]["message"]
    assert anthropic_fake.requests("/v1/messages") == []
    assert Ledger(home).status().blocked == 2


def test_anthropic_max_tokens_is_fitted_to_the_budget(e2e, anthropic_fake, tmp_path):
    """Claude Code sends max_tokens 128000: lowered to what the budget pays instead of a 402."""
    home, proxy, env = start(e2e, tmp_path, budget="0.30")
    r = e2e.run_anthropic("thinking_stream", {"model": "claude-opus-4-5", "max_tokens": 128000,
                                              "thinking": {"type": "enabled", "budget_tokens": 100000},
                                              "extra_headers": {"x-fake-chunks": "5"}}, env)
    assert r["ok"], r["error"]
    sent = anthropic_fake.requests("/v1/messages")[-1]["body"]
    assert 1024 < sent["max_tokens"] < 128000 and sent["thinking"]["budget_tokens"] == sent["max_tokens"] - 1
    [entry] = settled(home)
    assert D(entry["reserved"]) <= D("0.30")


def test_anthropic_stream_cut_off_when_the_provider_ignores_the_cap(e2e, anthropic_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_anthropic("stream", {"max_tokens": 20, "client": {"max_retries": 0},
                                     "extra_headers": {"x-fake-chunks": "400", "x-fake-ignore-cap": "1"}}, env)
    assert not r["ok"] and "budget reservation" in r["error"]["message"]
    [entry] = settled(home)
    assert entry["status"] == "cut_off" and D(entry["cost"]) <= D(entry["reserved"])
    assert 20 <= entry["output_tokens"] <= 100  # the input bound's slack pays for some extra output
    no_traceback(proxy)


def test_anthropic_disconnect_bills_the_input_and_what_was_streamed(e2e, anthropic_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_anthropic("stream", {"max_tokens": 500, "client": {"max_retries": 0},
                                     "messages": LONG, "extra_headers": {"x-fake-chunks": "50", "x-fake-die-after": "10",
                                                                         "x-fake-prompt-tokens": "700"}}, env)
    assert not r["ok"]
    [entry] = settled(home)
    assert entry["status"] == "upstream_disconnect"
    assert entry["input_tokens"] == 700  # message_start's usage, not pouch's bound
    assert 8 <= entry["output_tokens"] <= 12 and D(entry["cost"]) <= D(entry["reserved"])


def test_anthropic_30_concurrent_streams_never_overspend(e2e, anthropic_fake, tmp_path):
    budget = D("0.05")
    home, proxy, env = start(e2e, tmp_path, budget=str(budget), sets={"pouch_fit_caps": False})
    calls = [("stream", {"max_tokens": 1000, "client": {"max_retries": 0},
                         "extra_headers": {"x-fake-chunks": "30", "x-fake-delay-ms": "20"}}) for _ in range(30)]
    results = e2e.run_sdk_batch(calls, env, script=ANTHROPIC_CLIENT, parallel=True)
    ok = [r for r in results if r["ok"]]
    refused = [r for r in results if not r["ok"]]
    assert ok and refused and all(r["error"]["status_code"] == 402 for r in refused)
    entries = settled(home, len(ok))
    st = Ledger(home).status()
    assert st.reserved == 0 and st.spent <= budget
    assert st.spent == sum(D(e["cost"]) for e in entries)


def test_anthropic_unknown_model_batches_and_server_tools_are_refused(e2e, anthropic_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_anthropic("create", {"model": "claude-nonexistent-9", "client": {"max_retries": 0}}, env)
    assert r["error"]["status_code"] == 400 and "claude-nonexistent-9" in r["error"]["message"]
    r = e2e.run_anthropic("create", {"tools": [{"type": "web_search_20250305", "name": "web_search"}],
                                     "client": {"max_retries": 0}}, env)
    assert r["error"]["status_code"] == 400 and "Anthropic's side" in r["error"]["message"]
    c = e2e.run_curl(f"https://{A_HOST}/v1/messages/batches", env=env, headers={"x-api-key": "k"},
                     json_body={"requests": []})
    assert c.status == 403 and "Batches" in c.json()["error"]["message"]
    assert anthropic_fake.requests("/v1/messages") == [] and anthropic_fake.requests("/v1/messages/batches") == []
    # Claude Code's account and telemetry calls pass free
    c = e2e.run_curl(f"https://{A_HOST}/api/claude_code/settings", env=env, headers={"x-api-key": "k"})
    assert c.status == 404 and anthropic_fake.requests("/api/claude_code/settings")


def test_curl_anthropic_through_pouch(e2e, anthropic_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    body = {"model": "claude-haiku-4-5", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "a b c"}]}
    c = e2e.run_curl(f"https://{A_HOST}/v1/messages?beta=true", env=env, json_body=body,
                     headers={"x-api-key": "sk-ant-curl", "anthropic-version": "2023-06-01", "x-fake-chunks": "3"})
    assert c.status == 200 and json.loads(c.sse_data()[-1])["type"] == "message_stop"
    [entry] = settled(home)
    assert D(entry["cost"]) == anthropic_cost("claude-haiku-4-5", anthropic_fake.responses()[-1]["usage"])


# -- Gemini --------------------------------------------------------------------------------------
def test_genai_calls_settle_exactly(e2e, gemini_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    hdr = {"x-fake-prompt-tokens": "900", "x-fake-cached-tokens": "400", "x-fake-chunks": "5",
           "x-fake-reasoning-tokens": "30", "x-fake-tool-use-prompt-tokens": "20"}
    thinking = {"max_output_tokens": 100, "thinking_config": {"include_thoughts": True, "thinking_budget": 50}}
    calls = [("generate", {"extra_headers": hdr, "contents": GLONG}), ("stream", {"extra_headers": hdr, "contents": GLONG}),
             ("stream", {"extra_headers": hdr, "config": thinking, "contents": GLONG}),
             ("count_tokens", {"extra_headers": hdr, "contents": GLONG})]
    results = e2e.run_sdk_batch(calls, env, script=GENAI_CLIENT)
    for r in results:
        assert r["ok"], r["error"]
    entries = sorted(settled(home, 3), key=lambda e: e["ts"])
    billed = [e["usage"] for e in gemini_fake.responses() if e.get("usage")][:3]
    assert len(entries) == 3
    for entry, usage in zip(entries, billed):
        assert D(entry["cost"]) == gemini_cost("gemini-2.5-flash", usage), (entry, usage)
        assert D(entry["cost"]) <= D(entry["reserved"]) and entry["flags"] == []
        assert entry["provider"] == "gemini" and entry["model"] == "gemini-2.5-flash"
    sent = [q["body"] for q in gemini_fake.requests() if "GenerateContent" in q["path"] or "generateContent" in q["path"]]
    assert sent[0]["generationConfig"]["maxOutputTokens"] >= 1  # injected: the SDK sent no cap
    assert sent[2]["generationConfig"]["maxOutputTokens"] == 100  # the client's own cap stands
    no_traceback(proxy)


def test_gemini_virtual_key_in_the_query_or_header_is_swapped_and_never_logged(e2e, gemini_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    e2e.run_cli(home, "wallet", "add", "gapp", "--budget", "1")
    e2e.run_cli(home, "key", "add", "gemini", "--no-passphrase", stdin="gm-real-key-1234567890\n")
    vkey = e2e.run_cli(home, "key", "issue", "--wallet", "gapp", "--provider", "gemini").stdout.strip()
    assert vkey.startswith("pk-pouch-")
    proxy = e2e.start_proxy(home, {})  # a proxy started after the vault exists opens it
    env = e2e.client_env(proxy)
    body = {"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 5}}
    url = f"https://{G_HOST}/v1beta/models/gemini-2.5-flash:generateContent"
    for kw in ({"url": url + f"?key={vkey}"}, {"url": url, "headers": {"x-goog-api-key": vkey}}):
        c = e2e.run_curl(kw["url"], env=env, headers=kw.get("headers"), json_body=body)
        assert c.status == 200, c.text
        req = gemini_fake.requests()[-1]
        assert req["api_key"] == "gm-real-key-1234567890" and "key=" not in req["path"]
    entries = settled(home, 2)
    assert {e["wallet"] for e in entries} == {"gapp"}
    logs = proxy.stdout() + proxy.stderr() + "".join(p.read_text(errors="replace") for p in home.rglob("*")
                                                     if p.is_file() and p.suffix in (".json", ".jsonl", ".head"))
    assert vkey not in logs and "gm-real-key-1234567890" not in logs
    # a virtual key issued for another provider is never swapped in here
    okey = e2e.run_cli(home, "key", "issue", "--wallet", "gapp", "--provider", "openai").stdout.strip()
    c = e2e.run_curl(url, env=env, headers={"x-goog-api-key": okey}, json_body=body)
    assert c.status == 401 and "issued for openai" in c.json()["error"]["message"]


def test_gemini_402_cut_off_disconnect_and_refusals(e2e, gemini_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path, budget="0.00001")
    r = e2e.run_genai("generate", {"config": {"max_output_tokens": 2000}}, env)
    assert not r["ok"] and r["error"]["code"] == 402 and "budget exceeded" in r["error"]["message"]
    assert gemini_fake.requests() == []
    Ledger(home).set_budget(D(5))
    r = e2e.run_genai("stream", {"config": {"max_output_tokens": 10, "thinking_config": {"thinking_budget": 0}},
                                 "extra_headers": {"x-fake-chunks": "300", "x-fake-ignore-cap": "1"}}, env)
    assert not r["ok"]
    r = e2e.run_genai("stream", {"config": {"max_output_tokens": 500}, "contents": GLONG,
                                 "extra_headers": {"x-fake-chunks": "40", "x-fake-die-after": "8",
                                                   "x-fake-prompt-tokens": "321"}}, env)
    assert not r["ok"]
    cut, died = sorted(settled(home, 2), key=lambda e: e["ts"])
    assert cut["status"] == "cut_off" and D(cut["cost"]) <= D(cut["reserved"]) and cut["output_tokens"] <= 30
    assert died["status"] == "upstream_disconnect" and died["input_tokens"] == 321
    r = e2e.run_genai("generate", {"model": "gemini-99-ultra"}, env)
    assert r["error"]["code"] == 400 and "gemini-99-ultra" in r["error"]["message"]
    c = e2e.run_curl(f"https://{G_HOST}/v1beta/cachedContents", env=env, headers={"x-goog-api-key": "k"},
                     json_body={"model": "models/gemini-2.5-flash"})
    assert c.status == 403 and c.json()["error"]["status"] == "PERMISSION_DENIED"
    r = e2e.run_genai("generate", {"config": {"tools": [{"google_search": {}}]}}, env)
    assert r["error"]["code"] == 400 and "Google's side" in r["error"]["message"]
    no_traceback(proxy)


def test_gemini_30_concurrent_streams_never_overspend(e2e, gemini_fake, tmp_path):
    budget = D("0.02")
    home, proxy, env = start(e2e, tmp_path, budget=str(budget))
    calls = [("stream", {"config": {"max_output_tokens": 800, "thinking_config": {"thinking_budget": 0}},
                         "extra_headers": {"x-fake-chunks": "30", "x-fake-delay-ms": "20"}}) for _ in range(30)]
    results = e2e.run_sdk_batch(calls, env, script=GENAI_CLIENT, parallel=True)
    ok = [r for r in results if r["ok"]]
    refused = [r for r in results if not r["ok"]]
    assert ok and refused and all(r["error"]["code"] == 402 for r in refused)
    entries = settled(home, len(ok))
    st = Ledger(home).status()
    assert st.reserved == 0 and st.spent <= budget and st.spent == sum(D(e["cost"]) for e in entries)


def test_curl_gemini_json_array_stream_is_metered(e2e, gemini_fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    body = {"contents": [{"role": "user", "parts": [{"text": "one two three four"}]}],
            "generationConfig": {"maxOutputTokens": 20, "thinkingConfig": {"thinkingBudget": 0}}}
    c = e2e.run_curl(f"https://{G_HOST}/v1beta/models/gemini-2.5-pro:streamGenerateContent", env=env,
                     headers={"x-goog-api-key": "gk", "x-fake-chunks": "4"}, json_body=body)
    assert c.status == 200 and len(json.loads(c.text)) == 4
    [entry] = settled(home)
    assert D(entry["cost"]) == gemini_cost("gemini-2.5-pro", gemini_fake.responses()[-1]["usage"])
    assert entry["status"] == "ok"


def test_anthropic_virtual_key_in_x_api_key_is_swapped_and_the_wallet_charged(e2e, anthropic_fake, tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(5))
    e2e.run_cli(home, "wallet", "add", "claude-app", "--budget", "1", "--rpm", "1")
    e2e.run_cli(home, "key", "add", "anthropic", "--no-passphrase", stdin="sk-ant-real-0123456789abcdef\n")
    vkey = e2e.run_cli(home, "key", "issue", "--wallet", "claude-app", "--provider", "anthropic").stdout.strip()
    proxy = e2e.start_proxy(home, {})
    env = e2e.client_env(proxy, anthropic_key=vkey)
    r = e2e.run_anthropic("create", {"client": {"max_retries": 0}, "extra_headers": {"x-api-key": vkey}}, env)
    assert r["ok"], r["error"]
    req = anthropic_fake.requests("/v1/messages")[-1]
    assert req["api_key"] == "sk-ant-real-0123456789abcdef" and "pk-pouch-" not in json.dumps(req["keys"])
    [entry] = settled(home)
    assert entry["wallet"] == "claude-app" and entry["via"] == "key"
    # the wallet's rpm applies unchanged
    r = e2e.run_anthropic("create", {"client": {"max_retries": 0}}, env)
    assert r["error"]["status_code"] == 429 and r["error"]["body"]["error"]["type"] == "rate_limit_error"
    assert len(anthropic_fake.requests("/v1/messages")) == 1


# -- side doors on the new hosts ------------------------------------------------------------------
MSG = json.dumps({"model": "claude-haiku-4-5", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
GEN_BODY = json.dumps({"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 5}})
SIDE_DOORS = [
    ("anthropic-upgrade", A_HOST, "/v1/messages", "GET", {"upgrade": "websocket", "connection": "Upgrade"}, None, 403),
    ("anthropic-get-with-body", A_HOST, "/v1/messages", "GET", {}, MSG, 403),
    ("anthropic-override", A_HOST, "/v1/models", "GET", {"x-http-method-override": "POST"}, None, 400),
    ("anthropic-duplicate-model", A_HOST, "/v1/messages", "POST", {},
     MSG.replace('"model": "claude-haiku-4-5"', '"model": "claude-opus-4-5", "model": "claude-haiku-4-5"'), 400),
    ("anthropic-unknown-encoding", A_HOST, "/v1/messages", "POST", {"content-encoding": "compress"}, MSG, 415),
    ("anthropic-odd-path", A_HOST, "/v1/messages/../complete", "POST", {}, MSG, 403),
    ("gemini-upgrade", G_HOST, "/v1beta/models/gemini-2.5-flash:streamGenerateContent", "GET",
     {"upgrade": "websocket", "connection": "Upgrade"}, None, 403),
    ("gemini-get-with-body", G_HOST, "/v1beta/models/gemini-2.5-flash:generateContent", "GET", {}, GEN_BODY, 403),
    ("gemini-both-spellings", G_HOST, "/v1beta/models/gemini-2.5-flash:generateContent", "POST", {},
     GEN_BODY.replace('"generationConfig"', '"generation_config": {}, "generationConfig"'), 400),
    ("gemini-predict", G_HOST, "/v1beta/models/imagen-4:predict", "POST", {}, GEN_BODY, 403),
]


@pytest.mark.parametrize("name,host,path,method,headers,body,status", SIDE_DOORS, ids=[c[0] for c in SIDE_DOORS])
def test_side_doors_on_the_anthropic_and_gemini_hosts_are_shut(e2e, anthropic_fake, gemini_fake, tmp_path,
                                                               name, host, path, method, headers, body, status):
    home, proxy, env = start(e2e, tmp_path)
    Ledger(home).set_paused(True)  # nothing may pass while paused, least of all through a side door
    c = e2e.run_curl(f"https://{host}{path}", env=env, method=method, data=body,
                     headers={"x-api-key": "k", "x-goog-api-key": "k", "content-type": "application/json", **headers})
    assert c.status == status, (c.status, c.text)
    assert "pouch" in c.text
    fake = anthropic_fake if host == A_HOST else gemini_fake
    assert [q for q in fake.requests() if q["path"] != "/ping"] == []
    no_traceback(proxy)
