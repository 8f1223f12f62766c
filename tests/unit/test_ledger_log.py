"""The committer's group commits: one record appended to the write-ahead log, the state file a
snapshot written now and then; readers see snapshot + log; torn records and lost history lines."""

from decimal import Decimal as D

from pouch_addon.budget import Ledger, Reservation
from pouch_addon.ledger_store import WAL_FILE


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
    size = wal.stat().st_size
    assert size > 0
    ledger.submit(ledger.settle_op(r.id, D("0.1"))).result()
    assert wal.stat().st_size > size and ledger.state_path.read_bytes() == snapshot
    other = Ledger(tmp_path)  # another process: snapshot + log
    st = other.status()
    assert (st.spent, st.in_flight, st.requests) == (D("0.1"), 0, 1)
    assert [e["id"] for e in other.history()] == [r.id] and other.verify() == []
    ledger.compact()
    assert wal.stat().st_size == 0 and ledger.state_path.read_bytes() != snapshot
    assert Ledger(tmp_path).status() == st


def test_a_torn_final_record_is_ignored_then_cut(tmp_path):
    ledger = _quiet(Ledger(tmp_path))
    ledger.set_budget(D("1"))
    r = ledger.submit(ledger.reserve_op(D("0.25"))).result()
    wal = tmp_path / WAL_FILE
    good = wal.read_bytes()
    ledger.submit(ledger.settle_op(r.id, D("0.2"))).result()
    torn = wal.read_bytes()[: len(good) + (len(wal.read_bytes()) - len(good)) // 2]
    wal.write_bytes(torn)  # the settle's record was half written when its writer died
    reader = Ledger(tmp_path)
    assert reader.status().in_flight == 1 and reader.status().spent == 0
    with reader.transaction():
        pass
    assert wal.stat().st_size == 0 or wal.read_bytes() == good
    st = reader.status()
    assert st.budget == st.remaining + st.reserved + st.spent and reader.verify() == []


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
