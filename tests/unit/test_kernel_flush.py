"""The overlapped flush handed to the kernel (``kernel_flush``: Linux AIO's fdatasync) by an
event loop, reaped by whoever waits for it: no Python thread wakes for it (issues 16 and 20).
Where the kernel cannot take it, the flusher thread does, and no flush is lost."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import threading
from decimal import Decimal as D

import pytest

from pouch_addon import kernel_flush, ledger_local
from pouch_addon.budget import Ledger, Reservation

needs_aio = pytest.mark.skipif(kernel_flush.open_kernel_flush() is None, reason="no Linux AIO here")


def admit_from_a_loop(ledger: Ledger, n: int) -> list:
    """``n`` admissions one after another from an event loop (a lone caller, as the proxy's)."""
    async def main() -> list:
        out = []
        for _ in range(n):
            out.append(await ledger.submit_async(ledger.reserve_op(D("0.1"))))
            await asyncio.sleep(0)  # the hook goes on: the loop hands the record on
        return out
    return asyncio.run(main())


def flusher_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pouch-ledger-flush"]


@needs_aio
def test_an_event_loops_overlapped_flush_goes_to_the_kernel_and_no_flusher_thread_starts(tmp_path):
    ledger = Ledger(tmp_path)  # durable, overlap (the default)
    ledger.lazy_delay = 30.0  # however slow this machine is, the committer's timer does not hand it on
    ledger.set_budget(D("1"))
    before = set(flusher_threads())
    results = admit_from_a_loop(ledger, 4)
    assert all(isinstance(r, Reservation) for r in results)
    ledger._await_flush(0)  # reaped by this waiter: the loop that submitted them is closed
    assert ledger._flusher is None and set(flusher_threads()) == before
    assert ledger._kernel is not None and ledger._kernel.submitted >= 1 and ledger._kernel.in_flight == 0
    assert ledger._flushed == ledger._written == 4
    assert {r.id for r in results} <= set(Ledger(tmp_path).snapshot().open)


def test_a_thread_caller_still_uses_the_flusher_thread(tmp_path):
    """No event loop hands the record on (``floor.py``'s callers, the CLI): the committer's
    hand-off goes to the flusher thread as before."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    assert isinstance(ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20), Reservation)
    ledger._await_flush(0)
    assert ledger._flusher is not None and ledger._kernel is None


class _FailingKernel:
    """The kernel's flushes finish with ``-EIO`` (a disk error the kernel reports)."""

    def __init__(self, monkeypatch) -> None:
        self.fail = True
        real = kernel_flush.KernelFlush._getevents

        def getevents(kf, *args):
            events = real(kf, *args)
            return [(tag, -errno.EIO if self.fail else res) for tag, res in events]

        monkeypatch.setattr(kernel_flush.KernelFlush, "_getevents", getevents)


class _FailingDisk:
    def __init__(self, monkeypatch) -> None:
        self.fail = True
        self.calls = 0
        real = os.fdatasync

        def fdatasync(fd: int) -> None:
            self.calls += 1
            if self.fail:
                raise OSError(errno.EIO, "Input/output error (test)")
            real(fd)

        monkeypatch.setattr(os, "fdatasync", fdatasync)


@needs_aio
def test_a_flush_error_reported_by_the_kernel_makes_the_next_commit_flush_first_and_fail_closed(
        tmp_path, monkeypatch, caplog):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    kernel = _FailingKernel(monkeypatch)
    (first,) = admit_from_a_loop(ledger, 1)  # written; its flush fails in the kernel
    assert isinstance(first, Reservation)
    with caplog.at_level(logging.ERROR, logger="pouch_addon.ledger_local"):
        ledger._await_flush(0)
    assert ledger._flusher is None  # it was the kernel's flush
    assert isinstance(ledger._flush_error, OSError) and ledger._flush_error.errno == errno.EIO
    assert any("flushing the ledger's log" in r.getMessage() and "failed" in r.getMessage() for r in caplog.records)
    disk = _FailingDisk(monkeypatch)  # the disk still fails: the next commit flushes first, and fails
    with pytest.raises(OSError, match="Input/output error"):
        admit_from_a_loop(ledger, 1)
    assert disk.calls == 1
    disk.fail = kernel.fail = False
    assert all(isinstance(r, Reservation) for r in admit_from_a_loop(ledger, 2))
    ledger._await_flush(0)
    assert ledger.verify() == []


def test_without_linux_aio_an_event_loops_flush_goes_to_the_flusher_thread(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_local, "open_kernel_flush", lambda: None)  # not Linux, seccomp, ENOSYS
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    results = admit_from_a_loop(ledger, 3)
    ledger._await_flush(0)
    assert ledger.kernel_flush is False and ledger._flusher is not None
    assert ledger._flushed == ledger._written == 3
    assert {r.id for r in results} <= set(Ledger(tmp_path).snapshot().open)


@needs_aio
def test_a_file_system_that_refuses_the_kernels_flush_falls_back_to_the_thread_and_loses_none(tmp_path, monkeypatch):
    calls = []

    def refuse(kf, fd, tag):
        calls.append(tag)
        raise OSError(errno.EINVAL, "io_submit: Invalid argument")

    monkeypatch.setattr(kernel_flush.KernelFlush, "submit", refuse)
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))
    synced = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    admit_from_a_loop(ledger, 3)
    ledger._await_flush(0)
    assert calls == [1]  # asked once, then the thread for good
    assert ledger.kernel_flush is False and ledger._flushed == ledger._written == 3 and synced


@needs_aio
def test_a_pipe_has_no_kernel_flush():
    """What a file system without fsync for AIO answers: ``io_submit`` refuses (EINVAL)."""
    kf = kernel_flush.open_kernel_flush()
    r, w = os.pipe()
    try:
        with pytest.raises(OSError) as info:
            kf.submit(w, 1)
        assert info.value.errno == errno.EINVAL and kf.in_flight == 0
    finally:
        os.close(r)
        os.close(w)
        kf.close()


@needs_aio
def test_a_kernel_flush_of_a_file_is_reaped_with_its_tag(tmp_path):
    kf = kernel_flush.open_kernel_flush()
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x" * 100)
        kf.submit(fd, 7)
        kf.submit(fd, 8)
        got = kf.reap()
        while len(got) < 2:
            got += kf.wait(5.0)
        assert sorted(got) == [(7, 0), (8, 0)] and kf.in_flight == 0
        assert kf.reap() == [] and kf.wait(0.01) == []
    finally:
        os.close(fd)
        kf.close()


@needs_aio
def test_a_kernel_flush_that_cannot_be_reaped_is_flushed_by_the_thread(tmp_path, monkeypatch):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))

    def broken(kf, *args):
        raise OSError(errno.EFAULT, "io_getevents: Bad address")

    monkeypatch.setattr(kernel_flush.KernelFlush, "_getevents", broken)
    admit_from_a_loop(ledger, 2)
    ledger._await_flush(0)  # returns: the thread flushed everything written
    assert ledger.kernel_flush is False and ledger._flusher is not None
    assert ledger._flushed == ledger._written == 2
