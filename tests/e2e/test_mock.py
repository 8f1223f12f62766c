"""Mock mode through a real mitmdump (``pouch_mock``): pouch answers admitted LLM calls itself, in
each provider's shape, driven by the openai and anthropic SDKs and curl, and nothing reaches the
(fake) providers. The budget still applies: a call the budget cannot cover gets the real 402.
Also the README's "try it without a key" block, run as written.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from decimal import Decimal as D

import pytest
from harness import REPO, free_port, wait_until

from pouch_addon.budget import Ledger

pytestmark = pytest.mark.e2e


def settled(home, n: int) -> list[dict]:
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               15, f"{n} settled call(s)")
    assert ledger.verify() == []
    return ledger.history(kinds=("settle",))


def test_mock_answers_openai_and_anthropic_sdks_without_forwarding(e2e, fake, anthropic_fake, tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D("0.05"))
    proxy = e2e.start_proxy(home, {"pouch_mock": True, "pouch_mock_length": 6})
    env = e2e.client_env(proxy)
    runs = {
        "chat": e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 50}, env),
        "chat_stream": e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 50}, env),
        "capped": e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 3}, env),
        "responses": e2e.run_sdk("responses", {"model": "gpt-4o-mini", "max_output_tokens": 50}, env),
        "responses_stream": e2e.run_sdk("responses_stream", {"model": "gpt-4o-mini", "max_output_tokens": 50}, env),
        "embeddings": e2e.run_sdk("embeddings", {"model": "text-embedding-3-small"}, env),
        "messages": e2e.run_anthropic("create", {"max_tokens": 50}, env),
        "messages_stream": e2e.run_anthropic("stream_helper", {"max_tokens": 50}, env),
    }
    for name, r in runs.items():
        assert r["ok"], (name, r)
    text = "Pouch keeps every call inside its."
    assert runs["chat"]["content"] == text and runs["chat_stream"]["content"] == text
    assert runs["capped"]["content"] == "Pouch keeps every." and runs["capped"]["finish_reason"] == "length"
    assert runs["chat"]["usage"]["completion_tokens"] == 6
    assert runs["responses"]["content"] == text and runs["responses_stream"]["content"] == text
    assert runs["messages"]["content"] == text and runs["messages_stream"]["content"] == text
    # the budget still applies: a worst case above $0.05 is refused as it would be for real
    big = e2e.run_sdk("chat", {"model": "gpt-4o", "max_tokens": 16000, "client": {"max_retries": 0}}, env)
    assert not big["ok"] and big["error"]["status_code"] == 402 and big["error"]["code"] == "budget_exceeded"
    assert fake.requests() == [] and anthropic_fake.requests() == []
    entries = settled(home, len(runs))
    assert all(e["status"] == "mock" and e["mock"] is True and e["flags"] == [] and D(e["cost"]) == 0 for e in entries)
    assert {e["provider"] for e in entries} == {"openai", "anthropic"}
    chat = next(e for e in entries if e["endpoint"] == "/v1/chat/completions" and e["output_cap"] == 50)
    assert chat["output_tokens"] == 6 and chat["usage_source"] == "mock" and D(chat["mock_cost"]) > 0
    st = Ledger(home).status()
    assert st.spent == 0 and st.remaining == D("0.05") and st.blocked == 1 and st.flagged == 0


def test_mock_gemini_and_local_native_shapes_over_curl(e2e, fake, tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D("1"))
    proxy = e2e.start_proxy(home, {"pouch_mock": True, "pouch_mock_length": 3,
                                   "pouch_local_hosts": "127.0.0.1:9"})  # nothing listens there: never forwarded
    env = e2e.client_env(proxy, extra={"http_proxy": proxy.url})
    g = e2e.run_curl("https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-flash:streamGenerateContent"
                     "?alt=sse", env=env, headers={"x-goog-api-key": "k"},
                     json_body={"contents": [{"parts": [{"text": "hi"}]}], "generationConfig": {"maxOutputTokens": 9}})
    assert g.status == 200
    chunks = [json.loads(d) for d in g.sse_data()]
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == "Pouch keeps every."
    assert chunks[-1]["usageMetadata"]["candidatesTokenCount"] == 3
    o = e2e.run_curl("http://127.0.0.1:9/api/chat", env=env,
                     json_body={"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]})
    assert o.status == 200 and o.headers.get("content-type") == "application/x-ndjson"
    lines = [json.loads(x) for x in o.body.decode().splitlines()]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] == 3
    entries = settled(home, 2)
    assert {e["provider"] for e in entries} == {"gemini", "local"}
    assert all(e["status"] == "mock" for e in entries)
    Ledger(home).set_paused(True)  # a pause applies in mock mode too, to local calls as well
    p = e2e.run_curl("http://127.0.0.1:9/api/generate", env=env, json_body={"model": "m", "prompt": "hi"})
    assert p.status == 402 and p.json()["error"]["code"] == "pouch_paused"


MARKER = "<!-- mock-quickstart:"


def test_readme_mock_block_as_written(tmp_path, client_python):
    """The README's no-key block: a first budgeted call and a first 402 through `pouch proxy --mock`."""
    import re
    readme = (REPO / "README.md").read_text()
    at = readme.index(MARKER)
    block = re.compile(r"```sh\n(.*?)```", re.S).search(readme, at).group(1)
    assert "--mock" in block
    env = {k: v for k, v in os.environ.items()
           if not k.lower().endswith("_proxy") and k not in ("POUCH_HOME", "POUCH_PROXY_ARGS", "SSL_CERT_FILE",
                                                              "CURL_CA_BUNDLE", "REQUESTS_CA_BUNDLE")}
    env.update({"POUCH_LISTEN": f"127.0.0.1:{free_port()}", "TMPDIR": str(tmp_path)})
    log = tmp_path / "out"
    with open(log, "wb") as f:
        proc = subprocess.Popen(["bash", "-e", "-c", block], cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    out = log.read_text(errors="replace")
    assert proc.returncode == 0, out
    assert '"content":"Pouch keeps every call' in out, out
    assert "pouch: budget exceeded: this request may cost up to" in out, out
    assert " mock " in out, out  # `pouch history` shows the mock call


@pytest.mark.parametrize("http", ["--http1.1", "--http2"])
def test_mock_client_hanging_up_during_the_latency_settles_once_quietly(e2e, tmp_path, http):
    """A client that gives up while mock mode waits ``pouch_mock_latency_ms``: the meter settles the
    call when the client goes; the mock must not answer (and settle) it a second time."""
    home = tmp_path / "home"
    Ledger(home).set_budget(D("1"))
    proxy = e2e.start_proxy(home, {"pouch_mock": True, "pouch_mock_latency_ms": 2500})
    env = e2e.client_env(proxy)
    r = e2e.run_curl("https://api.openai.com/v1/chat/completions", env=env, timeout=1, extra_args=[http],
                     headers={"authorization": "Bearer k"},
                     json_body={"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status != 200
    entries = settled(home, 1)
    assert len(entries) == 1
    # the mock's own answer after the delay finds the call settled and leaves it alone
    ledger = Ledger(home)
    import time
    time.sleep(3)  # past the latency: the mock's wake-up has happened
    out = proxy.stdout() + proxy.stderr()
    assert "already settled" not in out and "NotOpen" not in out and "Traceback" not in out, out[-3000:]
    assert len(ledger.history(kinds=("settle",))) == 1 and ledger.verify() == []
