"""pouch's background threads give way to the event loop (``pouch_addon/threads.py``): the alert
thread runs in ``SCHED_BATCH`` (no wake-up preemption of the loop); the threads an admission waits
for (the ledger's committer and flusher) and the thread that calls nothing (the event loop's)
keep their policy."""

from __future__ import annotations

import os
import threading
from decimal import Decimal as D

import pytest

from pouch_addon.addons.alerting import AlertWorker
from pouch_addon.alert_sinks import Sinks
from pouch_addon.budget import Ledger
from pouch_addon.threads import give_way

pytestmark = pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux only")


def in_thread(fn):
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", fn()))
    t.start()
    t.join(10)
    return out["r"]


def test_give_way_sets_the_calling_thread_only():
    before = os.sched_getscheduler(0)
    assert in_thread(lambda: (give_way(), os.sched_getscheduler(0))) == (True, os.SCHED_BATCH)
    assert os.sched_getscheduler(0) == before  # this thread (an event loop's, in the proxy) is untouched


def test_the_threads_an_admission_waits_for_keep_the_normal_policy(tmp_path):
    """A committer or flusher in ``SCHED_BATCH`` delays admissions behind the loop's time slice
    (measured: fewer req/s, no CPU saved; see ``threads``)."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(10))
    seen = ledger.submit(lambda txn: os.sched_getscheduler(0)).result(10)  # runs on the committer
    assert seen == os.SCHED_OTHER
    r = ledger.submit(ledger.reserve_op(D(1), {})).result(10)
    ledger._await_flush(0)  # the flusher thread has run (and is alive until idle)
    flusher = ledger._flusher
    assert flusher is not None and flusher.is_alive()
    assert os.sched_getscheduler(flusher.native_id) == os.SCHED_OTHER
    ledger.submit(ledger.settle_op(r.id, D(1))).result(10)


def test_alert_thread_gives_way(tmp_path):
    Ledger(tmp_path).set_budget(D(10))
    w = AlertWorker(tmp_path, Sinks(), 15.0)
    seen = threading.Event()
    policy: list[int] = []
    w._problem = lambda *a: (policy.append(os.sched_getscheduler(0)), seen.set(), [])[-1]
    w.start()
    w.post(("problem", "x", 0.0))
    assert seen.wait(10)
    w.stop()
    assert policy == [os.SCHED_BATCH]


def _kernel_names(pid: int) -> dict[int, str]:
    names = {}
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/comm") as fh:
            names[int(t)] = fh.read().strip()
    return names


def test_the_ledgers_threads_carry_their_names_in_the_kernel(tmp_path):
    """``top -H``, ``/proc/<pid>/task/*/comm`` and bench/proxy_bench.py's wake-ups per thread tell
    the committer and the flusher apart from the event loop (the kernel otherwise shows the process's
    name for every thread)."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(10))
    res = ledger.submit(ledger.reserve_op(D("0.01"), {"model": "gpt-4o-mini"})).result(10)
    ledger._hand_flush()  # the record's overlapped flush: the flusher thread
    ledger._await_flush(0)
    names = set(_kernel_names(os.getpid()).values())
    assert {"pouch-ledger", "pouch-ledger-fl"} <= names, names  # the kernel keeps 15 bytes
    ledger.settle(res.id, D("0.001"))


def test_name_thread_gives_the_kernel_the_python_name():
    def named():
        from pouch_addon.threads import name_thread
        ok = name_thread()
        return ok, _kernel_names(os.getpid())[threading.get_native_id()]
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("r", named()), name="pouch-a-very-long-thread-name")
    t.start()
    t.join(10)
    assert out["r"] == (True, "pouch-a-very-lo")
