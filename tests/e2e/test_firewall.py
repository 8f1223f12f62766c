"""The firewall end to end: real mitmdump + pouch, a fake api.openai.com over TLS, real clients.

Costs are asserted exactly: the fake reports deterministic usage (see fake_openai.py) and the
ledger must hold exactly that usage priced by the table.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
from decimal import Decimal as D
from pathlib import Path

import pytest

from fake_openai import fake_text

from harness import wait_until
from pouch_addon.audit import AUDIT_FILE, AuditLog
from pouch_addon.budget import Ledger
from pouch_addon.plan import PlanSettings, make_plan
from pouch_addon.pricing import PriceTable

M = D(1_000_000)
TABLE = PriceTable.load()
CLIENTS = Path(__file__).with_name("clients")
URL = "https://api.openai.com/v1/chat/completions"


def settled(home: Path, n: int = 1, timeout: float = 10.0) -> list[dict]:
    """Wait until ``n`` settles are in the ledger and nothing is in flight; newest first."""
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               timeout, f"{n} settled call(s) in {home}")
    assert ledger.verify() == []
    return ledger.history(kinds=("settle",))


def start(e2e, tmp_path, budget="1", sets=None):
    home = tmp_path / "home"
    set_budget(home, budget)
    proxy = e2e.start_proxy(home, sets or {})
    return home, proxy, e2e.client_env(proxy)


def set_budget(home, budget) -> None:
    """What `pouch budget set` does: the ledger, then the audit log (so `pouch ledger verify`,
    which reconciles the two, finds them in agreement)."""
    st = Ledger(home).set_budget(D(budget))
    AuditLog(home / AUDIT_FILE).append("budget.set", {"amount": D(budget), "budget": st.budget})


def headers(**kw):
    return {f"x-fake-{k.replace('_', '-')}": str(v) for k, v in kw.items()}


def test_non_stream_call_settles_exactly_from_provider_usage(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 50,
                             "extra_headers": headers(prompt_tokens=100, chunks=5)}, env)
    assert r["ok"] and r["content"] == fake_text(5)
    [entry] = settled(home)
    assert entry["cost"] == str(D(100) * D("0.15") / M + D(5) * D("0.6") / M)  # 0.000018
    assert (entry["status"], entry["model"], entry["stream"], entry["usage_source"]) == ("ok", "gpt-4o-mini", False, "provider")
    assert (entry["input_tokens"], entry["output_tokens"]) == (100, 5)
    st = Ledger(home).status()
    assert st.spent == D("0.000018") and st.reserved == 0 and st.remaining == D(1) - D("0.000018")
    req = fake.requests("/v1/chat/completions")[-1]
    assert req["headers"]["host"] == "api.openai.com" and "stream_options" not in req["body"]


def test_cached_and_reasoning_tokens_are_priced_by_the_providers_conventions(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat", {"model": "o4-mini", "max_completion_tokens": 500, "extra_headers": headers(
        prompt_tokens=1000, cached_tokens=800, reasoning_tokens=50, chunks=5)}, env)
    assert r["ok"] and r["usage"]["completion_tokens"] == 55
    [entry] = settled(home)
    # cached ⊂ prompt at the cached rate; reasoning ⊂ completion, not added twice
    expected = D(200) * D("1.1") / M + D(800) * D("0.275") / M + D(55) * D("4.4") / M
    assert D(entry["cost"]) == expected
    assert (entry["cached_tokens"], entry["reasoning_tokens"], entry["output_tokens"]) == (800, 50, 55)


def test_stream_gets_usage_injected_and_the_extra_chunk_hidden(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 50,
                                    "extra_headers": headers(prompt_tokens=40, chunks=4)}, env)
    assert r["ok"] and r["content"] == fake_text(4)
    assert not r["any_empty_choices"] and r["usage"] is None  # the client never sees the usage chunk
    req = fake.requests("/v1/chat/completions")[-1]
    assert req["body"]["stream_options"] == {"include_usage": True}
    [entry] = settled(home)
    assert entry["usage_source"] == "provider" and entry["stream"] is True
    assert D(entry["cost"]) == D(40) * D("0.15") / M + D(4) * D("0.6") / M


def test_stream_client_that_asked_for_usage_still_gets_it(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 50,
                                    "stream_options": {"include_usage": True},
                                    "extra_headers": headers(prompt_tokens=40, chunks=2)}, env)
    assert r["ok"] and r["any_empty_choices"] and r["usage"]["prompt_tokens"] == 40
    settled(home)


@pytest.mark.parametrize("mode", ["async_chat_stream", "chat_stream_helper", "async_chat"])
def test_other_sdk_modes_settle(e2e, fake, tmp_path, mode):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk(mode, {"model": "gpt-4o", "max_tokens": 10, "extra_headers": headers(prompt_tokens=7, chunks=3)}, env)
    assert r["ok"], r
    [entry] = settled(home)
    assert D(entry["cost"]) == D(7) * D("2.5") / M + D(3) * D(10) / M


def test_responses_api_stream_settles_from_response_completed(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("responses_stream", {"model": "gpt-4o", "max_output_tokens": 20,
                                         "extra_headers": headers(prompt_tokens=30, chunks=3)}, env)
    assert r["ok"] and "response.completed" in r["events"]
    [entry] = settled(home)
    assert entry["usage_source"] == "provider" and entry["endpoint"] == "/v1/responses"
    assert D(entry["cost"]) == D(30) * D("2.5") / M + D(3) * D(10) / M


def test_embeddings_settle_input_only(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("embeddings", {"input": ["one two three", "four"]}, env)
    assert r["ok"], r
    [entry] = settled(home)
    assert D(entry["cost"]) == D(4) * D("0.02") / M


def test_insufficient_budget_gets_402_and_the_provider_sees_nothing(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path, budget="0.0001")
    r = e2e.run_sdk("chat", {"model": "gpt-4o", "max_tokens": 1000}, env)
    err = r["error"]
    assert not r["ok"] and err["status_code"] == 402 and err["code"] == "budget_exceeded"
    assert "only $0.0001 remains" in err["message"]
    assert fake.requests() == []
    st = Ledger(home).status()
    assert st.blocked == 1 and st.spent == 0 and st.reserved == 0  # one attempt: the SDK did not retry
    c = e2e.run_curl(URL, env=env, json_body={"model": "gpt-4o", "max_tokens": 1000, "messages": []})
    assert c.status == 402 and c.headers["x-should-retry"] == "false"


def test_missing_cap_is_injected_and_the_provider_sees_it(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path, budget="0.001")
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "write a long story"}]}
    plan = make_plan("POST", "/v1/chat/completions", body, table=TABLE, remaining=D("0.001"),
                     settings=PlanSettings(exact_input=True))  # a cap the budget shapes: counted exactly
    r = e2e.run_sdk("chat", {**body, "extra_headers": headers(chunks=3)}, env)
    assert r["ok"], r
    seen = fake.requests("/v1/chat/completions")[-1]["body"]
    assert seen["max_completion_tokens"] == plan.rewrites["max_completion_tokens"] < 16384
    [entry] = settled(home)
    assert D(entry["reserved"]) <= D("0.001")


def test_stream_is_cut_off_at_its_reservation(e2e, fake, tmp_path):
    """The provider ignores the cap: pouch cuts the stream, closes upstream, bills the reservation."""
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o", "max_tokens": 6, "extra_headers": headers(
        prompt_tokens=5, chunks=400, ignore_cap=1, delay_ms=5)}, env)
    assert not r["ok"] and "budget" in r["error"]["message"] and "cut off" in r["error"]["message"]
    assert 0 < len(r["content"].split()) < 50
    [entry] = settled(home)
    assert entry["status"] == "cut_off" and D(entry["cost"]) == D(entry["reserved"])
    # the upstream connection was closed, so the fake could not finish its 400 chunks
    fake.wait_for(lambda e: e["ev"] in ("write_failed", "client_disconnected"), timeout=10)
    assert not fake.entries("stream_done")


def test_the_client_connection_stays_usable_after_a_cut_off(e2e, fake, tmp_path):
    """A provider that already finished when pouch cuts: its end-of-body must not leak into the next call."""
    home, proxy, env = start(e2e, tmp_path)
    messages = [{"role": "user", "content": "hi"}]
    first = {"model": "gpt-4o", "max_tokens": 6, "messages": messages,
             "extra_headers": headers(prompt_tokens=5, chunks=60, ignore_cap=1)}  # no delay: done before the cut lands
    second = {"model": "gpt-4o", "max_tokens": 5, "messages": messages, "extra_headers": headers(chunks=2)}
    out = subprocess.run([str(e2e.client_python), str(CLIENTS / "two_calls_one_client.py"),
                          "--first", json.dumps(first), "--second", json.dumps(second)],
                         env=env, capture_output=True, text=True, timeout=60)
    result = json.loads(out.stdout)
    assert not result["first"]["ok"] and "cut off" in result["first"]["error"]
    assert result["second"] == {"ok": True, "content": fake_text(2)}
    entries = settled(home, 2)
    assert sorted(e["status"] for e in entries) == ["cut_off", "ok"]
    # curl reuses one connection across --next: the second answer must parse cleanly
    (tmp_path / "b1").write_text(json.dumps({**first, "stream": True, "extra_headers": None}))
    (tmp_path / "b2").write_text(json.dumps({**second, "extra_headers": None}))
    common = ["--proxy", proxy.url, "--cacert", str(proxy.ca), "-H", "content-type: application/json",
              "-H", "x-fake-prompt-tokens: 5"]
    out = subprocess.run(
        ["curl", "-sS", "-N", *common, "-H", "x-fake-chunks: 60", "-H", "x-fake-ignore-cap: 1",
         "--data-binary", f"@{tmp_path / 'b1'}", "-o", str(tmp_path / "o1"), URL, "--next",
         *common, "-H", "x-fake-chunks: 2", "--data-binary", f"@{tmp_path / 'b2'}", "-o", str(tmp_path / "o2"),
         "-w", "%{http_code}", URL], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == "200", out.stderr
    assert json.loads((tmp_path / "o2").read_text())["choices"][0]["message"]["content"] == fake_text(2)
    assert b"budget_exceeded" in (tmp_path / "o1").read_bytes()


def test_client_disconnect_mid_stream_bills_input_plus_output_so_far(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream_disconnect_after:4", {"model": "gpt-4o", "max_tokens": 100, "extra_headers": headers(
        prompt_tokens=5, chunks=50, delay_ms=100)}, env)
    assert r["ok"], r
    [entry] = settled(home)
    assert entry["status"] == "client_disconnect"
    assert D(0) < D(entry["cost"]) < D(entry["reserved"])
    assert entry["output_tokens"] > 0 and entry["usage_source"] == "counted"


def test_a_call_in_flight_settles_in_its_own_ledger_when_pouch_home_changes(e2e, fake, tmp_path):
    """pouch_home changed while a stream runs (mitmweb's option editor can): the stream's
    reservation is settled in the ledger that holds it; new calls go to the new ledger."""
    home, new_home, trigger = tmp_path / "home", tmp_path / "home2", tmp_path / "set-options"
    Ledger(home).set_budget(D("1"))
    Ledger(new_home).set_budget(D("2"))
    proxy = e2e.start_proxy(home, {}, extra_args=[
        "-s", Path(__file__).with_name("options_addon.py"), "--set", f"options_file={trigger}"])
    env = e2e.client_env(proxy)
    client = e2e.start_sdk("chat_stream", {"model": "gpt-4o", "max_tokens": 100, "extra_headers": headers(
        prompt_tokens=5, chunks=20, delay_ms=100)}, env)
    fake.wait_for(lambda e: e["ev"] == "chunk_sent" and e.get("i", 0) >= 3, timeout=15)
    assert Ledger(home).status().in_flight == 1
    trigger.write_text(f"pouch_home={new_home}\n")
    done = trigger.with_name(trigger.name + ".done")
    wait_until(done.exists, 10, "the option change")
    assert done.read_text() == "ok"
    r = client.result(timeout=30)
    assert r["ok"] and r["content"] == fake_text(20), r
    [entry] = settled(home)
    assert entry["status"] == "ok" and entry["output_tokens"] == 20
    assert Ledger(home).status().spent == D(entry["cost"]) > 0
    # the next call is budgeted by the new ledger; the old one is left as it was
    r = e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 50, "extra_headers": headers(chunks=5)}, env)
    assert r["ok"], r
    [entry2] = settled(new_home)
    assert Ledger(new_home).status().spent == D(entry2["cost"]) > 0
    assert len(Ledger(home).history()) == 1 and proxy.alive()


def test_provider_death_mid_stream_bills_input_plus_output_so_far(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o", "max_tokens": 100, "extra_headers": headers(
        prompt_tokens=5, chunks=50, die_after=3)}, env)
    assert not r["ok"]
    [entry] = settled(home)
    assert entry["status"] == "upstream_disconnect"
    assert D(0) < D(entry["cost"]) < D(entry["reserved"]) and entry["output_tokens"] > 0


def test_provider_error_status_is_released(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat", {"model": "gpt-4o", "max_tokens": 10, "extra_headers": headers(status=400)}, env)
    assert r["error"]["status_code"] == 400
    [entry] = settled(home)
    assert (entry["status"], entry["cost"]) == ("http_400", "0")


@pytest.mark.parametrize("body,status,code", [
    (b"{not json", 400, "pouch_bad_json"),
    (json.dumps({"model": "gpt-9-imaginary", "messages": []}).encode(), 400, "pouch_unknown_model"),
    (json.dumps({"messages": []}).encode(), 400, "pouch_missing_model"),
])
def test_bad_input_is_refused_clearly_and_nothing_is_sent(e2e, fake, tmp_path, body, status, code):
    home, proxy, env = start(e2e, tmp_path)
    c = e2e.run_curl(URL, env=env, data=body, headers={"content-type": "application/json"})
    assert c.status == status and c.json()["error"]["code"] == code
    assert fake.requests() == []
    st = Ledger(home).status()
    assert st.reserved == 0 and st.spent == 0 and st.blocked == 1


def test_unknown_endpoint_is_refused_and_free_calls_pass(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    c = e2e.run_curl("https://api.openai.com/v1/batches", env=env, json_body={"input_file_id": "f"})
    assert c.status == 403 and c.json()["error"]["code"] == "pouch_unknown_endpoint"
    m = e2e.run_curl("https://api.openai.com/v1/models", env=env)
    assert m.status == 200 and m.json()["data"]
    assert [r["path"] for r in fake.requests()] == ["/v1/models"]


def test_gzip_request_body_is_read_and_rewritten(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    body = gzip.compress(json.dumps({"model": "gpt-4o-mini", "stream": True, "max_tokens": 5,
                                     "messages": [{"role": "user", "content": "hi"}]}).encode())
    c = e2e.run_curl(URL, env=env, data=body, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert c.status == 200 and c.sse_data()[-1] == "[DONE]"
    assert fake.requests()[-1]["body"]["stream_options"] == {"include_usage": True}
    settled(home)


def test_compression_bomb_is_refused(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path, sets={"pouch_max_body_mb": 1})
    bomb = gzip.compress(b'{"model":"gpt-4o","messages":[],"x":"' + b"a" * (8 << 20) + b'"}')
    c = e2e.run_curl(URL, env=env, data=bomb, headers={"content-type": "application/json", "content-encoding": "gzip"})
    assert c.status == 413 and fake.requests() == []


def test_non_llm_host_is_tunnelled_untouched(e2e, fake, tmp_path, e2e_certs):
    home, proxy, env = start(e2e, tmp_path)
    c = e2e.run_curl("https://other.test/ping", env=env, cacert=e2e_certs.ca_cert)
    assert c.rc == 0 and c.text == "pong"
    assert "pouch throwaway test CA" in (c.issuer or "") or "test CA" in (c.issuer or "")


def test_pause_answers_402_paused(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    Ledger(home).set_paused(True)
    c = e2e.run_curl(URL, env=env, json_body={"model": "gpt-4o", "max_tokens": 5, "messages": []})
    assert c.status == 402 and c.json()["error"]["code"] == "pouch_paused" and fake.requests() == []


def test_fifty_concurrent_streams_never_overspend(e2e, fake, tmp_path):
    body = {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "count for me please"}]}
    one = make_plan("POST", "/v1/chat/completions", body, table=TABLE, remaining=D(1), settings=PlanSettings()).worst_case
    budget = one * 12  # covers only some of the 50 at once
    home, proxy, env = start(e2e, tmp_path, budget=str(budget))
    args = {"model": "gpt-4o", "max_tokens": 20, "extra_headers": headers(chunks=10, delay_ms=50, prompt_tokens=6)}
    out = subprocess.run([str(e2e.client_python), str(CLIENTS / "concurrent_streams.py"), "50",
                          "--json-args", json.dumps(args)], env=env, capture_output=True, text=True, timeout=120)
    results = json.loads(out.stdout)["results"]
    ok = [r for r in results if r["ok"]]
    blocked = [r for r in results if r.get("status_code") == 402]
    others = [r for r in results if not r["ok"] and r.get("status_code") != 402]
    assert len(ok) + len(blocked) == 50 and ok and blocked, others[:3]
    entries = settled(home, len(ok))
    st = Ledger(home).status()
    assert st.spent <= st.budget and st.in_flight == 0 and st.reserved == 0
    assert st.requests == len(ok) and st.blocked == len(blocked)
    assert sum(D(e["cost"]) for e in entries) == st.spent
    assert all(e["status"] == "ok" and D(e["cost"]) <= D(e["reserved"]) for e in entries)


@pytest.mark.parametrize("durability", ["overlap", "strict"])
def test_sigkill_mid_stream_then_restart_recovers_the_reservation(e2e, fake, tmp_path, durability):
    home, proxy, env = start(e2e, tmp_path, sets={"pouch_durability": durability})
    client = e2e.start_sdk("chat_stream", {"model": "gpt-4o", "max_tokens": 100, "extra_headers": headers(
        prompt_tokens=5, chunks=100, delay_ms=100)}, env)
    fake.wait_for(lambda e: e["ev"] == "chunk_sent" and e.get("i", 0) >= 3, timeout=15)
    os.kill(proxy.proc.pid, signal.SIGKILL)  # mitmdump itself, no chance to settle
    proxy.proc.popen.wait(timeout=10)
    client.result(timeout=30)
    ledger = Ledger(home)
    assert ledger.status().in_flight == 1 and ledger.snapshot().problems() == []
    proxy2 = e2e.start_proxy(home, {})
    [entry] = settled(home)
    assert entry["status"] == "orphaned" and entry["cost"] == entry["reserved"] and "orphaned" in entry["flags"]
    st = ledger.status()
    assert st.spent == D(entry["reserved"]) and st.in_flight == 0
    assert proxy2.alive()
