"""The `pouch` command on the team ledger (--ledger URL / $POUCH_LEDGER), as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from pgserver import PASSWORD


def pouch(*args, env=None, home):
    e = {**os.environ, "POUCH_HOME": str(home), **(env or {})}
    e.pop("POUCH_LEDGER", None) if env is None or "POUCH_LEDGER" not in env else None
    return subprocess.run([sys.executable, "-m", "pouch_addon.cli", *args], capture_output=True, text=True,
                          env=e, timeout=60)


def test_cli_on_the_team_ledger(pg_url, tmp_path):
    a, b = tmp_path / "alice", tmp_path / "bob"  # two machines' homes, one database
    r = pouch("ledger", "init", "--ledger", pg_url, home=a)
    assert r.returncode == 0 and "schema migrations [1] applied" in r.stdout, r.stderr
    assert PASSWORD not in r.stdout + r.stderr and "pouch:***@" in r.stdout
    assert pouch("ledger", "init", "--ledger", pg_url, home=b).stdout.rstrip().endswith("schema up to date")
    assert pouch("budget", "set", "5", "--ledger", pg_url, home=a).returncode == 0
    env = {"POUCH_LEDGER": pg_url}
    r = pouch("wallet", "add", "ci", "--budget", "2", "--period", "daily", home=b, env=env)
    assert r.returncode == 0, r.stderr
    r = pouch("pause", home=b, env=env)
    assert r.returncode == 0, r.stderr
    st = json.loads(pouch("status", "--json", home=a, env=env).stdout)
    assert (st["budget_usd"], st["paused"]) == ("5", True)
    wallets = json.loads(pouch("wallet", "list", "--json", home=a, env=env).stdout)
    assert [(w["name"], w["budget_usd"], w["period"]) for w in wallets] == [("ci", "2", "daily")]
    assert pouch("resume", home=a, env=env).returncode == 0
    assert json.loads(pouch("status", "--json", home=b, env=env).stdout)["paused"] is False
    r = pouch("status", home=a, env=env)
    assert r.returncode == 0 and "team ledger postgresql://pouch:***@" in r.stdout and "0 proxy lease(s) live" in r.stdout
    assert PASSWORD not in r.stdout
    r = pouch("ledger", "verify", home=a, env=env)
    assert r.returncode == 0 and "is consistent" in r.stdout and PASSWORD not in r.stdout, r.stdout + r.stderr
    from pouch_addon.ledger_migrate import team_audit
    from pouch_addon.ledger_postgres import PostgresLedger
    with PostgresLedger(pg_url, a) as team:
        rows, head = team_audit(team)
    assert [e["action"] for e in rows] == ["budget.set", "wallet.add", "pause", "resume"]
    assert head == {"count": 4, "hash": rows[-1]["hash"]}
    r = pouch("ledger", "recover", home=a, env=env)
    assert r.returncode == 0 and "settled 0 reservation(s)" in r.stdout
    r = pouch("history", "--json", home=a, env=env)
    assert r.returncode == 0 and json.loads(r.stdout) == []
    # unreachable: a clear one-line error, without the password
    bad = pg_url.replace(pg_url.split("@")[1].split("/")[0], "127.0.0.1:1")
    r = pouch("status", "--ledger", bad, home=a)
    assert r.returncode == 2 and "unreachable" in r.stderr and PASSWORD not in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    # no schema yet: says how to create it
    fresh = pg_url.rsplit("/", 1)[0] + "/postgres"
    r = pouch("status", "--ledger", fresh, home=a)
    assert r.returncode == 2 and "pouch ledger init" in r.stderr, r.stderr


def test_doctor_checks_the_team_ledger(pg_url, tmp_path):
    """`pouch doctor` with --ledger/$POUCH_LEDGER checks the database, not a local ledger in --home."""
    home = tmp_path / "home"
    assert pouch("ledger", "init", "--ledger", pg_url, home=home).returncode == 0
    r = pouch("doctor", "--ledger", pg_url, "--listen", "127.0.0.1:1", home=home)
    assert "ledger" in r.stdout and PASSWORD not in r.stdout + r.stderr, r.stdout + r.stderr
    assert "team ledger postgresql://pouch:***@" in r.stdout and "reachable and consistent" in r.stdout, r.stdout
    assert "no budget set" in r.stdout
    assert pouch("budget", "set", "5", "--ledger", pg_url, home=home).returncode == 0
    r = pouch("doctor", "--listen", "127.0.0.1:1", home=home, env={"POUCH_LEDGER": pg_url})
    assert "reachable and consistent" in r.stdout and "no budget set" not in r.stdout, r.stdout
    bad = pg_url.replace(pg_url.split("@")[1].split("/")[0], "127.0.0.1:1")
    r = pouch("doctor", "--ledger", bad, "--listen", "127.0.0.1:1", home=home)
    assert r.returncode != 0 and "unreachable" in r.stdout and PASSWORD not in r.stdout + r.stderr, r.stdout
    assert "Traceback" not in r.stderr


def test_audit_show_and_verify_read_the_team_audit_log(pg_url, tmp_path):
    """With the team ledger, `pouch audit` shows every member's changes (from the database), and
    `pouch audit verify` checks the database's chain: an edited row is found."""
    a, b = tmp_path / "alice", tmp_path / "bob"
    env = {"POUCH_LEDGER": pg_url}
    assert pouch("ledger", "init", home=a, env=env).returncode == 0
    assert pouch("budget", "set", "5", home=a, env=env).returncode == 0
    assert pouch("pause", home=b, env=env).returncode == 0
    r = pouch("audit", "show", "--json", home=a, env=env)
    assert r.returncode == 0, r.stderr
    assert [e["action"] for e in json.loads(r.stdout)] == ["budget.set", "pause"]  # bob's change too
    r = pouch("audit", "verify", home=b, env=env)
    assert r.returncode == 0 and "team audit log" in r.stdout and "(2 entries)" in r.stdout, r.stdout + r.stderr
    assert PASSWORD not in r.stdout
    import psycopg
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE pouch_audit SET entry = jsonb_set(entry, '{action}', '\"resume\"') WHERE seq = 2")
    r = pouch("audit", "verify", home=a, env=env)
    assert r.returncode == 1 and "does not chain" in r.stdout + r.stderr, r.stdout + r.stderr
