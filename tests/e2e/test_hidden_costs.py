"""Costs the request body does not show, end to end: the reservation must really be an upper bound.

A real mitmdump with pouch, the fake api.openai.com and the openai SDK. The fake is told what the
real provider would report for input the body does not carry (``x-fake-prompt-tokens``), which
server-side tool calls ran (``x-fake-tool-calls``) and which snapshot served an alias
(``x-fake-model``); every settle must stay within its reservation, unflagged.
"""

from __future__ import annotations

from decimal import Decimal as D

from harness import wait_until
from pouch_addon import tokens
from pouch_addon.budget import Ledger

M = D(1_000_000)


def settled(home, n: int = 1) -> list[dict]:
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               10, f"{n} settled call(s)")
    assert ledger.verify() == []
    return ledger.history(kinds=("settle",))


def start(e2e, tmp_path, budget="5"):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(budget))
    proxy = e2e.start_proxy(home, {})
    return home, e2e.client_env(proxy)


def within_reservation(entry: dict) -> None:
    assert D(entry["cost"]) <= D(entry["reserved"]), entry
    assert "over_reservation" not in entry["flags"], entry


def test_a_stored_prompt_is_reserved_for_what_the_server_adds(e2e, fake, tmp_path):
    """Seen: a stored prompt estimated at 8 input tokens, billed for 100,000 (245x the reservation)."""
    home, env = start(e2e, tmp_path)
    r = e2e.run_sdk("responses", {"model": "gpt-4o-mini", "prompt": {"id": "pmpt_abc123", "version": "2"},
                                  "input": "hi", "max_output_tokens": 20,
                                  "extra_headers": {"x-fake-prompt-tokens": "100000", "x-fake-chunks": "3"}}, env)
    assert r["ok"], r
    [entry] = settled(home)
    assert D(entry["cost"]) == D(100000) * D("0.15") / M + D(3) * D("0.6") / M
    within_reservation(entry)
    # the template may carry server-side tools: their number is capped in the request itself
    seen = fake.requests("/v1/responses")[-1]["body"]
    assert seen["prompt"] == {"id": "pmpt_abc123", "version": "2"} and seen["max_tool_calls"] >= 1


def test_web_search_calls_are_billed_and_stay_within_the_reservation(e2e, fake, tmp_path):
    home, env = start(e2e, tmp_path)
    r = e2e.run_sdk("responses_stream", {
        "model": "gpt-4o-mini", "input": "what happened today?", "max_output_tokens": 30,
        "tools": [{"type": "web_search"}],
        "extra_headers": {"x-fake-prompt-tokens": "40000", "x-fake-chunks": "5",
                          "x-fake-tool-calls": "web_search_call,web_search_call"}}, env)
    assert r["ok"] and "response.completed" in r["events"], r
    [entry] = settled(home)
    fee = D("0.025")  # LiteLLM's search_context_cost_per_query for gpt-4o-mini (medium)
    assert D(entry["cost"]) == D(40000) * D("0.15") / M + D(5) * D("0.6") / M + 2 * fee
    assert entry["tool_calls"] == {"web_search_call": 2} and D(entry["tool_fees"]) == 2 * fee
    within_reservation(entry)
    assert fake.requests("/v1/responses")[-1]["body"]["max_tool_calls"] == 8


def test_an_alias_served_as_a_dearer_snapshot_stays_within_the_reservation(e2e, fake, tmp_path):
    """gpt-4o is an alias; a response reporting gpt-4o-2024-05-13 is billed at $5 / $15 per 1M."""
    home, env = start(e2e, tmp_path)
    messages = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
    prompt = tokens.estimate_chat_prompt({"messages": messages}, "gpt-4o")  # the body shows it all
    r = e2e.run_sdk("chat", {"model": "gpt-4o", "messages": messages, "max_tokens": 100, "extra_headers": {
        "x-fake-model": "gpt-4o-2024-05-13", "x-fake-prompt-tokens": str(prompt), "x-fake-chunks": "100"}}, env)
    assert r["ok"] and r["model"] == "gpt-4o-2024-05-13", r
    [entry] = settled(home)
    assert D(entry["cost"]) == D(prompt) * D(5) / M + D(100) * D(15) / M
    assert entry["model_reported"] == "gpt-4o-2024-05-13"
    within_reservation(entry)


def test_a_tool_pouch_cannot_price_is_refused_before_it_is_sent(e2e, fake, tmp_path):
    home, env = start(e2e, tmp_path)
    r = e2e.run_sdk("responses", {"model": "gpt-4o-mini", "input": "find it", "max_output_tokens": 20,
                                  "tools": [{"type": "file_search", "vector_store_ids": ["vs_1"]}]}, env)
    err = r["error"]
    assert not r["ok"] and err["status_code"] == 400 and err["code"] == "pouch_unbounded", r
    assert "file_search" in err["message"] and "nothing was sent" in err["message"]
    assert fake.requests() == []
    st = Ledger(home).status()
    assert st.spent == 0 and st.reserved == 0 and st.blocked == 1
