"""Client-process attribution cost: the /proc fast path vs psutil, per lookup.

A listening socket here stands in for the proxy; a Python subprocess connects to it and holds
the connection. Both implementations then look up that same connection N times in this run,
interleaved over several repetitions so machine noise hits both alike; each repetition's mean
is one sample and the median sample is reported in µs per lookup. Two fast-path figures:
"cached" (the owner pid is in the recent-pid cache, the usual case of one client making many
connections) and "cold" (cache cleared before every lookup, so /proc is walked until the
owner turns up). The RATIO uses the cold figure. Also printed: one complete walk of /proc/*/fd
that finds nothing, the bound on any cold lookup whatever the client's pid. ``--crowd N`` adds
N idle processes each holding a loopback connection, to look like a busy desktop (more
processes, more fds, more sockets).

    python bench/identity_bench.py [--quick] [--lookups 200] [--reps 7] [--crowd 200]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

from pouch_addon import localproc
from pouch_addon.addons.identity import _local_process_psutil, local_process

CHILD = """
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
print(s.getsockname()[1], flush=True)
sys.stdin.read()
"""


CROWD = """
import os, socket, sys
for _ in range(int(sys.argv[2])):
    if os.fork() == 0:
        s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
        os.read(0, 1)  # until the bench closes our shared stdin
        os._exit(0)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
"""


def spawn(port: int) -> tuple[subprocess.Popen, int]:
    """A subprocess connected to ``port``, and its client port."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(port)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    return child, int(child.stdout.readline())


def per_lookup(fn: Callable[[], object], n: int) -> float:
    """Mean seconds per call over ``n`` calls."""
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n


def cold(client_port: int, port: int) -> Callable[[], object]:
    def run() -> object:
        with localproc._recent_lock:
            localproc._recent.clear()
        return local_process(client_port, port)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer lookups and repetitions")
    ap.add_argument("--lookups", type=int, default=200, help="lookups per repetition (fast path)")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--crowd", type=int, default=0, help="extra idle subprocesses holding sockets")
    args = ap.parse_args()
    if args.quick:
        args.lookups, args.reps = 50, 3
    if not localproc.available():
        sys.exit("needs Linux /proc")
    slow_n = max(5, args.lookups // 20)  # psutil is ~100x slower: fewer calls, same statistics

    srv = socket.create_server(("127.0.0.1", 0), backlog=args.crowd + 16)
    port = srv.getsockname()[1]
    crowd, accepted = [], []
    try:
        t0 = time.perf_counter()
        if args.crowd:
            crowd.append(subprocess.Popen([sys.executable, "-c", CROWD, str(port), str(args.crowd)],
                                          stdin=subprocess.PIPE))
            accepted += [srv.accept()[0] for _ in range(args.crowd)]
        child, client_port = spawn(port)  # spawned last: the newest pid, as a fresh client is
        accepted.append(srv.accept()[0])
        if args.crowd:
            print(f"started {args.crowd} idle connected subprocesses in {time.perf_counter() - t0:.1f}s")
        n_procs = sum(1 for e in os.scandir("/proc") if e.name.isdigit())
        print(f"{n_procs} processes in /proc; {args.reps} repetitions of {args.lookups} fast / {slow_n} psutil lookups")

        want = _local_process_psutil(client_port, port)
        assert want is not None and want[0] == child.pid, want
        assert local_process(client_port, port) == want and cold(client_port, port)() == want

        fast = lambda: local_process(client_port, port)  # noqa: E731
        slow = lambda: _local_process_psutil(client_port, port)  # noqa: E731
        cached_t, cold_t, psutil_t = [], [], []
        for _ in range(args.reps):
            cached_t.append(per_lookup(fast, args.lookups))
            cold_t.append(per_lookup(cold(client_port, port), args.lookups))
            psutil_t.append(per_lookup(slow, slow_n))
        with socket.create_connection(("127.0.0.1", port)) as mine:  # ours: no owner is ever found
            accepted.append(srv.accept()[0])
            inode = os.fstat(mine.fileno()).st_ino
            walk = statistics.median(per_lookup(lambda: localproc.owner(inode), max(5, args.lookups // 10))
                                     for _ in range(args.reps)) * 1e6
        cached, cold_med, slow_med = (statistics.median(t) * 1e6 for t in (cached_t, cold_t, psutil_t))
        print(f"fast path, cached pid : {cached:10.1f} µs per lookup")
        print(f"fast path, cold       : {cold_med:10.1f} µs per lookup")
        print(f"complete /proc walk   : {walk:10.1f} µs (bound on the owner search)")
        print(f"psutil                : {slow_med:10.1f} µs per lookup")
        print(f"speed-up cached {slow_med / cached:.0f}x, cold {slow_med / cold_med:.0f}x")
        ratio = cold_med / slow_med
        print(f"RATIO identity lookup fast/psutil = {ratio:.3f} (target <= 0.2)")
    finally:
        for conn in accepted:
            conn.close()
        for p in [*crowd, *([child] if "child" in locals() else [])]:
            p.stdin.close()
        for p in [*crowd, *([child] if "child" in locals() else [])]:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        srv.close()


if __name__ == "__main__":
    main()
