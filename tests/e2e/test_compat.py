"""The OpenAI-compatible hosts and Azure OpenAI through pouch: a real mitmdump with the addon, the
fake of those hosts over TLS (``fake_compat.py``, answering as each host by its name), and the
clients users run (the openai SDK with ``base_url``, ``AzureOpenAI``, litellm as a library).

Exact settles for each host's quirks (OpenRouter's ``usage.cost``, comments and mid-stream error;
DeepSeek's cache counts; Mistral without ``stream_options``; Azure's deployments, filter chunks
and reported model), the virtual-key swap per provider, a 402 in OpenAI's shape, a cut-off, and 30
concurrent streams on a compatible host that never overspend.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal as D
from pathlib import Path

import pytest
from harness import MAKE_CLIENT_VENV, wait_until

from pouch_addon.budget import Ledger
from pouch_addon.pricing import PriceTable, Usage, cost
from pouch_addon.providers import PROVIDERS

pytestmark = pytest.mark.e2e

TABLE = PriceTable.load()
HERE = Path(__file__).resolve().parent
LITELLM_CLIENT = HERE / "clients" / "litellm_client.py"
CONCURRENT = HERE / "clients" / "concurrent_streams.py"
OPENROUTER = "https://openrouter.ai/api/v1"
DEEPSEEK = "https://api.deepseek.com"
GROQ = "https://api.groq.com/openai/v1"
MISTRAL = "https://api.mistral.ai/v1"
AZURE = "https://pouchtest.openai.azure.com"
AZURE_SERVICES = "https://pouchtest.cognitiveservices.azure.com"


def settled(home, n: int = 1) -> list[dict]:
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               20, f"{n} settled call(s)")
    assert ledger.verify() == []
    return sorted(ledger.history(kinds=("settle",)), key=lambda e: e["ts"])


def start(e2e, tmp_path, budget="5", sets=None):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(budget))
    e2e.start_fake(kind="compat")
    proxy = e2e.start_proxy(home, sets or {})
    return home, proxy, e2e.client_env(proxy)


def hdr(**kw) -> dict[str, str]:
    return {f"x-fake-{k.replace('_', '-')}": str(v) for k, v in kw.items()}


def compat_requests(fake, host: str) -> list[dict]:
    return [e for e in fake.entries("compat_request") if e["host"] == host]


def fake_usage(fake) -> list[dict]:
    """The usage the fake reported (stream or not), in order (OpenAI's shape, before host quirks)."""
    return [e.get("usage") or e.get("planned_usage") for e in fake.responses() if e.get("status") == 200]


def price(name: str):
    return TABLE.resolve(name)


def no_traceback(proxy) -> None:
    assert "Traceback" not in proxy.stderr() + proxy.stdout()


def test_openai_sdk_with_base_url_openrouter_deepseek_groq_settle_exactly(e2e, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    fake = e2e.latest_fake("compat")
    h = hdr(prompt_tokens=40, chunks=4, cached_tokens=10, or_cost="0.0000123")
    calls = []
    for base, model in ((OPENROUTER, "openai/gpt-4o-mini"), (DEEPSEEK, "deepseek-chat"),
                        (GROQ, "openai/gpt-oss-20b")):
        for mode in ("chat", "chat_stream"):
            calls.append((mode, {"client": {"base_url": base}, "model": model, "max_tokens": 30, "extra_headers": h}))
    results = e2e.run_sdk_batch(calls, env)
    for r in results:
        assert r["ok"], r["error"]
        assert r["content"] == " zero one two three"
    streams = results[1::2]
    # the usage chunk pouch asked for is hidden from the client that did not ask (and the comment
    # OpenRouter sends before the first chunk broke nothing)
    assert all(r["usage"] is None and r["empty_choices_chunks"] == 0 for r in streams)
    entries = settled(home, 6)
    assert [e["provider"] for e in entries] == ["openrouter"] * 2 + ["deepseek"] * 2 + ["groq"] * 2
    ds = price("deepseek/deepseek-chat").rates
    groq = price("groq/openai/gpt-oss-20b")
    expected = [D("0.0000123")] * 2 + [(30 * ds.input + 10 * ds.cached_input + 4 * ds.output) / 1_000_000] * 2 \
        + [cost(groq, Usage(input_tokens=40, cached_tokens=10, output_tokens=4))] * 2
    for e, want in zip(entries, expected):
        assert D(e["cost"]) == want, e
        assert e["usage_source"] == "provider" and e["flags"] == [] and D(e["cost"]) <= D(e["reserved"])
    assert entries[2]["cached_tokens"] == 10 and entries[0]["billed_usd"] == "0.0000123"
    # what pouch sent: usage requested in streams (OpenRouter also its own switch), a cap it
    # injected as max_tokens only when the client set none, OpenRouter's route capped at the price
    sent = {host: compat_requests(fake, host) for host in ("openrouter.ai", "api.deepseek.com", "api.groq.com")}
    assert sent["openrouter.ai"][1]["body"]["usage"] == {"include": True}
    assert sent["openrouter.ai"][1]["body"]["provider"]["max_price"]["completion"] == float(
        price("gpt-4o-mini").rates.output)
    for reqs in sent.values():
        assert "stream_options" not in reqs[0]["body"] and reqs[1]["body"]["stream_options"] == {"include_usage": True}
    no_traceback(proxy)


def test_openrouter_mid_stream_error_virtual_key_and_unknown_model(e2e, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    e2e.run_cli(home, "wallet", "add", "orapp", "--budget", "1")
    e2e.run_cli(home, "key", "add", "openrouter", "--no-passphrase", stdin="sk-or-v1-real-0123456789\n")
    vkey = e2e.run_cli(home, "key", "issue", "--wallet", "orapp", "--provider", "openrouter").stdout.strip()
    proxy = e2e.start_proxy(home, {})  # opens the vault that exists now
    env = e2e.client_env(proxy, api_key=vkey)
    fake = e2e.latest_fake("compat")
    r = e2e.run_sdk("chat_stream", {"client": {"base_url": OPENROUTER}, "model": "openai/gpt-4o-mini",
                                    "max_tokens": 30, "extra_headers": hdr(chunks=6, or_error=3)}, env)
    assert not r["ok"] and "fake mid-stream error" in r["error"]["message"]  # the SDK raised the provider's error
    assert r["content"] == " zero one"
    [entry] = settled(home)
    assert entry["wallet"] == "orapp" and entry["provider"] == "openrouter"
    assert compat_requests(fake, "openrouter.ai")[-1]["headers"]["authorization"] == "Bearer sk-or-v1-real-0123456789"
    # the stream ended ([DONE]) without usage: billed at pouch's count of what it forwarded
    assert entry["usage_source"] == "counted" and "usage_missing" in entry["flags"] and entry["output_tokens"] == 2
    assert D(entry["cost"]) == cost(price("gpt-4o-mini"), Usage(input_tokens=entry["input_tokens"], output_tokens=2))
    # a model pouch has no OpenRouter price for is refused before anything is sent
    n = len(fake.requests())
    r = e2e.run_sdk("chat", {"client": {"base_url": OPENROUTER, "max_retries": 0},
                             "model": "meta-llama/llama-3-70b-instruct"}, env)
    assert not r["ok"] and r["error"]["status_code"] == 400 and r["error"]["code"] == "pouch_unknown_model"
    assert len(fake.requests()) == n
    # a key issued for OpenRouter is never swapped in on another host
    r = e2e.run_sdk("chat", {"client": {"base_url": DEEPSEEK, "max_retries": 0}, "model": "deepseek-chat"}, env)
    assert not r["ok"] and r["error"]["status_code"] == 401 and "issued for openrouter" in r["error"]["message"]
    logs = proxy.stdout() + proxy.stderr()
    assert "sk-or-v1-real-0123456789" not in logs and vkey not in logs
    no_traceback(proxy)


def test_mistral_gets_no_stream_options_and_settles_from_the_usage_it_sends(e2e, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    fake = e2e.latest_fake("compat")
    r = e2e.run_sdk("chat_stream", {"client": {"base_url": MISTRAL}, "model": "mistral-large-latest",
                                    "max_tokens": 30, "extra_headers": hdr(prompt_tokens=25, chunks=5)}, env)
    assert r["ok"], r["error"]  # Mistral answers a body with stream_options 422
    [sent] = compat_requests(fake, "api.mistral.ai")
    assert "stream_options" not in sent["body"] and sent["body"]["max_tokens"] == 30
    assert r["usage"] is not None  # Mistral's own usage chunk is the client's to see
    [entry] = settled(home)
    assert entry["usage_source"] == "provider" and entry["flags"] == []
    assert D(entry["cost"]) == cost(price("mistral/mistral-large-latest"), Usage(input_tokens=25, output_tokens=5))


def test_402_in_openais_shape_and_cut_off_on_a_compatible_host(e2e, tmp_path):
    home, proxy, env = start(e2e, tmp_path, budget="0.00001")
    fake = e2e.latest_fake("compat")
    r = e2e.run_sdk("chat", {"client": {"base_url": DEEPSEEK, "max_retries": 0}, "model": "deepseek-chat",
                             "max_tokens": 8000}, env)
    assert not r["ok"] and r["error"]["status_code"] == 402
    assert r["error"]["body"]["code"] == "budget_exceeded" and "budget exceeded" in r["error"]["message"]
    assert fake.requests() == []
    Ledger(home).set_budget(D("1"))
    # a host that ignores the cap is cut off at the reservation
    r = e2e.run_sdk("chat_stream", {"client": {"base_url": DEEPSEEK, "max_retries": 0}, "model": "deepseek-chat",
                                    "max_tokens": 5, "extra_headers": hdr(chunks=200, ignore_cap=1)}, env)
    assert not r["ok"] and "budget reservation" in r["error"]["message"]
    [entry] = settled(home)
    assert entry["status"] == "cut_off" and D(entry["cost"]) <= D(entry["reserved"])
    assert Ledger(home).status().spent <= D("1")


def test_azure_openai_sdk_deployments_mapping_and_quirks(e2e, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    fake = e2e.latest_fake("compat")
    e2e.run_cli(home, "wallet", "add", "azapp", "--budget", "1")
    e2e.run_cli(home, "key", "add", "azure", "--no-passphrase", stdin="az-real-key-0123456789\n")
    vkey = e2e.run_cli(home, "key", "issue", "--wallet", "azapp", "--provider", "azure").stdout.strip()
    out = e2e.run_cli(home, "azure", "map", "chat4o", "gpt-4o-mini").stdout
    assert "gpt-4o-mini" in out
    bad = e2e.run_cli(home, "azure", "map", "x", "no-such-model", check=False)
    assert bad.returncode != 0 and "no Azure OpenAI price" in bad.stderr
    proxy = e2e.start_proxy(home, {})
    env = e2e.client_env(proxy)
    client = {"azure": True, "azure_endpoint": AZURE, "api_version": "2024-10-21", "api_key": vkey}
    h = hdr(prompt_tokens=50, chunks=3)
    results = e2e.run_sdk_batch([
        ("chat", {"client": client, "model": "chat4o", "max_tokens": 20, "extra_headers": h}),
        ("chat_stream", {"client": client, "model": "chat4o", "max_tokens": 20, "extra_headers": h}),
        # the v1 API with the plain OpenAI client (Microsoft's instructions): the key as a bearer token
        ("chat", {"client": {"base_url": AZURE + "/openai/v1/", "api_key": vkey},
                  "model": "chat4o", "max_tokens": 20, "extra_headers": h}),
    ], env)
    for r in results:
        assert r["ok"], r["error"]
        assert r["content"] == " zero one two"
    # an Azure AI Services resource serves the same API on its cognitiveservices.azure.com name
    services = {**client, "azure_endpoint": AZURE_SERVICES}
    [r] = e2e.run_sdk_batch([("chat_stream", {"client": services, "model": "chat4o", "max_tokens": 20,
                                              "extra_headers": h})], env)
    assert r["ok"] and r["content"] == " zero one two", r["error"]
    # Azure's first chunk (prompt_filter_results, no choices) reaches the client; pouch's usage chunk does not
    assert results[1]["empty_choices_chunks"] == 1 and results[1]["usage"] is None
    entries = settled(home, 4)
    want = cost(price("azure/gpt-4o-mini-2024-07-18"), Usage(input_tokens=50, output_tokens=3))
    for e in entries:
        assert (e["provider"], e["model"], e["wallet"]) == ("azure", "gpt-4o-mini", "azapp")
        assert D(e["cost"]) == want and e["flags"] == [] and e["model_reported"] == "azure/gpt-4o-mini-2024-07-18"
    sent = compat_requests(fake, "pouchtest.openai.azure.com")
    assert [s["headers"].get("api-key") for s in sent[:2]] == ["az-real-key-0123456789"] * 2
    assert sent[2]["headers"]["authorization"] == "Bearer az-real-key-0123456789"
    assert sent[0]["path"].startswith("/openai/deployments/chat4o/chat/completions")
    assert sent[2]["path"] == "/openai/v1/chat/completions" and sent[2]["body"]["model"] == "chat4o"
    [via_services] = compat_requests(fake, "pouchtest.cognitiveservices.azure.com")
    assert via_services["headers"].get("api-key") == "az-real-key-0123456789"
    # the resource's other services are not priced: refused (fail closed), nothing sent
    n = len(fake.requests())
    c = e2e.run_curl("https://pouchtest.cognitiveservices.azure.com/models/chat/completions?api-version=2024-05-01-preview",
                     env=env, headers={"api-key": vkey}, json_body={"model": "Llama-3.3-70B-Instruct", "messages": []})
    assert c.status == 403 and c.json()["error"]["code"] == "pouch_unknown_endpoint", (c.status, c.body)
    assert len(fake.requests()) == n
    # an unmapped deployment is refused, naming the command that maps it; nothing is sent
    n = len(fake.requests())
    r = e2e.run_sdk("chat", {"client": {**client, "max_retries": 0}, "model": "other-dep"}, env)
    assert not r["ok"] and r["error"]["status_code"] == 400 and "pouch azure map other-dep" in r["error"]["message"]
    assert len(fake.requests()) == n
    # the deployment runs another model than mapped: priced at what it reports, flagged
    r = e2e.run_sdk("chat", {"client": client, "model": "chat4o", "max_tokens": 20,
                             "extra_headers": {**h, "x-fake-model": "gpt-4o-2024-08-06"}}, env)
    assert r["ok"], r["error"]
    last = settled(home, 5)[-1]
    assert "model_reported_mismatch" in last["flags"]
    assert D(last["cost"]) == cost(price("azure/gpt-4o-2024-08-06"), Usage(input_tokens=50, output_tokens=3))
    no_traceback(proxy)


@pytest.fixture(scope="session")
def litellm_python(client_python) -> Path:
    """The client venv's python with litellm (``scripts/make_client_venv.sh`` installs the pin)."""
    probe = [str(client_python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('litellm') is None)"]
    if subprocess.run(probe).returncode != 0:
        subprocess.run(["bash", str(MAKE_CLIENT_VENV), str(Path(client_python).parent.parent)], check=True,
                       timeout=900, capture_output=True)
    assert subprocess.run(probe).returncode == 0, "litellm is not installed in the client venv"
    return client_python


def test_litellm_as_a_client_library(e2e, tmp_path, litellm_python):
    home, proxy, env = start(e2e, tmp_path)
    env = {**env, "DEEPSEEK_API_KEY": "sk-ds-test", "OPENROUTER_API_KEY": "sk-or-test",
           "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    h = hdr(prompt_tokens=30, chunks=4, cached_tokens=0, or_cost="0.0000111")
    out = []
    for args in ({"model": "deepseek/deepseek-chat", "max_tokens": 20, "extra_headers": h},
                 {"model": "deepseek/deepseek-chat", "max_tokens": 20, "stream": True, "extra_headers": h},
                 {"model": "openrouter/openai/gpt-4o-mini", "max_tokens": 20, "stream": True, "extra_headers": h}):
        p = subprocess.run([str(litellm_python), str(LITELLM_CLIENT), "--json-args", json.dumps(args)], env=env,
                           capture_output=True, text=True, timeout=180)
        r = json.loads(p.stdout.strip().splitlines()[-1])
        assert r["ok"], (r["error"], p.stderr[-2000:])
        assert r["content"] == " zero one two three"
        out.append(r)
    entries = settled(home, 3)
    assert [e["provider"] for e in entries] == ["deepseek", "deepseek", "openrouter"]
    ds = cost(price("deepseek/deepseek-chat"), Usage(input_tokens=30, output_tokens=4))
    assert [D(e["cost"]) for e in entries] == [ds, ds, D("0.0000111")]
    assert all(e["usage_source"] == "provider" and e["flags"] == [] for e in entries)
    no_traceback(proxy)


def test_30_concurrent_streams_on_a_compatible_host_never_overspend(e2e, tmp_path):
    body = {"model": "openai/gpt-oss-20b", "max_tokens": 20, "stream": True,
            "messages": [{"role": "user", "content": "count for me please"}]}
    one = PROVIDERS["groq"].draft("POST", "/openai/v1/chat/completions", body, table=TABLE).finish(D(1)).worst_case
    home, proxy, env = start(e2e, tmp_path, budget=str(one * 10))  # covers only some of the 30 at once
    env = {**env, "OPENAI_BASE_URL": GROQ}
    args = {"model": "openai/gpt-oss-20b", "max_tokens": 20, "extra_headers": hdr(chunks=10, delay_ms=50, prompt_tokens=6)}
    p = subprocess.run([str(e2e.client_python), str(CONCURRENT), "30", "--json-args", json.dumps(args)], env=env,
                       capture_output=True, text=True, timeout=180)
    results = json.loads(p.stdout)["results"]
    ok = [r for r in results if r["ok"]]
    blocked = [r for r in results if r.get("status_code") == 402]
    assert len(ok) + len(blocked) == 30 and ok and blocked, [r for r in results if r not in ok + blocked][:3]
    entries = settled(home, len(ok))
    st = Ledger(home).status()
    assert st.spent <= st.budget and st.in_flight == 0 and st.reserved == 0
    assert st.requests == len(ok) and st.blocked == len(blocked)
    assert sum(D(e["cost"]) for e in entries) == st.spent
    g = price("groq/openai/gpt-oss-20b")
    assert all(e["provider"] == "groq" and e["status"] == "ok" and D(e["cost"]) <= D(e["reserved"])
               and D(e["cost"]) == cost(g, Usage(input_tokens=6, output_tokens=10)) for e in entries)
