"""The committer's group commits: one record appended to the write-ahead log, the state file a
snapshot written now and then; readers see snapshot + log; torn records and lost history lines."""

from decimal import Decimal as D

from pouch_addon.budget import Ledger, Reservation
import time

import pytest

from pouch_addon.ledger_store import WAL_FILE
from pouch_addon.ledger_wal import PREALLOCATE_CHUNK


def _quiet(ledger: Ledger) -> Ledger:
    ledger.snapshot_records, ledger.snapshot_seconds = 10**6, 10**6  # snapshots only when asked
    return ledger


def test_a_group_commit_appends_one_log_record_and_leaves_the_snapshot(tmp_path):
    ledger = _quiet(Ledger(tmp_path))
    ledger.set_budget(D("1"))  # a direct call writes a snapshot
    snapshot = ledger.state_path.read_bytes()
    r = ledger.submit(ledger.reserve_op(D("0.25"), {"model": "m"})).result()
    assert isinstance(r, Reservation)
    assert ledger.state_path.read_bytes() == snapshot  # no state rewrite on the hot path
    wal = tmp_path / WAL_FILE
    assert wal.stat().st_size > 0 and len(ledger._wal.read()[0]) == 1
    ledger.submit(ledger.settle_op(r.id, D("0.1"))).result()
    assert len(ledger._wal.read()[0]) == 2 and ledger.state_path.read_bytes() == snapshot
    other = Ledger(tmp_path)  # another process: snapshot + log
    st = other.status()
    assert (st.spent, st.in_flight, st.requests) == (D("0.1"), 0, 1)
    assert [e["id"] for e in other.history()] == [r.id] and other.verify() == []
    ledger.compact()
    assert ledger._wal.read() == ([], 0, 0) and ledger.state_path.read_bytes() != snapshot
    assert Ledger(tmp_path).status() == st


@pytest.mark.parametrize("tail", ["cut", "zeros"])
def test_a_torn_final_record_is_ignored_then_cut(tmp_path, tail):
    """The settle's record half written when its writer died: the file ends there, or (the log
    is preallocated, the record written in place) zeros follow it."""
    ledger = _quiet(Ledger(tmp_path))
    ledger.set_budget(D("1"))
    r = ledger.submit(ledger.reserve_op(D("0.25"))).result()
    wal = tmp_path / WAL_FILE
    good = ledger._wal.read()[1]
    ledger.submit(ledger.settle_op(r.id, D("0.2"))).result()
    data = wal.read_bytes()
    end = ledger._wal.read()[1]
    cut = good + (end - good) // 2
    with ledger._lock.hold():  # its committer may still extend the log (under the lock)
        wal.write_bytes(data[:cut] + (bytes(len(data) - cut) if tail == "zeros" else b""))
    reader = Ledger(tmp_path)
    assert reader.status().in_flight == 1 and reader.status().spent == 0
    with reader.transaction():
        pass
    # cut at the torn record (or emptied by the snapshot this transaction wrote)
    assert reader._wal.read()[1:] in ((0, 0), (good, good)) and len(reader._wal.read()[0]) <= 1
    st = reader.status()
    assert st.budget == st.remaining + st.reserved + st.spent and reader.verify() == []


def test_a_preallocated_log_is_read_by_every_process_and_survives_compaction(tmp_path):
    """The committer extends the log with zeros after answering; records then go in place (the
    file does not grow), another process still sees each one, and a snapshot empties the log."""
    ledger = _quiet(Ledger(tmp_path))
    ledger.set_budget(D("1"))
    ids = [ledger.submit(ledger.reserve_op(D("0.01"))).result().id for _ in range(3)]
    wal = tmp_path / WAL_FILE
    deadline = time.monotonic() + 20
    while wal.stat().st_size < PREALLOCATE_CHUNK and time.monotonic() < deadline:
        time.sleep(0.01)  # the committer extends the log after answering the first commit
    assert wal.stat().st_size >= PREALLOCATE_CHUNK
    other = Ledger(tmp_path)
    assert set(other.snapshot().open) == set(ids)
    with other.transaction() as txn:  # another process's commit (a snapshot)
        other.settle_op(ids[0], D("0.005"))(txn)
    more = ledger.submit(ledger.reserve_op(D("0.01"))).result().id  # sees the other's snapshot
    assert set(Ledger(tmp_path).snapshot().open) == {ids[1], ids[2], more}
    ledger.submit(ledger.reserve_op(D("0.01"))).result()
    with other.transaction() as txn:
        pass  # reads the first ledger's records (after the zeros check) and commits nothing
    assert len(other.snapshot().open) == 4 and other.verify() == [] and ledger.verify() == []


def test_history_lines_a_power_loss_dropped_are_appended_again_from_the_log(tmp_path):
    ledger = _quiet(Ledger(tmp_path))
    ledger.set_budget(D("1"))
    r = ledger.submit(ledger.reserve_op(D("0.25"))).result()
    ledger.submit(ledger.settle_op(r.id, D("0.2"))).result()
    (part,) = (tmp_path / "history").iterdir()
    line = part.read_bytes()
    part.write_bytes(b"")  # appended without fsync: lost with the page cache, the log record kept
    other = Ledger(tmp_path)
    with other.transaction():
        pass  # the next writer re-appends the lines its log records hold
    assert part.read_bytes() == line
    assert other.status().spent == D("0.2") and other.verify() == []


# -- wallets in log records: only those that changed ----------------------------------------------

def _wallet_op(change):
    """A wallet change committed by the committer (the CLI's wallet commands write a snapshot)."""
    def op(txn):
        change(txn.state)
        txn.changed()
    return op


def _tables(st) -> tuple:
    """The state's tables, the open reservations by id (a snapshot does not keep their order)."""
    from pouch_addon.ledger_store import canonical_json
    return canonical_json(st.to_tables_without_open()), sorted(r.canonical_json() for r in st.open.values())


def _committed_tables(ledger: Ledger) -> tuple:
    return _tables(ledger._committed[2])


def test_a_log_record_names_only_the_wallets_that_changed(tmp_path):
    import json
    ledger = _quiet(Ledger(tmp_path))
    ledger.set_budget(D("10"))
    for name in ("a", "b", "c+d"):
        ledger.add_wallet(name, D("5"), period="daily")
    r = ledger.submit(ledger.reserve_op(D("0.1"), wallet="b")).result(timeout=10)  # the first: every wallet
    r2 = ledger.submit(ledger.reserve_op(D("0.1"), wallet="b")).result(timeout=10)
    ledger.submit(ledger.settle_op(r.id, D("0.05"))).result(timeout=10)
    ledger.submit(_wallet_op(lambda st: st.wallets.pop("a"))).result(timeout=10)
    records = [json.loads(raw) for raw in ledger._wal.read()[0]]
    assert sorted(records[0]["top"]["wallets"]) == ["a", "b", "c+d"]
    assert (records[1]["wallets"], records[1]["gone"]) == ({}, [])  # a reservation changes no wallet
    assert list(records[2]["wallets"]) == ["b"] and records[2]["wallets"]["b"]["spent"] == "0.05"
    assert (records[3]["wallets"], records[3]["gone"]) == ({}, ["a"])
    reader = Ledger(tmp_path)
    assert _tables(reader.snapshot()) == _committed_tables(ledger)
    assert sorted(w.name for w in reader.wallets()) == ["b", "c+d"] and reader.verify() == []
    ledger.submit(ledger.settle_op(r2.id, D("0.1"))).result(timeout=10)
    assert _tables(Ledger(tmp_path).snapshot()) == _committed_tables(ledger)


def test_records_naming_changed_wallets_replay_to_the_state_whole_tables_give(tmp_path, monkeypatch):
    """Random commits (admissions and settles charged to wallets, wallets added, changed, removed,
    a day passing, a snapshot now and then): after each, a reader replaying snapshot + log has the
    committer's state; and a log written with whole wallet tables (as an older pouch writes it)
    replays to the same state as one naming only the changed wallets."""
    import random
    from pouch_addon import ledger_rules
    from pouch_addon.budget import LedgerState, Wallet
    results = {}
    for whole in (False, True):
        rng = random.Random(5)
        ledger_rules._ids.seed(5)  # the same reservation ids in both runs
        clock = [1.78e9]
        home = tmp_path / str(whole)
        ledger = _quiet(Ledger(home, clock=lambda: clock[0]))
        with monkeypatch.context() as m:
            if whole:
                m.setattr(LedgerState, "wallet_delta", lambda self: None)
            ledger.set_budget(D("100"))
            ledger.add_wallet("w1", D("50"), period="daily")
            opened = []
            for step in range(120):
                roll = rng.random()
                wallet = rng.choice(["w1", "w2", "w3", "label", None])
                if roll < 0.35 or not opened:
                    r = ledger.submit(ledger.reserve_op(D("0.01") * rng.randint(1, 20), wallet=wallet)).result(10)
                    if isinstance(r, Reservation):
                        opened.append(r.id)
                elif roll < 0.7:
                    ledger.submit(ledger.settle_op(opened.pop(rng.randrange(len(opened))),
                                                   D("0.001") * rng.randint(0, 30))).result(10)
                elif roll < 0.78:
                    name = rng.choice(["w2", "w3"])
                    ledger.submit(_wallet_op(lambda st, name=name: st.wallets.setdefault(
                        name, Wallet(name, D("7"), "daily", created=clock[0], window="2026-05-28")))).result(10)
                elif roll < 0.84:
                    ledger.submit(_wallet_op(lambda st: st.wallets.pop(rng.choice(["w2", "w3"]), None))).result(10)
                elif roll < 0.9:
                    def top_up(st):
                        for w in st.wallets.values():
                            w.budget += D("1")
                    ledger.submit(_wallet_op(top_up)).result(10)
                elif roll < 0.95:
                    clock[0] += 86400 * rng.random()
                else:
                    ledger.compact()
                assert _tables(Ledger(home).snapshot()) == _committed_tables(ledger), step
            ledger._await_flush(0)
        assert Ledger(home).verify() == []
        results[whole] = _committed_tables(ledger)
    assert results[False] == results[True]


def test_under_load_snapshots_follow_records_and_bytes_not_the_one_second_timer(tmp_path):
    """Issue 16: under load a snapshot (three fsyncs, ~21 wake-ups of the committer) is due after
    ``snapshot_records`` records, ``snapshot_bytes`` of them or ``snapshot_seconds_busy``, not every
    ``snapshot_seconds``; a lone caller's ledger keeps the short timer."""
    ledger = Ledger(tmp_path, commit_delay=0.001)
    ledger.snapshot_seconds = 0.01
    ledger.set_budget(D("10"))
    ledger.siblings = lambda: 5  # a crowd of calls in flight: under load
    snapshots: list[int] = []
    real = ledger.compact
    ledger.compact = lambda: (snapshots.append(1), real())[1]  # type: ignore[method-assign]
    for _ in range(4):
        assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20), Reservation)
        time.sleep(0.05)  # past snapshot_seconds between commits
    assert snapshots == [] and len(ledger._wal.read()[0]) == 4  # the log holds the records
    ledger.snapshot_records = 5  # the records bound
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20), Reservation)
    for _ in range(2000):
        if snapshots and ledger._wal.read()[0] == []:
            break
        time.sleep(0.005)
    assert snapshots == [1] and ledger._wal.read()[0] == []
    ledger.snapshot_records, ledger.snapshot_bytes = 10**6, 1  # the bytes bound
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20), Reservation)
    for _ in range(2000):
        if len(snapshots) == 2 and ledger._wal.read()[0] == []:
            break
        time.sleep(0.005)
    assert len(snapshots) == 2 and ledger._wal.read()[0] == []
    assert ledger.status().reserved == D("0.6") and ledger.verify() == []


def test_a_snapshot_does_not_flush_the_emptied_log(tmp_path, monkeypatch):
    """The snapshot is durable before the log is emptied, and replay skips the records it holds, so
    the truncation needs no fdatasync of its own (a flush is ~4.5 wake-ups of the committer under
    load): the next record's flush carries it."""
    import os
    ledger = _quiet(Ledger(tmp_path))
    ledger.set_budget(D("1"))
    r = ledger.submit(ledger.reserve_op(D("0.25"))).result(timeout=20)
    ledger._await_flush(0)  # the admission's own overlapped flush is done before counting
    wal = os.path.realpath(tmp_path / WAL_FILE)
    flushed: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    ledger.compact()
    assert wal not in flushed and ledger._wal.read() == ([], 0, 0)
    ledger.submit(ledger.settle_op(r.id, D("0.1"))).result(timeout=20)
    ledger._await_flush(0)
    assert wal in flushed  # the next record's flush
    other = Ledger(tmp_path)
    assert other.status().spent == D("0.1") and other.verify() == []


def test_a_snapshot_another_thread_writes_while_the_committer_finishes_is_not_preallocated_again(tmp_path):
    """A stopping proxy compacts the ledger in a worker thread as soon as its last settle is
    answered (``Metering.done``), while the committer may still be finishing that commit: the log
    the snapshot emptied stays empty (a pouch from before the preallocated log reads it), though
    the committer's last record (a fresh log has no zeros yet) and the snapshot both asked for zeros."""
    import threading

    from pouch_addon import ledger_local

    ledger = _quiet(Ledger(tmp_path, durable=False))
    ledger.set_budget(D("1"))
    answered, compacted = threading.Event(), threading.Event()
    real_due = ledger_local.LocalStore._snapshot_due

    def due(self):  # the committer, between answering and its preallocation
        if threading.current_thread() is self._committer and not compacted.is_set():
            answered.set()
            compacted.wait(10)
        return real_due(self)

    try:
        ledger_local.LocalStore._snapshot_due = due
        ledger.submit(ledger.reserve_op(D("0.01"))).result()
        assert answered.wait(10)
        ledger.compact()  # the stopping proxy's last snapshot, from another thread
        compacted.set()
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline and (tmp_path / WAL_FILE).stat().st_size == 0:
            time.sleep(0.01)
    finally:
        ledger_local.LocalStore._snapshot_due = real_due
    assert (tmp_path / WAL_FILE).stat().st_size == 0
    assert Ledger(tmp_path).status().in_flight == 1 and Ledger(tmp_path).verify() == []
