"""The team ledger (PostgreSQL) against the local ledger, in the same run on the same machine.

Starts a throwaway PostgreSQL (``tests/pg/pgserver.py``: initdb in /tmp, loopback, fsync on)
and a local ledger in a temporary directory (fsync on), then prints for both and their ratio:

- admission latency p50/p95: one admission at a time (``Ledger.reserve``, each its own commit);
- admissions per second with 1, 2 and 4 proxies: each "proxy" is a process with its own ledger
  object (own pool and committer thread), 16 threads submitting admissions as a busy proxy's
  event loop does (``submit``: they share group commits), each admission followed by its lazy
  settle (so the reservations in flight stay bounded, as on a real proxy);
- the pool's connections per proxy (``psycopg_pool`` stats at the end of each proxy's run).

    python bench/pg_bench.py [--ops 300] [--per-proxy 400]

On a shared 2-CPU machine the database, the proxies and the bench share the CPUs: read the
ratios, and expect a few tens of per cent of noise between runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "pg"))

from pouch_addon.budget import Ledger  # noqa: E402
from pouch_addon.ledger_postgres import PostgresLedger, init  # noqa: E402

AMOUNT = Decimal("0.000001")


def open_ledger(kind: str, where: str) -> object:
    return PostgresLedger(where, tempfile.mkdtemp(prefix="pouch-bench-home-"), lease_seconds=600) \
        if kind == "pg" else Ledger(where)


def latency(kind: str, where: str, ops: int) -> tuple[float, float]:
    lg = open_ledger(kind, where)
    for _ in range(20):  # warm up (connections, caches)
        lg.release(lg.reserve(AMOUNT).id)
    times = []
    for _ in range(ops):
        t = time.perf_counter()
        r = lg.reserve(AMOUNT)
        times.append(time.perf_counter() - t)
        lg.release(r.id)
    if kind == "pg":
        lg.close()
    times.sort()
    return times[len(times) // 2] * 1e6, times[int(len(times) * 0.95)] * 1e6


def _proxy(kind: str, where: str, n: int, start: mp.Event, out: mp.Queue) -> None:
    lg = open_ledger(kind, where)
    lg.release(lg.reserve(AMOUNT).id)  # connect before the clock starts
    per = n // 16

    def work() -> None:
        for _ in range(per):
            r = lg.submit(lg.reserve_op(AMOUNT)).result()
            lg.submit(lg.settle_op(r.id, AMOUNT), lazy=True)  # as the meter does: rides with the next commit

    threads = [threading.Thread(target=work) for _ in range(16)]
    start.wait()
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.perf_counter() - t
    conns = lg.pool.get_stats().get("pool_size", 0) if kind == "pg" else 0
    out.put((per * 16, elapsed, conns, lg.commits))
    if kind == "pg":
        lg.close()


def throughput(kind: str, where: str, proxies: int, per_proxy: int) -> tuple[float, list[int]]:
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_proxy, args=(kind, where, per_proxy, start, out)) for _ in range(proxies)]
    for p in ps:
        p.start()
    time.sleep(3)  # every proxy connected and waiting
    start.set()
    results = [out.get(timeout=600) for _ in ps]
    for p in ps:
        p.join()
    total = sum(r[0] for r in results)
    wall = max(r[1] for r in results)
    return total / wall, [r[2] for r in results]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ops", type=int, default=300)
    ap.add_argument("--per-proxy", type=int, default=400)
    args = ap.parse_args()
    from pgserver import PGServer
    server = PGServer()
    server.start()
    try:
        url = server.new_database()
        init(url)
        pg = PostgresLedger(url, tempfile.mkdtemp(prefix="pouch-bench-home-"))
        pg.set_budget(Decimal(1000))
        pg.close()
        home = tempfile.mkdtemp(prefix="pouch-bench-local-")
        Ledger(home).set_budget(Decimal(1000))
        rows = {}
        lp50, lp95 = latency("local", home, args.ops)
        pp50, pp95 = latency("pg", url, args.ops)
        rows["latency"] = {"local_p50_us": round(lp50), "local_p95_us": round(lp95), "pg_p50_us": round(pp50),
                           "pg_p95_us": round(pp95), "ratio_p50": round(pp50 / lp50, 2),
                           "ratio_p95": round(pp95 / lp95, 2)}
        print(f"admission latency (one at a time): local p50 {lp50:.0f} us p95 {lp95:.0f} us; "
              f"postgres p50 {pp50:.0f} us p95 {pp95:.0f} us; ratio p50 {pp50 / lp50:.2f} p95 {pp95 / lp95:.2f}")
        for n in (1, 2, 4):
            lr, _ = throughput("local", home, n, args.per_proxy)
            pr, conns = throughput("pg", url, n, args.per_proxy)
            rows[f"proxies_{n}"] = {"local_per_s": round(lr), "pg_per_s": round(pr), "ratio": round(pr / lr, 2),
                                    "pg_pool_connections_per_proxy": conns}
            print(f"{n} proxies x 16 submitters: local {lr:.0f} admissions/s, postgres {pr:.0f}/s "
                  f"(ratio {pr / lr:.2f}); pool connections per proxy {conns}")
        print(json.dumps(rows))
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
