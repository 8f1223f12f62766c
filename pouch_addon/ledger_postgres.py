"""The team ledger: the same rules and operations, stored in PostgreSQL and shared by many proxies.

``--set pouch_ledger=postgresql://...`` (proxy) or ``POUCH_LEDGER``/``--ledger URL`` (CLI, TUI)
select it; the local TinyDB ledger stays the default. The rules (``LedgerState``: reserve,
settle, release, wallets, periods, the invariant) and the operations (``reserve_op``,
``settle_op``, ...) are the local ledger's; this module only replaces the store under them.

Admission, and every other write, is **one short transaction** that begins by locking the one
row of ``pouch_ledger`` (``SELECT ... FOR UPDATE``). Every writer of every proxy takes that row
lock first, so write transactions are totally ordered, exactly as the local ledger's file
lock orders them; under READ COMMITTED each statement after the lock sees every transaction
committed before it, so the rules decide on the complete, current state (budget, spent, every
open reservation of every proxy, wallets) and cannot overspend under any interleaving. The
argument in full is in ARCHITECTURE.md ("The team ledger"). A proxy groups the operations
queued meanwhile into that transaction (group commit, as the local ledger), so the row lock is
taken once per commit, not once per call. The state decided last is kept and reused while
``pouch_ledger.version`` shows no other writer came in between.

A settle is idempotent by reservation id: the history holds at most one settle per id (a
unique index), and settling a reservation that was already settled *at the same cost* returns
the recorded entry (a spooled settle replayed twice); any other second settle is ``NotOpen``.

Leases: each proxy that holds reservations keeps a heartbeat row in ``pouch_leases``
(renewed every ``lease_seconds / 3``, expiring after ``lease_seconds``, by the database's
clock). A reservation whose lease expired is settled by the local ledger's orphan rule
(``LedgerState.orphan_entries``: the checkpointed final cost, else the full reservation), by
any live proxy's heartbeat or by ``pouch ledger recover``.

Database down: an operation that cannot reach the database fails with
:class:`LedgerUnavailable` (the gate answers 503: new calls fail closed). A settle that
cannot be written is appended to a local spool file (fsync'd, ``ledger-spool-<tag>.jsonl`` in the
pouch home, one per database) and its future completes; the spool is written to the database at the next
commit that reaches it, also after a restart (idempotent, as above).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit, urlunsplit

from . import ledger_pg_schema as schema
from .budget import LedgerOps
from .home import resolve_home
from .ledger_local import GroupCommitQueue, IDLE_EXIT, LAZY_DELAY, _deliver, _Slot, _Txn
from .ledger_owner import Owner
from .ledger_rules import LedgerState, NotOpen
from .limits import RateBook, RateWindow
from .money import ZERO
from .periods import period_key
from .threads import give_way, name_thread

log = logging.getLogger(__name__)

SPOOL_FILE = "ledger-spool.jsonl"
LEASE_SECONDS = 30.0
CONNECT_TIMEOUT = 3  # s, libpq's connect_timeout
POOL_TIMEOUT = 3.0  # s an operation waits for a pool connection before failing closed
POOL_MAX = 4  # the committer, readers (CLI/TUI calls, verify), the lease heartbeat
CHANNEL = "pouch_ledger"  # NOTIFY channel: the new version after each commit


#: a lease is live until it expires, and in any case for one lease period after the database
#: (re)started: while it was down nobody could renew, so a restart must not orphan live proxies
LEASE_LIVE = "greatest(l.expires, pg_postmaster_start_time() + (l.expires - l.heartbeat)) > now()"


class LedgerUnavailable(RuntimeError):
    """The ledger database cannot be reached; the message says which and why (never the password)."""


def is_url(value: str | None) -> bool:
    return bool(value) and str(value).startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs, errors and status)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://(unparsable URL)"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def lease_id(owner: Owner) -> str:
    return f"{owner.host}/{owner.pid}/{owner.started}"


def _driver() -> tuple[Any, Any, Any]:
    try:
        import psycopg
        import psycopg_pool
        from psycopg.types.json import Jsonb
    except ImportError:
        raise LedgerUnavailable("the PostgreSQL ledger needs psycopg 3: `pip install 'pouch[postgres]'`") from None
    return psycopg, psycopg_pool, Jsonb


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` means the database could not be used (as opposed to a rule refusing)."""
    psycopg, psycopg_pool, _ = _driver()
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError, psycopg_pool.PoolTimeout,
                            LedgerUnavailable))


class SharedRates(RateBook):
    """rpm/tpm windows shared by every proxy of the team ledger (``limits.RateBook``'s interface).

    The events of the last window live in ``pouch_rate``; each write transaction that may admit
    a call to a rate-limited wallet reads them under the ledger row lock (:meth:`load`), so the
    sliding-window rule (``limits.RateWindow``, unchanged) checks and records atomically across
    all proxies; the events it admitted are written by the same transaction (:meth:`write`).
    Counted on the wall clock: the proxies are on different machines."""

    clock = staticmethod(time.time)

    def __init__(self, window: float = 60.0) -> None:
        super().__init__(window)
        self._events: dict[str, deque[tuple[float, int]]] = {}
        self._new: list[tuple[str, float, int]] = []

    def load(self, conn: Any) -> None:
        self._events, self._new = {}, []
        rows = conn.execute("SELECT wallet, ts, tokens FROM pouch_rate WHERE ts > %s ORDER BY ts",
                            (time.time() - self.window,)).fetchall()
        for wallet, ts, tokens in rows:
            self._events.setdefault(wallet, deque()).append((float(ts), int(tokens)))

    def admit(self, wallet: str, rpm: int | None, tpm: int | None, now: float, tokens: int = 0) -> float | None:
        if rpm is None and tpm is None:
            return None
        win = RateWindow(rpm, tpm, self.window)
        events = self._events.setdefault(wallet, deque())
        win._events, win._tokens = deque(events), sum(n for _, n in events)
        retry = win.admit(now, tokens)
        if retry is None:
            events.append(win._events[-1])
            self._new.append((wallet, *win._events[-1]))
        return retry

    def write(self, cur: Any) -> None:
        if self._new:
            cur.executemany("INSERT INTO pouch_rate (wallet, ts, tokens) VALUES (%s, %s, %s)", self._new)
            cur.execute("DELETE FROM pouch_rate WHERE ts <= %s", (time.time() - self.window,))
            self._new = []


class _PGTxn(_Txn):
    """A write transaction: the state under the ledger row lock, and the connection holding it."""

    def __init__(self, state: LedgerState, conn: Any, version: int) -> None:
        super().__init__(state)
        self.conn = conn
        self.version = version
        self.wallets_before = {n: w.to_dict() for n, w in state.wallets.items()}


class _SettleOp:
    """A settle operation that can be written to the spool and replayed (idempotent by id)."""

    def __init__(self, ledger: PostgresStore, res_id: str, cost: Decimal, status: str,
                 details: dict[str, Any], ts: float | None = None) -> None:
        self.ledger, self.res_id, self.cost, self.status, self.details = ledger, res_id, cost, status, details
        self.ts = ts

    def __call__(self, txn: _PGTxn) -> dict[str, Any]:
        now = self.ts if self.ts is not None else self.ledger.clock()
        try:
            entry = txn.state.settle_entry(self.res_id, self.cost, now=now, status=self.status,
                                           details=dict(self.details))
        except NotOpen:
            row = txn.conn.execute("SELECT entry FROM pouch_history WHERE kind = 'settle' AND res_id = %s",
                                   (self.res_id,)).fetchone()
            if row is not None and Decimal(row[0]["cost"]) == self.cost:
                return row[0]  # settled already, at this cost: the same settle again
            raise
        return txn.record(entry)

    def spool_line(self) -> bytes:
        return json.dumps({"id": self.res_id, "cost": str(self.cost), "status": self.status,
                           "details": self.details, "ts": self.ts if self.ts is not None else self.ledger.clock()},
                          sort_keys=True, separators=(",", ":"), default=str).encode() + b"\n"


class PostgresStore(GroupCommitQueue):
    """The store's side of the seam (see ``ledger_local``) over a shared PostgreSQL database.

    ``home`` is still the proxy's local pouch home: the real provider keys (vault), virtual
    keys, the spool and ``proxy.json`` stay there, never in the shared database."""

    def __init__(self, url: str, home: str | os.PathLike[str] | None = None, *, clock: Callable[[], float] = time.time,
                 commit_delay: float = 0.0, lease_seconds: float = LEASE_SECONDS, check_schema: bool = True,
                 pool_max: int = POOL_MAX) -> None:
        psycopg, psycopg_pool, self._Jsonb = _driver()
        self.url = url
        self.display_url = redact_url(url)
        self.home = resolve_home(home)
        self.state_path = self.display_url  # what messages name as "the ledger"
        self.clock = clock
        self.owner = Owner.current()
        self.lease = lease_id(self.owner)
        self.lease_seconds = lease_seconds
        self.commit_delay = commit_delay
        self.lazy_delay = LAZY_DELAY
        self.idle_exit = IDLE_EXIT
        self.commits = 0
        self.operations = 0
        self._pending: list[_Slot] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Condition(self._pending_lock)
        self._committer: threading.Thread | None = None
        self._commit_lock = threading.Lock()
        self._last_commit = 0.0
        self._urgent = 0
        self._waiting = 0  # operations someone waits on, submitted and not answered yet
        self._concurrent_at = float("-inf")  # when one came while another was still waiting
        self.siblings: Callable[[], int] | None = None  # calls the owner has in flight (see ``_busy``)
        self._lazy_since: float | None = None
        self._cache: tuple[int, LedgerState] | None = None
        # one spool per database (a home may serve several): named by the URL without its password
        tag = hashlib.sha256(self.display_url.encode()).hexdigest()[:12]
        self._spool_path = self.home / SPOOL_FILE.replace(".jsonl", f"-{tag}.jsonl")
        self.rates = SharedRates()
        self._beat: threading.Thread | None = None
        self._closed = threading.Event()
        self.pool = psycopg_pool.ConnectionPool(
            url, min_size=1, max_size=pool_max, open=False, timeout=POOL_TIMEOUT, name="pouch-ledger",
            kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT, "application_name": "pouch"},
            reconnect_timeout=24 * 3600)
        self.pool.open(wait=False)
        if check_schema:
            try:
                self._read(schema.check)
            except BaseException:
                self.close()
                raise

    # -- connections -----------------------------------------------------------------------------
    def _read(self, fn: Callable[[Any], Any]) -> Any:
        """``fn(conn)`` on a pooled connection; once more on a fresh one if the first was broken
        (a database restart breaks every pooled connection; reads are safe to repeat)."""
        try:
            with self._connection() as conn:
                return fn(conn)
        except LedgerUnavailable:
            self._check_pool()
            with self._connection() as conn:
                return fn(conn)

    def _check_pool(self) -> None:
        """Drop every idle pooled connection that a database restart broke (one round trip each)."""
        with contextlib.suppress(Exception):
            self.pool.check()

    @contextlib.contextmanager
    def _connection(self):
        try:
            with self.pool.connection() as conn:
                yield conn
        except Exception as exc:
            if _unreachable(exc) and not isinstance(exc, LedgerUnavailable):
                raise LedgerUnavailable(self.unavailable_message(exc)) from None
            raise

    def unavailable_message(self, exc: BaseException | None = None) -> str:
        why = ""
        if exc is not None:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            why = f" ({text})"
        return f"pouch: the team ledger database {self.display_url} is unreachable{why}"

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):
            self.pool.close(timeout=2)

    # -- transactions -----------------------------------------------------------------------------
    def _load_state(self, conn: Any, doc: dict[str, Any]) -> LedgerState:
        wallets = {r[0]: r[1] for r in conn.execute("SELECT name, doc FROM pouch_wallets")}
        opens = {r[0]: r[1] for r in conn.execute("SELECT id, doc FROM pouch_open")}
        return LedgerState.from_tables({"ledger": {"1": doc}, "open": opens, "wallets": wallets})

    def _begin(self, conn: Any) -> _PGTxn:  # type: ignore[override]
        """Lock the ledger row (every writer of every proxy does this first) and read the state."""
        version, doc = conn.execute("SELECT version, doc FROM pouch_ledger WHERE id = 1 FOR UPDATE").fetchone()
        cached, self._cache = self._cache, None  # the operations mutate it: valid again once committed
        state = cached[1] if cached is not None and cached[0] == version else self._load_state(conn, doc)
        if any(w.rpm is not None or w.tpm is not None for w in state.wallets.values()):
            self.rates.load(conn)
        return _PGTxn(state, conn, version)

    def _write(self, txn: _PGTxn) -> None:
        """Write what the transaction changed, still under the row lock; NOTIFY the new version."""
        if self.rates._new:
            with txn.conn.cursor() as cur:
                self.rates.write(cur)
        if not txn.dirty:
            self._cache = (txn.version, txn.state)
            return
        Jsonb, st, conn = self._Jsonb, txn.state, txn.conn
        if not txn.durable:
            conn.execute("SET LOCAL synchronous_commit = off")  # checkpoints only: advisory
        added = [r for i, r in st.open.items() if i not in txn.before]
        dropped = [i for i in txn.before if i not in st.open]
        ckpt = [i for i in txn.checkpointed if i in st.open and i in txn.before]
        with conn.cursor() as cur:
            if dropped:
                cur.execute("DELETE FROM pouch_open WHERE id = ANY(%s)", (dropped,))
            if added:
                cur.executemany("INSERT INTO pouch_open (id, lease, doc) VALUES (%s, %s, %s)",
                                [(r.id, lease_id(r.owner), Jsonb(r.to_dict())) for r in added])
                self._renew(cur)
            if ckpt:
                cur.executemany("UPDATE pouch_open SET doc = %s WHERE id = %s",
                                [(Jsonb(st.open[i].to_dict()), i) for i in ckpt])
            if txn.entries:
                cur.executemany(
                    "INSERT INTO pouch_history (seq, ts, kind, wallet, res_id, entry) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(e["seq"], e["ts"], e["kind"], e.get("wallet"), e.get("id"), Jsonb(e)) for e in txn.entries])
            now_wallets = {n: w.to_dict() for n, w in st.wallets.items()}
            changed = [(n, Jsonb(d)) for n, d in now_wallets.items() if txn.wallets_before.get(n) != d]
            if changed:
                cur.executemany("INSERT INTO pouch_wallets (name, doc) VALUES (%s, %s) "
                                "ON CONFLICT (name) DO UPDATE SET doc = excluded.doc", changed)
            gone = [n for n in txn.wallets_before if n not in now_wallets]
            if gone:
                cur.execute("DELETE FROM pouch_wallets WHERE name = ANY(%s)", (gone,))
            doc = st.to_tables_without_open()["ledger"]["1"]
            cur.execute("UPDATE pouch_ledger SET version = version + 1, doc = %s WHERE id = 1", (Jsonb(doc),))
            cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, str(txn.version + 1)))
        self._pending_cache = (txn.version + 1, st)

    def _renew(self, cur: Any) -> None:
        cur.execute(
            "INSERT INTO pouch_leases (id, host, pid, heartbeat, expires) VALUES (%s, %s, %s, now(), "
            "now() + make_interval(secs => %s)) ON CONFLICT (id) DO UPDATE SET heartbeat = now(), "
            "expires = excluded.expires", (self.lease, self.owner.host, self.owner.pid, self.lease_seconds))
        self._start_heartbeat()

    def _execute(self, batch: list[_Slot]) -> None:
        """Run a batch of operations in one database transaction (the caller holds ``_commit_lock``).

        A pooled connection broken by a database restart fails on the transaction's first
        statement, before anything was sent that could have committed: the batch is then tried
        once more on a fresh connection. A failure after that point is final for this batch."""
        spooled = self._read_spool()
        try:
            for attempt in (1, 2):
                begun = False
                try:
                    with self._connection() as conn:
                        with conn.transaction():
                            txn = self._begin(conn)
                            begun = True
                            for op in spooled:
                                try:
                                    op(txn)
                                except NotOpen as exc:  # settled otherwise meanwhile (e.g. as an orphan)
                                    log.error(f"pouch: spooled settle of {op.res_id} not applied: {exc}")
                            for s in batch:
                                try:
                                    s.result, s.error = s.op(txn), None
                                except Exception as exc:  # one bad operation does not fail the others
                                    s.error = exc
                            self._pending_cache = None
                            self._write(txn)
                        if self._pending_cache is not None:
                            self._cache = self._pending_cache
                    break
                except LedgerUnavailable:
                    if begun or attempt == 2:
                        raise
                    self._check_pool()
            if spooled:
                self._spool_path.unlink(missing_ok=True)
                log.warning(f"pouch: wrote {len(spooled)} spooled settle(s) to the team ledger")
            self.commits += 1
            self.operations += len(batch)
        except Exception as exc:  # nothing of the batch happened
            self._cache = None
            unreachable = _unreachable(exc)
            err: BaseException = (exc if isinstance(exc, LedgerUnavailable) or not unreachable
                                  else LedgerUnavailable(self.unavailable_message(exc)))
            for s in batch:
                s.result, s.error = None, err
                settle = getattr(s.op, "settle_op", s.op)  # unwrapped from ``core.with_views``
                if unreachable and isinstance(settle, _SettleOp):
                    try:
                        self._spool(settle)
                        s.error, s.result = None, {"kind": "settle", "id": settle.res_id, "spooled": True}
                    except OSError as spool_exc:
                        log.error(f"pouch: could not spool the settle of {settle.res_id}: {spool_exc}")

    # -- the spool (settles written while the database is unreachable) ---------------------------
    def _spool(self, op: _SettleOp) -> None:
        if op.ts is None:
            op.ts = self.clock()
        fd = os.open(self._spool_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, op.spool_line())
            os.fsync(fd)
        finally:
            os.close(fd)
        log.warning(f"pouch: team ledger unreachable: settle of {op.res_id} spooled to {self._spool_path}")

    def _read_spool(self) -> list[_SettleOp]:
        try:
            data = self._spool_path.read_bytes()
        except FileNotFoundError:
            return []
        ops = []
        for line in data.splitlines():
            try:
                d = json.loads(line)
                ops.append(_SettleOp(self, d["id"], Decimal(d["cost"]), d["status"], d["details"], float(d["ts"])))
            except (ValueError, KeyError):
                continue  # a torn last line: its settle was not acknowledged as spooled
        return ops

    def spooled(self) -> int:
        return len(self._read_spool())

    # -- the store primitives the operations use --------------------------------------------------
    def _run(self, op: Callable[[_Txn], Any]) -> Any:
        slot = _Slot(op)
        with self._pending_lock:
            self._pending.append(slot)
        with self._commit_lock:
            if not slot.done:
                self._drain()
        return slot.outcome()

    def _drain(self, *, as_record: bool = False) -> None:  # noqa: ARG002 (the local ledger's signature)
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._urgent, self._lazy_since = 0, None
        if not batch:
            return
        try:
            self._execute(batch)
        finally:
            self._last_commit = time.monotonic()
            answered = sum(s.urgent for s in batch)
            if answered:
                with self._pending_lock:
                    self._waiting -= answered
            _deliver(batch)

    def _commit_loop(self) -> None:
        name_thread()  # "pouch-ledger" in top -H and /proc (``threads``)
        while True:
            with self._wake:
                while not self._urgent:
                    if self._lazy_since is None:
                        if not self._wake.wait(self.idle_exit) and not self._urgent and self._lazy_since is None:
                            self._committer = None
                            return
                        continue
                    left = self._lazy_since + self.lazy_delay - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            if self.commit_delay > 0 and self._busy():  # a lone caller never waits (as the local store)
                time.sleep(self.commit_delay)
            with self._commit_lock:
                self._drain()

    def _enqueue(self, slot: _Slot, lazy: bool) -> None:
        with self._wake:
            self._pending.append(slot)
            if not lazy:
                self._urgent += 1
                slot.urgent = True
                if self._waiting:
                    self._concurrent_at = time.monotonic()  # others are arriving: waiting can gather
                self._waiting += 1
            elif self._lazy_since is None:
                self._lazy_since = time.monotonic()
            else:
                return
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, name="pouch-ledger", daemon=True)
                self._committer.start()
            self._wake.notify()

    def wallet_costs(self, txn: _Txn, name: str, since: float | None) -> list[tuple[float, Decimal]]:
        conn = txn.conn  # type: ignore[attr-defined]
        rows = conn.execute("SELECT ts, entry->>'cost' FROM pouch_history WHERE kind = 'settle' AND wallet = %s "
                            "AND ts >= %s", (name, since if since is not None else float("-inf"))).fetchall()
        out = [(float(ts), Decimal(cost)) for ts, cost in rows]
        out += [(float(e["ts"]), Decimal(e["cost"])) for e in txn.entries
                if e.get("kind") == "settle" and e.get("wallet") == name and (since is None or e["ts"] >= since)]
        return out

    # -- reads -----------------------------------------------------------------------------------
    def snapshot(self) -> LedgerState:
        def read(conn: Any) -> LedgerState:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                version, doc = conn.execute("SELECT version, doc FROM pouch_ledger WHERE id = 1").fetchone()
                return self._load_state(conn, doc)
        return self._read(read)

    def version(self) -> int:
        return self._read(lambda conn: int(conn.execute("SELECT version FROM pouch_ledger WHERE id = 1").fetchone()[0]))

    def history(self, *, since: float | None = None, limit: int | None = None, kinds: Iterable[str] | None = None,
                wallet: str | None = None) -> list[dict[str, Any]]:
        where, args = ["true"], []
        if since is not None:
            where.append("ts >= %s")
            args.append(since)
        if kinds:
            where.append("kind = ANY(%s)")
            args.append(list(kinds))
        if wallet is not None:
            where.append("wallet = %s")
            args.append(wallet)
        sql = f"SELECT entry FROM pouch_history WHERE {' AND '.join(where)} ORDER BY seq DESC"
        if limit is not None:
            sql += " LIMIT %s"
            args.append(limit)
        return self._read(lambda conn: [r[0] for r in conn.execute(sql, args)])

    def audit_append(self, action: str, details: dict[str, Any] | None = None, *,
                     actor: str | None = None) -> dict[str, Any]:
        """Append to the team's audit log in the database (``audit.py``'s entry, hash chain and
        head; the head row is locked first, so concurrent appends from any machine chain in order)."""
        from .audit import GENESIS, _canonical, _default_actor, entry_hash, redact
        from datetime import UTC, datetime

        def append(conn: Any) -> dict[str, Any]:
            with conn.transaction():
                conn.execute("INSERT INTO pouch_audit_head (id, count, hash) VALUES (1, 0, %s) "
                             "ON CONFLICT (id) DO NOTHING", (GENESIS,))
                count, prev = conn.execute("SELECT count, hash FROM pouch_audit_head WHERE id = 1 "
                                           "FOR UPDATE").fetchone()
                ts = time.time()
                entry: dict[str, Any] = {
                    "seq": int(count) + 1, "ts": ts,
                    "time": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    "actor": actor or _default_actor(), "action": str(action), "details": redact(details or {}),
                    "prev": prev}
                entry = json.loads(_canonical(entry))
                entry["hash"] = entry_hash(entry)
                conn.execute("INSERT INTO pouch_audit (seq, entry) VALUES (%s, %s)", (entry["seq"], self._Jsonb(entry)))
                conn.execute("UPDATE pouch_audit_head SET count = %s, hash = %s WHERE id = 1",
                             (entry["seq"], entry["hash"]))
                return entry
        with self._connection() as conn:
            return append(conn)

    def restore_backup(self) -> Path:
        raise LedgerUnavailable("the team ledger has no local backup: PostgreSQL's own backups restore it")

    # -- leases and orphans --------------------------------------------------------------------
    def live_leases(self, conn: Any) -> set[str]:
        return {r[0] for r in conn.execute(f"SELECT id FROM pouch_leases l WHERE {LEASE_LIVE}")}

    def orphans_waiting(self) -> bool:
        return self._read(lambda conn: conn.execute("SELECT EXISTS (SELECT 1 FROM pouch_open o WHERE NOT EXISTS (SELECT 1 FROM "
                                f"pouch_leases l WHERE l.id = o.lease AND {LEASE_LIVE}))").fetchone()[0])

    def heartbeat(self) -> None:
        """Renew this proxy's lease; recover expired ones; write the spool once the database is back."""
        self._read(lambda conn: self._renew_only(conn.cursor()))
        if self.orphans_waiting():
            for e in self.recover_orphans():
                log.warning(f"pouch: settled reservation {e['id']} of an expired lease at {e['cost']} "
                            "(flagged orphaned)")
        if self._spool_path.exists():
            self._run(lambda txn: None)  # the commit writes the spool first

    def _renew_only(self, cur: Any) -> None:
        cur.execute(
            "INSERT INTO pouch_leases (id, host, pid, heartbeat, expires) VALUES (%s, %s, %s, now(), "
            "now() + make_interval(secs => %s)) ON CONFLICT (id) DO UPDATE SET heartbeat = now(), "
            "expires = excluded.expires", (self.lease, self.owner.host, self.owner.pid, self.lease_seconds))

    def _start_heartbeat(self) -> None:
        if self._beat is None:
            self._beat = threading.Thread(target=self._heartbeat_loop, name="pouch-lease", daemon=True)
            self._beat.start()

    def _heartbeat_loop(self) -> None:
        give_way()
        wait = self.lease_seconds / 3
        while not self._closed.wait(wait):
            try:
                self.heartbeat()
                wait = self.lease_seconds / 3
            except Exception as exc:  # down: retry every second (renew as soon as it is back); admissions fail closed
                if wait > 1.0:
                    log.warning(f"pouch: team ledger heartbeat failed: {exc}")
                wait = 1.0

    def start(self) -> None:
        """A proxy's start: take the lease, write any spool left by a previous run, recover orphans."""
        with self._connection() as conn:
            with conn.cursor() as cur:
                self._renew_only(cur)
        self._start_heartbeat()
        self.heartbeat()


class PostgresLedger(LedgerOps, PostgresStore):
    """The team ledger: the operations (``budget.LedgerOps``) over the PostgreSQL store. Three
    operations differ from the local ledger's: a settle can be spooled and is idempotent by id,
    orphans are told by their lease, and ``verify`` asks the database for the sums."""

    def settle_op(self, res_id: str, cost: Decimal, *, status: str = "ok",  # type: ignore[override]
                  details: dict[str, Any] | None = None) -> _SettleOp:
        return _SettleOp(self, res_id, cost, status, dict(details or {}))

    def live_lease_rows(self) -> list[tuple[str, int]]:
        """(host, pid) of every proxy whose lease is live, for ``pouch status``."""
        return self._read(lambda conn: [(r[0], int(r[1])) for r in conn.execute(
            f"SELECT host, pid FROM pouch_leases l WHERE {LEASE_LIVE} ORDER BY host, pid")])

    def recover_orphans(self, is_alive: Callable[[Owner], bool] | None = None) -> list[dict[str, Any]]:
        """Settle the reservations whose proxy's lease expired (the local orphan rule)."""
        def op(txn: _Txn) -> list[dict[str, Any]]:
            conn = txn.conn  # type: ignore[attr-defined]
            if is_alive is None:
                live = self.live_leases(conn) | {self.lease}
                alive: Callable[[Owner], bool] = lambda o: lease_id(o) in live
            else:
                alive = is_alive
            entries = txn.state.orphan_entries(alive, now=self.clock())
            txn.entries.extend(entries)
            if entries:
                txn.changed()
            conn.execute(f"DELETE FROM pouch_leases l WHERE NOT ({LEASE_LIVE}) AND NOT EXISTS "
                         "(SELECT 1 FROM pouch_open o WHERE o.lease = l.id)")
            return entries
        return self._run(op)

    def verify(self) -> list[str]:
        """The state's invariant, and spent / requests / each wallet's window against the history."""
        with self._connection() as conn:
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                _version, doc = conn.execute("SELECT version, doc FROM pouch_ledger WHERE id = 1").fetchone()
                st = self._load_state(conn, doc)
                total, count = conn.execute("SELECT coalesce(sum((entry->>'cost')::numeric), 0)::text, count(*) "
                                            "FROM pouch_history WHERE kind = 'settle'").fetchone()
                blocked = conn.execute("SELECT count(*) FROM pouch_history WHERE kind = 'block'").fetchone()[0]
                seqs = conn.execute("SELECT coalesce(max(seq), 0), count(*) FROM pouch_history").fetchone()
                wallet_rows = conn.execute("SELECT wallet, ts, entry->>'cost' FROM pouch_history "
                                           "WHERE kind = 'settle' AND wallet = ANY(%s)", (list(st.wallets),)).fetchall()
        problems = st.problems()
        if Decimal(total) != st.spent:
            problems.append(f"spent {st.spent} != sum of settled history {Decimal(total)}")
        if count != st.requests:
            problems.append(f"requests {st.requests} != settled history entries {count}")
        if blocked != st.blocked:
            problems.append(f"blocked {st.blocked} != blocked history entries {blocked}")
        if seqs[0] != st.seq or seqs[1] != st.seq:
            problems.append(f"history seq runs to {seqs[0]} in {seqs[1]} entries, the ledger is at seq {st.seq}")
        for w in st.wallets.values():
            in_window = sum((Decimal(c) for name, ts, c in wallet_rows
                             if name == w.name and period_key(w.period, ts) == w.window), ZERO)
            if in_window != w.spent:
                problems.append(f"wallet {w.name}: spent {w.spent} != settled history in {w.window} {in_window}")
        return problems



def init(url: str) -> list[int]:
    """``pouch ledger init``: create or upgrade the schema; the versions applied."""
    psycopg, _, _ = _driver()
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
            return schema.migrate(conn)
    except psycopg.OperationalError as exc:
        raise LedgerUnavailable(f"pouch: cannot reach {redact_url(url)}: {str(exc).strip()}") from None


def ledger_url(url: str | None = None) -> str | None:
    """The team ledger's URL: ``url`` (``--ledger``, ``pouch_ledger``), else ``$POUCH_LEDGER``; None: local."""
    url = url or os.environ.get("POUCH_LEDGER") or None
    if url is not None and not is_url(url):
        raise LedgerUnavailable(f"pouch: the ledger must be a postgresql:// URL, not {redact_url(url)!r}")
    return url


def ledger_for(home: str | os.PathLike[str] | None, url: str | None = None, **kw: Any) -> Any:
    """The ledger a process uses: the team ledger at ``ledger_url(url)``, else the local one at ``home``."""
    from .budget import Ledger
    chosen = ledger_url(url)
    return PostgresLedger(chosen, home, **kw) if chosen else Ledger(home, **kw)
