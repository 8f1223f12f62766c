"""Time to first paint of the TUI with 100,000 history entries vs an empty ledger.

Each measurement is a fresh process (imports included) running the app headless until the
budget gauge and the recent-requests table are on screen, and then until this month's
aggregates (charts, breakdown) arrive — those are computed in the background after the first
paint. Runs alternate between the two ledgers; medians are printed with the ratio.

    .venv/bin/python bench/tui_bench.py [--entries 100000] [--runs 5]
"""

from __future__ import annotations

import time

T0 = time.perf_counter()  # before anything heavy is imported: a child's clock starts here

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def seed(home: Path, entries: int, now: float, days: int = 30) -> None:
    """``entries`` settled requests (a few blocks among them) over the ``days`` before ``now``."""
    from decimal import Decimal

    from pouch_addon.budget import Ledger, LedgerState, partition_for

    hist = home / "history"
    hist.mkdir(parents=True, exist_ok=True)
    per_day = max(1, entries // days)
    seq, spent, blocked = 0, Decimal(0), 0
    last_name, last_size = None, 0
    models = ("gpt-4o", "gpt-4o-mini", "o3-mini", "gpt-4.1")
    while seq < entries:
        day_index = seq // per_day
        day_ts = now - 86400 * (days - 1 - day_index) - 3600
        name = partition_for(day_ts)
        lines = []
        for i in range(min(per_day, entries - seq)):
            seq += 1
            ts = day_ts + i * (3000 / per_day)
            if seq % 50 == 0:
                blocked += 1
                entry = {"kind": "block", "seq": seq, "ts": ts, "time": "", "model": models[seq % 4],
                         "endpoint": "/v1/chat/completions", "client": f"10.0.0.{seq % 7}:4{seq % 1000:04d}",
                         "reason": "insufficient", "needed": "0.2", "remaining": "0.1", "message": "over budget",
                         "cost": "0", "status": "blocked"}
            else:
                entry = {"kind": "settle", "id": f"{seq:016x}", "seq": seq, "ts": ts, "time": "",
                         "model": models[seq % 4], "endpoint": "/v1/chat/completions",
                         "client": f"10.0.0.{seq % 7}:4{seq % 1000:04d}", "stream": True,
                         "input_tokens": 1200, "cached_tokens": 0, "output_tokens": 300, "reasoning_tokens": 0,
                         "reserved": "0.01", "cost": "0.006", "status": "ok", "flags": []}
                spent += Decimal("0.006")
            lines.append(json.dumps(entry, separators=(",", ":")))
        with open(hist / name, "a") as fh:
            fh.write("\n".join(lines) + "\n")
        last_name, last_size = name, (hist / name).stat().st_size
    state = LedgerState(budget=Decimal(10**6), spent=spent, requests=entries - blocked, blocked=blocked, seq=seq,
                        history_file=last_name, history_size=last_size)
    Ledger(home)._storage.write(state.to_tables())


def child(home: str) -> None:
    """Run the app headless; print seconds from process start to first paint and to aggregates."""
    from pouch_tui.app import PouchApp

    marks: dict[str, float] = {}

    class Timed(PouchApp):
        def on_mount(self) -> None:
            super().on_mount()
            marks["mounted"] = time.perf_counter()
            self.set_interval(0.002, self.check)

        def check(self) -> None:
            if self.first_paint is not None and "paint" not in marks:
                marks["paint"] = self.first_paint
                marks["rows"] = self.history_table.row_count
            if self.aggregates is not None and "aggregates" not in marks:
                marks["aggregates"] = time.perf_counter()
            if "paint" in marks and "aggregates" in marks:
                self.exit()

    app = Timed(home)
    app.run(headless=True, size=(120, 40))
    print(json.dumps({"paint": marks["paint"] - T0, "aggregates": marks["aggregates"] - T0,
                      "rows": marks["rows"]}))


def measure(home: Path) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--child", str(home)], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        empty, big = Path(tmp) / "empty", Path(tmp) / "big"
        empty.mkdir()
        t = time.perf_counter()
        seed(big, args.entries, time.time())
        print(f"seeded {args.entries:,} history entries in {time.perf_counter() - t:.1f}s")
        results: dict[str, list[dict[str, float]]] = {"empty": [], "big": []}
        measure(empty)  # warm the disk cache and the bytecode cache for both sides alike
        for _ in range(args.runs):
            results["empty"].append(measure(empty))
            results["big"].append(measure(big))
        med = {k: {m: statistics.median(r[m] for r in v) for m in ("paint", "aggregates")} for k, v in results.items()}
        rows = results["big"][0]["rows"]
        print(f"first paint, empty ledger:          {med['empty']['paint'] * 1e3:7.0f} ms (process start to screen)")
        print(f"first paint, {args.entries:>7,} entries:     {med['big']['paint'] * 1e3:7.0f} ms "
              f"({rows:.0f} rows in the table)")
        print(f"month aggregates, {args.entries:>7,} entries: {med['big']['aggregates'] * 1e3:7.0f} ms "
              f"(in the background, after the first paint)")
        ratio = med["big"]["paint"] / med["empty"]["paint"]
        print(f"RATIO first paint {args.entries:,} entries / empty = {ratio:.2f}")


if __name__ == "__main__":
    main()
