"""The team ledger against a real PostgreSQL: schema, the shared rules, idempotent settles,
leases, the spool, and no overspend under concurrent proxies (processes)."""

from __future__ import annotations

import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from ledger_contract import arrivals_together_wait, lone_caller_never_waits
from pouch_addon import ledger_pg_schema as schema
from pouch_addon.budget import NotOpen, Refusal, Reservation
from pouch_addon.ledger_postgres import LedgerUnavailable, PostgresLedger, init, redact_url
from pgserver import PASSWORD

HERE = Path(__file__).resolve().parent
D = Decimal


@pytest.fixture
def led(pg_url, tmp_path):
    init(pg_url)
    ledgers = []

    def make(**kw):
        lg = PostgresLedger(pg_url, tmp_path / "home", **kw)
        ledgers.append(lg)
        return lg
    yield make
    for lg in ledgers:
        lg.close()


def test_init_creates_then_upgrades_nothing_and_refuses_a_missing_schema(pg_url, tmp_path):
    with pytest.raises(schema.SchemaError, match="pouch ledger init"):
        PostgresLedger(pg_url, tmp_path)
    assert init(pg_url) == [schema.LATEST]
    assert init(pg_url) == []
    with psycopg.connect(pg_url) as conn:
        assert schema.current_version(conn) == schema.LATEST
        conn.execute("INSERT INTO pouch_schema (version, description) VALUES (999, 'from the future')")
    with pytest.raises(schema.SchemaError, match="newer than this pouch"):
        init(pg_url)


def test_reserve_settle_release_follow_the_shared_rules(led):
    lg = led()
    lg.set_budget(D("1.00"))
    r = lg.reserve(D("0.40"), {"model": "gpt-4o-mini"})
    assert isinstance(r, Reservation)
    refused = lg.reserve(D("0.61"))
    assert isinstance(refused, Refusal) and refused.reason == "insufficient"
    r2 = lg.reserve(D("0.60"))
    assert isinstance(r2, Reservation)  # exactly enough is enough
    st = lg.status()
    assert (st.reserved, st.remaining, st.in_flight, st.blocked) == (D("1.00"), D("0"), 2, 1)
    lg.settle(r.id, D("0.1234567"))
    lg.release(r2.id)
    with pytest.raises(NotOpen):
        lg.settle(r2.id, D("0.01"))
    st = lg.status()
    assert (st.spent, st.reserved, st.remaining, st.requests) == (D("0.1234567"), D("0"), D("0.8765433"), 2)
    assert st.budget == st.remaining + st.reserved + st.spent
    assert lg.verify() == []
    hist = lg.history()
    assert [e["kind"] for e in hist] == ["settle", "settle", "block"]
    assert hist[1]["cost"] == "0.1234567" and hist[1]["model"] == "gpt-4o-mini"


def test_a_second_ledger_sees_and_is_bound_by_the_first(led):
    a, b = led(), led()
    a.set_budget(D("1"))
    assert isinstance(a.reserve(D("0.7")), Reservation)  # a's cached state, then b's write
    assert isinstance(b.reserve(D("0.3")), Reservation)
    assert isinstance(a.reserve(D("0.01")), Refusal)  # a must read b's reservation, not its cache
    assert b.status().reserved == D("1")


def test_settle_is_idempotent_by_reservation_id(led):
    lg = led()
    lg.set_budget(D("1"))
    r = lg.reserve(D("0.5"))
    first = lg.settle(r.id, D("0.2"))
    again = lg.settle(r.id, D("0.2"))  # the same settle replayed (a spool written twice)
    assert again["seq"] == first["seq"]
    with pytest.raises(NotOpen):
        lg.settle(r.id, D("0.3"))  # a different settle of a settled reservation is refused
    assert lg.status().spent == D("0.2") and lg.verify() == []


def test_wallets_and_periods_use_history_from_the_database(led):
    t = [1_800_000_000.0]
    lg = led(clock=lambda: t[0])
    lg.set_budget(D("10"))
    r = lg.reserve(D("1"), wallet="app")  # a label only: no wallet yet
    lg.settle(r.id, D("0.75"))
    w = lg.add_wallet("app", D("1"), period="daily")
    assert w.spent == D("0.75")  # taken from the database's history
    refused = lg.reserve(D("0.3"), wallet="app")
    assert isinstance(refused, Refusal) and refused.wallet == "app"
    t[0] += 86400  # the next day: a new window
    assert isinstance(lg.reserve(D("0.9"), wallet="app"), Reservation)
    assert lg.wallets()[0].reserved == D("0.9")
    assert lg.verify() == []


def test_an_expired_lease_is_recovered_by_another_proxy_with_the_orphan_rule(led):
    dead, live = led(lease_seconds=1.0), led(lease_seconds=60.0)
    dead.lease = dead.lease + "-dead"  # two processes in one: give the first its own lease
    dead.owner = type(dead.owner)(dead.owner.pid + 1_000_000, dead.owner.started, dead.owner.host)
    dead.lease = f"{dead.owner.host}/{dead.owner.pid}/{dead.owner.started}"
    dead.set_budget(D("1"))
    a = dead.reserve(D("0.4"))
    b = dead.reserve(D("0.3"))
    dead.checkpoint({b.id: {"final_cost": "0.05"}})
    dead._closed.set()  # its heartbeat stops, as if SIGKILLed
    assert live.recover_orphans() == []  # the lease has not expired yet
    time.sleep(1.5)
    done = {e["id"]: e for e in live.recover_orphans()}
    assert done[a.id]["cost"] == "0.4" and done[b.id]["cost"] == "0.05"
    assert all(e["status"] == "orphaned" for e in done.values())
    st = live.status()
    assert (st.reserved, st.spent, st.remaining) == (D("0"), D("0.45"), D("0.55"))
    assert live.verify() == []


def test_database_down_fails_closed_and_settles_are_spooled_then_written(led, pg_server):
    lg = led()
    lg.set_budget(D("1"))
    r = lg.reserve(D("0.5"))
    pg_server.stop()
    try:
        with pytest.raises(LedgerUnavailable) as exc:
            lg.reserve(D("0.1"))
        assert "unreachable" in str(exc.value) and PASSWORD not in str(exc.value)
        fut = lg.submit(lg.settle_op(r.id, D("0.25"), details={"model": "m"}), lazy=True)
        assert fut.result(timeout=30)["spooled"] is True
        assert lg.spooled() == 1
    finally:
        pg_server.start()
    # a new process (a restart) writes the spool at its first commit
    again = led()
    deadline = time.time() + 30
    while True:
        try:
            again.heartbeat()
            break
        except LedgerUnavailable:
            if time.time() > deadline:
                raise
            time.sleep(0.2)
    assert again.spooled() == 0
    st = again.status()
    assert (st.spent, st.reserved) == (D("0.25"), D("0"))
    assert again.verify() == []


def test_redact_url_hides_the_password():
    assert redact_url("postgresql://u:pw@h:5/db?sslmode=require") == "postgresql://u:***@h:5/db?sslmode=require"
    assert redact_url("postgresql://u@h/db") == "postgresql://u@h/db"


def test_concurrent_proxies_never_overspend(pg_url):
    """Four processes, each with its own ledger, pool and committer, reserve 0.01 as fast as they
    can against a budget of 1.00 (100 reservations): exactly 100 succeed, whatever interleaving."""
    init(pg_url)
    with PostgresLedger(pg_url, "/tmp/pouch-pg-home-unused") as lg:
        lg.set_budget(D("1.00"))
    procs = [subprocess.Popen([sys.executable, str(HERE / "pg_worker.py"), pg_url, "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    got = sum(int(out.split()[0]) for out, _ in outs)
    refused = sum(int(out.split()[1]) for out, _ in outs)
    assert (got, refused) == (100, 140)
    lg = PostgresLedger(pg_url, "/tmp/pouch-pg-home-unused")
    try:
        st = lg.status()
        assert (st.reserved, st.remaining, st.in_flight, st.blocked) == (D("1.00"), D("0"), 100, 140)
        assert lg.verify() == []
    finally:
        lg.close()



def test_a_lone_caller_never_waits_for_a_commit_delay(led, monkeypatch):
    """Before, each of these admissions waited ``commit_delay``: the previous commit had ended
    under 20 ms ago."""
    lone_caller_never_waits(led(commit_delay=0.05), monkeypatch, calls=8)


def test_admissions_arriving_together_make_the_committer_wait_to_gather(led, monkeypatch):
    lg = led(commit_delay=0.05)
    arrivals_together_wait(lg, monkeypatch, lg._commit_lock)
