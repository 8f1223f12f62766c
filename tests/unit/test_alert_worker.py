"""The proxy's alert thread (addons/alerting.py) against a real ledger, keys and audit log in a tmp
home: what a scan of the ledger and a refusal make it send, and that each goes to the audit log
and to alerts-state.json. Called directly (no thread, no proxy)."""

from __future__ import annotations

import json
import time
from decimal import Decimal as D

from pouch_addon.addons.alerting import AlertWorker
from pouch_addon.addons.core import SettleViews
from pouch_addon.alert_sinks import Sinks
from pouch_addon.alerts import STATE_FILE, SpendView
from pouch_addon.audit import AUDIT_FILE, AuditLog
from pouch_addon.budget import Ledger
from pouch_addon.keystore import KeyStore


def worker(home) -> tuple[AlertWorker, list[dict]]:
    w = AlertWorker(home, Sinks(), 15.0)
    sent: list[dict] = []
    w._send = lambda sinks, payload: sent.append(payload)  # the sinks have their own tests (e2e)
    return w, sent


def run(w: AlertWorker, alerts) -> None:
    from pouch_addon.addons.alerting import emit
    if alerts:
        emit(w.home, w.state, alerts, w.sinks, w._send)


def test_scan_finds_cli_budget_changes_expired_wallets_and_keys_once(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(10))
    r = ledger.reserve(D(6))
    ledger.settle(r.id, D(6))
    ledger.add_wallet("old", D(1), expires=time.time() - 60)
    KeyStore(tmp_path).issue("old", expires=time.time() - 60, now=time.time() - 120)
    w, sent = worker(tmp_path)
    run(w, w.scan(time.time()))
    assert sorted(a["kind"] for a in sent) == ["key_expired", "threshold", "wallet_expired"]
    assert next(a for a in sent if a["kind"] == "threshold")["threshold_pct"] == 50
    run(w, w.scan(time.time()))
    assert len(sent) == 3  # nothing twice
    ledger.set_budget(D("6.5"))  # a lower budget set with the CLI: 6/6.5 = 92 %
    run(w, w.scan(time.time()))
    assert [a.get("threshold_pct") for a in sent[3:]] == [80]
    audited = [e["details"]["kind"] for e in AuditLog(tmp_path / AUDIT_FILE).entries() if e["action"] == "alert"]
    assert sorted(audited) == ["key_expired", "threshold", "threshold", "wallet_expired"]
    assert len(json.loads((tmp_path / STATE_FILE).read_text())["recent"]) == 4


def test_first_wallet_402_in_its_period_and_flagged_settles(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(10))
    ledger.add_wallet("app", D(1), period="daily")
    w, sent = worker(tmp_path)
    now = time.time()
    msg = "pouch: wallet 'app' budget exceeded: this request may cost up to $2.00 but only $1.00 remains in it"
    run(w, w._block("budget_exceeded", "app", msg, now))
    run(w, w._block("budget_exceeded", "app", msg, now + 1))
    run(w, w._block("pouch_paused", "app", "paused", now))
    assert [(a["kind"], a["scope"]) for a in sent] == [("blocked", "wallet:app")]
    assert sent[0]["window"] == time.strftime("%Y-%m-%d", time.gmtime(now))  # the wallet's daily window
    entry = {"ts": now, "id": "r1", "flags": ["over_reservation"]}
    views = SettleViews(SpendView("global", "total", D(1), D(10)), SpendView("wallet:app", "x", D("0.9"), D(1)))
    run(w, w._settle(entry, views))
    assert sorted(a["kind"] for a in sent[1:]) == ["ledger", "threshold"]  # wallet at 90 %: 80 fires
    assert "over_reservation" in next(a for a in sent if a["kind"] == "ledger")["text"]


def test_an_unreadable_ledger_needs_attention(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    (tmp_path / "state.json").write_text("{not json")
    w, sent = worker(tmp_path)
    run(w, w.scan(time.time()))
    assert [a["kind"] for a in sent] == ["ledger"] and "needs attention" in sent[0]["text"]


def test_facts_from_the_event_loop_wake_the_thread_once_per_batch_and_apply_in_order(tmp_path):
    """``post`` (what on_settle / request / on_ledger_problem call on the loop) queues the fact and
    wakes the thread only when it is not already woken: 100 settles in a burst are one wake, and
    the thread applies every one of them, in order, before it stops."""
    Ledger(tmp_path).set_budget(D(10))
    w, sent = worker(tmp_path)
    seen = []
    w._settle = lambda entry, views: seen.append(entry["n"]) or []
    views = SettleViews(SpendView("global", "total", D(1), D(10)), None)
    for n in range(100):
        w.post(("settle", {"n": n, "ts": time.time()}, views))
    assert w.events.qsize() == 1  # one wake for the burst (the thread is not running yet)
    w.start()
    w.stop()
    assert not w.is_alive()
    assert seen == list(range(100))
