"""Local model servers through pouch: a real mitmdump with the addon, a fake Ollama over plain
HTTP (``fake_ollama.py``) reached through ``HTTP_PROXY``, and real clients (the openai SDK with
``base_url`` at the fake, curl on Ollama's native streaming ``/api/chat``).

Local calls are free: never refused for money (the ledger here has no budget at all, or an
overspent one), but metered: settled at $0 with the server's token counts, provider ``local``,
marked ``local``. Pause and a wallet's rpm still apply.
"""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest
from fake_ollama import FakeOllama
from harness import wait_until

from pouch_addon.budget import Ledger

pytestmark = pytest.mark.e2e


@pytest.fixture
def ollama():
    f = FakeOllama()
    yield f
    f.stop()


def settled(home, n: int = 1) -> list[dict]:
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               15, f"{n} settled call(s)")
    assert ledger.verify() == []
    return ledger.history(kinds=("settle",))


def start(e2e, tmp_path, ollama, budget=None, sets=None):
    home = tmp_path / "home"
    ledger = Ledger(home)
    if budget is not None:
        ledger.set_budget(D(budget))
    else:
        ledger.status()  # a ledger with no budget: every priced call would get 402
    proxy = e2e.start_proxy(home, {"pouch_local_hosts": f"127.0.0.1:{ollama.port}", **(sets or {})})
    env = e2e.client_env(proxy, extra={"HTTP_PROXY": proxy.url, "http_proxy": proxy.url})
    return home, proxy, env


def sdk_args(ollama, **kw):
    return {"model": "llama3.2:1b", "client": {"base_url": f"http://127.0.0.1:{ollama.port}/v1", "max_retries": 0},
            "extra_headers": {"x-fake-chunks": "4", "x-fake-prompt-tokens": "11"}, **kw}


def test_openai_sdk_to_local_server_is_metered_at_zero(e2e, fake, tmp_path, ollama):
    home, proxy, env = start(e2e, tmp_path, ollama)
    r = e2e.run_sdk("chat", sdk_args(ollama), env)
    assert r["ok"], r
    s = e2e.run_sdk("chat_stream", sdk_args(ollama), env)
    assert s["ok"], s
    assert s["content"] == "w0 w1 w2 w3 "
    assert not s["any_empty_choices"]  # the usage chunk pouch asked for is hidden again
    assert ollama.requests[-1]["body"]["stream_options"] == {"include_usage": True}
    assert "proxy-authorization" not in ollama.requests[-1]["headers"]
    entries = settled(home, 2)
    for e in entries:
        assert e["provider"] == "local" and e["local"] is True and e["model"] == "llama3.2:1b"
        assert D(e["cost"]) == 0 and D(e["reserved"]) == 0
        assert (e["input_tokens"], e["output_tokens"]) == (11, 4)
        assert e["usage_source"] == "provider" and e["status"] == "ok"
        assert "duration_s" in e
    st = Ledger(home).status()
    assert st.spent == 0 and st.requests == 2 and st.blocked == 0


def test_native_ollama_chat_stream_through_http_proxy(e2e, fake, tmp_path, ollama):
    home, proxy, env = start(e2e, tmp_path, ollama, budget="0.001")
    Ledger(home).settle(Ledger(home).reserve(D("0.001")).id, D("0.002"))  # overspent: remaining < 0
    assert Ledger(home).status().remaining < 0
    c = e2e.run_curl(f"http://127.0.0.1:{ollama.port}/api/chat", env=env,
                     headers={"x-fake-chunks": "5", "x-fake-prompt-tokens": "9"},
                     json_body={"model": "gemma3", "messages": [{"role": "user", "content": "hi"}]})
    assert c.status == 200, c.stderr
    lines = [json.loads(x) for x in c.body.decode().splitlines()]
    assert [x["message"]["content"] for x in lines] == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 ", ""]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 5
    g = e2e.run_curl(f"http://127.0.0.1:{ollama.port}/api/generate", env=env,
                     json_body={"model": "gemma3", "prompt": "hi", "stream": False})
    assert g.status == 200 and g.json()["response"] == "w0 w1 w2 "
    tags = e2e.run_curl(f"http://127.0.0.1:{ollama.port}/api/tags", env=env)
    assert tags.status == 200
    entries = settled(home, 3)  # the overspending settle above and the two calls
    calls = [e for e in entries if e.get("provider") == "local"]
    assert len(calls) == 2
    stream = next(e for e in calls if e["endpoint"] == "/api/chat")
    assert (stream["input_tokens"], stream["output_tokens"], stream["cost"]) == (9, 5, "0")
    assert stream["stream"] is True and stream["usage_source"] == "provider"
    gen = next(e for e in calls if e["endpoint"] == "/api/generate")
    assert (gen["input_tokens"], gen["output_tokens"], gen["stream"]) == (7, 3, False)


def test_pause_and_rpm_apply_to_local_calls(e2e, fake, tmp_path, ollama):
    home, proxy, env = start(e2e, tmp_path, ollama, budget="1")
    e2e.run_cli(home, "wallet", "add", "bot", "--budget", "1", "--rpm", "1")
    wallet_env = {**env, "HTTP_PROXY": proxy.url.replace("http://", "http://bot:-@"),
                  "http_proxy": proxy.url.replace("http://", "http://bot:-@")}
    body = {"model": "gemma3", "prompt": "hi", "stream": False}
    url = f"http://127.0.0.1:{ollama.port}/api/generate"
    first = e2e.run_curl(url, env=wallet_env, json_body=body)
    assert first.status == 200
    second = e2e.run_curl(url, env=wallet_env, json_body=body)
    assert second.status == 429 and second.json()["error"]["code"] == "rate_limit_exceeded"
    Ledger(home).set_paused(True)
    paused = e2e.run_curl(url, env=env, json_body=body)
    assert paused.status == 402 and paused.json()["error"]["code"] == "pouch_paused"
    assert len(ollama.requests) == 1
    entries = settled(home, 1)
    assert entries[0]["wallet"] == "bot" and entries[0]["local"] is True
    assert Ledger(home).status().blocked == 2
    audit = (home / "audit.jsonl").read_text()
    assert "pouch_paused" in audit and "rate_limit_exceeded" in audit


def test_a_remote_host_is_never_priced_at_zero(e2e, fake, tmp_path, ollama):
    """Only the hosts in pouch_local_hosts are free: the same unknown model on OpenAI's host is refused."""
    home, proxy, env = start(e2e, tmp_path, ollama, budget="5")
    r = e2e.run_sdk("chat", {"model": "llama3.2:1b", "max_tokens": 5, "client": {"max_retries": 0}}, env)
    assert not r["ok"] and r["error"]["code"] == "pouch_unknown_model"
    assert fake.requests("/v1/chat/completions") == []


def test_pouch_models_lists_a_local_server_and_the_priced_models(e2e, tmp_path, ollama):
    home = tmp_path / "home"
    r = e2e.run_cli(home, "models", "--local", f"127.0.0.1:{ollama.port}", "--json")
    out = json.loads(r.stdout)
    server = next(s for s in out["local"] if s["server"] == f"127.0.0.1:{ollama.port}")
    assert server["models"] == ["llama3.2:1b"] and server["endpoint"] == "/api/tags"
    assert "gpt-4o-mini" in {m["model"] for m in out["hosted"]["openai"]}
    assert {"anthropic", "gemini"} <= set(out["hosted"])
    text = e2e.run_cli(home, "models", "--local", f"127.0.0.1:{ollama.port}", "--provider", "openai").stdout
    assert f"127.0.0.1:{ollama.port} (/api/tags): llama3.2:1b" in text and "gpt-4o-mini  $0.15 / $0.60" in text


def test_a_local_server_with_tls_is_decrypted_and_metered_at_zero(e2e, fake, tmp_path):
    """The fake OpenAI (TLS, its certificate names localhost) as a local server: the CONNECT to
    localhost:PORT is decrypted (pouch adds it to allow_hosts) and the call is metered at $0,
    although the server reports a priced model name."""
    home = tmp_path / "home"
    Ledger(home).status()  # no budget
    proxy = e2e.start_proxy(home, {"pouch_local_hosts": f"localhost:{fake.port}"})
    env = e2e.client_env(proxy)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 5,
                                    "client": {"base_url": f"https://localhost:{fake.port}/v1", "max_retries": 0},
                                    "extra_headers": {"x-fake-chunks": "3", "x-fake-prompt-tokens": "10"}}, env)
    assert r["ok"], r
    [e] = settled(home, 1)
    assert e["provider"] == "local" and e["local"] is True and D(e["cost"]) == 0
    assert (e["input_tokens"], e["output_tokens"]) == (10, 3) and e["usage_source"] == "provider"
    assert fake.requests("/v1/chat/completions")[-1]["body"]["stream_options"] == {"include_usage": True}
