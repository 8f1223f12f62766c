"""The work inside one group commit (issue 16 §1, ``bench/floor.py``): what a commit no longer
does per admission, and that each shortcut writes exactly what the long way wrote."""

from __future__ import annotations

import json
import os
import random
from datetime import UTC, datetime
from decimal import Decimal as D

from pouch_addon import ledger_rules, ledger_store
import pytest

from pouch_addon.budget import Ledger, LedgerState, Reservation, Wallet
from pouch_addon.ledger_store import FileLock, HistoryLog, canonical_json


def _admit_and_settle(ledger: Ledger, rounds: int) -> None:
    """``bench/floor.py``'s loop: each commit carries one admission and the previous one's settle."""
    prev = None
    for _ in range(rounds):
        if prev is not None:
            ledger.submit(ledger.settle_op(prev, D("0.001"), details={"output_tokens": 5}), lazy=True)
        prev = ledger.submit(ledger.reserve_op(D("0.01"), {"model": "m", "wallet": "default"})).result(timeout=10).id


def test_canonical_json_builds_no_encoder_per_call(monkeypatch):
    made = []
    real = json.JSONEncoder.__init__

    def counting(self, *a, **k):
        made.append(1)
        real(self, *a, **k)

    monkeypatch.setattr(json.JSONEncoder, "__init__", counting)
    value = {"b": [1.5, None, True, "é\"\n"], "a": {"z": float("nan"), "y": 1e300, "x": -0.0}, "c": 7}
    for _ in range(3):
        assert canonical_json(value) == json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    assert len(made) == 3  # json.dumps's, above; canonical_json made none


def test_canonical_json_refuses_what_json_refuses():
    for bad in (D("1"), object(), {1j: 1}):
        try:
            canonical_json(bad)
        except TypeError:
            continue
        raise AssertionError(f"{bad!r} was serialised")


def test_a_log_record_formats_its_tables_without_building_them(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("100"))
    ledger.add_wallet("app", D("5"), period="daily", rpm=10)
    _admit_and_settle(ledger, 2)
    calls = []
    real = LedgerState.to_tables_without_open
    monkeypatch.setattr(LedgerState, "to_tables_without_open", lambda self: calls.append(1) or real(self))
    _admit_and_settle(ledger, 3)
    assert calls == []
    raw = ledger._wal.read()[0][-1]
    record = json.loads(raw)
    assert canonical_json(record) == raw
    tables = json.loads(canonical_json(real(ledger.snapshot())))
    # the ledger table, and no wallet: none changed (a record names only the wallets that did)
    assert (record["ledger"], record["wallets"], record["gone"]) == (tables["ledger"], {}, [])


def test_top_json_is_the_canonical_tables():
    st = LedgerState(budget=D("12.5"), spent=D("0.000123"), requests=3, blocked=1, flagged=2, paused=True,
                     seq=9, history_file=None, history_size=0, lsn=4)
    for history_file, wallets in ((None, {}), ("2026-12-07.jsonl", {"a": Wallet("a", D("3"), "daily", rpm=5,
                                                                                  expires=1.5e9, created=1.7e9)})):
        st.history_file, st.history_size, st.wallets = history_file, 1234, wallets
        st.paused = not st.paused
        assert st.top_json() == canonical_json(st.to_tables_without_open())


def test_timestamps_are_formatted_as_datetime_formats_them(monkeypatch):
    rng = random.Random(16)
    cases = ([rng.uniform(0, 2.5e11) for _ in range(20000)] + [rng.uniform(1.6e9, 2e9) for _ in range(20000)]
             + [86400 * n - d for n in range(1, 400) for d in (1e-7, 4e-7, 5e-7, 0.0005)]
             + [0.0, 0.9999995, 1.7e9 + 0.0005, -1.5])
    for ts in cases:
        dt = datetime.fromtimestamp(ts, UTC)
        assert ledger_rules._iso(ts) == dt.isoformat(timespec="milliseconds").replace("+00:00", "Z"), ts
        assert ledger_rules.partition_for(ts) == dt.strftime("%Y-%m-%d") + ".jsonl", ts


def test_a_settle_on_the_same_day_builds_no_datetime(monkeypatch):
    ledger_rules._iso(1.7e9)  # this day is cached
    made = []

    class Counting:
        @staticmethod
        def fromtimestamp(*a, **k):
            made.append(a)
            return datetime.fromtimestamp(*a, **k)

    monkeypatch.setattr(ledger_rules, "datetime", Counting)
    assert ledger_rules._iso(1.7e9 + 60.25) == "2023-11-14T22:14:20.250Z"
    assert ledger_rules.partition_for(1.7e9 + 1) == "2023-11-14.jsonl"
    assert made == []


def test_a_group_commit_opens_no_file(tmp_path, monkeypatch):
    """The lock file and the history partition stay open between commits (the log already did)."""
    ledger = Ledger(tmp_path)
    ledger.snapshot_seconds = 3600  # a snapshot (a new state file) is not a group commit
    ledger.set_budget(D("100"))
    _admit_and_settle(ledger, 3)
    opened = []
    real = os.open

    def counted(path, *a, **k):
        if os.fspath(path).startswith(str(tmp_path)):  # not another test's lingering ledger
            opened.append(os.fspath(path))
        return real(path, *a, **k)
    monkeypatch.setattr(os, "open", counted)
    _admit_and_settle(ledger, 5)
    assert opened == []
    assert ledger.verify() == []
    assert (ledger.status().requests, ledger.status().in_flight) == (6, 2)


def test_a_forked_child_takes_the_ledger_lock_on_its_own_descriptor(tmp_path):
    """An flock belongs to the open file: a child using its parent's kept descriptor would take a
    lock its parent holds."""
    lock = FileLock(tmp_path / "ledger.lock")
    with lock.thread_lock:
        lock.acquire_file()
        try:
            pid = os.fork()
            if pid == 0:  # the child: the parent holds the lock, so it must not get it
                got = lock.acquire_file(blocking=False)
                os._exit(1 if got else 0)
            _, status = os.waitpid(pid, 0)
        finally:
            lock.release_file()
    assert os.waitstatus_to_exitcode(status) == 0
    assert lock.acquire_file(blocking=False)
    lock.release_file()


def test_a_history_partition_removed_or_replaced_while_open_is_written_anew(tmp_path):
    hist = HistoryLog(tmp_path / "history")
    name = "2026-12-07.jsonl"
    assert hist.append_bytes(name, b"one\n", durable=False) == 4
    os.unlink(hist.path(name))
    assert hist.append_bytes(name, b"two\n", durable=False) == 4
    assert hist.path(name).read_bytes() == b"two\n"
    other = tmp_path / "other"
    other.write_bytes(b"x\n")
    os.replace(other, hist.path(name))
    assert hist.append_bytes(name, b"three\n", durable=False) == 8
    assert hist.path(name).read_bytes() == b"x\nthree\n"
    ledger_store.HistoryLog.truncate(hist, name, 2)  # another writer's cut: O_APPEND writes at the end
    assert hist.append_bytes(name, b"four\n", durable=False) == 7
    assert hist.path(name).read_bytes() == b"x\nfour\n"


def test_a_reservation_is_formatted_around_its_owners_cached_json(monkeypatch):
    from pouch_addon.budget import Owner, Reservation

    owner = Owner(4242, "123456", "host-é")
    made = []
    real = Owner.to_dict
    monkeypatch.setattr(Owner, "to_dict", lambda self: made.append(1) or real(self))
    cases = [Reservation("a1", D("0.0100"), 1.7e9 + 0.123, owner, {"model": "m", "wallet": "w", "x": ["ü", 1.5]}),
             Reservation("b\"2", D("3"), 1700000000, owner, {}, {"final_cost": "0.1", "tokens": 5}),
             Reservation("c3", D("0"), 0.5, owner, {"local": True})]
    for res in cases:
        assert res.canonical_json() == canonical_json(res.to_dict())
    assert len(made) == 1 + len(cases)  # the cache's one, and the reference's above
    assert LedgerState().reserved == D("0")
    st = LedgerState(open={r.id: r for r in cases})
    assert st.reserved == D("3.0100")


def test_a_wallets_reserved_is_kept_as_reservations_come_and_go_not_scanned():
    """A wallet's admission asks for its reserved sum (the gate twice): kept per wallet name as
    reservations open, settle, are replaced or removed, equal to a scan of every open one after
    each change, rebuilt by copies and loads, and checked by ``problems``."""
    from pouch_addon.budget import Owner, Wallet

    owner = Owner(4242, "123456", "host")
    rng = random.Random(8)
    st = LedgerState(budget=D("1000"))
    for name in ("a", "b"):
        st.wallets[name] = Wallet(name, D("500"), "daily")
    st.reserve(D("0.25"), res_id="first", owner=owner, now=1.7e9, wallet="label")
    assert st.open.by_wallet is None  # kept only once asked: a ledger without wallets never asks
    names = ["a", "b", "label", None]
    for i in range(400):
        op = rng.random()
        if op < 0.5 or not st.open:
            st.reserve(D(rng.randint(1, 999)) / 1000, res_id=f"r{i}", owner=owner, now=1.7e9 + i,
                       wallet=rng.choice(names), meta=rng.choice([None, {"wallet": 7}, {"wallet": "b"}]))
        elif op < 0.8:
            st.apply(st.settle_entry(rng.choice(list(st.open)), D("0.0001"), now=1.7e9 + i))
        elif op < 0.9:
            st.open.pop(rng.choice(list(st.open)))
        else:
            rid = rng.choice(list(st.open))
            st.open[rid] = ledger_rules.Reservation(rid, D("0.5"), 1.0, owner, {"wallet": rng.choice(["a", "c"])})
        for name in ("a", "b", "c", "label", "none"):
            assert st.wallet_reserved(name) == st.scan_wallet_reserved(name), (i, name)
    assert st.problems() == [] and st.open.by_wallet  # (some are open)
    import copy
    import pickle
    for other in (copy.deepcopy(st), pickle.loads(pickle.dumps(st)), LedgerState.from_tables(st.to_tables())):
        assert other.wallet_reserved("a") == st.wallet_reserved("a") and other.open.by_wallet == st.open.by_wallet
    drifted = copy.deepcopy(st)
    drifted.wallet_reserved("a")
    drifted.open.by_wallet["a"] = (D("7"), 1)  # a sum that drifted
    assert "a wallet's reserved is not the sum of its open reservations" in drifted.problems()
    st.open.clear()
    assert st.open.by_wallet == {} and st.wallet_reserved("a") == (D(0), 0)


def test_reserved_is_a_running_total_that_stays_the_sum_of_the_open_reservations():
    """``reserved`` is kept as reservations come and go (every admission asks for it), not
    re-summed over every open reservation; each way of changing ``open`` keeps it right, and
    ``problems`` sees a total that drifted from the sum."""
    from pouch_addon.budget import Owner

    owner = Owner(4242, "123456", "host")
    rng = random.Random(7)
    st = LedgerState(budget=D("1000"))
    assert type(st.open) is ledger_rules.OpenReservations
    for i in range(300):
        op = rng.random()
        if op < 0.5 or not st.open:
            st.reserve(D(rng.randint(1, 999)) / 1000, res_id=f"r{i}", owner=owner, now=1.7e9 + i)
        elif op < 0.8:
            rid = rng.choice(list(st.open))
            st.apply(st.settle_entry(rid, D("0.0001"), now=1.7e9 + i))
        elif op < 0.9:
            st.open.pop(rng.choice(list(st.open)))
        else:
            del st.open[rng.choice(list(st.open))]
        assert st.reserved == sum((r.amount for r in st.open.values()), D(0))
    st.open.update({"u": ledger_rules.Reservation("u", D("0.5"), 1.0, owner)})
    st.open["u"] = ledger_rules.Reservation("u", D("0.25"), 1.0, owner)  # replaced: counted once
    st.open.setdefault("v", ledger_rules.Reservation("v", D("0.125"), 1.0, owner))
    st.open.popitem()
    assert st.reserved == sum((r.amount for r in st.open.values()), D(0)) and st.problems() == []
    import copy
    import pickle
    for other in (copy.deepcopy(st), pickle.loads(pickle.dumps(st)), LedgerState.from_tables(st.to_tables())):
        assert other.reserved == st.reserved and other.open == st.open
    st.open.clear()
    assert st.reserved == 0
    st.open.reserved += D("1")  # a total that drifted
    assert "reserved is not the sum of the open reservations" in st.problems()


def test_a_commit_writes_the_reservations_it_opened_and_closed_from_what_it_touched(tmp_path):
    """The log record's ``add``/``drop``/``ckpt`` come from the ids the transaction touched
    (``OpenReservations.touched``), and say what comparing every open id before and after said."""
    ledger = Ledger(tmp_path)
    ledger.snapshot_records, ledger.snapshot_seconds = 10**6, 10**6
    ledger.set_budget(D("10"))
    keep = [ledger.submit(ledger.reserve_op(D("0.01"))).result().id for _ in range(5)]
    gone = ledger.submit(ledger.reserve_op(D("0.01"))).result().id
    ledger.submit(ledger.checkpoint_op({keep[0]: {"tokens": 1}}), lazy=True)
    ledger.submit(ledger.settle_op(gone, D("0.005")), lazy=True)
    new = ledger.submit(ledger.reserve_op(D("0.02"))).result().id
    record = json.loads(ledger._wal.read()[0][-1])
    assert [r["id"] for r in record["add"]] == [new]
    assert record["drop"] == [gone] and record["ckpt"] == {keep[0]: {"tokens": 1}}
    st = Ledger(tmp_path).snapshot()  # another process replays the records
    assert set(st.open) == {*keep, new} and st.reserved == D("0.07") and st.problems() == []


def _committer_calls(ledger: Ledger, monkeypatch, rounds: int) -> list[str]:
    """The system calls the committer thread makes in ``rounds`` steady group commits (its
    ``flock``, ``stat``, ``fstat``, ``pread``, ``write`` and ``pwrite``), named by what they touch."""
    import fcntl
    import threading
    calls: list[str] = []
    assert ledger._committer is not None  # started by the rounds before: the same thread commits these

    def wrap(mod, name):
        real = getattr(mod, name)

        def counted(*a, **k):
            # this ledger's committer only: another test's ledger may still have its own thread
            if threading.current_thread() is ledger._committer:
                what = a[0] if isinstance(a[0], str) else ""
                calls.append(f"{name} {os.path.basename(what)}".strip())
            return real(*a, **k)
        monkeypatch.setattr(mod, name, counted)

    for name in ("stat", "fstat", "pread", "write", "pwrite"):
        wrap(os, name)
    wrap(fcntl, "flock")
    _admit_and_settle(ledger, rounds)
    monkeypatch.undo()
    return calls


def test_a_steady_group_commit_stats_neither_the_log_nor_the_history_it_appended(tmp_path, monkeypatch):
    """A commit that finds nothing changed reads the log's length field through its kept
    descriptor (no ``stat`` of the log: the state file's identity says the log is the same file)
    and the history partition's size through its kept descriptor (one ``fstat`` before the append,
    none after): 8 system calls per commit, from 10 (each one a GIL hand-off on a busy proxy)."""
    ledger = Ledger(tmp_path)
    ledger.snapshot_seconds = 3600  # no compaction inside the count
    ledger.set_budget(D("100"))
    _admit_and_settle(ledger, 3)
    ledger._await_flush(0)
    calls = _committer_calls(ledger, monkeypatch, 5)
    assert "stat ledger.wal" not in calls
    assert len(calls) == 7 + 4 * 8, calls  # the first commit carries no settle: no history write
    assert calls[-8:] == ["flock", "stat state.json", "pread", "stat history", "fstat", "write", "pwrite", "flock"]
    assert ledger.verify() == [] and ledger.status().in_flight == 2


def test_history_a_killed_writer_left_behind_is_replayed_despite_the_cached_state(tmp_path):
    """A writer killed between its history append and its log record leaves settle lines after
    the history pointer and nothing else: a committer whose cached state is otherwise current sees
    them through the partition's size and applies them."""
    mine, other = Ledger(tmp_path), Ledger(tmp_path)
    mine.set_budget(D("1"))
    r = mine.submit(mine.reserve_op(D("0.5"))).result()
    mine.submit(mine.reserve_op(D("0.1"))).result()  # the committer's cache is current

    def killed(*a, **k):
        raise OSError("killed before the log record")

    other._wal.append = killed  # type: ignore[method-assign]
    with pytest.raises(OSError):
        other.submit(other.settle_op(r.id, D("0.3"))).result()
    r2 = mine.submit(mine.reserve_op(D("0.2"))).result()
    assert isinstance(r2, Reservation)
    st = mine.status()
    assert st.spent == D("0.3") and st.in_flight == 2 and mine.verify() == []
    assert r.id not in Ledger(tmp_path).snapshot().open


def test_a_log_another_process_extended_is_not_extended_again_per_commit(tmp_path):
    """The log's size a commit uses without a ``stat`` (``RecordLog.size``) follows another
    process's extension once a commit has seen that process's records, so the committer does not
    go to extend an already long enough log after every commit."""
    from pouch_addon.ledger_wal import PREALLOCATE_CHUNK
    mine, other = Ledger(tmp_path, durable=False), Ledger(tmp_path, durable=False)
    for ledger in (mine, other):
        ledger.snapshot_seconds = ledger.snapshot_records = 10 ** 6  # the log is never emptied here
    mine.set_budget(D("1000"))
    mine.submit(mine.reserve_op(D("0.01"))).result()
    wal = tmp_path / "ledger.wal"
    while wal.stat().st_size < 2 * PREALLOCATE_CHUNK:  # another process's records fill the first chunk
        other.submit(other.reserve_op(D("0.01"))).result()
    extends = []
    real = mine.preallocate
    mine.preallocate = lambda: extends.append(1) or real()  # type: ignore[method-assign]
    for _ in range(3):
        mine.submit(mine.reserve_op(D("0.01"))).result()
    assert extends == []
    assert mine.verify() == []


def test_timestamps_of_seconds_formatted_before_come_from_the_cache_as_datetime_formats_them(monkeypatch):
    """``_iso`` keeps the text of recent seconds: many timestamps in few seconds (hits), and more
    seconds than it keeps (the cache is emptied and filled again), all as datetime writes them."""
    monkeypatch.setattr(ledger_rules, "_SECONDS_KEPT", 8)
    rng = random.Random(20)
    base = 1.78e9
    for ts in [base + rng.randrange(20) + rng.random() for _ in range(5000)] + [base + 0.9999996, base + 86399.9996]:
        dt = datetime.fromtimestamp(ts, UTC)
        assert ledger_rules._iso(ts) == dt.isoformat(timespec="milliseconds").replace("+00:00", "Z"), ts
    assert len(ledger_rules._seconds) <= 8


def test_top_json_follows_every_change_of_budget_and_partition_across_states():
    """``top_json`` keeps the texts of the last budget and partition: two states taking turns, each
    changing them (to new objects, equal or not, and back), still write their canonical tables."""
    rng = random.Random(7)
    states = [LedgerState(budget=D("100")), LedgerState(budget=D("1E+2"), history_file="2026-12-07.jsonl")]
    budgets = [D("100"), D("100.00"), D("1E+6"), D("0"), D("0.000001"), D("12.5")]
    files = [None, "2026-12-07.jsonl", "2026-12-08.jsonl", "a+b@c.jsonl"]
    for _ in range(300):
        st = rng.choice(states)
        if rng.random() < 0.5:
            st.budget = D(str(rng.choice(budgets)))  # a new object every time
        if rng.random() < 0.3:
            st.history_file = rng.choice(files)
        st.spent, st.seq = D(rng.randint(0, 10 ** 6)).scaleb(-6), st.seq + 1
        assert st.top_json() == canonical_json(st.to_tables_without_open())


def test_top_json_writes_each_wallet_as_its_canonical_tables_after_any_change():
    """Each wallet's JSON is kept while its fields are the same objects: any change (a settled
    spend, a new window, a budget, an equal value of another type, 1 for 1.0) is written anew."""
    rng = random.Random(11)
    st = LedgerState(budget=D("100"))
    for name in ("b", "a+x", "z@y", "c"):
        st.wallets[name] = Wallet(name, D("5"), "daily", rpm=10, expires=1.5e9, created=1.7e9)
    changes = [
        lambda w: setattr(w, "spent", w.spent + D("0.001")),
        lambda w: setattr(w, "spent", D(str(w.spent))),  # an equal amount, a new object
        lambda w: setattr(w, "window", rng.choice(["2026-12-07", "2026-12-08", "total"])),
        lambda w: setattr(w, "budget", rng.choice([D("5"), D("5.0"), D("7.25")])),
        lambda w: setattr(w, "rpm", rng.choice([None, 10, 20])),
        lambda w: setattr(w, "tpm", rng.choice([None, 1000])),
        lambda w: setattr(w, "expires", rng.choice([None, 1.5e9, 1500000000, 1.6e9])),
        lambda w: setattr(w, "created", rng.choice([1.7e9, 1700000000, 0.0])),
        lambda w: setattr(w, "secret_hash", rng.choice([None, "ab" * 32, 'a"b\u00e9'])),
        lambda w: setattr(w, "rpm", rng.choice([True, 7])),  # a type pouch never gives: the long way
        lambda w: setattr(w, "created", rng.choice([float("nan"), 1.7e9 + 0.25])),
        lambda w: setattr(w, "name", rng.choice([w.name, w.name + "@x"])),
        lambda w: setattr(w, "period", rng.choice(["daily", "weekly", "total"])),
    ]
    for _ in range(400):
        rng.choice(changes)(st.wallets[rng.choice(sorted(st.wallets))])
        if rng.random() < 0.05:
            name = rng.choice(["d", "a", "e-1"])
            st.wallets[name] = Wallet(name, D("1"))
        assert st.top_json() == canonical_json(st.to_tables_without_open())


def test_remaining_for_is_the_wallet_status_remaining():
    rng = random.Random(3)
    st = LedgerState(budget=D("100"))
    st.wallets["w"] = Wallet("w", D("5"), "daily", window="2000-01-01", spent=D("1.5"))
    from pouch_addon.ledger_owner import Owner
    owner = Owner.current()
    now = 1.78e9
    for i in range(60):
        wallet = rng.choice(["w", "other", None])
        st.reserve(D("0.01") * rng.randint(1, 9), res_id=f"r{i}", owner=owner, now=now, wallet=wallet)
        for name in ("w", "other", None):
            for at in (now, now + 86400 * rng.randint(0, 2)):
                glob, wrem = st.remaining_for(name, at)
                assert glob == st.remaining
                assert wrem == (st.wallet_status(name, at).remaining if name == "w" else None)


def test_a_wallet_copied_or_loaded_writes_its_own_json():
    """A wallet's kept JSON goes with it through copy, deepcopy and the state's tables, and a
    change to the copy leaves the original's JSON as it was."""
    import copy
    st = LedgerState(budget=D("100"))
    st.wallets["a"] = Wallet("a", D("5"), "daily", rpm=10, window="2026-12-07", created=1.7e9)
    before = st.top_json()
    for clone in (copy.deepcopy(st), LedgerState.from_tables(json.loads(canonical_json(st.to_tables())))):
        assert clone.top_json() == before
        clone.wallets["a"].spent += D("0.5")
        clone.wallets["a"].window = "2026-12-08"
        assert clone.top_json() == canonical_json(clone.to_tables_without_open()) != before
        assert st.top_json() == before == canonical_json(st.to_tables_without_open())
    w = copy.copy(st.wallets["a"])
    w.budget = D("6")
    assert w.canonical_json() == canonical_json(w.to_dict()) != st.wallets["a"].canonical_json()


def test_a_settled_wallet_is_formatted_around_its_new_spend(monkeypatch):
    """A settle changes only the spend of its wallet: the wallet's JSON is its kept text around
    the spend's new digits (no name, period or budget formatted again), and any other change
    formats it whole."""
    w = Wallet("app", D("5"), "daily", rpm=10, expires=1.5e9, created=1.7e9, window="2026-12-07")
    w.table_member()
    real_json_str = ledger_rules.json_str

    def no_json_str(text):
        raise AssertionError(f"formatted {text!r} again")

    monkeypatch.setattr(ledger_rules, "json_str", no_json_str)
    for spent in (D("0.001"), D("1.5"), D("0E-6"), D("12345.000001")):
        w.spent = spent
        assert w.canonical_json() == canonical_json(w.to_dict())
    monkeypatch.setattr(ledger_rules, "json_str", real_json_str)
    w.window = "2026-12-08"
    assert w.canonical_json() == canonical_json(w.to_dict())
    w.spent += D("0.25")
    assert w.table_member() == b'"app":' + canonical_json(w.to_dict())


def test_a_settle_line_writes_its_reservations_amount_text_and_duration_as_before(monkeypatch):
    """The settle line reuses the amount text its reservation's JSON wrote (one ``usd_str`` per
    settle: the cost's), a reservation whose amount was replaced since is written anew, and the
    duration is ``round(now - created, 3)`` exactly, halfway cases included."""
    from pouch_addon.budget import Owner

    owner = Owner(4242, "123456", "host")
    st = LedgerState(budget=D("1000"))
    res = st.reserve(D("0.0100"), res_id="r1", owner=owner, now=1.7e9)
    res.canonical_json()
    calls = []
    real_usd_str = ledger_rules.usd_str
    monkeypatch.setattr(ledger_rules, "usd_str", lambda v: calls.append(v) or real_usd_str(v))
    entry = st.settle_entry("r1", D("0.005"), now=1.7e9 + 2.5)
    assert (entry["reserved"], calls) == ("0.01", [D("0.005")])
    res.amount = D("0.5")  # replaced after its JSON was written: written anew
    assert st.settle_entry("r1", D("0.005"), now=1.7e9 + 2.5)["reserved"] == "0.5"
    rng = random.Random(12)
    created = 1.7e9 + 0.123
    durations = ([rng.uniform(0, 5) for _ in range(3000)] + [rng.uniform(0, 1e7) for _ in range(1000)]
                 + [k / 16 for k in range(200)] + [k * 0.0005 for k in range(2000)]
                 + [k / 1000 + d for k in range(500) for d in (-1e-12, 0.0, 1e-12, 0.0005)] + [-1.0, 2e10])
    for d in durations:
        res.created = created
        got = st.settle_entry("r1", D("0.005"), now=created + d)["duration_s"]
        want = round(max(0.0, (created + d) - created), 3)
        assert repr(got) == repr(want), d
