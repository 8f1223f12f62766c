"""The coding agents through pouch: Claude Code and Gemini CLI (from npm), unmodified, with the
environment ``pouch env`` gives (``HTTPS_PROXY``, ``NODE_EXTRA_CA_CERTS``), against the fake
providers behind a real mitmdump with the addon. Their calls are budgeted and settled exactly
from the provider's usage; over budget, the agent shows pouch's 402 message to the user.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from harness import wait_until

from pouch_addon.budget import Ledger
from pouch_addon.pricing import PriceTable, Usage, cost

pytestmark = pytest.mark.e2e

TABLE = PriceTable.load()


def settled(home, n: int) -> list[dict]:
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               20, f"{n} settled call(s)")
    assert ledger.verify() == []
    return sorted(ledger.history(kinds=("settle",)), key=lambda e: e["ts"])


def start(e2e, tmp_path, budget: str):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(budget))
    proxy = e2e.start_proxy(home, {})
    return home, proxy, e2e.agent_env(proxy)


def test_claude_code_is_budgeted_and_settled_exactly(e2e, anthropic_fake, agent_clis, tmp_path):
    home, proxy, env = start(e2e, tmp_path, "5")
    r = e2e.run_claude("say hello", env, args=("--output-format", "json"))
    assert r.rc == 0, r.stderr[-3000:]
    [q] = [x for x in anthropic_fake.requests() if x["path"].startswith("/v1/messages")]
    [entry] = settled(home, 1)
    usage = [e["usage"] for e in anthropic_fake.responses() if e.get("req") == q["req"] and e.get("usage")][-1]
    model = q["body"]["model"]
    assert entry["provider"] == "anthropic" and entry["model"] == model
    assert D(entry["cost"]) == cost(TABLE.resolve(model), Usage.from_anthropic(usage))
    assert D(entry["cost"]) <= D(entry["reserved"]) and entry["flags"] == []
    # its settings calls passed free, nothing else was charged
    assert Ledger(home).status().requests == 1


def test_claude_code_shows_pouchs_402_when_over_budget(e2e, anthropic_fake, agent_clis, tmp_path):
    home, proxy, env = start(e2e, tmp_path, "0.001")
    r = e2e.run_claude("say hello", env)
    assert r.rc == 1
    assert "402" in r.stdout and "pouch: budget exceeded" in r.stdout
    assert [x for x in anthropic_fake.requests() if x["path"].startswith("/v1/messages")] == []
    assert Ledger(home).status().blocked >= 1


def test_gemini_cli_is_budgeted_and_settled_exactly(e2e, gemini_fake, agent_clis, tmp_path):
    home, proxy, env = start(e2e, tmp_path, "5")
    r = e2e.run_gemini("say hello", env, args=("--output-format", "json"))
    assert r.rc == 0, r.stderr[-3000:]
    calls = [q for q in gemini_fake.requests() if "enerateContent" in q["path"]]
    entries = settled(home, len(calls))
    assert len(entries) == len(calls) >= 2  # the model router, then the answer
    for q, entry in zip(calls, entries):
        usage = [e["usage"] for e in gemini_fake.responses() if e.get("req") == q["req"] and e.get("usage")][-1]
        model = q["path"].split("/models/")[1].split(":")[0]
        assert entry["provider"] == "gemini" and entry["model"] == model
        assert D(entry["cost"]) == cost(TABLE.resolve(model), Usage.from_gemini(usage))
        assert D(entry["cost"]) <= D(entry["reserved"]) and entry["flags"] == []
        # Gemini CLI sends no output cap: pouch injected one
        cfg = q["body"].get("generationConfig") or q["body"].get("generation_config") or {}
        assert cfg.get("maxOutputTokens", cfg.get("max_output_tokens", 0)) >= 1


def test_gemini_cli_shows_pouchs_402_when_over_budget(e2e, gemini_fake, agent_clis, tmp_path):
    home, proxy, env = start(e2e, tmp_path, "0.0000001")
    r = e2e.run_gemini("say hello", env)
    assert r.rc != 0
    assert "402" in r.stdout + r.stderr and "pouch: budget exceeded" in r.stdout + r.stderr
    assert [q for q in gemini_fake.requests() if "enerateContent" in q["path"]] == []
