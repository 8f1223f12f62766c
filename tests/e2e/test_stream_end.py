"""The end of a stream (issue 13, item 6), through a real mitmdump with pouch.

A stream whose ``data: [DONE]`` (Chat Completions) or terminal event with usage (Responses)
reached pouch is complete, whatever the client does next. The openai SDK closes the connection
as soon as it reads ``[DONE]``; when the provider's last HTTP chunk (the chunked terminator)
comes a few ms later (``x-fake-end-delay-ms``), mitmproxy reports "Client disconnected.". The
call must still be booked at exactly what the provider bills: its reported usage priced by its
reported model, not capped at the reservation. A client that hangs up *before* the end is
billed what it received, bounded by the reservation, and flagged.
"""

from __future__ import annotations

import json
import subprocess
from decimal import Decimal as D

import pytest

from fake_openai import fake_text
from pouch_addon.pricing import PriceTable, Usage, cost
from test_firewall import CLIENTS, URL, headers, settled, start

pytestmark = pytest.mark.e2e

TABLE = PriceTable.load()


def billed(fake, model: str) -> D:
    """What the provider bills for its last response: the usage it reported, priced by the model
    it reported (the fake logs the usage it sent)."""
    usage = Usage.from_openai(fake.responses()[-1]["usage"])
    return cost(TABLE.resolve(model), usage)


def test_sdk_hangs_up_on_done_and_the_call_is_booked_as_billed(e2e, fake, tmp_path):
    """The report: the SDK reads [DONE] and closes; the terminator comes 300 ms later. The
    provider counts far more input than pouch's estimate (a bill above the reservation), which
    the old code booked capped at the reservation as 'client_disconnect'."""
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 20, "extra_headers": headers(
        prompt_tokens=2000, chunks=5, end_delay_ms=300)}, env)
    assert r["ok"] and r["content"] == fake_text(5), r
    [entry] = settled(home)
    assert entry["status"] == "ok" and entry["usage_source"] == "provider", entry
    assert D(entry["cost"]) == billed(fake, "gpt-4o-mini") > D(entry["reserved"])
    assert "over_reservation" in entry["flags"] and "capped_at_reservation" not in entry["flags"]
    assert (entry["input_tokens"], entry["output_tokens"]) == (2000, 5)


def test_provider_drops_the_connection_after_done_and_the_call_is_complete(e2e, fake, tmp_path):
    """The provider's side of the same race: [DONE] arrived, then the connection dropped without
    the end of the body (mitmproxy: a protocol error). Booked from the provider's usage, not
    capped, not 'upstream_disconnect'."""
    home, proxy, env = start(e2e, tmp_path)
    c = e2e.run_curl(URL, env=env, headers=headers(prompt_tokens=3000, chunks=4, die_at_end=1, end_delay_ms=50),
                     json_body={"model": "gpt-4o-mini", "stream": True, "max_tokens": 10,
                                "messages": [{"role": "user", "content": "hi"}]})
    assert c.sse_data()[-1] == "[DONE]", c.text
    fake.wait_for("died")
    [entry] = settled(home)
    assert entry["status"] == "ok" and entry["usage_source"] == "provider", entry
    assert D(entry["cost"]) == billed(fake, "gpt-4o-mini") > D(entry["reserved"])


def hang_up(e2e, env, body: dict, hdrs: dict, until: str) -> dict:
    """``clients/sse_hangup.py``: POST, read until ``until`` arrived, close the socket at once."""
    cmd = [str(e2e.client_python), str(CLIENTS / "sse_hangup.py"), "https://api.openai.com/v1/responses",
           "--json-body", json.dumps(body), "--until", until, *[a for k, v in hdrs.items() for a in ("--header", f"{k}: {v}")]]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_responses_client_hangs_up_after_the_terminal_event_and_the_reported_model_prices_it(e2e, fake, tmp_path):
    """Responses has no [DONE]: an app that stops at response.completed and closes the socket
    before the body's end. The provider serves the alias as a cheaper snapshot than the one pouch
    reserved at: booked at the snapshot's price, exactly."""
    home, proxy, env = start(e2e, tmp_path)
    body = {"model": "gpt-4o", "max_output_tokens": 30, "stream": True, "input": "say six words"}
    r = hang_up(e2e, env, body, headers(prompt_tokens=40, chunks=6, end_delay_ms=300, model="gpt-4o-2024-08-06"),
                "response.completed")
    assert r["status"] == 200 and r["hung_up"], r
    [entry] = settled(home)
    assert entry["status"] == "ok" and entry["usage_source"] == "provider", entry
    assert entry["model_reported"] == "gpt-4o-2024-08-06"
    assert D(entry["cost"]) == billed(fake, "gpt-4o-2024-08-06") < D(entry["reserved"])


def test_client_hangs_up_mid_stream_billed_what_it_received_and_flagged(e2e, fake, tmp_path):
    """Before [DONE]: no provider usage; billed at pouch's own count of what was forwarded, never
    above the reservation, and flagged ``usage_missing`` (the provider's bill may differ)."""
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream_disconnect_after:4", {"model": "gpt-4o-mini", "max_tokens": 100,
                                                       "extra_headers": headers(prompt_tokens=5, chunks=50,
                                                                                delay_ms=50)}, env)
    assert r["ok"], r
    [entry] = settled(home)
    assert entry["status"] == "client_disconnect" and entry["usage_source"] == "counted", entry
    assert 3 <= entry["output_tokens"] < 50
    assert D(0) < D(entry["cost"]) <= D(entry["reserved"])
    assert "usage_missing" in entry["flags"]
