"""The ledger loop ``floor.py`` measures: admissions in groups, each group's settles riding along
with the next group's commit, with ``open_`` other reservations open. No pouch import of its own,
so ``floor.py --tree`` runs it in a fresh process against another checkout's ``Ledger``."""

from __future__ import annotations

import os
import resource
import tempfile
import time
from decimal import Decimal
from typing import Any


def ledger_cpu(ledger_class: Any, group: int, rounds: int, open_: int, model: str) -> tuple[float, float]:
    """(user, system) CPU us of this process (caller and ledger threads) per admission."""
    return ledger_usage(ledger_class, group, rounds, open_, model)[:2]


def timed_fdatasync() -> list[tuple[float, float]]:
    """Wrap ``os.fdatasync`` (before the ledger is imported is not needed: it is looked up per
    call) to record each call's (wall, calling thread's CPU) seconds."""
    import os
    import time
    real, calls = os.fdatasync, []

    def fdatasync(fd: int) -> None:
        w0, c0 = time.perf_counter(), time.thread_time()
        try:
            real(fd)
        finally:
            calls.append((time.perf_counter() - w0, time.thread_time() - c0))

    os.fdatasync = fdatasync
    return calls


def thread_times() -> dict[str, tuple[int, int]]:
    """(user, system) clock ticks of each thread of this process by name (``/proc/self/task``;
    threads of one name added up): a thread's share of the process's CPU (``floor.py --threads``)."""
    out: dict[str, tuple[int, int]] = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        user, system = out.get(name, (0, 0))
        out[name] = (user + int(fields[11]), system + int(fields[12]))  # utime, stime (fields 14, 15)
    return out


#: per-thread (user, system) CPU us per admission of the last ``ledger_usage`` run, by thread name
#: (with ``POUCH_FLOOR_THREADS`` set; clock ticks, so use enough rounds)
LAST_THREADS: dict[str, tuple[float, float]] = {}


def ledger_usage(ledger_class: Any, group: int, rounds: int, open_: int,
                 model: str) -> tuple[float, float, float, float]:
    """(user CPU us, system CPU us, voluntary and involuntary context switches) per admission,
    of this process (caller and ledger threads)."""
    # the ledger's threads may still write (a flush, a snapshot) while the folder is removed
    with tempfile.TemporaryDirectory(prefix="pouch-floor-", ignore_cleanup_errors=True) as home:
        ledger = ledger_class(home)
        ledger.set_budget(Decimal("1000000"))
        ledger.commit_delay = 0  # the groups are formed here
        # ``floor.py --wallets N``: N wallets configured, the admissions charged to the first
        wallets = int(os.environ.get("POUCH_FLOOR_WALLETS", "0"))
        for i in range(wallets):
            ledger.add_wallet("default" if i == 0 else f"app{i}", Decimal("1000000"), period="daily", rpm=100000)
        charged = "default" if wallets else None
        for _ in range(open_):
            ledger.reserve(Decimal("0.01"), {"model": model})
        # the day's history partition exists, and long enough that its folder listing is reused
        # (``HistoryLog.partitions`` lists the folder again while its mtime is under a second
        # old): a proxy pays that listing per commit only in the first second of each day
        ledger.settle(ledger.reserve(Decimal("0.01"), {"model": model}).id, Decimal("0.001"))
        time.sleep(max(0.0, 1.05 - (time.time() - os.stat(ledger.home / "history").st_mtime)))
        meta = {"model": model, "endpoint": "/v1/chat/completions", "client": "127.0.0.1:50000", "wallet": "default"}
        details = {"input_tokens": 30, "output_tokens": 50, "cached_tokens": 0, "reasoning_tokens": 0}
        prev: list[str] = []
        per_thread = os.environ.get("POUCH_FLOOR_THREADS") is not None
        t0 = thread_times() if per_thread else {}
        r0 = resource.getrusage(resource.RUSAGE_SELF)  # callgrind's --dump-before marks start here
        for _ in range(rounds):
            for rid in prev:
                ledger.submit(ledger.settle_op(rid, Decimal("0.0001"), details=dict(details)), lazy=True)
            futures = [ledger.submit(ledger.reserve_op(Decimal("0.01"), dict(meta), wallet=charged))
                       for _ in range(group)]
            prev = [f.result().id for f in futures]
        r1 = resource.getrusage(resource.RUSAGE_SELF)  # ... and end here
        if per_thread:
            tick = 1e6 / os.sysconf("SC_CLK_TCK") / (rounds * group)
            LAST_THREADS.clear()
            for name, (user, system) in thread_times().items():
                u0, s0 = t0.get(name, (0, 0))
                LAST_THREADS[name] = ((user - u0) * tick, (system - s0) * tick)
        ledger._await_flush(0)
    n = rounds * group
    return ((r1.ru_utime - r0.ru_utime) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6,
            (r1.ru_nvcsw - r0.ru_nvcsw) / n, (r1.ru_nivcsw - r0.ru_nivcsw) / n)


def kworker_ns() -> int:
    """Nanoseconds the kernel's worker threads (``kworker/*``) ran (``schedstat``): where an AIO
    flush (``kernel_flush``) runs, outside this process's CPU (other jobs' kernel work too)."""
    total = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/comm") as fh:
                if not fh.read().startswith("kworker"):
                    continue
            with open(f"/proc/{d}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def ledger_loop_usage(ledger_class: Any, rounds: int, open_: int, model: str,
                      gap: float) -> tuple[float, float, float, float, float]:
    """A lone caller on an event loop, as the proxy's: one admission at a time (``submit_async``),
    the loop's turn after its answer (where the proxy sends the request and hands the record's
    flush on), then ``gap`` seconds in flight, its settle riding with the next admission.
    (user CPU us, system CPU us, voluntary and involuntary context switches, kernel workers' CPU
    us) per admission."""
    import asyncio
    with tempfile.TemporaryDirectory(prefix="pouch-floor-", ignore_cleanup_errors=True) as home:
        ledger = ledger_class(home)
        ledger.set_budget(Decimal("1000000"))
        for _ in range(open_):
            ledger.reserve(Decimal("0.01"), {"model": model})
        meta = {"model": model, "endpoint": "/v1/chat/completions", "client": "127.0.0.1:50000", "wallet": "default"}
        details = {"input_tokens": 30, "output_tokens": 50, "cached_tokens": 0, "reasoning_tokens": 0}

        async def calls() -> tuple[Any, Any, int, int]:
            prev = (await ledger.submit_async(ledger.reserve_op(Decimal("0.01"), dict(meta)))).id
            await asyncio.sleep(0.05)
            k0, r0 = kworker_ns(), resource.getrusage(resource.RUSAGE_SELF)
            for _ in range(rounds):
                ledger.submit_async(ledger.settle_op(prev, Decimal("0.0001"), details=dict(details)), lazy=True)
                prev = (await ledger.submit_async(ledger.reserve_op(Decimal("0.01"), dict(meta)))).id
                await asyncio.sleep(0)  # the hook goes on: the request is sent
                await asyncio.sleep(gap)  # the call in flight
            await asyncio.sleep(0.05)  # the last flush
            return r0, resource.getrusage(resource.RUSAGE_SELF), k0, kworker_ns()

        r0, r1, k0, k1 = asyncio.run(calls())
        ledger._await_flush(0)
    n = rounds
    return ((r1.ru_utime - r0.ru_utime) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6,
            (r1.ru_nvcsw - r0.ru_nvcsw) / n, (r1.ru_nivcsw - r0.ru_nivcsw) / n, (k1 - k0) / n / 1e3)
