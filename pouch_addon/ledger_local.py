"""The local store: the ledger as files on this machine, shared by its processes.

A TinyDB-format snapshot (``state.json``) plus a write-ahead log of group commits
(``ledger_wal``), history partitions and a cross-process lock (``ledger_store``). Every write is
one transaction under the lock, so check-and-reserve is a single atomic step and no path reads
the balance and writes it in two steps. The store knows nothing of the rules beyond applying
them: the operations (``budget.LedgerOps``) hand it closures over a transaction.

The store's side of the seam (what ``LedgerOps`` uses, and what another store provides):
``_run(op)`` (run and commit, blocking), ``submit(op, lazy=)`` / ``submit_async(op, lazy=)``
(queue for a group commit), ``snapshot()``, ``history(...)``, ``wallet_costs(txn, name, since)``,
and the attributes ``clock`` and ``owner``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from .home import resolve_home
from .ledger_owner import Owner
from .ledger_rules import LedgerState, OpenReservations, Refusal, json_str, partition_for
from .ledger_store import (
    HISTORY_DIR,
    LOCK_FILE,
    STATE_FILE,
    WAL_FILE,
    AtomicJSONStorage,
    FileLock,
    HistoryLog,
    LedgerCorrupt,
    canonical_json,
    corrupt_message,
)
from .ledger_wal import PREALLOCATE_LOW, RecordLog
from .threads import name_thread

log = logging.getLogger(__name__)

#: how a group commit's log record reaches the disk before its operations are answered:
#: ``overlap`` (the default): written to the log (in the kernel's page cache: a killed process
#: cannot lose it) before the answer, flushed (``fdatasync``) by the flusher thread while the
#: admitted requests are in flight; ``strict``: flushed before the answer (a power loss cannot
#: lose it either). A refusal is answered before the flush in both.
DURABILITY = ("overlap", "strict")

#: a ledger where two admissions were in flight at once less than this long ago (s) is busy: its
#: committer waits ``commit_delay`` before a commit, for others to share it
BUSY_WINDOW = 0.02
#: with this many other calls in flight (``LocalStore.siblings``) a commit waits ``commit_delay``
BUSY_SIBLINGS = 2
#: a lazy ledger operation (see ``Ledger.submit``) is committed at the latest this long after it came (s)
LAZY_DELAY = 0.025
#: a committer thread with nothing to do for this long ends; the next submission starts a new one (s)
IDLE_EXIT = 30.0
#: the committer writes a snapshot of the state (dropping the write-ahead log) after this many
#: log records, or this long (s) after the oldest record the snapshot does not hold yet
SNAPSHOT_RECORDS = 500
SNAPSHOT_SECONDS = 1.0
#: under load (the last group commit was ``_busy``) the time rule is this long instead, and a
#: snapshot is also due once the log's records hold this many bytes: a snapshot (three fsyncs)
#: woke the committer about 21 times and held the next commit meanwhile, once a second; the
#: readers' replay stays bounded by ``SNAPSHOT_RECORDS`` records, these bytes and these seconds
SNAPSHOT_SECONDS_BUSY = 10.0
SNAPSHOT_BYTES = 1024 * 1024


class _Txn:
    """One open transaction: the state plus history entries to write ahead of it."""

    def __init__(self, state: LedgerState, key: Any = None) -> None:
        self.state = state
        self.key = key  # (state file identity, end of the log's records) when the transaction began
        opens = state.open
        # the ids the transaction opens and closes, for the log record: watched as they change
        # (``OpenReservations.touched``: id -> open when it began) rather than every open id
        # compared before and after
        if type(opens) is OpenReservations:
            self.touched: dict[str, bool] | None = {}
            opens.touched = self.touched
            self._before: frozenset[str] | None = None
        else:
            self.touched, self._before = None, frozenset(opens)
        self.checkpointed: set[str] = set()
        self.log = False  # commit as one log record (the committer) instead of a snapshot
        self.entries: list[dict[str, Any]] = []
        self.dirty = False
        self.durable = False  # checkpoints alone are advisory and skip fsync
        self.flush = False  # a log record was written that must still be flushed (``_drain``)
        #: (partition, size) when the transaction began, read through the kept descriptor
        #: (``LocalStore._history_at``): its append knows the new size without an ``fstat``
        self.hist_start: tuple[str, int] | None = None

    @property
    def before(self) -> frozenset[str]:
        """The ids open when the transaction began."""
        if self._before is None:
            touched = self.touched or {}
            self._before = frozenset([i for i in self.state.open if touched.get(i, True)]
                                     + [i for i, was in touched.items() if was])
        return self._before

    def was_open(self, res_id: str) -> bool:
        """Whether ``res_id`` was open when the transaction began."""
        touched = self.touched
        if touched is None:
            return res_id in self.before
        was = touched.get(res_id)
        return res_id in self.state.open if was is None else was

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.state.apply(entry)
        self.entries.append(entry)
        self.changed()
        return entry

    def changed(self, *, durable: bool = True) -> None:
        self.dirty = True
        self.durable = self.durable or durable


class _Slot:
    """An operation waiting for a group commit, and its outcome (also set on ``future``, if any:
    a ``concurrent.futures.Future``, or an asyncio future completed on its own loop)."""

    __slots__ = ("op", "done", "result", "error", "future", "urgent", "abandoned")

    def __init__(self, op: Callable[[_Txn], Any], future: Future | asyncio.Future | None = None,
                 abandoned: Callable[[Any], None] | None = None) -> None:
        self.op = op
        #: called with the result when the future was cancelled before it came (the operation
        #: ran, being queued, and nobody takes what it made)
        self.abandoned = abandoned
        self.urgent = False  # someone waits for it (not a lazy operation), counted in ``_waiting``
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.future = future

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result

    def deliver(self) -> None:
        """Complete the future (an asyncio one on its loop's thread); a waiter that gave up is skipped
        (its ``abandoned`` callback gets the result instead)."""
        fut = self.future
        if fut is None:
            return
        if fut.done():
            if fut.cancelled() and self.abandoned is not None and self.error is None:
                try:
                    self.abandoned(self.result)
                except Exception:  # the other operations of the commit are still answered
                    log.exception("pouch: handling the result of an abandoned ledger operation failed")
            return
        if self.error is not None:
            fut.set_exception(self.error)
        else:
            fut.set_result(self.result)


def _deliver_all(slots: list[_Slot], loop: asyncio.AbstractEventLoop | None = None,
                 after: Callable[[], None] | None = None) -> None:
    for s in slots:
        s.deliver()
    if after is not None and loop is not None:
        # behind the wake-ups these results just scheduled (the ready queue is FIFO): the
        # awaiting hooks have their turn (and a forwarded request is handed to its socket) first
        loop.call_soon(after)


def _deliver(batch: list[_Slot], after: Callable[[], None] | None = None) -> None:
    """Mark ``batch`` done and complete its futures: asyncio ones with one wake-up per loop.
    ``after`` runs once the waiters had their turn: on the first waiting event loop, after the
    callbacks their results scheduled; with no event loop waiting, at once."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Slot]] = {}
    for s in batch:
        s.done = True
        if isinstance(s.future, asyncio.Future):
            by_loop.setdefault(s.future.get_loop(), []).append(s)
        else:
            s.deliver()
    for loop, slots in by_loop.items():
        try:
            if _resolves_here(loop):
                _resolve_here(loop, slots, after)
            else:
                loop.call_soon_threadsafe(_deliver_all, slots, loop, after)
            after = None
        except RuntimeError:  # the loop is closed: nobody is waiting
            pass
    if after is not None:
        after()


def _resolves_here(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether the committer may complete ``loop``'s futures itself (:func:`_resolve_here`): asyncio's
    selector loop out of debug mode (its ``call_soon`` is ``call_soon_threadsafe`` less the
    self-pipe write, made once per commit here) and C futures (state changes atomic under the GIL)."""
    return (_C_FUTURES and isinstance(loop, _SelectorLoop) and type(loop).call_soon is _CALL_SOON
            and not loop.get_debug())


def _resolve_here(loop: asyncio.AbstractEventLoop, slots: list[_Slot], after: Callable[[], None] | None) -> None:
    """Complete an event loop's waited-for futures from the committer thread and wake the loop
    once: each waiting task is put on the loop's ready queue here, so the loop resumes it on the
    turn the wake-up ends, instead of first running a ``_deliver_all`` callback that schedules it
    for the turn after (a ``select()`` and a loop iteration more per admission).

    Only an urgent slot's future (awaited by one task, whose wake-up a C future keeps as its first
    callback without allocating: no other thread can run in between) is completed here. A lazy
    one's (a settle: a done callback, then ``gather`` at shutdown adds a second, and allocating
    that one can run a finalizer that lets this thread in, whose callbacks would then miss it) is
    completed on its loop, by ``_deliver_all`` behind the wake-ups, as before. A cancellation on
    the loop either came first (``set_result`` raises; the slot goes to ``_deliver_all``, where its
    ``abandoned`` callback runs) or finds the future done (``core.reserve`` gives it back)."""
    late: list[_Slot] = []
    for s in slots:
        if not s.urgent:
            late.append(s)
            continue
        fut = s.future
        try:
            if s.error is not None:
                fut.set_exception(s.error)  # type: ignore[union-attr]
            else:
                fut.set_result(s.result)  # type: ignore[union-attr]
        except asyncio.InvalidStateError:  # cancelled meanwhile: handled on its loop
            late.append(s)
    if late:
        loop.call_soon(_deliver_all, late)
    if after is not None:
        # behind the wake-ups just scheduled (the ready queue is FIFO), as in ``_deliver_all``
        loop.call_soon(after)
    loop._write_to_self()  # type: ignore[attr-defined]


#: the C implementation of asyncio's futures is in use (a pure-Python future's ``set_result``
#: could interleave with a cancellation on the loop's thread)
_C_FUTURES = asyncio.Future.__module__ == "_asyncio"
_CALL_SOON = asyncio.BaseEventLoop.call_soon
_SelectorLoop = asyncio.selector_events.BaseSelectorEventLoop


class GroupCommitQueue:
    """The queue side of a store: operations handed to its committer thread, answered on futures.
    A store provides ``_enqueue(slot, lazy)``; the local store and the PostgreSQL one share this."""

    def submit(self, op: Callable[[_Txn], Any], *, lazy: bool = False) -> Future:
        """Queue ``op`` for this ledger's committer thread; its outcome arrives on the future.

        For callers that must not block (an event loop uses :meth:`submit_async`). No
        worker thread waits per operation; the committer runs whatever is queued in one group
        commit. When operations arrive together (one came while another was still waiting for its
        answer, less than ``BUSY_WINDOW`` ago: the proxy is under load), it first waits
        ``commit_delay`` seconds for more operations to join, so one commit serves many calls (as
        PostgreSQL's ``commit_delay`` with ``commit_siblings``). A lone caller, whose next call
        only comes once the previous one was answered, never waits, however close its calls are.

        A ``lazy`` operation (a settle nobody waits for, a checkpoint) does not start a commit
        by itself: it rides along with the next one, or is committed ``lazy_delay`` seconds
        after it came. Under load this roughly halves the commits (each admission's commit
        carries the settles finished meanwhile); a crash inside that window leaves the
        reservation open, and the orphan rule settles it conservatively.
        """
        slot = _Slot(op, Future())
        self._enqueue(slot, lazy)
        return slot.future  # type: ignore[return-value]

    def submit_async(self, op: Callable[[_Txn], Any], *, lazy: bool = False,
                     abandoned: Callable[[Any], None] | None = None) -> asyncio.Future:
        """:meth:`submit` for a coroutine on the running event loop; await the returned future.

        The committer wakes the loop once per group commit for all of that commit's operations
        (``call_soon_threadsafe``), instead of once per operation: every wake-up is a write to
        the loop's self-pipe, and on a busy proxy a thread switch. ``abandoned``: called on the
        loop with the operation's result if the future is cancelled before it came (so a waiter
        need not ``asyncio.shield`` the future, a loop turn more per operation)."""
        loop = asyncio.get_running_loop()
        slot = _Slot(op, loop.create_future(), abandoned)
        self._enqueue(slot, lazy)
        return slot.future  # type: ignore[return-value]

    def _enqueue(self, slot: _Slot, lazy: bool) -> None:
        raise NotImplementedError

    def _busy(self) -> bool:
        """Whether other operations are arriving, so that waiting can gather them: one came while
        another still waited (under ``BUSY_WINDOW`` ago), or the owner says at least
        ``BUSY_SIBLINGS`` other calls are in flight (``siblings``: a proxy whose event loop is
        CPU-bound hands the ledger one admission at a time, yet each call in flight brings a
        settle and its client's next call; PostgreSQL's ``commit_siblings``)."""
        if time.monotonic() - self._concurrent_at < BUSY_WINDOW:
            return True
        siblings = self.siblings
        return siblings is not None and siblings() >= BUSY_SIBLINGS


class LocalStore(GroupCommitQueue):
    """The ledger's files on this machine. Methods block on disk I/O: call them off the event loop."""

    def __init__(
        self, home: str | os.PathLike[str] | None = None, *, durable: bool = True,
        clock: Callable[[], float] = time.time, commit_delay: float = 0.0,
    ) -> None:
        self.home = resolve_home(home)
        self.clock = clock  # wall clock (tests inject one to cross period boundaries)
        self.state_path = self.home / STATE_FILE
        self._storage = AtomicJSONStorage(self.state_path, durable=durable)
        self._history = HistoryLog(self.home / HISTORY_DIR, durable=durable)
        self._lock = FileLock(self.home / LOCK_FILE)
        self._wal = RecordLog(self.home / WAL_FILE, durable=durable)
        self.snapshot_records = SNAPSHOT_RECORDS
        self.snapshot_seconds = SNAPSHOT_SECONDS
        self.snapshot_seconds_busy = SNAPSHOT_SECONDS_BUSY
        self.snapshot_bytes = SNAPSHOT_BYTES
        self._unsnapped = 0  # log records this object wrote since its last snapshot
        self._unsnapped_since = 0.0
        self._wal_ino = -1  # the log's inode and size when the current transaction began
        self._wal_size = 0
        #: the log's preallocated zeros run short: the committer extends it after answering. The
        #: ``_committed`` of the commit that asked: a snapshot another thread wrote meanwhile (a
        #: stopping proxy's last one, which empties the log) is not extended behind its back
        self._extend: tuple[Any, int, LedgerState] | None = None
        #: ((state file identity, log inode), end of the log's records, state) after our last commit
        self._committed: tuple[Any, int, LedgerState] | None = None
        self._pending: list[_Slot] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Condition(self._pending_lock)
        self._committer: threading.Thread | None = None
        self._last_commit = 0.0  # time.monotonic() at the end of the last group commit
        self._urgent = 0  # pending operations someone waits on
        self._sleeping = False  # the committer waits longer than lazy_delay: a lazy operation must wake it
        self._in_wait = False  # the committer waits for work (not committing, flushing or sleeping)
        self._kick: asyncio.TimerHandle | None = None  # an event loop's timer that wakes it (``_defer_wake``)
        self._gathered = False  # woken by that timer: the commit delay has passed already
        self._last_busy = False  # the last group commit was made under load (``_busy``): no timer after it
        #: an event loop's timer that wakes the committer for lazy operations nobody else committed
        #: (``_arm_lazy``), and that loop
        self._lazy_kick: tuple[asyncio.TimerHandle, asyncio.AbstractEventLoop] | None = None
        self._waiting = 0  # operations someone waits on, submitted and not answered yet
        self._concurrent_at = float("-inf")  # when one came while another was still waiting
        #: how many calls the owner has in flight (the proxy sets it; see ``_busy``)
        self.siblings: Callable[[], int] | None = None
        self._lazy_since: float | None = None  # when the oldest pending lazy operation came
        self.commit_delay = commit_delay
        self.durability = "overlap"  # see DURABILITY
        self._flush_cond = threading.Condition()  # guards _written/_flushed/_flusher; run-ahead waits on it
        self._flush_queue: queue.SimpleQueue[int] = queue.SimpleQueue()  # records written, for the flusher
        self._flusher: threading.Thread | None = None
        self._written = 0  # overlapped log records written by this object, handed to the flusher, flushed
        self._handed = 0
        self._flushed = 0
        self._flush_error: BaseException | None = None  # the last overlapped flush failed: flush inline
        self.lazy_delay = LAZY_DELAY
        self.idle_exit = IDLE_EXIT
        self.commits = 0  # group commits written by this object, and the operations they carried
        self.operations = 0
        self.owner = Owner.current()

    # -- transactions ------------------------------------------------------------------------
    def _load(self, *, repair: bool = False) -> LedgerState:
        return self._load_end(repair=repair)[0]

    def _load_end(self, *, repair: bool = False) -> tuple[LedgerState, int]:
        """The snapshot plus the log records after it, and where those records end. A writer
        (``repair``, under the lock) also cuts a torn final record and re-appends history lines a
        power loss took from the page cache."""
        tables = self._storage.read()
        if tables is None:
            if self._history.partitions() or self._wal.read()[2]:
                raise LedgerCorrupt(corrupt_message(self.state_path, "the file is missing but history exists"))
            return LedgerState(), 0
        try:
            state = LedgerState.from_tables(tables)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise LedgerCorrupt(corrupt_message(self.state_path, f"unexpected content ({exc!r})")) from None
        records, end, size = self._wal.read()
        for raw in records:
            try:
                record = json.loads(raw)
                if record["lsn"] <= state.lsn:
                    continue  # already in the snapshot (its writer died before emptying the log)
                state.apply_record(record)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                raise LedgerCorrupt(corrupt_message(self.state_path, f"its log {self._wal.path} does not follow it "
                                                                     f"({exc})")) from None
            if repair:
                self._repair_history(record)
        if repair and end < size:
            self._wal.truncate(end)  # a torn final record: that group commit never happened
        problems = state.problems()
        if problems:
            raise LedgerCorrupt(corrupt_message(self.state_path, "; ".join(problems)))
        return state, end

    def _repair_history(self, record: dict[str, Any]) -> None:
        for name, start, lines in record["hist"]:
            data = b"".join(canonical_json(line) + b"\n" for line in lines)
            have = self._history.size(name)
            if have >= start + len(data):
                continue
            if have < start:
                raise LedgerCorrupt(corrupt_message(self.state_path, f"history {name} is shorter than its log says"))
            self._history.truncate(name, start)
            self._history.append_bytes(name, data, durable=False)

    def _replay(self, txn: _Txn) -> None:
        """Apply history written ahead of a state write that never happened (a crashed writer)."""
        st = txn.state
        names = [n for n in self._history.partitions() if st.history_file is None or n >= st.history_file]
        for name in names:
            offset = st.history_size if name == st.history_file else 0
            if self._history.size(name) <= offset:
                continue
            entries, end = self._history.tail_from(name, offset)
            for entry in entries:
                st.apply(entry)
            if end < self._history.size(name):
                self._history.truncate(name, end)  # a torn line: that settle never happened
            st.history_file, st.history_size = name, end
            txn.changed()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Txn]:
        """One transaction under the cross-process lock (tests, tools); operations use :meth:`_run`."""
        with self._lock.hold():
            txn = self._begin()
            yield txn
            self._commit(txn)

    def _begin(self) -> _Txn:
        """Open a transaction (the caller holds the lock). The state this process committed last
        is reused as it is when the state file is still the one it wrote (same inode, size and
        mtime: every write replaces the file) and nothing follows its last record in the log, so
        a busy proxy does not re-parse every open reservation per transaction; any other writer's
        change shows as a new file or a record after ours, and is read."""
        cached = self._committed
        identity = self._storage.identity()
        if (cached is not None and cached[0][0] == identity
                and self._wal.follows(cached[1], cached[0][1]) is False):
            # the state file is the one we wrote (a snapshot or a restore by anyone replaces it, so
            # the log at the path is the file the kept descriptor names) and nothing follows our
            # last record: no ``stat`` of the log (its size is the one we last saw or made)
            ino, size = cached[0][1], self._wal.size
            state, end = cached[2], cached[1]
            fast = True
        else:
            ino, size = self._wal.stat()
            if (cached is not None and cached[0] == (identity, ino)
                    and not self._wal.appended(cached[1], ino, size)):
                state, end = cached[2], cached[1]
            else:
                state, end = self._load_end(repair=True)
            fast = False
        self._wal_ino, self._wal_size = ino, size
        self._committed = None  # the transaction mutates it: valid again only once committed
        txn = _Txn(state, (identity, end))
        at = self._history_at(state) if fast else None
        if at is None:
            self._replay(txn)
        else:
            txn.hist_start = (state.history_file, at)
        return txn

    def _history_at(self, st: LedgerState) -> int | None:
        """The size of the history partition ``st`` points into, when nothing follows the pointer
        (no newer partition, and the partition's size through the descriptor kept open for it is
        the pointer's: one ``fstat`` instead of a ``stat`` of its path, and the append that
        follows needs no ``fstat`` either); None when :meth:`_replay` must look."""
        name = st.history_file
        if name is None:
            return None
        if self._history.newest() != name:
            return None
        at = self._history.kept_size(name)
        return at if at == st.history_size else None

    def _commit(self, txn: _Txn) -> None:
        """Write the transaction: one log record (``txn.log``: the committer's group commits, once a
        snapshot exists) or a snapshot of the whole state, which then empties the log."""
        if not txn.dirty:
            self._committed = ((txn.key[0], self._wal_ino), txn.key[1], txn.state)
            return
        if txn.log and txn.key[0] is not None:
            self._commit_log(txn)
            return
        st = txn.state
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for entry in txn.entries:
            name = max(partition_for(entry["ts"]), st.history_file or "")
            by_partition.setdefault(name, []).append(entry)
        for name in sorted(by_partition):
            st.history_size = self._history.append(name, by_partition[name])
            st.history_file = name
        # a checkpoint-only transaction skips fsync; any other follows the ledger's own setting
        logged = txn.key[1] > 0 if txn.key is not None else False
        durable = None if txn.durable or logged else False
        for name in sorted(st.unsynced):  # appended by log records this snapshot replaces
            self._history.sync(name)
        identity = self._storage.write_canonical(st.canonical_tables(), durable=durable)
        if logged:
            # not flushed: the snapshot is durable (file and folder fsync'd above), and what a power
            # loss could leave of the log is records it holds (``lsn`` at most the snapshot's, which
            # replay skips); the next record's flush makes the truncation durable with it
            self._wal.truncate(0, durable=False)
        st.unsynced.clear()
        self._unsnapped = 0
        self._committed = ((identity, self._wal_ino), 0, st)
        if logged and threading.current_thread() is self._committer:
            self._extend = self._committed  # the committer preallocates the emptied log again

    def _commit_log(self, txn: _Txn) -> None:
        """The durable step of a group commit: one record appended to the log (its one fdatasync
        follows in ``_drain``).

        The history lines are appended first without fsync (readers see them at once; the record
        carries them, so a writer re-appends what a power loss dropped, see :meth:`_load`)."""
        st = txn.state
        by_partition: dict[str, list[dict[str, Any]]] = {}
        current = st.history_file
        for entry in txn.entries:
            name = partition_for(entry["ts"])
            if current is not None and name <= current:
                name = current  # the pointer's own object: ``ledger_json`` keeps its text by identity
            by_partition.setdefault(name, []).append(entry)
        hist = []  # each line serialised once, for its partition and for the record
        for name in sorted(by_partition) if len(by_partition) > 1 else by_partition:
            encoded = [canonical_json(line) for line in by_partition[name]]
            data = b"".join(e + b"\n" for e in encoded)
            hs = txn.hist_start
            end = self._history.append_bytes(name, data, durable=False,
                                             start=hs[1] if hs is not None and hs[0] == name else None)
            # canonical_json([name, start, lines]): a partition name is "YYYY-MM-DD.jsonl"
            hist.append(b'["%s",%d,[%s]]' % (name.encode(), end - len(data), b",".join(encoded)))
            st.history_file, st.history_size = name, end
            st.unsynced.add(name)
        st.lsn += 1
        now_open, touched = st.open, txn.touched
        if touched is not None:
            added = [now_open[i].canonical_json() for i, was in touched.items() if not was and i in now_open]
            dropped = [i for i, was in touched.items() if was and i not in now_open]
        else:
            before = txn.before
            added = [r.canonical_json() for i, r in now_open.items() if i not in before]
            dropped = [i for i in before if i not in now_open]
        ckpt = {i: now_open[i].checkpoint for i in txn.checkpointed if i in now_open and txn.was_open(i)}
        # the members every record has, in canonical (sorted) key order around the wallets' ones
        add, ckpt_json = b",".join(added), canonical_json(ckpt) if ckpt else b"{}"
        drop, hist_json = b",".join(map(json_str, dropped)), b",".join(hist)
        delta = st.wallet_delta() if st.wallets or st.logged_wallets else None
        if delta is None:  # the whole wallets table
            record = b'{"add":[%s],"ckpt":%s,"drop":[%s],"hist":[%s],"lsn":%d,"top":%s}' % (
                add, ckpt_json, drop, hist_json, st.lsn, st.top_json())
        else:  # only the wallets added, changed or gone since the last record
            gone, changed = delta
            record = (b'{"add":[%s],"ckpt":%s,"drop":[%s],"gone":[%s],"hist":[%s],"ledger":%s,"lsn":%d,'
                      b'"wallets":{%s}}' % (add, ckpt_json, drop, b",".join(map(json_str, gone)), hist_json,
                                            st.ledger_json(), st.lsn, b",".join([m for _name, m in changed])))
        # written here; flushed by ``_drain`` (before or after answering, see DURABILITY)
        end = self._wal.append([record], durable=False, ino=self._wal_ino, end=txn.key[1])
        if delta is not None or st.wallets:
            st.logged(delta)  # (a failed append leaves the state to be read again: see ``_begin``)
        txn.flush = txn.durable and self._wal.durable
        self._committed = ((txn.key[0], self._wal.ino), end, st)
        if self._wal_size - end < PREALLOCATE_LOW:
            self._extend = self._committed  # the next records would grow the file: extend it after answering
        if not self._unsnapped:
            self._unsnapped_since = time.monotonic()
        self._unsnapped += 1

    def compact(self) -> None:
        """Write a snapshot of the state and empty the log (off the hot path: the committer calls it
        every ``snapshot_records`` records or ``snapshot_seconds``; any process may)."""
        try:
            with self._lock.hold():
                txn = self._begin()
                if txn.key[1] > 0 or txn.dirty:
                    txn.changed()
                self._commit(txn)
        finally:
            self._unsnapped = 0  # written, or written by another process; a failure retries with the next record

    def _snapshot_due(self) -> bool:
        if not self._unsnapped:
            return False
        committed = self._committed
        return (self._unsnapped >= self.snapshot_records or time.monotonic() >= self._snapshot_at()
                or (committed is not None and committed[1] >= self.snapshot_bytes))

    def _snapshot_at(self) -> float:
        """When the time rule makes a snapshot due (``time.monotonic()``): ``snapshot_seconds`` after
        the oldest record it lacks, ``snapshot_seconds_busy`` when the last commit was under load
        (there the records and bytes bounds come first)."""
        return self._unsnapped_since + (self.snapshot_seconds_busy if self._last_busy else self.snapshot_seconds)

    def _run(self, op: Callable[[_Txn], Any]) -> Any:
        """Run ``op`` in a transaction, sharing it with the operations other threads submit meanwhile.

        Group commit: whichever thread gets the lock runs every pending operation in one
        transaction (one read, one history append, one fsync'd state write), so concurrent calls
        cost about one disk round trip instead of one each. Each operation still sees and
        changes the state atomically, in submission order.
        """
        slot = _Slot(op)
        with self._pending_lock:
            self._pending.append(slot)
        with self._lock.thread_lock:
            if not slot.done:
                self._drain()
        return slot.outcome()

    def _enqueue(self, slot: _Slot, lazy: bool) -> None:
        with self._wake:
            self._pending.append(slot)
            if not lazy:
                self._urgent += 1
                slot.urgent = True
                if self._waiting:
                    self._concurrent_at = time.monotonic()  # others are arriving: waiting can gather
                self._waiting += 1
                if self._defer_wake(slot):
                    return
            else:
                if self._lazy_since is None:
                    self._lazy_since = time.monotonic()
                if self._committer is not None and (not self._sleeping or self._arm_lazy(slot)):
                    return  # the committer will see it within lazy_delay without being woken now
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, name="pouch-ledger", daemon=True)
                self._committer.start()
            self._wake.notify()

    def _defer_wake(self, slot: _Slot) -> bool:
        """(``_wake`` held.) Under load, an admission from an event loop wakes a waiting committer
        ``commit_delay`` later, from that loop (one timer per commit), instead of at once: woken at
        once it would only sleep the delay (to gather), a thread switch and a GIL hand-off more
        per commit on a CPU-bound event loop. True when the wake-up is scheduled."""
        if self._kick is not None:
            return True  # one is scheduled: this admission is committed with it
        fut = slot.future
        if (self.commit_delay <= 0 or not self._in_wait or not isinstance(fut, asyncio.Future)
                or not self._busy()):
            return False
        self._kick = fut.get_loop().call_later(self.commit_delay, self._kick_committer)
        return True

    def _arm_lazy(self, slot: _Slot) -> bool:
        """(``_wake`` held.) A lazy operation from an event loop while the committer waits without a
        timer (under load it waits for the next admission's wake-up, not on a timer: a timer after
        each commit woke it about once per commit with nothing to do): that loop wakes the committer
        ``lazy_delay`` later if nothing committed the operation meanwhile (under load the next
        admission's commit carries it). One timer at a time. True when the wake-up is scheduled."""
        armed = self._lazy_kick
        if armed is not None and not armed[1].is_closed():
            return True
        fut = slot.future
        if not isinstance(fut, asyncio.Future):
            return False
        loop = fut.get_loop()
        self._lazy_kick = (loop.call_later(self.lazy_delay, self._lazy_due, loop), loop)
        return True

    def _lazy_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer of ``_arm_lazy`` (on the event loop): wake the committer if a lazy operation is
        still pending and due (one that came later than the one it was armed for: wait for it)."""
        with self._wake:
            self._lazy_kick = None
            since = self._lazy_since
            if since is None or not self._sleeping:
                return  # committed meanwhile, or the committer is on a timer (or committing) and sees it
            left = since + self.lazy_delay - time.monotonic()
            if left > 0:
                self._lazy_kick = (loop.call_later(left, self._lazy_due, loop), loop)
            else:
                self._wake.notify()

    def _kick_committer(self) -> None:
        """The timer of ``_defer_wake`` (on the event loop): the delay has passed, commit now."""
        with self._wake:
            self._kick = None
            self._gathered = True
            self._wake.notify()

    def _commit_loop(self) -> None:
        name_thread()  # "pouch-ledger" in top -H and /proc (``threads``)
        while True:
            with self._wake:
                while not self._urgent or self._kick is not None:
                    if self._kick is not None:
                        # an event loop wakes this thread once the commit delay has passed
                        # (``_defer_wake``); one that does not (stalled, stopped) is not waited for long
                        self._in_wait = True
                        if not self._wake.wait(self.commit_delay + self.lazy_delay):
                            self._kick = None
                        self._in_wait = False
                        continue
                    now = time.monotonic()
                    if self._lazy_since is not None:
                        timeout: float | None = self._lazy_since + self.lazy_delay - now
                        if timeout <= 0:
                            break
                    elif self._unsnapped:
                        timeout = self._snapshot_at() - now
                        if timeout <= 0:
                            break  # nothing to commit: write the snapshot that is due
                    else:
                        timeout = None
                    # right after a lone caller's commit its settle is likely: stay on a timer no
                    # longer than lazy_delay, so that a lazy operation need not wake this thread (a
                    # thread switch) to be seen. Not under load: there the next admission's wake-up
                    # comes first and carries the settles, and the timer mostly fired with nothing to
                    # do (a thread switch and a GIL hand-off); a lazy operation from an event loop
                    # arms that loop's timer instead (``_arm_lazy``)
                    recent = self._last_commit + self.lazy_delay - now
                    if (recent > 0 and (timeout is None or recent < timeout)
                            and (not self._last_busy or self._handed < self._written)):
                        timeout = recent
                    self._sleeping = timeout is None or timeout > self.lazy_delay
                    self._in_wait = True
                    woke = self._wake.wait(self.idle_exit if timeout is None else timeout)
                    self._in_wait = self._sleeping = False
                    if not woke and self._handed < self._written:
                        self._hand_flush()  # a record whose loop never turned: flushed within lazy_delay
                    if (timeout is None and not woke and not self._urgent and self._lazy_since is None
                            and not self._unsnapped):
                        # idle: end the thread (the next submission starts another), so a
                        # ledger dropped by its owner (pouch_home changed) leaves none behind
                        self._committer = None
                        return
                gathered, self._gathered = self._gathered, False
            busy = self._busy()
            if busy:
                # under load the committer flushes each record itself, after answering (so each
                # commit gathers what arrives during a flush plus ``commit_delay``, as before, and
                # no other thread has to win the GIL from a CPU-bound event loop per commit)
                self._await_flush(0)
                if self.commit_delay > 0 and not gathered:  # woken by ``_defer_wake``: gathered already
                    time.sleep(self.commit_delay)
            else:
                # a lone caller's next admission does not wait for the previous flush (the flusher
                # thread's): the log may run one record ahead of it (at most two records written
                # and not yet flushed)
                self._await_flush(1)
            self._last_busy = busy
            with self._lock.thread_lock:
                self._drain(as_record=True, flush_here=busy)
            if self._snapshot_due():
                with contextlib.suppress(Exception):  # the log stays durable; the next commit retries
                    self.compact()
            if self._extend is not None:
                with contextlib.suppress(Exception):  # records still go in; the file grows meanwhile
                    self.preallocate()

    def preallocate(self) -> None:
        """Extend the log with zeros when few follow its records (``ledger_wal``): after answering,
        off the commit path, under the lock (the zeros go after the file's end, never over a record
        another process appends meanwhile)."""
        wanted, self._extend = self._extend, None
        with self._lock.hold():
            cached = self._committed
            if cached is None or cached is not wanted:
                return  # another thread committed since (the next record asks again if it needs to)
            ino, size = self._wal.stat()
            if cached[0][1] != ino or self._wal.appended(cached[1], ino, size):
                return  # another process wrote: it extends the log when it needs to
            # not flushed here: the next record's flush writes the zeros and the new size with it
            # (once per chunk), and no thread waits on a flush of its own meanwhile
            self._wal.preallocate(cached[1], ino=ino)

    def _drain(self, *, as_record: bool = False, flush_here: bool = False) -> None:
        """Run every pending operation in one transaction; the caller holds the thread lock.
        ``as_record``: commit as one log record (the committer) instead of a snapshot;
        ``flush_here``: an overlapped flush runs in this thread, after answering."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._urgent, self._lazy_since = 0, None
        if not batch:
            return
        flush = False
        try:
            self._lock.acquire_file()
            try:
                txn = self._begin()
                txn.log = as_record
                for s in batch:
                    try:
                        s.result = s.op(txn)
                    except Exception as exc:  # one bad operation does not fail the others
                        s.error = exc
                self._commit(txn)
                flush = txn.flush
            finally:
                self._lock.release_file()
            self.commits += 1
            self.operations += len(batch)
        except Exception as exc:  # the load or the commit failed: nothing of the batch happened
            for s in batch:
                s.error = exc
        finally:
            self._last_commit = time.monotonic()
            answered = sum(s.urgent for s in batch)
            if answered:
                with self._pending_lock:
                    self._waiting -= answered
            if flush and (self.durability == "strict" or self._flush_error is not None):
                # a refusal or an error made nothing that needs the disk: answered first
                later = [s for s in batch if s.error is None and not isinstance(s.result, Refusal)]
                _deliver([s for s in batch if s.error is not None or isinstance(s.result, Refusal)])
                try:
                    self._wal.sync()
                    self._flush_error = None
                except Exception as exc:  # not on disk: the admissions fail (closed)
                    for s in later:
                        s.error = exc
                _deliver(later)
            elif flush and not flush_here:
                # a lone caller: its loop hands the record to the flusher thread once the waiters
                # had their turn (the admitted request is on its socket), so no third thread wakes
                # and takes the GIL between this answer and the request leaving
                with self._flush_cond:
                    self._written += 1
                _deliver(batch, after=self._hand_flush)
            else:
                _deliver(batch)
                if flush and flush_here:
                    try:
                        self._wal.sync()
                    except Exception as exc:  # the next commit flushes before answering
                        log.error(f"pouch: flushing the ledger's log {self._wal.path} failed: {exc!r}")
                        self._flush_error = exc

    # -- the overlapped flush (durability "overlap") ---------------------------------------------
    def _hand_flush(self) -> None:
        """Hand the records written so far to the flusher thread (on the event loop after an
        admission's answer; by the committer when it needs them flushed, or at its next wake-up)."""
        with self._flush_cond:
            self._hand_locked()

    def _hand_locked(self) -> None:
        """(``_flush_cond`` held.) The flusher thread is started on demand; it blocks on a C-level
        queue, so a put wakes it without Python-level lock traffic."""
        if self._handed >= self._written:
            return
        self._handed = self._written
        self._flush_queue.put(self._written)
        if self._flusher is None:
            self._flusher = threading.Thread(target=self._flush_loop, name="pouch-ledger-flush", daemon=True)
            self._flusher.start()

    def _flush_loop(self) -> None:
        """One fdatasync covers every record written before it started."""
        name_thread()
        q = self._flush_queue
        while True:
            try:
                target = q.get(timeout=self.idle_exit)
            except queue.Empty:
                with self._flush_cond:
                    if q.empty():
                        self._flusher = None  # idle: the next record starts another
                        return
                continue
            with contextlib.suppress(queue.Empty):
                while True:  # records written meanwhile: this flush covers them too
                    target = q.get_nowait()
            try:
                self._wal.sync()
            except Exception as exc:  # the next commit flushes before answering, and fails if this recurs
                log.error(f"pouch: flushing the ledger's log {self._wal.path} failed: {exc!r}")
                self._flush_error = exc
            with self._flush_cond:
                self._flushed = target
                self._flush_cond.notify_all()

    def _await_flush(self, behind: int) -> None:
        """Wait until at most ``behind`` overlapped records written by this object are not flushed."""
        with self._flush_cond:
            while self._written - self._flushed > behind:
                self._hand_locked()  # not handed on yet (its loop has not turned): now
                self._flush_cond.wait()

    # -- reads (lock-free: the state file is replaced atomically) -------------------------------
    def snapshot(self) -> LedgerState:
        return self._load()

    def history(
        self, *, since: float | None = None, limit: int | None = None, kinds: Iterable[str] | None = None,
        wallet: str | None = None,
    ) -> list[dict[str, Any]]:
        """Applied history entries, newest first, reading only the partitions needed
        (``wallet``: only entries of calls charged to, or blocked for, that wallet)."""
        st = self.snapshot()
        wanted = set(kinds) if kinds else None
        first = partition_for(since) if since is not None else ""
        out: list[dict[str, Any]] = []
        for name in reversed(self._history.partitions()):
            if st.history_file is None or name > st.history_file:
                continue  # not applied yet
            if name < first:
                break
            limit_size = st.history_size if name == st.history_file else None
            for entry in reversed(self._history.read_partition(name, limit_size)):
                if since is not None and entry["ts"] < since:
                    continue
                if (wanted is None or entry["kind"] in wanted) and (wallet is None or entry.get("wallet") == wallet):
                    out.append(entry)
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    def wallet_costs(self, txn: _Txn, name: str, since: float | None) -> list[tuple[float, Decimal]]:
        """``(ts, cost)`` of wallet ``name``'s settles at or after ``since``, as of this transaction."""
        st = txn.state
        first = partition_for(since) if since is not None else ""
        entries: list[dict[str, Any]] = []
        for part in self._history.partitions():
            if part < first or st.history_file is None or part > st.history_file:
                continue
            entries.extend(self._history.read_partition(part, st.history_size if part == st.history_file else None))
        entries.extend(txn.entries)  # applied earlier in this group commit, not on disk yet
        return [(float(e["ts"]), Decimal(e["cost"])) for e in entries
                if e.get("kind") == "settle" and e.get("wallet") == name and (since is None or e["ts"] >= since)]

    def restore_backup(self) -> Path:
        """Put the last good copy of the state back (the corrupt file is kept beside it)."""
        backup = self.state_path.with_name(self.state_path.name + ".bak")
        with self._lock.hold():
            tables = AtomicJSONStorage(backup).read()  # must itself be valid
            if self.state_path.exists():
                kept = self.state_path.with_name(f"{self.state_path.name}.corrupt-{int(time.time())}")
                os.replace(self.state_path, kept)
            os.link(backup, self.state_path)
            # log records that do not follow the older snapshot are set aside (their settles are
            # in history beyond its pointer and are replayed from there)
            lsn = int(((tables or {}).get("ledger", {}).get("1", {})).get("lsn", 0))
            after = [r for r in (json.loads(raw) for raw in self._wal.read()[0]) if r["lsn"] > lsn]
            if after and after[0]["lsn"] != lsn + 1:
                os.replace(self._wal.path, self._wal.path.with_name(f"{WAL_FILE}.set-aside-{int(time.time())}"))
            self._committed = None
        return self.state_path
