"""pouch's own threads give way to mitmproxy's event loop when they wake up.

The ledger's committer, its flusher, the alert thread and the others share the proxy's CPU (and
the GIL) with the event loop. Woken by a futex (a queued operation, a GIL hand-off), a thread of
the normal policy preempts the event loop at once: measured under load with 20 streams (bench/
proxy_syscalls.py), about as many involuntary switches of the loop per request as the other
threads had wake-ups (3-6 per request, bare mitmdump 0.1-0.4). Each one puts the loop's work off
behind the thread's (an unrelated request's socket that became ready waits too) and costs the
switches there and back.

``SCHED_BATCH`` (Linux) keeps a thread's share of the CPU and only drops that wake-up
preemption: the thread runs when the loop blocks (``epoll_wait``, a GIL release that it waits
on) or at the end of the loop's time slice. A thread started by one inherits the policy (so
does a process it starts: an alert command).
The price: on a CPU busy with other processes too, a woken thread waits for their time slice as
well (under load the committer gathers more operations per commit; an admission can wait longer).
Setting it needs no privilege; where it does not exist (not Linux) nothing changes.
"""

from __future__ import annotations

import os


def give_way() -> bool:
    """Put the calling thread in ``SCHED_BATCH``; True when it is (never raises)."""
    policy = getattr(os, "SCHED_BATCH", None)
    if policy is None:
        return False
    try:
        os.sched_setscheduler(0, policy, os.sched_param(0))  # 0: the calling thread (Linux)
    except (OSError, AttributeError):
        return False
    return True
