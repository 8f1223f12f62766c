"""The ledger's committer thread, decided reservations and the committed-state cache."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal as D

import pytest

from ledger_contract import arrivals_together_wait, lone_caller_never_waits, record_delays
from pouch_addon.budget import Ledger, LedgerState, NotOpen, Refusal, Reservation


def _count_commits(ledger: Ledger) -> list[int]:
    """Wrap ``_commit`` to record how many history entries + state changes each commit carried."""
    sizes: list[int] = []
    real = ledger._commit

    def counting(txn):
        sizes.append(1)
        return real(txn)

    ledger._commit = counting  # type: ignore[method-assign]
    return sizes


def test_submitted_operations_resolve_their_futures_in_order(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    futs = [ledger.submit(ledger.reserve_op(D("0.1"), {"n": i})) for i in range(12)]
    results = [f.result(timeout=10) for f in futs]
    assert [type(r) for r in results[:10]] == [Reservation] * 10
    assert all(isinstance(r, Refusal) and r.reason == "insufficient" for r in results[10:])
    settles = [ledger.submit(ledger.settle_op(r.id, D("0.05"))) for r in results[:10]]
    assert [f.result(timeout=10)["cost"] for f in settles] == ["0.05"] * 10
    st = ledger.status()
    assert (st.spent, st.in_flight, st.remaining, st.blocked) == (D("0.5"), 0, D("0.5"), 2)
    assert ledger.verify() == []


def test_an_operation_error_reaches_its_future_only(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    bad = ledger.submit(ledger.settle_op("nope", D("0.1")))
    good = ledger.submit(ledger.reserve_op(D("0.1")))
    with pytest.raises(NotOpen):
        bad.result(timeout=10)
    assert isinstance(good.result(timeout=10), Reservation)


def test_a_busy_ledger_groups_operations_into_fewer_commits(tmp_path):
    """With a commit delay, operations arriving while the ledger is busy share commits."""
    ledger = Ledger(tmp_path, commit_delay=0.02)
    ledger.set_budget(D("100"))
    commits = _count_commits(ledger)
    start = threading.Barrier(8)
    futs: list = []
    lock = threading.Lock()

    def client() -> None:
        start.wait()
        for _ in range(10):
            f = ledger.submit(ledger.reserve_op(D("0.01")))
            with lock:
                futs.append(f)
            f.result(timeout=10)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(futs) == 80 and all(isinstance(f.result(), Reservation) for f in futs)
    assert len(commits) < 40, f"80 operations took {len(commits)} commits"
    assert ledger.status().in_flight == 80


def test_decided_amount_is_fitted_inside_the_transaction(tmp_path):
    """A callable amount sees the balance it is reserved against, may refuse, and may add to meta."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    seen: list[D] = []

    def half_of_remaining(state: LedgerState, now: float):
        seen.append(state.remaining)
        if state.remaining < D("0.2"):
            meta["why"] = "budget"
            return Refusal("insufficient", D("0.2"), state.remaining)
        meta["fitted"] = str(state.remaining / 2)
        return state.remaining / 2

    results = []
    for _ in range(4):
        meta = {"endpoint": "/v1/chat/completions"}
        results.append(ledger.reserve(half_of_remaining, meta))
    assert seen == [D("1"), D("0.5"), D("0.25"), D("0.125")]
    assert [r.amount for r in results[:3]] == [D("0.5"), D("0.25"), D("0.125")]
    assert results[0].meta["fitted"] == "0.5"
    assert isinstance(results[3], Refusal)
    block = ledger.history(kinds=("block",))[0]
    assert block["why"] == "budget" and block["endpoint"] == "/v1/chat/completions"


def test_another_writer_is_seen_despite_the_cached_state(tmp_path):
    mine, other = Ledger(tmp_path), Ledger(tmp_path)
    mine.set_budget(D("1"))
    r = mine.reserve(D("0.6"))
    assert isinstance(r, Reservation)
    other.add_budget(D("1"))  # another process tops up between two of my transactions
    r2 = mine.reserve(D("1.2"))
    assert isinstance(r2, Reservation), r2
    other.settle(r.id, D("0.1"))
    with pytest.raises(NotOpen):
        mine.settle(r.id, D("0.1"))
    assert mine.status().spent == D("0.1") and mine.verify() == []


def test_a_failed_commit_leaves_no_trace_in_the_cached_state(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    real = ledger._storage.write_canonical

    def fail_once(*a, **kw):
        ledger._storage.write_canonical = real
        raise OSError("disk full")

    ledger._storage.write_canonical = fail_once
    with pytest.raises(OSError):
        ledger.reserve(D("0.9"))
    # the failed reservation is not in the state the next transaction starts from
    r = ledger.reserve(D("1"))
    assert isinstance(r, Reservation), r
    assert ledger.status().in_flight == 1 and ledger.verify() == []


def test_the_state_written_is_the_canonical_serialisation(tmp_path):
    """canonical_tables (cached per reservation) == canonical_json(to_tables()), byte for byte,
    through reservations opening, checkpoints changing, settles and wallets."""
    from pouch_addon.ledger_store import canonical_json

    ledger = Ledger(tmp_path)
    ledger.set_budget(D("10"))
    ledger.add_wallet("app", D("5"), period="daily")
    ids = [ledger.reserve(D("0.01") * (i + 1), {"endpoint": "/v1/x", "n": i, "ü": "é"}, wallet="app").id
           for i in range(12)]
    state = ledger.snapshot()
    assert state.canonical_tables() == canonical_json(state.to_tables())
    for round_ in range(3):
        ledger.checkpoint({i: {"output_tokens": round_ * 10 + k, "running_cost": "0.001"} for k, i in enumerate(ids[::2])})
        ledger.settle(ids.pop(), D("0.001"))
        state = ledger.snapshot()
        assert state.canonical_tables() == canonical_json(state.to_tables())
        # what the committer wrote is canonical JSON of its tables (the checksum covers those bytes)
        raw = (tmp_path / "state.json").read_bytes()
        written = raw[raw.index(b'"tables":') + len(b'"tables":'):-1]
        assert written == canonical_json(json.loads(written))
        assert Ledger(tmp_path).verify() == []
    # a cached fragment follows a checkpoint replaced on the live object
    res = next(iter(state.open.values()))
    before = res.canonical_json()
    res.checkpoint = {"output_tokens": 999}
    assert res.canonical_json() != before and b"999" in res.canonical_json()


def test_lazy_operations_ride_with_the_next_commit_or_wait_at_most_lazy_delay(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    ledger.lazy_delay = 0.3
    commits = _count_commits(ledger)
    r = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=10)
    assert len(commits) == 1
    settle = ledger.submit(ledger.settle_op(r.id, D("0.05")), lazy=True)
    time.sleep(0.1)
    assert not settle.done() and len(commits) == 1  # a lazy settle alone does not commit yet
    r2 = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=10)  # ...it rides with this one
    assert settle.done() and settle.result()["cost"] == "0.05"
    assert isinstance(r2, Reservation) and len(commits) == 2
    t0 = time.monotonic()
    late = ledger.submit(ledger.settle_op(r2.id, D("0.01")), lazy=True)
    assert late.result(timeout=10)["cost"] == "0.01"
    waited = time.monotonic() - t0
    assert 0.25 <= waited < 5, waited  # committed on its own after about lazy_delay
    assert len(commits) == 3 and ledger.status().spent == D("0.06") and ledger.verify() == []


class _CountingLoop(asyncio.SelectorEventLoop):
    """A real event loop that counts the wake-ups other threads ask of it."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def _write_to_self(self):  # what call_soon_threadsafe and the committer's delivery call
        self.wakeups += 1
        return super()._write_to_self()


def test_async_submissions_are_delivered_with_one_loop_wakeup_per_commit(tmp_path):
    ledger = Ledger(tmp_path, commit_delay=0.02)
    ledger.set_budget(D("1"))
    commits = _count_commits(ledger)

    async def main():
        # the first commit starts at once; the other 11 wait out the commit delay together
        futs = [ledger.submit_async(ledger.reserve_op(D("0.1"), {"n": i})) for i in range(12)]
        bad = ledger.submit_async(ledger.settle_op("nope", D("0.1")))
        results = await asyncio.gather(*futs)
        with pytest.raises(NotOpen):  # an error reaches its own future only
            await bad
        return results

    loop = _CountingLoop()
    try:
        results = loop.run_until_complete(main())
    finally:
        loop.close()
    assert [type(r) for r in results[:10]] == [Reservation] * 10
    assert all(isinstance(r, Refusal) for r in results[10:])
    assert len(commits) <= 3
    assert loop.wakeups == len(commits)  # not one per operation (13)


def test_an_async_waiter_that_gave_up_does_not_break_the_commit(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))

    async def main():
        gone = ledger.submit_async(ledger.reserve_op(D("0.1"), {"n": "gone"}))
        gone.cancel()  # its flow was killed while the commit ran
        kept = await ledger.submit_async(ledger.reserve_op(D("0.2")))
        return kept

    kept = asyncio.run(main())
    assert isinstance(kept, Reservation)
    # the cancelled waiter's reservation was still made: the orphan rule or its owner settles it
    assert ledger.status().in_flight == 2


def test_an_idle_committer_thread_ends_and_the_next_submission_starts_another(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.idle_exit = 0.05
    ledger.set_budget(D("1"))
    first = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=5)
    thread = ledger._committer
    assert thread is not None and isinstance(first, Reservation)
    thread.join(timeout=5)  # nothing more to do: it ends by itself
    assert not thread.is_alive() and ledger._committer is None
    # a lazy operation alone (nobody waits) still gets a committer, and is committed
    ledger.submit(ledger.settle_op(first.id, D("0.05")), lazy=True).result(timeout=5)
    assert ledger._committer is not None and ledger._committer is not thread
    st = ledger.status()
    assert (st.in_flight, st.spent) == (0, D("0.05"))


def test_a_cancelled_admission_gives_its_reservation_back(tmp_path):
    from pouch_addon.addons.core import reserve  # the shell's wrapper around reserve_op

    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))

    async def main():
        waiter = asyncio.ensure_future(reserve(ledger, ledger.reserve_op(D("0.3"), {"n": "gone"})))
        await asyncio.sleep(0)  # the operation is queued for the committer
        waiter.cancel()  # its flow was killed before the commit came back
        with pytest.raises(asyncio.CancelledError):
            await waiter
        kept = await reserve(ledger, ledger.reserve_op(D("0.2"), {"n": "kept"}))
        deadline = time.monotonic() + 5
        while ledger.status().in_flight > 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return kept

    kept = asyncio.run(main())
    st = ledger.status()
    assert isinstance(kept, Reservation)
    assert [r.id for r in ledger.open_reservations()] == [kept.id]  # the cancelled one is not held
    assert (st.spent, st.reserved) == (D("0"), D("0.2"))
    (entry,) = ledger.history(kinds=("settle",))
    assert entry["n"] == "gone" and entry["status"] == "abandoned" and entry["cost"] == "0"


def test_a_lone_caller_never_waits_for_a_commit_delay(tmp_path, monkeypatch):
    lone_caller_never_waits(Ledger(tmp_path, commit_delay=0.05), monkeypatch)


def test_operations_arriving_together_make_the_committer_wait_to_gather(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path, commit_delay=0.05)
    arrivals_together_wait(ledger, monkeypatch, ledger._lock.thread_lock)


class _SlowDisk:
    """``os.fdatasync`` held until ``release()``: a flush the test can keep in progress."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        import os
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = fail
        self.calls = 0
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            self.calls += 1
            if self.fail:
                raise OSError(5, "Input/output error (test)")
            self.entered.set()
            self.gate.wait(60)
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def release(self) -> None:
        self.gate.set()


def test_a_reservation_is_answered_once_written_and_flushed_while_its_request_is_in_flight(tmp_path, monkeypatch):
    """Issue 20, default durability (``overlap``): the reservation's log record is written (so a
    killed process cannot lose it) before the answer, and its fdatasync runs after the answer."""
    ledger = Ledger(tmp_path)  # the default durability
    ledger.set_budget(D("1"))
    disk = _SlowDisk(monkeypatch)
    try:
        res = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20)  # the flush has not finished
        assert isinstance(res, Reservation)
        assert disk.entered.wait(20) and not disk.gate.is_set()  # its flush runs meanwhile
        assert res.id in Ledger(tmp_path).snapshot().open  # already in the log another process reads
        # the next admission does not wait for the flush in progress either
        res2 = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20)
        assert isinstance(res2, Reservation) and not disk.gate.is_set()
    finally:
        disk.release()
    ledger._await_flush(0)
    assert set(Ledger(tmp_path).snapshot().open) == {res.id, res2.id}


def test_strict_durability_flushes_before_answering_but_a_refusal_never_waits_for_the_disk(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    ledger.durability = "strict"
    ledger.set_budget(D("1"))
    disk = _SlowDisk(monkeypatch)
    try:
        with ledger._lock.thread_lock:  # both in one group commit
            admitted = ledger.submit(ledger.reserve_op(D("0.1")))
            refused = ledger.submit(ledger.reserve_op(D("5")))
        r = refused.result(timeout=20)  # a 402 does not depend on a flush
        assert isinstance(r, Refusal) and r.reason == "insufficient"
        assert disk.entered.wait(20)
        assert not admitted.done()  # strict: the reservation is answered only once it is on disk
    finally:
        disk.release()
    assert isinstance(admitted.result(timeout=20), Reservation)


def test_a_failed_overlapped_flush_makes_the_next_commit_flush_first_and_fail_closed(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    disk = _SlowDisk(monkeypatch, fail=True)
    first = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20)  # written; its flush fails later
    assert isinstance(first, Reservation)
    ledger._await_flush(0)
    assert disk.calls == 1
    with pytest.raises(OSError):  # the disk cannot be trusted: no admission until a flush succeeds
        ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20)
    disk.fail = False
    disk.release()
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20), Reservation)
    assert ledger.verify() == []


def test_a_settle_right_after_a_commit_does_not_wake_the_committer(tmp_path):
    """The settle of a call just answered rides with the next admission: the committer, which
    just committed, is on a lazy_delay timer and sees it without a wake-up (a thread switch)."""
    ledger = Ledger(tmp_path)
    ledger.lazy_delay = 30.0  # however slow this machine is today, the settle comes within it
    ledger.set_budget(D("1"))
    r = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=10)
    wakes: list[int] = []
    real = ledger._wake.notify
    ledger._wake.notify = lambda n=1: (wakes.append(n), real(n))[1]  # type: ignore[method-assign]
    settle = ledger.submit(ledger.settle_op(r.id, D("0.05")), lazy=True)
    assert wakes == []
    r2 = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=10)  # this one wakes it, and carries the settle
    assert wakes == [1] and settle.result(timeout=10)["cost"] == "0.05" and isinstance(r2, Reservation)


def test_a_log_record_is_canonical_json(tmp_path):
    """The record is assembled from pieces serialised once each; it must still be exactly the
    canonical serialisation of what it holds."""
    from pouch_addon.ledger_store import canonical_json
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    r = ledger.submit(ledger.reserve_op(D("0.1"), {"model": "gpt-4o", "note": "é \" \n"})).result(timeout=10)
    ledger.submit(ledger.checkpoint_op({r.id: {"output_tokens": 3}}), lazy=True)
    with ledger._lock.thread_lock:  # the settle, a checkpoint and a new reservation in one record
        ledger.submit(ledger.settle_op(r.id, D("0.05"), details={"why": "ünïcode \u2028"}), lazy=True)
        last = ledger.submit(ledger.reserve_op(D("0.2")))
    last.result(timeout=10)
    records = [json.loads(raw) for raw in ledger._wal.read()[0]]
    assert len(records) >= 2 and any(rec["hist"] and rec["drop"] for rec in records)
    for raw in ledger._wal.read()[0]:
        assert raw == canonical_json(json.loads(raw))


def test_under_load_the_flush_in_progress_paces_the_commits(tmp_path, monkeypatch):
    """Operations arriving together: the next commit waits for the previous record's flush (as an
    inline flush did), so it gathers what arrives meanwhile; the requests already admitted are
    not held by that flush."""
    import concurrent.futures
    from pouch_addon import ledger_local
    monkeypatch.setattr(ledger_local, "BUSY_WINDOW", 600.0)
    ledger = Ledger(tmp_path, commit_delay=0.001)
    ledger.set_budget(D("10"))
    disk = _SlowDisk(monkeypatch)
    try:
        with ledger._lock.thread_lock:  # two admissions in flight at once: the ledger is busy
            first = ledger.submit(ledger.reserve_op(D("0.1")))
            second = ledger.submit(ledger.reserve_op(D("0.1")))
        assert isinstance(first.result(timeout=20), Reservation)  # answered, its flush held
        assert isinstance(second.result(timeout=20), Reservation)
        assert disk.entered.wait(20)
        later = [ledger.submit(ledger.reserve_op(D("0.1"))) for _ in range(3)]
        with pytest.raises(concurrent.futures.TimeoutError):
            later[0].result(timeout=1.0)  # not committed while the previous flush runs
    finally:
        disk.release()
    assert all(isinstance(f.result(timeout=20), Reservation) for f in later)
    assert ledger.verify() == []


def test_with_other_calls_in_flight_a_commit_waits_to_gather(tmp_path, monkeypatch):
    """A proxy whose event loop is CPU-bound hands the ledger one admission at a time; the calls
    it has in flight (``siblings``, the gate's count) still say that waiting can gather."""
    ledger = Ledger(tmp_path, commit_delay=0.05)
    ledger.set_budget(D("100"))
    slept = record_delays(monkeypatch)
    in_flight = [1]
    ledger.siblings = lambda: in_flight[0]
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=10), Reservation)
    assert slept == []  # one other call in flight: a lone agent's previous call, not a crowd
    in_flight[0] = 5
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=10), Reservation)
    assert slept == [0.05]


def test_under_load_the_committer_flushes_itself_after_answering(tmp_path, monkeypatch):
    """Busy: no flusher thread has to win the GIL from a CPU-bound event loop per commit; the
    committer answers, then flushes the record itself."""
    import os
    from pouch_addon import ledger_local
    monkeypatch.setattr(ledger_local, "BUSY_WINDOW", 600.0)
    ledger = Ledger(tmp_path, commit_delay=0.001)
    ledger.set_budget(D("10"))
    flushed_by: list[tuple[str, bool]] = []
    real = os.fdatasync
    pending: list = []

    def fdatasync(fd: int) -> None:
        flushed_by.append((threading.current_thread().name, all(f.done() for f in pending)))
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    with ledger._lock.thread_lock:  # two admissions in flight at once: the ledger is busy
        pending[:] = [ledger.submit(ledger.reserve_op(D("0.1"))), ledger.submit(ledger.reserve_op(D("0.1")))]
    [f.result(timeout=20) for f in pending]
    pending[:] = [ledger.submit(ledger.reserve_op(D("0.1")))]
    assert isinstance(pending[0].result(timeout=20), Reservation)
    ledger._await_flush(0)
    assert flushed_by[-1] == ("pouch-ledger", True)  # the committer, once the admission was answered


def test_under_load_an_event_loop_admission_wakes_the_committer_once_the_delay_passed(tmp_path, monkeypatch):
    """Issue 16: busy, an admission from an event loop does not wake the committer at once only for
    it to sleep ``commit_delay`` (a thread switch and a GIL hand-off more per commit on a CPU-bound
    loop): the loop wakes it once the delay has passed, and it commits without sleeping."""
    ledger = Ledger(tmp_path, commit_delay=0.05)
    ledger.set_budget(D("100"))
    slept = record_delays(monkeypatch)
    ledger.siblings = lambda: 5  # a crowd of calls in flight: waiting gathers
    woken: list[str] = []
    real_notify = ledger._wake.notify

    def notify(n: int = 1) -> None:
        woken.append(threading.current_thread().name)
        real_notify(n)

    ledger._wake.notify = notify  # type: ignore[method-assign]

    async def admissions() -> tuple[list[int], list]:
        at_once, results = [], [await ledger.submit_async(ledger.reserve_op(D("0.1")))]  # starts the committer
        slept.clear()
        for _ in range(3):
            for _ in range(2000):  # the committer is back waiting for work (not in a commit)
                if getattr(ledger, "_in_wait", False):
                    break
                await asyncio.sleep(0.005)
            woken.clear()
            futs = [ledger.submit_async(ledger.reserve_op(D("0.1"))) for _ in range(2)]
            at_once.append(len(woken))
            results += await asyncio.gather(*futs)
        return at_once, results

    at_once, results = asyncio.run(admissions())
    assert all(isinstance(r, Reservation) for r in results)
    assert at_once == [0, 0, 0]  # not woken by the submissions themselves
    assert slept == []  # nor did it sleep the delay after waking
    assert ledger.verify() == []


def test_a_failed_flush_under_load_leaves_the_committer_running_and_the_next_commit_fails_closed(tmp_path, monkeypatch):
    """Busy, the committer flushes after answering; when that flush fails it logs and the next
    commit flushes first (and fails). Its logging went through the method's ``log`` flag, a bool:
    the AttributeError ended the committer thread and every later admission hung."""
    import os
    from pouch_addon import ledger_local
    monkeypatch.setattr(ledger_local, "BUSY_WINDOW", 600.0)
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("10"))
    ledger.siblings = lambda: 5  # busy: the committer flushes each record itself
    real, fail = os.fdatasync, [True]

    def fdatasync(fd: int) -> None:
        if fail[0]:
            raise OSError(5, "Input/output error (test)")
        real(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20), Reservation)
    with pytest.raises(OSError, match="Input/output error"):  # flushed before answering now: fails closed
        ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20)
    fail[0] = False
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20), Reservation)


def test_under_load_the_committer_waits_for_work_without_a_timer_and_a_loop_commits_late_settles(tmp_path):
    """Issue 16: after a group commit under load the committer waits for the next admission, not on
    a ``lazy_delay`` timer that mostly fired with nothing to do (a thread switch and a GIL hand-off
    per commit); a settle from an event loop that no admission carries is committed by that loop's
    timer ``lazy_delay`` later (not lost, not waiting for the idle exit)."""
    ledger = Ledger(tmp_path, commit_delay=0.001)
    ledger.lazy_delay = 0.2
    ledger.snapshot_seconds = 600.0  # no snapshot timer either
    ledger.set_budget(D("100"))
    ledger.siblings = lambda: 5  # a crowd of calls in flight: under load
    timed_out: list[float | None] = []
    real_wait = ledger._wake.wait

    def wait(timeout: float | None = None) -> bool:
        woke = real_wait(timeout)
        if not woke and not ledger._urgent and ledger._lazy_since is None:
            timed_out.append(timeout)  # woke with nothing to do
        return woke

    ledger._wake.wait = wait  # type: ignore[method-assign]

    async def calls() -> tuple[list, list, dict]:
        admitted = await asyncio.gather(*[ledger.submit_async(ledger.reserve_op(D("0.1"))) for _ in range(3)])
        timed_out.clear()
        await asyncio.sleep(1.0)  # five lazy_delays with nothing submitted
        idle = list(timed_out)
        t0 = time.monotonic()
        settled = await ledger.submit_async(ledger.settle_op(admitted[0].id, D("0.05")), lazy=True)
        return admitted, idle, {"settled": settled, "waited": time.monotonic() - t0}

    admitted, idle, late = asyncio.run(calls())
    assert all(isinstance(r, Reservation) for r in admitted)
    assert idle == []  # the committer did not wake with nothing to do
    assert late["settled"]["cost"] == "0.05" and late["waited"] < 20  # committed by the loop's timer
    assert ledger.status().spent == D("0.05") and ledger.verify() == []


def test_an_awaited_future_is_completed_by_the_committer_and_a_lazy_one_on_its_loop(tmp_path):
    """The committer completes an awaited operation's future itself (its task resumes in the loop
    iteration the wake-up ends), but a lazy one's on the loop (``_deliver_all``): a lazy future gets
    more than one callback (the settle's own, then ``gather`` at shutdown), and adding a second one
    on the loop while another thread completes the future could lose it."""
    done_in: dict[str, str] = {}

    class Recording(asyncio.Future):
        name = "?"

        def set_result(self, result):
            done_in[self.name] = threading.current_thread().name
            return super().set_result(result)

    class Loop(asyncio.SelectorEventLoop):
        def create_future(self):
            return Recording(loop=self)

    ledger = Ledger(tmp_path, durable=False)
    ledger.set_budget(D("1"))
    first = ledger.reserve(D("0.1"))

    async def main():
        settle = ledger.submit_async(ledger.settle_op(first.id, D("0.05")), lazy=True)
        settle.name = "lazy"
        reserve = ledger.submit_async(ledger.reserve_op(D("0.1")))
        reserve.name = "awaited"
        res = await reserve
        entry = await settle
        return res, entry

    loop = Loop()
    try:
        res, entry = loop.run_until_complete(main())
    finally:
        loop.close()
    assert isinstance(res, Reservation) and entry["cost"] == "0.05"
    assert done_in == {"awaited": "pouch-ledger", "lazy": "MainThread"}
