"""Wallets: per-app budgets charged together with the global budget, periods, expiry.

Pure rules on ``LedgerState`` first, then the ``Ledger`` shell with an injected clock (period
rollover, period changes recomputed from history) and real processes (no overspend on either).
"""

import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal as D
from pathlib import Path

import pytest

from pouch_addon.budget import Ledger, LedgerState, Owner, Refusal, Reservation, Wallet

OWNER = Owner(pid=1, started="1", host="h")
WORKER = Path(__file__).with_name("ledger_worker.py")


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


NOW = ts("2026-11-23T12:00:00")


def state(global_budget="10", **wallets) -> LedgerState:
    st = LedgerState(budget=D(global_budget))
    for name, (budget, period) in wallets.items():
        st.add_wallet(Wallet(name, D(budget), period), [], now=NOW)
    return st


def reserve(st, amount, rid, wallet, now=NOW):
    return st.reserve(D(amount), res_id=rid, owner=OWNER, now=now, meta={"model": "gpt-4o"}, wallet=wallet)


def settle(st, rid, cost, now=NOW):
    st.apply(st.settle_entry(rid, D(cost), now=now))


def test_reserve_needs_both_the_wallet_and_the_global_budget():
    st = state("1", a=("0.5", "total"))
    assert isinstance(reserve(st, "0.5", "r1", "a"), Reservation)  # exactly the wallet's budget
    refused = reserve(st, "0.01", "r2", "a")
    assert isinstance(refused, Refusal) and refused.wallet == "a" and refused.remaining == 0
    assert "wallet 'a'" in refused.message and "pouch wallet set a --add" in refused.message
    # an unconfigured name is only a label: the global budget alone decides
    assert isinstance(reserve(st, "0.5", "r3", "python3.11"), Reservation)
    refused = reserve(st, "0.01", "r4", "other")
    assert refused.reason == "insufficient" and refused.wallet is None  # the global budget refused
    assert st.open["r3"].meta["wallet"] == "python3.11"
    assert st.problems() == []


def test_global_cap_binds_even_when_the_wallet_has_room():
    st = state("0.3", a=("1", "total"), b=("1", "total"))
    assert isinstance(reserve(st, "0.2", "r1", "a"), Reservation)
    refused = reserve(st, "0.2", "r2", "b")
    assert refused.reason == "insufficient" and refused.wallet is None and refused.remaining == D("0.1")


def test_settle_counts_in_the_wallet_and_refunds_the_rest():
    st = state("10", a=("1", "daily"))
    reserve(st, "0.6", "r1", "a")
    settle(st, "r1", "0.25")
    ws = st.wallet_status("a", NOW)
    assert (ws.spent, ws.reserved, ws.remaining) == (D("0.25"), 0, D("0.75"))
    assert st.spent == D("0.25") and st.remaining == D("9.75")


def test_daily_rollover_resets_the_wallet_but_not_the_global_spend():
    st = state("10", a=("1", "daily"))
    reserve(st, "1", "r1", "a")
    settle(st, "r1", "1")
    assert reserve(st, "0.1", "r2", "a").wallet == "a"  # today's budget is used up
    tomorrow = ts("2026-11-24T00:00:00")  # the boundary belongs to the new day
    assert st.wallet_status("a", tomorrow).spent == 0  # a read does not need the roll
    assert isinstance(reserve(st, "0.9", "r3", "a", now=tomorrow), Reservation)
    assert st.wallets["a"].window == "2026-11-24" and st.spent == D(1)


def test_a_call_straddling_midnight_counts_in_the_day_it_settles():
    st = state("10", a=("1", "daily"))
    reserve(st, "0.5", "r1", "a", now=ts("2026-11-23T23:59:59"))
    settle(st, "r1", "0.4", now=ts("2026-11-24T00:00:01"))
    assert st.wallet_status("a", ts("2026-11-24T00:00:02")).spent == D("0.4")


def test_expired_wallet_refuses():
    st = state("10")
    st.add_wallet(Wallet("a", D(1), expires=NOW + 60), [], now=NOW)
    assert isinstance(reserve(st, "0.1", "r1", "a", now=NOW + 59), Reservation)
    refused = reserve(st, "0.1", "r2", "a", now=NOW + 60)
    assert refused.reason == "expired" and "expired" in refused.message


def test_period_change_recomputes_spend_from_history():
    st = state("10", a=("5", "total"))
    costs = [(ts("2026-10-30T10:00:00"), D("1")), (ts("2026-11-20T10:00:00"), D("0.5")), (NOW - 60, D("0.25"))]
    st.set_wallet_period("a", "monthly", costs, now=NOW)
    assert st.wallets["a"].spent == D("0.75") and st.wallets["a"].window == "2026-11"
    st.set_wallet_period("a", "daily", costs, now=NOW)
    assert st.wallets["a"].spent == D("0.25")
    st.set_wallet_period("a", "total", costs, now=NOW)  # back: nothing created or lost
    assert st.wallets["a"].spent == D("1.75")


def test_old_state_without_wallets_loads_and_wallets_round_trip():
    st = state("3", a=("1.5", "weekly"))
    tables = st.to_tables()
    assert LedgerState.from_tables(tables).wallets["a"].to_dict() == st.wallets["a"].to_dict()
    del tables["wallets"]
    assert LedgerState.from_tables(tables).wallets == {}


def test_bad_wallets_are_refused():
    st = state("1")
    with pytest.raises(ValueError, match="invalid wallet name"):
        st.add_wallet(Wallet("a b", D(1)), [], now=NOW)
    with pytest.raises(ValueError, match="negative"):
        st.add_wallet(Wallet("a", D(-1)), [], now=NOW)
    st.add_wallet(Wallet("a", D(1)), [], now=NOW)
    with pytest.raises(ValueError, match="already exists"):
        st.add_wallet(Wallet("a", D(1)), [], now=NOW)


# -- the shell ----------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ledger_rollover_keeps_history_and_verifies(tmp_path):
    clock = Clock(ts("2026-11-23T23:00:00"))
    ledger = Ledger(tmp_path, clock=clock)
    ledger.set_budget(D(10))
    ledger.add_wallet("a", D(1), period="daily")
    r = ledger.reserve(D("0.8"), wallet="a")
    ledger.settle(r.id, D("0.8"))
    assert ledger.reserve(D("0.5"), wallet="a").wallet == "a"
    clock.now = ts("2026-11-24T08:00:00")
    [ws] = ledger.wallets()
    assert ws.spent == 0 and ws.window == "2026-11-24"
    r = ledger.reserve(D("0.5"), wallet="a")
    ledger.settle(r.id, D("0.3"))
    assert ledger.wallets()[0].spent == D("0.3")
    assert [e["cost"] for e in ledger.history(kinds=("settle",))] == ["0.3", "0.8"]  # history kept
    assert ledger.status().spent == D("1.1") and ledger.verify() == []


def test_ledger_add_wallet_and_period_change_read_history(tmp_path):
    clock = Clock(ts("2026-11-22T10:00:00"))
    ledger = Ledger(tmp_path, clock=clock)
    ledger.set_budget(D(10))
    for cost in ("1", "2"):
        r = ledger.reserve(D(2), wallet="app")  # not a wallet yet: only a label
        ledger.settle(r.id, D(cost))
    clock.now = ts("2026-11-23T10:00:00")
    r = ledger.reserve(D(1), wallet="app")
    ledger.settle(r.id, D("0.5"))
    assert ledger.add_wallet("app", D(5), period="daily").spent == D("0.5")  # only today counts
    assert ledger.update_wallet("app", period="weekly").spent == D("0.5")  # 22nd is last week (Sunday)
    assert ledger.update_wallet("app", period="monthly").spent == D("3.5")
    assert ledger.update_wallet("app", add=D(1)).budget == D(6)
    assert ledger.verify() == []
    ledger.remove_wallet("app")
    assert ledger.wallets() == [] and ledger.verify() == []


def test_two_wallets_and_the_global_cap_under_concurrent_processes(tmp_path):
    """Processes per wallet hammer two wallets whose sum exceeds the global cap: neither overspends."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("0.6"))
    ledger.add_wallet("a", D("0.4"))
    ledger.add_wallet("b", D("0.4"))
    procs, reports = [], []
    for i in range(6):
        rep = tmp_path / f"r{i}.json"
        reports.append(rep)
        procs.append(subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), "50", str(i), "--report",
                                       str(rep), "--wallet", "ab"[i % 2]]))
    for p in procs:
        assert p.wait(timeout=120) == 0
    st = ledger.status()
    ws = {w.name: w for w in ledger.wallets()}
    settled = [D(c) for r in reports for c in json.loads(r.read_text())["settled"]]
    assert st.spent == sum(settled, D(0)) and st.spent <= st.budget and st.in_flight == 0
    assert ws["a"].spent <= D("0.4") and ws["b"].spent <= D("0.4")
    assert ws["a"].spent + ws["b"].spent == st.spent
    assert sum(json.loads(r.read_text())["refused"] for r in reports) > 0
    assert ledger.verify() == []
    blocks = ledger.history(kinds=("block",))
    assert blocks and all(b["wallet"] in ("a", "b") for b in blocks)
