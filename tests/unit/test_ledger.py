"""The ledger on disk: atomicity across processes, crash safety, corrupt files, history."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path

import pytest

from pouch_addon.budget import Ledger, LedgerCorrupt, NotOpen, Owner, Refusal, Reservation, partition_for

WORKER = Path(__file__).with_name("ledger_worker.py")


def assert_consistent(ledger: Ledger) -> None:
    st = ledger.snapshot()
    assert st.budget == st.remaining + st.reserved + st.spent
    assert st.reserved >= 0
    assert ledger.verify() == []


def test_new_ledger_is_empty_and_zero_budget_blocks(tmp_path):
    ledger = Ledger(tmp_path)
    assert ledger.status().to_json() == {
        "budget_usd": "0", "spent_usd": "0", "reserved_usd": "0", "remaining_usd": "0",
        "in_flight": 0, "requests": 0, "blocked": 0, "flagged": 0, "paused": False,
    }
    assert isinstance(ledger.reserve(D("0.01")), Refusal)
    assert ledger.status().blocked == 1
    assert_consistent(ledger)


def test_reserve_settle_release_and_history(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("2"))
    a = ledger.reserve(D("0.5"), {"model": "gpt-4o", "endpoint": "/v1/chat/completions"})
    b = ledger.reserve(D("0.5"), {"model": "gpt-4o-mini"})
    assert isinstance(a, Reservation) and isinstance(b, Reservation)
    assert ledger.status().reserved == D("1.0")
    ledger.settle(a.id, D("0.0123"), details={"input_tokens": 10, "output_tokens": 5})
    ledger.release(b.id)
    with pytest.raises(NotOpen):
        ledger.settle(a.id, D("0.0123"))
    st = ledger.status()
    assert (st.spent, st.reserved, st.remaining, st.requests) == (D("0.0123"), 0, D("1.9877"), 2)
    hist = ledger.history()
    assert [e["status"] for e in hist] == ["released", "ok"]  # newest first
    assert hist[1]["model"] == "gpt-4o" and hist[1]["input_tokens"] == 10
    assert hist[1]["reserved"] == "0.5" and hist[1]["cost"] == "0.0123"
    assert_consistent(ledger)


def test_state_and_history_files_are_private(tmp_path):
    ledger = Ledger(tmp_path / "home")
    ledger.set_budget(D("1"))
    r = ledger.reserve(D("0.1"))
    ledger.settle(r.id, D("0.05"))
    assert (tmp_path / "home").stat().st_mode & 0o777 == 0o700
    assert ledger.state_path.stat().st_mode & 0o777 == 0o600
    for f in (tmp_path / "home" / "history").iterdir():
        assert f.stat().st_mode & 0o777 == 0o600


def test_history_since_and_limit(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("10"))
    for i in range(5):
        r = ledger.reserve(D("0.1"))
        ledger.settle(r.id, D("0.01") * (i + 1))
    assert [e["cost"] for e in ledger.history(limit=2)] == ["0.05", "0.04"]
    assert ledger.history(since=time.time() + 60) == []
    assert len(ledger.history(since=time.time() - 60)) == 5


def test_concurrent_processes_never_overspend_or_lose_updates(tmp_path):
    """Six processes hammer a small budget: no overspend, no lost update, invariant holds."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("0.5"))
    reports = [tmp_path / f"report{i}.json" for i in range(6)]
    procs = [
        subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), "60", str(i), "--report", str(reports[i])])
        for i in range(6)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0
    settled = [D(c) for r in reports for c in json.loads(r.read_text())["settled"]]
    refused = sum(json.loads(r.read_text())["refused"] for r in reports)
    st = ledger.status()
    assert st.spent == sum(settled, D(0))  # nothing lost, nothing counted twice
    assert st.requests == len(settled) and st.blocked == refused
    assert st.spent <= st.budget and st.reserved == 0 and st.in_flight == 0
    assert refused > 0  # the budget really was contended
    assert_consistent(ledger)


def test_sigkill_loop_leaves_a_readable_consistent_ledger(tmp_path):
    """Kill writers at random instants; after each kill the ledger reads and the invariant holds."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1000"))
    rng = random.Random(7)
    for i in range(15):
        p = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), "100000", str(i)])
        time.sleep(rng.uniform(0.25, 0.6))  # includes interpreter start-up, then writes
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        st = ledger.snapshot()  # readable, never torn
        assert st.problems() == []
        # a write transaction replays/truncates whatever the dead writer left half-done
        with ledger.transaction():
            pass
        assert_consistent(ledger)
    assert ledger.status().requests > 50  # the writers really did work before dying
    recovered = ledger.recover_orphans()
    st = ledger.status()
    assert st.in_flight == 0 and st.reserved == 0
    assert all(e["status"] == "orphaned" and e["cost"] == e["reserved"] for e in recovered)
    assert st.spent <= st.budget
    assert_consistent(ledger)


def test_orphans_of_live_processes_are_left_alone(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    r = ledger.reserve(D("0.2"))
    assert ledger.recover_orphans() == []  # we are alive
    assert ledger.status().in_flight == 1
    assert isinstance(r, Reservation)


def test_torn_history_line_is_cut_and_its_reservation_stays_open(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    r = ledger.reserve(D("0.2"))
    # a writer died half-way through appending the settle's history line
    part = tmp_path / "history" / partition_for(time.time())
    with open(part, "ab") as fh:
        fh.write(b'{"kind":"settle","id":"' + r.id.encode() + b'","seq":')
    with ledger.transaction():
        pass
    assert part.read_bytes() == b""
    assert ledger.status().in_flight == 1
    assert_consistent(ledger)


def test_history_written_ahead_of_a_lost_state_write_is_replayed(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    r = ledger.reserve(D("0.2"))
    before = ledger.state_path.read_bytes()
    ledger.settle(r.id, D("0.15"))
    ledger.state_path.write_bytes(before)  # as if the process died after the history fsync
    assert ledger.status().in_flight == 1  # readers see the last written state
    with ledger.transaction():
        pass
    st = ledger.status()
    assert (st.in_flight, st.spent, st.requests) == (0, D("0.15"), 1)
    assert_consistent(ledger)


def test_history_partition_listing_sees_other_writers_new_files(tmp_path):
    """The listing is reused while the folder is unchanged, never after another writer added a day."""
    from pouch_addon.ledger_store import HistoryLog

    mine, other = HistoryLog(tmp_path / "h"), HistoryLog(tmp_path / "h")
    mine.append("2026-01-01.jsonl", [{"n": 1}])
    assert mine.partitions() == ["2026-01-01.jsonl"]
    long_ago = time.time_ns() - 60 * 10**9
    os.utime(mine.dir, ns=(long_ago, long_ago))  # the folder settled: its listing may be reused
    assert mine.partitions() == ["2026-01-01.jsonl"]
    assert mine._listing is not None
    other.append("2026-01-02.jsonl", [{"n": 2}])  # another process starts a new day
    assert mine.partitions() == ["2026-01-01.jsonl", "2026-01-02.jsonl"]
    (mine.dir / "2026-01-01.jsonl").unlink()
    assert mine.partitions() == ["2026-01-02.jsonl"]


def test_history_ahead_of_state_in_a_new_partition_is_replayed_after_a_quiet_spell(tmp_path):
    """A writer died after starting a new day's partition: the next transaction replays it,
    although this process had listed the (then quiet) history folder before."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    r = ledger.reserve(D("0.2"))
    hist = tmp_path / "history"
    long_ago = time.time_ns() - 60 * 10**9
    os.utime(hist, ns=(long_ago, long_ago))
    with ledger.transaction():
        pass  # lists the quiet folder and keeps the listing
    before = ledger.state_path.read_bytes()
    Ledger(tmp_path).settle(r.id, D("0.15"))  # another process settles ...
    ledger.state_path.write_bytes(before)  # ... and its state write is lost
    (today,) = hist.iterdir()
    (today.rename(hist / "2999-01-01.jsonl"))  # its line was the first of a new day's partition
    with ledger.transaction():
        pass
    st = ledger.status()
    assert (st.in_flight, st.spent, st.requests) == (0, D("0.15"), 1)
    assert_consistent(ledger)


def test_hand_edited_ledger_is_refused_with_a_way_out(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    ledger.set_budget(D("2"))
    doc = json.loads(ledger.state_path.read_text())
    doc["tables"]["ledger"]["1"]["spent"] = "-5"
    ledger.state_path.write_text(json.dumps(doc))
    with pytest.raises(LedgerCorrupt) as exc:
        ledger.status()
    msg = str(exc.value)
    assert str(ledger.state_path) in msg and "checksum" in msg and "pouch ledger restore" in msg
    with pytest.raises(LedgerCorrupt):
        ledger.reserve(D("0.1"))  # writers refuse too: never replaced by an empty ledger
    assert json.loads(ledger.state_path.read_text())["tables"]["ledger"]["1"]["spent"] == "-5"
    ledger.restore_backup()
    assert ledger.status().budget == D("1")  # the last good copy
    assert list(tmp_path.glob("state.json.corrupt-*"))  # the bad file is kept for inspection


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"format": 1}', b"\x00\x01garbage"])
def test_garbled_ledger_files_are_refused(tmp_path, content):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    ledger.state_path.write_bytes(content)
    with pytest.raises(LedgerCorrupt, match="cannot be read"):
        ledger.status()


def test_missing_state_with_history_is_refused(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    r = ledger.reserve(D("0.1"))
    ledger.settle(r.id, D("0.1"))
    ledger.state_path.unlink()
    with pytest.raises(LedgerCorrupt, match="missing but history exists"):
        ledger.status()


def test_readers_never_see_a_torn_file_while_writers_run(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("100"))
    p = subprocess.Popen([sys.executable, str(WORKER), str(tmp_path), "400", "1"])
    reads = 0
    try:
        while p.poll() is None:
            assert ledger.snapshot().problems() == []
            reads += 1
    finally:
        p.wait(timeout=60)
    assert reads > 10
    assert_consistent(ledger)


def test_a_killed_unreaped_process_counts_as_dead(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    from pouch_addon.ledger_owner import _process_start, owner_alive
    owner = Owner(p.pid, _process_start(p.pid), Owner.current().host)
    assert owner_alive(owner)
    os.kill(p.pid, signal.SIGKILL)
    time.sleep(0.2)  # now a zombie: kill(pid, 0) still succeeds
    assert not owner_alive(owner)
    p.wait()
    assert not owner_alive(owner)


def test_owner_records_process_identity(tmp_path):
    me = Owner.current()
    assert me.pid == os.getpid() and me.started


def count_fsyncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    return calls


def test_durability_follows_the_ledger_setting_and_checkpoints_skip_fsync(tmp_path, monkeypatch):
    durable = Ledger(tmp_path / "durable")
    durable.set_budget(D("1"))
    calls = count_fsyncs(monkeypatch)
    res = durable.reserve(D("0.1"))
    assert isinstance(res, Reservation)
    assert len(calls) >= 2  # the state file and its folder
    calls.clear()
    durable.checkpoint({res.id: {"output_tokens": 3}})
    assert calls == []  # advisory: a lost checkpoint costs nothing
    durable.settle(res.id, D("0.05"))
    assert len(calls) >= 3  # the history line, the state file, the folder

    monkeypatch.undo()
    fast = Ledger(tmp_path / "fast", durable=False)  # tests and tools that trade durability for speed
    fast.set_budget(D("1"))
    calls = count_fsyncs(monkeypatch)
    res = fast.reserve(D("0.1"))
    fast.checkpoint({res.id: {"output_tokens": 3}})
    fast.settle(res.id, D("0.05"))
    assert calls == []
    assert fast.snapshot().spent == D("0.05")
    assert_consistent(fast)
