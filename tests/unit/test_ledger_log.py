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
