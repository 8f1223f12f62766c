"""Issue 16 §4 through a real mitmdump: no tiktoken encoding until an exact count matters.

tiktoken is imported only to load an encoding, so its Rust extension (``_tiktoken``) being
mapped into mitmdump says whether an encoding was loaded. Far from the budget, calls whose
provider reports usage (non-streamed and streamed) never load one; near the budget, a call that
fits on the exact count but not on the byte bound is admitted, decided on the exact count.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from fake_openai import fake_text
from pouch_addon import tokens
from pouch_addon.plan import PlanSettings, draft_plan
from pouch_addon.pricing import PriceTable
from test_firewall import URL, headers, settled, start

pytestmark = pytest.mark.e2e

TABLE = PriceTable.load()
BODY = {"model": "gpt-4o-mini", "max_tokens": 10,
        "messages": [{"role": "system", "content": "You are terse. " * 30},
                     {"role": "user", "content": "Summarise the plan in one line, please. " * 20}]}


def tiktoken_mapped(proxy) -> bool:
    with open(f"/proc/{proxy.proc.pid}/maps") as f:
        return "_tiktoken" in f.read()


def test_calls_far_from_the_budget_load_no_encoding(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path, budget="100")
    c = e2e.run_curl(URL, env=env, headers=headers(chunks=5), json_body=BODY)
    assert c.json()["choices"][0]["message"]["content"] == fake_text(5), c.text
    s = e2e.run_curl(URL, env=env, headers=headers(chunks=20), json_body={**BODY, "max_tokens": 200, "stream": True})
    assert s.sse_data()[-1] == "[DONE]", s.text
    entries = settled(home, 2)
    assert [e["usage_source"] for e in entries] == ["provider", "provider"]
    assert not tiktoken_mapped(proxy)  # before issue 16 §4: imported at start, loaded by the first call
    assert [e["input_estimate"] for e in entries] == ["utf8_bytes", "utf8_bytes"]


def test_near_the_budget_the_exact_count_admits_what_the_bound_would_not(e2e, fake, tmp_path, monkeypatch):
    exact = draft_plan("POST", "/v1/chat/completions", dict(BODY), table=TABLE, settings=PlanSettings(exact_input=True))
    with monkeypatch.context() as m:  # the plan the proxy makes first, its encoding not loaded yet
        m.setattr(tokens, "loaded_for", lambda model: False)
        bound = draft_plan("POST", "/v1/chat/completions", dict(BODY), table=TABLE)
    worst_exact, worst_bound = exact.finish(D(10**6)).worst_case, bound.finish(D(10**6)).worst_case
    budget = worst_exact * 2 + (worst_bound - worst_exact) / 4  # the exact plan fits, the bound does not
    assert budget < worst_bound
    home, proxy, env = start(e2e, tmp_path, budget=str(budget))
    c = e2e.run_curl(URL, env=env, headers=headers(chunks=3), json_body=BODY)
    assert c.json()["choices"][0]["message"]["content"] == fake_text(3), c.text
    [entry] = settled(home)
    assert entry["status"] == "ok" and D(entry["reserved"]) == worst_exact
    assert entry["input_estimate"] == "tiktoken" and entry["estimated_input_tokens"] == exact.input_tokens
    assert tiktoken_mapped(proxy)


def test_a_stream_counted_near_its_cap_loads_no_tiktoken(e2e, fake, tmp_path):
    """Issue 16 §4: a stream past half its cut-off in bytes is counted exactly on the compact
    table (``compact_bpe.py``, ~5 MiB), not tiktoken's encoding (~41 MiB). Its 20 one-token
    chunks are 4x its cap in bytes: only an exact count lets it finish uncut."""
    home, proxy, env = start(e2e, tmp_path, budget="100")
    body = {"model": "gpt-4o-mini", "max_tokens": 24, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    assert len(fake_text(20).encode()) >= 4 * body["max_tokens"]
    s = e2e.run_curl(URL, env=env, headers=headers(chunks=20), json_body=body)
    data = s.sse_data()
    assert data[-1] == "[DONE]" and "budget_exceeded" not in s.text, s.text
    [entry] = settled(home)
    assert entry["status"] == "ok" and entry["usage_source"] == "provider" and entry["output_tokens"] == 20
    assert not tiktoken_mapped(proxy)  # before: preloaded at half the cap, mapped here
