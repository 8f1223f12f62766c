"""The team ledger's schema in PostgreSQL, as numbered migrations (``pouch ledger init``).

Each migration runs once, in order, in one transaction with the version it brings recorded
in ``pouch_schema``; ``init`` takes a transaction-scoped advisory lock first, so two
processes upgrading at once do not both run a step. A database newer than this code is
refused (:class:`SchemaError`), never written with an older understanding of it.

The rows hold the rules' own serialisation (``LedgerState.to_tables``, ``Reservation.to_dict``,
``Wallet.to_dict``, history entries) as ``jsonb`` whose amounts are exact decimal strings, so
the rules are written once (``ledger_rules``) and SQL only stores and orders what they decide.
A few columns are taken out of the documents for the queries the store makes (``lease`` of a
reservation, ``kind``/``wallet``/``ts``/``res_id`` of a history entry).
"""

from __future__ import annotations

from typing import Any

LOCK_KEY = 0x706F756368  # "pouch": the advisory lock held while migrating

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "ledger, wallets, open reservations, history, leases, shared rate windows", """
CREATE TABLE pouch_ledger (
    id integer PRIMARY KEY CHECK (id = 1),   -- one row: every write transaction locks it first
    version bigint NOT NULL,                 -- +1 per committed write (the readers' change marker)
    doc jsonb NOT NULL                       -- LedgerState.to_tables()["ledger"]["1"]
);
INSERT INTO pouch_ledger VALUES (1, 0, '{"budget": "0", "spent": "0", "requests": 0, "blocked": 0,
    "flagged": 0, "paused": false, "seq": 0, "history_file": null, "history_size": 0, "lsn": 0}');
CREATE TABLE pouch_wallets (name text PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE pouch_open (
    id text PRIMARY KEY,
    lease text NOT NULL,                     -- the proxy (its lease) holding the reservation
    doc jsonb NOT NULL                       -- Reservation.to_dict()
);
CREATE TABLE pouch_history (
    seq bigint PRIMARY KEY,                  -- the ledger's seq: one order for every proxy
    ts double precision NOT NULL,
    kind text NOT NULL,
    wallet text,
    res_id text,
    entry jsonb NOT NULL
);
CREATE UNIQUE INDEX pouch_history_settle_once ON pouch_history (res_id) WHERE kind = 'settle';
CREATE INDEX pouch_history_ts ON pouch_history (ts);
CREATE INDEX pouch_history_wallet ON pouch_history (wallet, ts) WHERE kind = 'settle';
CREATE TABLE pouch_leases (
    id text PRIMARY KEY,                     -- host/pid/process start
    host text NOT NULL,
    pid integer NOT NULL,
    heartbeat timestamptz NOT NULL,
    expires timestamptz NOT NULL
);
CREATE TABLE pouch_rate (wallet text NOT NULL, ts double precision NOT NULL, tokens bigint NOT NULL);
CREATE INDEX pouch_rate_ts ON pouch_rate (ts);
CREATE TABLE pouch_audit (
    seq bigint PRIMARY KEY,
    entry jsonb NOT NULL                     -- an audit.py entry, hash-chained as in the local file
);
CREATE TABLE pouch_audit_head (
    id integer PRIMARY KEY CHECK (id = 1),
    count bigint NOT NULL,
    hash text NOT NULL                       -- audit.py's head: entry count and last hash
);
"""),
]

LATEST = MIGRATIONS[-1][0]


class SchemaError(RuntimeError):
    """The database's schema is missing, or newer than this pouch; the message says what to do."""


def current_version(conn: Any) -> int:
    """The schema version of the database ``conn`` is connected to (0: no pouch schema)."""
    row = conn.execute("SELECT to_regclass('pouch_schema') IS NOT NULL").fetchone()
    if not row[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM pouch_schema").fetchone()
    return int(row[0])


def migrate(conn: Any) -> list[int]:
    """Bring the schema to :data:`LATEST`; the versions applied (empty: already there)."""
    applied: list[int] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY,))
        conn.execute("CREATE TABLE IF NOT EXISTS pouch_schema (version integer PRIMARY KEY, "
                     "description text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")
        have = current_version(conn)
        if have > LATEST:
            raise SchemaError(f"the ledger database has schema version {have}, newer than this pouch "
                              f"({LATEST}): upgrade pouch")
        for version, description, sql in MIGRATIONS:
            if version <= have:
                continue
            conn.execute(sql)
            conn.execute("INSERT INTO pouch_schema (version, description) VALUES (%s, %s)", (version, description))
            applied.append(version)
    return applied


def check(conn: Any) -> None:
    """Refuse to use a database whose schema is missing or of another version."""
    have = current_version(conn)
    if have == 0:
        raise SchemaError("the ledger database has no pouch schema: run `pouch ledger init --ledger URL`")
    if have < LATEST:
        raise SchemaError(f"the ledger database has schema version {have}, this pouch needs {LATEST}: "
                          "run `pouch ledger init --ledger URL` to upgrade it")
    if have > LATEST:
        raise SchemaError(f"the ledger database has schema version {have}, newer than this pouch ({LATEST}): "
                          "upgrade pouch")
