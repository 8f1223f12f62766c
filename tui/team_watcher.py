"""The team ledger's watcher: the TUI's view of a PostgreSQL ledger, driven by LISTEN/NOTIFY.

Every write transaction of the team ledger ends with ``NOTIFY pouch_ledger, '<version>'``
(``ledger_postgres``). This thread holds one connection that ``LISTEN``\\ s on that channel and
reads the ledger only when a notification arrives (or the app asks: a write from the TUI, a
page more of history): nothing is read while nobody writes, however long the dashboard stays
open. Each read posts the same messages as the local watcher (``watcher.py``): the snapshot,
the newest history, and the month's aggregates, to which only the entries after the last seen
``seq`` are added. Reservations whose proxy's lease expired are shown as dead.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pouch_addon.ledger_postgres import CHANNEL, LEASE_LIVE, PostgresLedger, lease_id

from .aggregate import Aggregates
from .messages import AggregatesUpdated, HistoryUpdated, LedgerProblem, LedgerSnapshot, LedgerUpdated
from .watcher import FIRST_PAGE, PAGE, Post


class TeamWatcher(threading.Thread):
    def __init__(self, url: str, home: Path, post: Post, *, now: Callable[[], float] = time.time,
                 recent_limit: int = PAGE) -> None:
        super().__init__(name="pouch-team-watcher", daemon=True)
        self.url, self.home, self.post, self.now = url, Path(home), post, now
        self.recent_limit = recent_limit
        self.painted = threading.Event()
        self._exit = threading.Event()
        self._wake = threading.Event()
        self._agg: Aggregates | None = None
        self._agg_seq = 0
        self._problem: str | None = None
        self.reads = 0  # how many times the ledger was read (the tests check it does not poll)
        self.notified = 0

    # -- control (the same as LedgerWatcher's) -----------------------------------------------------
    def close(self) -> None:
        self._exit.set()
        self._wake.set()

    def wake(self, *, force: bool = False) -> None:  # noqa: ARG002
        self._wake.set()

    def first_paint_done(self) -> None:
        self.painted.set()
        self._wake.set()

    def more(self) -> None:
        self.recent_limit += PAGE
        self._wake.set()

    # -- the loop ------------------------------------------------------------------------------------
    def run(self) -> None:
        import psycopg
        while not self._exit.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=3) as listen, \
                        PostgresLedger(self.url, self.home) as ledger:
                    listen.execute(f"LISTEN {CHANNEL}")
                    self.read(ledger)  # after LISTEN: no write can fall between the two
                    while not self._exit.is_set():
                        got = False
                        for _ in listen.notifies(timeout=0.2, stop_after=1):
                            got = True
                            self.notified += 1
                        if got or self._wake.is_set():
                            self._wake.clear()
                            self.read(ledger)
            except Exception as exc:  # noqa: BLE001 - the dashboard must never die of a bad read
                msg = f"the team ledger is unreachable: {type(exc).__name__}: {exc}"
                if self._problem != msg:
                    self._problem = msg
                    self.post(LedgerProblem("error", msg))
                self._exit.wait(1.0)

    def read(self, ledger: PostgresLedger) -> None:
        self.reads += 1
        state = ledger.snapshot()
        reservations = sorted(state.open.values(), key=lambda r: r.created)
        live = ledger._read(lambda conn: {r[0] for r in conn.execute(f"SELECT id FROM pouch_leases l WHERE {LEASE_LIVE}")})
        dead = frozenset(r.id for r in reservations if lease_id(r.owner) not in live)
        self.post(LedgerUpdated(LedgerSnapshot(state.status(), reservations, dead, self.now(), exists=True)))
        limit = self.recent_limit if self.painted.is_set() else min(FIRST_PAGE, self.recent_limit)
        entries = ledger.history(limit=limit)
        self.post(HistoryUpdated(entries, more=len(entries) == limit))
        if self._problem is not None:
            self._problem = None
            self.post(LedgerProblem("ok", ""))
        if self.painted.is_set():
            self._aggregate(ledger)

    def _aggregate(self, ledger: PostgresLedger) -> None:
        now = self.now()
        if self._agg is None or not self._agg.periods.same(now):
            self._agg, self._agg_seq = Aggregates.empty(now), 0
            since: float | None = self._agg.periods.first
        else:
            since = None
        new = self._entries_after(ledger, self._agg_seq, since)
        if new or self._agg_seq == 0:
            self._agg.add_all(new)
            if new:
                self._agg_seq = new[-1]["seq"]
            self.post(AggregatesUpdated(self._agg.copy()))

    @staticmethod
    def _entries_after(ledger: PostgresLedger, seq: int, since: float | None) -> list[dict[str, Any]]:
        return ledger._read(lambda conn: [r[0] for r in conn.execute(
            "SELECT entry FROM pouch_history WHERE seq > %s AND ts >= %s ORDER BY seq",
            (seq, since if since is not None else float("-inf")))])
