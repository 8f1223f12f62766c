"""The ledger watcher: a thread polling the state file and posting messages to the app.

Shape borrowed from toolong's watcher: one daemon thread, an exit event, a poll loop. Every
``interval`` seconds it ``stat``s ``state.json``; when the file was replaced (the ledger writes
it atomically, so a new inode, mtime or size means a new version) it reads it lock-free with
``Ledger.snapshot()`` and posts :class:`LedgerUpdated`; when history advanced it reads the
newest entries (:class:`HistoryUpdated`) and folds what was appended into the aggregates
(:class:`AggregatesUpdated`). The first poll posts the snapshot and the recent table *before*
aggregating the month, so the first paint never waits for the charts.

Nothing here touches widgets; nothing in the UI touches files. The thread never raises: a
missing directory, a corrupt file or any OS error becomes a :class:`LedgerProblem`.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from textual.message import Message

from pouch_addon.alerts import STATE_FILE as ALERTS_FILE, AlertState
from pouch_addon.budget import Ledger, LedgerCorrupt, owner_alive
from pouch_addon.ledger_store import HISTORY_DIR, STATE_FILE, WAL_FILE
from pouch_addon.ledger_wal import mark

from .aggregate import Aggregates
from .messages import AggregatesUpdated, AlertsUpdated, HistoryUpdated, LedgerProblem, LedgerSnapshot, LedgerUpdated
from .reader import PartitionFollower, read_recent

Post = Callable[[Message], object]
PAGE = 200
FIRST_PAGE = 50  # rows for the first paint (a screenful); the full page follows right after it
AGG_SLICE = 0.1  # seconds of aggregation per poll before checking the state file again


class LedgerWatcher(threading.Thread):
    def __init__(
        self,
        home: Path,
        post: Post,
        *,
        interval: float = 0.25,
        now: Callable[[], float] = time.time,
        recent_limit: int = PAGE,
    ) -> None:
        super().__init__(name="pouch-ledger-watcher", daemon=True)
        self.home = Path(home)
        self.post = post
        self.interval = interval
        self.now = now
        self.recent_limit = recent_limit
        self._exit = threading.Event()
        self.painted = threading.Event()  # set by the app after its first paint (or by tests)
        self._wake = threading.Event()
        self._ledger: Ledger | None = None
        self._signature: tuple | None = None  # (inode, mtime_ns, size) of the last state file read
        self._problem: tuple[str, str] | None = None
        self._history_pos: tuple | None = None  # (history_file, history_size, recent_limit) last read
        self._agg: Aggregates | None = None
        self._follower: PartitionFollower | None = None
        self._agg_pos: tuple | None = None
        self._history_file: str | None = None
        self._history_size = 0
        self._have_state = False
        self.polls = 0
        self._alerts_sig: tuple | None = None

    # -- control (from the UI thread) ----------------------------------------------------------
    def close(self) -> None:
        self._exit.set()
        self._wake.set()

    def wake(self, *, force: bool = False) -> None:
        """Poll now (after the app wrote to the ledger, or when the user asks to refresh)."""
        if force:
            self._signature = None
            self._history_pos = None
        self._wake.set()

    def first_paint_done(self) -> None:
        self.painted.set()
        self._wake.set()

    def more(self) -> None:
        """Read one more page of history for the table."""
        self.recent_limit += PAGE
        self._wake.set()

    # -- the loop ---------------------------------------------------------------------------------
    def run(self) -> None:
        while not self._exit.is_set():
            try:
                self.poll()
            except Exception as exc:  # noqa: BLE001 - the dashboard must never die of a bad read
                self._report("error", f"could not read the ledger in {self.home}: {type(exc).__name__}: {exc}")
            self.polls += 1
            self._wake.wait(self.interval)
            self._wake.clear()

    def _report(self, kind: str, message: str) -> None:
        if kind in ("missing", "corrupt"):
            # the app clears what it showed; everything is read and posted again once readable
            self._have_state = False
            self._history_pos = None
            self._agg = None
        if self._problem != (kind, message):
            self._problem = (kind, message)
            self.post(LedgerProblem(kind, message))

    def poll(self) -> None:
        if not self.home.is_dir():
            self._signature = None
            self._report("missing", f"No ledger at {self.home} yet. Start the proxy (`pouch proxy`) or set a "
                                    "budget (press b) to create it.")
            return
        if self._ledger is None:
            self._ledger = Ledger(self.home)
        self._alerts()
        state_path = self.home / STATE_FILE
        try:
            st = os.stat(state_path)
            signature: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
            modified: float | None = st.st_mtime
        except FileNotFoundError:
            signature, modified = ("missing",), None
        # commits between snapshots only append to the write-ahead log (preallocated: its size
        # does not move per record, so its mark holds where its content ends)
        wal = mark(self.home / WAL_FILE)
        if wal is not None:
            signature = (*signature, *wal)
            if modified is not None:
                modified = max(modified, wal[2] / 1e9)
        if signature != self._signature:
            try:
                state = self._ledger.snapshot()
            except LedgerCorrupt as exc:
                self._signature = signature
                self._report("corrupt", str(exc))
                return
            self._signature = signature
            reservations = sorted(state.open.values(), key=lambda r: r.created)
            dead = frozenset(r.id for r in reservations if not owner_alive(r.owner))
            self.post(LedgerUpdated(LedgerSnapshot(state.status(), reservations, dead, modified,
                                                   exists=modified is not None)))
            self._history_file, self._history_size = state.history_file, state.history_size
            self._have_state = True
        elif self._problem is not None and self._problem[0] == "corrupt":
            return
        if not self._have_state:
            return
        hist_dir = self.home / HISTORY_DIR
        limit = self.recent_limit if self.painted.is_set() else min(FIRST_PAGE, self.recent_limit)
        pos = (self._history_file, self._history_size, limit)
        if pos != self._history_pos:
            entries, more = read_recent(hist_dir, self._history_file, self._history_size, limit=limit)
            self._history_pos = pos
            self.post(HistoryUpdated(entries, more=more))
        if self._problem is not None:  # this poll read everything: whatever was wrong is over
            self._problem = None
            self.post(LedgerProblem("ok", ""))
        self._aggregate(hist_dir)

    def _alerts(self) -> None:
        """Post the newest alert when the proxy's ``alerts-state.json`` changed (the TUI banner sink)."""
        path = self.home / ALERTS_FILE
        try:
            st = os.stat(path)
            sig: tuple = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            sig = ("missing",)
        if sig == self._alerts_sig:
            return
        self._alerts_sig = sig
        try:
            recent = AlertState.loads(path.read_text()).recent if sig != ("missing",) else []
        except (OSError, ValueError, KeyError, TypeError):
            recent = []
        self.post(AlertsUpdated(recent[-1] if recent else None))

    def _aggregate(self, hist_dir: Path) -> None:
        """Fold newly applied history into the month's aggregates, at most ``AGG_SLICE`` seconds per
        poll so the in-flight view keeps updating while a big month is first added up."""
        if not self.painted.is_set():
            return  # the first paint comes first; the app wakes us once it is on screen
        now = self.now()
        if self._agg is None or not self._agg.periods.same(now):
            self._agg = Aggregates.empty(now)
            self._follower = PartitionFollower(hist_dir, self._agg.periods.first)
            self._agg_pos = None
        pos = (self._history_file, self._history_size)
        if pos == self._agg_pos:
            return
        assert self._follower is not None
        deadline = time.monotonic() + AGG_SLICE
        while True:
            entries, done = self._follower.read_some(self._history_file, self._history_size, max_bytes=256 * 1024)
            self._agg.add_all(entries)
            if done:
                break
            if self._exit.is_set() or time.monotonic() > deadline:
                self._wake.set()  # more to add up: come back right after the next snapshot check
                return
        self._agg_pos = pos
        self.post(AggregatesUpdated(self._agg.copy()))
