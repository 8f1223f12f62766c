"""pouch's background threads give way to mitmproxy's event loop when they wake up.

Threads off the request path (the alert thread and its senders, tracing, metrics, the PostgreSQL
lease's heartbeat) share the proxy's CPU (and the GIL) with the event loop. Woken by a futex, a
thread of the normal policy preempts the event loop at once (on one CPU, about one involuntary
switch of the loop per wake-up, measured with bench/proxy_syscalls.py); nothing waits for these
threads, so they run in ``SCHED_BATCH`` (Linux): the same share of the CPU, no wake-up preemption.
The thread runs when the loop blocks or its time slice ends. A thread started by one inherits the
policy, and so does a process it starts (an alert command).

The threads an admission waits for (the ledger's committer and flusher, the PostgreSQL
committer) keep the normal policy. In ``SCHED_BATCH`` they preempted the loop less (SSE, 20
connections: 2.3 -> 1.0 times per request) but, measured on a quiet machine against the same code
without it (bench/proxy_bench.py --tree, 2026-12-07), CPU per request moved within the noise
(non-streamed 1.010 and 0.992, SSE 0.893 and 1.003) and req/s fell (0.941 and 0.936
non-streamed, 0.895 and 0.995 SSE): a delayed commit is a delayed admission.
Setting it needs no privilege; where it does not exist (not Linux) nothing changes.

Each of pouch's threads also gives the kernel its name (:func:`name_thread`), so that ``top -H``,
``/proc/<pid>/task/*/comm`` and bench/proxy_bench.py's count of wake-ups per thread tell them apart
(Python names a thread for itself only; the kernel shows every thread as the process).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading

_PR_SET_NAME = 15
_prctl = None  # libc's prctl once looked up; False where there is none


def name_thread() -> bool:
    """Give the calling thread's Python name (its first 15 bytes) to the kernel (Linux ``prctl``);
    True when it was set (never raises)."""
    global _prctl
    if not sys.platform.startswith("linux") or _prctl is False:
        return False
    try:
        if _prctl is None:
            # the process's own symbols hold libc's (no ``find_library``: it runs ldconfig)
            _prctl = ctypes.CDLL(None, use_errno=True).prctl
        name = threading.current_thread().name.encode("utf-8", "replace")[:15]
        return _prctl(_PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0) == 0
    except (OSError, AttributeError, TypeError):
        _prctl = False
        return False


def give_way() -> bool:
    """Put the calling thread in ``SCHED_BATCH``; True when it is (never raises). Names it too."""
    name_thread()
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: the calling thread (Linux)
    except (OSError, AttributeError):
        return False
    return True
