"""`pouch ledger migrate --to URL`: a local ledger of 100k history entries copied exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal as D

import psycopg

from pouch_addon.audit import AUDIT_FILE, AuditLog
from pouch_addon.budget import Ledger
from pouch_addon.ledger_migrate import compare
from pouch_addon.ledger_postgres import PostgresLedger
from pouch_addon.ledger_owner import Owner
from pouch_addon.ledger_rules import Refusal
from pgserver import PASSWORD

N = 100_000


def local_ledger(home, n=N):
    """A used local ledger: n history entries (settles over three wallets and blocks), audited."""
    lg = Ledger(home)
    lg.set_budget(D("100000"))
    for w in ("a", "b"):
        lg.add_wallet(w, D("50000"), period="monthly" if w == "a" else "total", rpm=600)
    audit = AuditLog(home / AUDIT_FILE)
    audit.append("budget.set", {"amount": D("100000"), "budget": D("100000")})
    owner, t = Owner.current(), 1_790_000_000.0
    with lg.transaction() as txn:
        st = txn.state
        for i in range(n):
            now = t + i * 7.3  # spans about 8 days: several history partitions
            if i % 5 == 4:
                txn.record(st.block_entry(Refusal("insufficient", D("0.5"), D("0.1")), now=now, meta={"i": i}))
                continue
            r = st.reserve(D("0.01"), res_id=f"r{i:07d}", owner=owner, now=now, meta={"model": "gpt-4o-mini"},
                           wallet=("a", "b", "c")[i % 3])
            txn.record(st.settle_entry(r.id, D("0.00012345") + D(i) / D(10**9), now=now + 0.5,
                                       details={"input_tokens": i % 977}))
        txn.changed()
    return lg


def test_migrate_copies_a_local_ledger_of_100k_entries_exactly(pg_url, tmp_path):
    home = tmp_path / "home"
    local = local_ledger(home)
    assert local.verify() == []
    env = {**os.environ, "POUCH_HOME": str(home)}
    env.pop("POUCH_LEDGER", None)
    r = subprocess.run([sys.executable, "-m", "pouch_addon.cli", "ledger", "migrate", "--to", pg_url],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"{N} history entries" in r.stdout and "the copy is exact" in r.stdout and PASSWORD not in r.stdout
    team = PostgresLedger(pg_url, home)
    try:
        assert compare(local, team) == []
        a, b = local.snapshot(), team.snapshot()
        assert (a.status(), a.seq, {n: w.to_dict() for n, w in a.wallets.items()}) == \
               (b.status(), b.seq, {n: w.to_dict() for n, w in b.wallets.items()})
        assert team.history(limit=3) == local.history(limit=3)
        assert team.history(wallet="b", since=1_790_300_000.0) == local.history(wallet="b", since=1_790_300_000.0)
    finally:
        team.close()
    r = subprocess.run([sys.executable, "-m", "pouch_addon.cli", "ledger", "verify", "--ledger", pg_url],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0 and "is consistent" in r.stdout, r.stdout + r.stderr
    # a second migrate into the same database is refused; the copy is untouched
    r = subprocess.run([sys.executable, "-m", "pouch_addon.cli", "ledger", "migrate", "--to", pg_url],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "already holds a ledger" in r.stderr
    # a damaged copy is found by `pouch ledger verify`
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE pouch_history SET entry = jsonb_set(entry, '{cost}', '\"0.5\"') WHERE seq = 77")
    r = subprocess.run([sys.executable, "-m", "pouch_addon.cli", "ledger", "verify", "--ledger", pg_url],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 1 and "spent" in r.stdout, r.stdout + r.stderr


def test_migrate_refuses_reservations_in_flight(pg_url, tmp_path):
    home = tmp_path / "home"
    local = local_ledger(home, n=10)
    local.reserve(D("1"))
    from pouch_addon.cli import main
    os.environ.pop("POUCH_LEDGER", None)
    assert main(["ledger", "migrate", "--to", pg_url, "--home", str(home)]) == 2
