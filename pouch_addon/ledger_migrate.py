"""``pouch ledger migrate --to postgresql://...``: an exact copy of a local ledger in the team ledger.

Copied: the ledger row (budget, spent, counts, pause, seq), the wallets (spend, window, limits,
secret hashes), every history entry (settles and blocks, in seq order) and the audit log with its
head. Refused: a target that already holds a ledger (anything written), and a source with open
reservations (they belong to local processes that hold no lease: stop the proxy, or run
``pouch ledger recover``, first). The copy is one transaction: all of it or nothing.

"Exact" is checked, not assumed (:func:`compare`): the same status, wallets and audit head, and
the SHA-256 of every history entry's canonical JSON in seq order, read back from the database.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable

from .audit import AUDIT_FILE, AuditLog
from .ledger_store import canonical_json
from .ledger_postgres import LedgerUnavailable, PostgresLedger, init


class MigrateError(RuntimeError):
    """The copy cannot be made (or did not come out exact); the message says why."""


def history_digest(entries: Iterable[dict[str, Any]]) -> tuple[int, str]:
    """(count, SHA-256) of the entries' canonical JSON lines, in the order given."""
    h, n = hashlib.sha256(), 0
    for e in entries:
        h.update(canonical_json(e) + b"\n")
        n += 1
    return n, h.hexdigest()


def _summary(ledger: Any) -> dict[str, Any]:
    st = ledger.snapshot()
    return {"status": st.status().to_json(), "seq": st.seq,
            "wallets": {n: w.to_dict() for n, w in sorted(st.wallets.items())}}


def migrate(local: Any, url: str) -> dict[str, Any]:
    """Copy ``local`` (a ``budget.Ledger``) into the empty team ledger at ``url``; what was copied."""
    init(url)
    state = local.snapshot()
    if state.open:
        raise MigrateError(f"the local ledger has {len(state.open)} reservation(s) in flight: stop the proxy "
                           "(or run `pouch ledger recover`) and migrate again")
    entries = list(reversed(local.history()))  # oldest first
    if [e["seq"] for e in entries] != list(range(1, state.seq + 1)):
        raise MigrateError("the local history does not run 1..seq: run `pouch ledger verify` first")
    audit = AuditLog(local.home / AUDIT_FILE)
    audit_entries, head = audit.entries(), audit.head()
    problems = audit.verify()
    if problems:
        raise MigrateError("the local audit log does not verify: " + "; ".join(problems))
    target = PostgresLedger(url, local.home)
    try:
        Jsonb = target._Jsonb
        with target._connection() as conn, conn.transaction():
            version, doc = conn.execute("SELECT version, doc FROM pouch_ledger WHERE id = 1 FOR UPDATE").fetchone()
            used = conn.execute("SELECT (SELECT count(*) FROM pouch_history) + (SELECT count(*) FROM pouch_wallets) "
                                "+ (SELECT count(*) FROM pouch_open) + (SELECT count(*) FROM pouch_audit)").fetchone()[0]
            if version != 0 or used:
                raise MigrateError(f"{target.display_url} already holds a ledger: migrate into an empty database")
            with conn.cursor() as cur:
                with cur.copy("COPY pouch_history (seq, ts, kind, wallet, res_id, entry) FROM STDIN") as copy:
                    for e in entries:
                        copy.write_row((e["seq"], e["ts"], e["kind"], e.get("wallet"),
                                        e.get("id") if e["kind"] == "settle" else None, Jsonb(e)))
                cur.executemany("INSERT INTO pouch_wallets (name, doc) VALUES (%s, %s)",
                                [(n, Jsonb(w.to_dict())) for n, w in state.wallets.items()])
                if audit_entries:
                    cur.executemany("INSERT INTO pouch_audit (seq, entry) VALUES (%s, %s)",
                                    [(a["seq"], Jsonb(a)) for a in audit_entries])
                if head is not None:
                    cur.execute("INSERT INTO pouch_audit_head (id, count, hash) VALUES (1, %s, %s)",
                                (head["count"], head["hash"]))
                cur.execute("UPDATE pouch_ledger SET version = version + 1, doc = %s WHERE id = 1",
                            (Jsonb(state.to_tables_without_open()["ledger"]["1"]),))
        problems = compare(local, target)
        if problems:
            raise MigrateError("the copy is not exact: " + "; ".join(problems))
        return {"history": len(entries), "wallets": len(state.wallets), "audit": len(audit_entries),
                "status": state.status()}
    finally:
        target.close()


def team_audit(target: PostgresLedger) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    def read(conn: Any) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        rows = [r[0] for r in conn.execute("SELECT entry FROM pouch_audit ORDER BY seq")]
        head = conn.execute("SELECT count, hash FROM pouch_audit_head WHERE id = 1").fetchone()
        return rows, (None if head is None else {"count": int(head[0]), "hash": head[1]})
    return target._read(read)


def compare(local: Any, target: PostgresLedger) -> list[str]:
    """Differences between the local ledger and its copy (empty: exact)."""
    problems = []
    a, b = _summary(local), _summary(target)
    for key in a:
        if a[key] != b[key]:
            problems.append(f"{key} differs: local {a[key]} != team {b[key]}")
    local_hist = history_digest(reversed(local.history()))
    team_hist = history_digest(target._read(
        lambda conn: [r[0] for r in conn.execute("SELECT entry FROM pouch_history ORDER BY seq")]))
    if local_hist != team_hist:
        problems.append(f"history differs: local {local_hist[0]} entries sha256 {local_hist[1][:16]}…, "
                        f"team {team_hist[0]} entries sha256 {team_hist[1][:16]}…")
    audit = AuditLog(local.home / AUDIT_FILE)
    rows, head = team_audit(target)
    if history_digest(audit.entries()) != history_digest(rows) or audit.head() != head:
        problems.append("the audit log or its head differs")
    return problems + target.verify()


__all__ = ["LedgerUnavailable", "MigrateError", "compare", "history_digest", "migrate"]


def audit_problems(target: PostgresLedger) -> list[str]:
    """The team ledger's copy of the audit log: its hash chain and its head (``audit.py``'s rules)."""
    from .audit import GENESIS, entry_hash
    rows, head = team_audit(target)
    problems, prev = [], GENESIS
    for i, e in enumerate(rows, start=1):
        if e.get("seq") != i or e.get("prev") != prev or entry_hash(e) != e.get("hash"):
            problems.append(f"audit entry {i} does not chain (edited, missing or out of order)")
            break
        prev = e["hash"]
    if rows and (head is None or head != {"count": len(rows), "hash": prev}):
        problems.append("the audit head does not match the audit entries")
    return problems
