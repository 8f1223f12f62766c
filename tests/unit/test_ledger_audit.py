"""The ledger's settings reconciled with the audited changes (issue 13 items 10 and 11)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from decimal import Decimal as D

from pouch_addon.audit import AUDIT_FILE
from pouch_addon.budget import LedgerState, Wallet
from pouch_addon.ledger_audit import has_history, reconcile, replay, restore_details
from pouch_addon.ledger_store import canonical_json


def entry(seq, action, **details):
    return {"seq": seq, "action": action, "details": {k: str(v) if isinstance(v, D) else v for k, v in details.items()}}


def test_replay_adds_top_ups_as_amounts_so_concurrent_appends_in_either_order_agree():
    a = [entry(1, "budget.set", amount=D(5), budget=D(5)),
         entry(2, "budget.add", amount=D(2), budget=D(8)),  # appended after the other add
         entry(3, "budget.add", amount=D(1), budget=D(6))]
    assert replay(a).budget == D(8)
    assert reconcile(LedgerState(budget=D(8)), a) == []


def test_a_budget_edited_outside_pouch_is_named():
    a = [entry(1, "budget.set", amount=D(5), budget=D(5))]
    [p] = reconcile(LedgerState(budget=D(500)), a)
    assert "$500.00" in p and "$5.00" in p and "outside pouch" in p


def test_a_budget_never_set_through_pouch_is_named_and_a_new_ledger_is_fine():
    assert reconcile(LedgerState(), []) == []
    [p] = reconcile(LedgerState(budget=D(3)), [])
    assert "records no `budget set`" in p


def test_pause_wallets_and_restore_replayed():
    a = [entry(1, "budget.set", amount=D(5), budget=D(5)),
         entry(2, "pause"),
         entry(3, "wallet.add", wallet="app", budget=D(1), period="monthly"),
         entry(4, "wallet.set", wallet="app", add=D(2), budget=D(3)),
         entry(5, "wallet.add", wallet="gone", budget=D(1)),
         entry(6, "wallet.rm", wallet="gone")]
    st = LedgerState(budget=D(5), paused=True, wallets={"app": Wallet("app", D(3))})
    assert reconcile(st, a) == []
    st.paused = False
    st.wallets["app"].budget = D(30)
    st.wallets["new"] = Wallet("new", D(1))
    problems = reconcile(st, a)
    assert len(problems) == 3
    assert any("not paused" in p for p in problems)
    assert any("'app' has budget $30.00" in p for p in problems)
    assert any("'new' is in the ledger but the audit log never added it" in p for p in problems)
    restored = LedgerState(budget=D(2), wallets={"app": Wallet("app", D(1))})
    a.append({"seq": 7, "action": "ledger.restore", "details": json.loads(json.dumps(restore_details(restored), default=str))})
    assert reconcile(restored, a) == []


def test_a_wallet_missing_from_the_ledger_is_named():
    a = [entry(1, "wallet.add", wallet="app", budget=D(1))]
    [p] = reconcile(LedgerState(), a)
    assert "'app' was added in the audit log but is not in the ledger" in p


def test_a_damaged_amount_is_reported_not_raised():
    problems = reconcile(LedgerState(), [{"seq": 1, "action": "budget.set", "details": {"amount": "lots"}}])
    assert any("no valid 'amount'" in p for p in problems)


def test_has_history():
    assert not has_history(LedgerState())
    assert has_history(LedgerState(budget=D(1)))
    assert has_history(LedgerState(blocked=1))
    assert has_history(LedgerState(wallets={"a": Wallet("a", D(0))}))


# -- through the CLI ---------------------------------------------------------------------------
def pouch(home, *args):
    env = {**os.environ, "POUCH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "pouch_addon.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_deleting_the_audit_log_and_its_head_is_caught(tmp_path):
    """Before: `audit verify` said 'intact (0 entries)' once both files were gone."""
    assert pouch(tmp_path, "budget", "set", "5").returncode == 0
    assert pouch(tmp_path, "audit", "verify").returncode == 0
    (tmp_path / AUDIT_FILE).unlink()
    (tmp_path / "audit.head").unlink()
    r = pouch(tmp_path, "audit", "verify")
    assert r.returncode == 1, r.stdout
    assert "missing but the ledger" in r.stdout and "has history" in r.stdout
    r = pouch(tmp_path, "ledger", "verify")
    assert r.returncode == 1 and "audit log was removed" in r.stdout


def test_a_fresh_home_has_nothing_to_audit(tmp_path):
    r = pouch(tmp_path, "audit", "verify")
    assert r.returncode == 0 and "intact (0 entries)" in r.stdout


def test_an_edit_with_a_recomputed_checksum_is_caught_by_ledger_verify(tmp_path):
    """Before: the ledger's unkeyed sha256, recomputed after the edit, passed `ledger verify`."""
    assert pouch(tmp_path, "budget", "set", "5").returncode == 0
    assert pouch(tmp_path, "wallet", "add", "app", "--budget", "1").returncode == 0
    ok = pouch(tmp_path, "ledger", "verify")
    assert ok.returncode == 0 and "agrees with the audit log" in ok.stdout
    path = tmp_path / "state.json"
    doc = json.loads(path.read_bytes())
    doc["tables"]["ledger"]["1"]["budget"] = "500"
    doc["sha256"] = hashlib.sha256(canonical_json(doc["tables"])).hexdigest()
    path.write_bytes(json.dumps(doc).encode())
    assert json.loads(pouch(tmp_path, "status", "--json").stdout)["budget_usd"] == "500"  # the checksum holds
    r = pouch(tmp_path, "ledger", "verify")
    assert r.returncode == 1
    assert "the budget is $500.00 but the audited changes add up to $5.00" in r.stdout


def test_restore_is_audited_so_the_ledger_still_agrees(tmp_path):
    assert pouch(tmp_path, "budget", "set", "1").returncode == 0
    assert pouch(tmp_path, "budget", "set", "2").returncode == 0
    (tmp_path / "state.json").write_text("{garbage")
    assert pouch(tmp_path, "ledger", "restore").returncode == 0
    r = pouch(tmp_path, "ledger", "verify")
    assert r.returncode == 0, r.stdout
    actions = [e["action"] for e in json.loads(pouch(tmp_path, "audit", "show", "--json").stdout)]
    assert actions[-1] == "ledger.restore"
