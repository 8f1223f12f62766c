"""Ledger cost must not grow with history: reserve+settle at 1,000,000 vs 1,000 entries.

Both ledgers are built in this run in temporary directories on the same disk; the history is
seeded directly as it would be on disk (day partitions of JSON lines, with the state pointing
past them), then each ledger does the same number of real reserve+settle transactions with
fsync on. Prints per-operation medians and the ratio (target <= 1.5).

    python bench/ledger_bench.py [--big 1000000] [--small 1000] [--ops 300]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

from pouch_addon.budget import Ledger, LedgerState, partition_for


def seed(home: Path, entries: int, days: int = 30) -> None:
    """Write ``entries`` settled-history lines over ``days`` partitions and a matching state."""
    hist = home / "history"
    hist.mkdir(parents=True, exist_ok=True)
    now = time.time()
    per_day = max(1, entries // days)
    seq, spent = 0, Decimal(0)
    last_name, last_size = None, 0
    while seq < entries:
        day_ts = now - 86400 * (days - seq // per_day)
        name = partition_for(day_ts)
        lines = []
        for _ in range(min(per_day, entries - seq)):
            seq += 1
            lines.append(json.dumps({
                "kind": "settle", "id": f"{seq:016x}", "seq": seq, "ts": day_ts, "time": "",
                "model": "gpt-4o", "endpoint": "/v1/chat/completions", "stream": True,
                "input_tokens": 1200, "cached_tokens": 0, "output_tokens": 300, "reasoning_tokens": 0,
                "reserved": "0.01", "cost": "0.006", "status": "ok", "flags": [],
            }, separators=(",", ":")))
            spent += Decimal("0.006")
        with open(hist / name, "a") as fh:
            fh.write("\n".join(lines) + "\n")
        last_name, last_size = name, (hist / name).stat().st_size
    state = LedgerState(budget=Decimal(10**9), spent=spent, requests=entries, seq=seq,
                        history_file=last_name, history_size=last_size)
    Ledger(home)._storage.write(state.to_tables())


def time_ops(home: Path, ops: int, committer: bool = False) -> list[float]:
    """Reserve+settle ``ops`` times: direct calls (a snapshot each, as the CLI writes) or, with
    ``committer``, through the committer thread (a write-ahead log record each, as the proxy)."""
    ledger = Ledger(home)
    times = []
    for _ in range(ops):
        t0 = time.perf_counter()
        reserve = ledger.reserve_op(Decimal("0.01"), {"model": "gpt-4o"})
        res = ledger.submit(reserve).result() if committer else ledger.reserve(Decimal("0.01"), {"model": "gpt-4o"})
        settle = ledger.settle_op(res.id, Decimal("0.004"), details={"input_tokens": 10, "output_tokens": 5})
        ledger.submit(settle).result() if committer else ledger._run(settle)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=1_000)
    ap.add_argument("--ops", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=Path.home()) as tmp:
        small, big = Path(tmp) / "small", Path(tmp) / "big"
        t0 = time.perf_counter()
        seed(small, args.small)
        seed(big, args.big)
        print(f"seeded {args.small:,} and {args.big:,} history entries in {time.perf_counter() - t0:.1f}s")
        # interleave rounds so disk noise hits both sides alike
        for committer in (False, True):
            s_times, b_times = [], []
            for _ in range(3):
                s_times += time_ops(small, args.ops // 3, committer)
                b_times += time_ops(big, args.ops // 3, committer)
            s_med, b_med = statistics.median(s_times), statistics.median(b_times)
            how = "committer (log record)" if committer else "direct (snapshot)"
            print(f"{how}: reserve+settle median at {args.small:>9,} entries: {s_med * 1e3:7.3f} ms")
            print(f"{how}: reserve+settle median at {args.big:>9,} entries: {b_med * 1e3:7.3f} ms")
            ratio = b_med / s_med
            print(f"RATIO ledger {how} {args.big:,}/{args.small:,} entries = {ratio:.2f}  (target <= 1.5) "
                  f"{'OK' if ratio <= 1.5 else 'OVER TARGET'}")
        assert Ledger(big).snapshot().problems() == [] and Ledger(big).verify() == []


if __name__ == "__main__":
    main()
