"""How long the checkpoint pass of streams in flight holds mitmproxy's event loop.

Every ``pouch_checkpoint_ms`` (500 ms) the meter addon checkpoints each stream that moved:
``StreamMeter.checkpoint`` counts the tokens of the text received since the last pass (about
60 µs per stream of prose; 0.1-0.3 ms before the counter cut prose at word starts), then one
ledger write carries them all. Over many streams that is milliseconds of event-loop work, during which no other flow moves. ``Metering.checkpoint_once`` gives the loop
back every ``CHECKPOINT_SLICE`` seconds.

This bench runs the addon's own pass (real ledger in a temp dir, real plans and meters, each
stream with 50 events since its last checkpoint) next to a task that measures the loop's
longest stall, sliced and, as the baseline in the same run, with slicing off (one unbroken
pass, as before slicing). Printed: ``RATIO checkpoint stall sliced/unsliced (N streams)``.

    .venv/bin/python bench/checkpoint_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for p in (str(BENCH), str(BENCH.parent)):
    if p not in sys.path:
        sys.path.insert(0, p)

from meter_bench import MODEL, chat_stream  # noqa: E402

from pouch_addon.addons import meter as meter_addon  # noqa: E402
from pouch_addon.addons.core import Core, FlowCall  # noqa: E402
from pouch_addon.budget import Ledger  # noqa: E402
from pouch_addon.metering import StreamMeter  # noqa: E402
from pouch_addon.plan import draft_plan  # noqa: E402
from pouch_addon.pricing import PriceTable  # noqa: E402

CHUNKS = chat_stream(110)
BODY = {"model": MODEL, "stream": True, "max_tokens": 400, "messages": [{"role": "user", "content": "count"}]}


def streams_in_flight(core: Core, table: PriceTable, n: int, events: int) -> list[FlowCall]:
    """``n`` reserved calls in ``core.active``, each with a meter fed its first ``events`` chunks."""
    assert core.ledger is not None
    calls = []
    for _ in range(n):
        plan = draft_plan("POST", "/v1/chat/completions", BODY, table=table).finish(Decimal("100"))
        res = core.ledger.reserve(plan.worst_case)
        call = FlowCall(plan=plan, reservation=res, client="127.0.0.1:1", ledger=core.ledger)
        call.meter = StreamMeter(plan.api, plan.price, plan.model, plan.input_tokens, call.reserved,
                                 hide_usage_chunk=True)
        feed(call, 0, events)
        core.active.add(call)
        calls.append(call)
    return calls


def feed(call: FlowCall, start: int, stop: int) -> None:
    assert call.meter is not None
    for c in CHUNKS[start:stop]:
        call.meter.feed(c)


async def longest_stall(metering: meter_addon.Metering) -> tuple[float, float]:
    """(longest time the loop was not available to another task, duration of the pass), seconds."""
    done = False
    worst = 0.0

    async def watcher() -> None:
        nonlocal worst
        while not done:
            t = time.perf_counter()
            await asyncio.sleep(0)
            worst = max(worst, time.perf_counter() - t)

    task = asyncio.create_task(watcher())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    await metering.checkpoint_once()
    took = time.perf_counter() - t0
    done = True
    await task
    return worst, took


def measure(n: int, reps: int, table: PriceTable) -> dict[str, tuple[float, float]]:
    """Median (longest stall, pass duration) in ms, per mode, A/B interleaved."""
    results: dict[str, list[tuple[float, float]]] = {"sliced": [], "unsliced": []}
    sliced = meter_addon.CHECKPOINT_SLICE
    with tempfile.TemporaryDirectory(prefix="pouch-ckpt-") as home:
        core = Core()
        core.ledger = Ledger(home, durable=False)
        core.ledger.set_budget(Decimal("1000000"))
        metering = meter_addon.Metering(core)
        calls = streams_in_flight(core, table, n, events=1)
        asyncio.run(metering.checkpoint_once())  # warm: tokeniser, first commit
        at = 1
        for _ in range(reps):
            for mode in ("unsliced", "sliced"):
                if at + 50 > len(CHUNKS) - 4:  # start the streams over, as new ones
                    core.active.clear()
                    calls = streams_in_flight(core, table, n, events=1)
                    at = 1
                for call in calls:
                    feed(call, at, at + 50)
                at += 50
                meter_addon.CHECKPOINT_SLICE = sliced if mode == "sliced" else float("inf")
                try:
                    results[mode].append(asyncio.run(longest_stall(metering)))
                finally:
                    meter_addon.CHECKPOINT_SLICE = sliced
    return {mode: (statistics.median(r[0] for r in rs) * 1e3, statistics.median(r[1] for r in rs) * 1e3)
            for mode, rs in results.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~5 s)")
    args = ap.parse_args()
    reps = 5 if args.quick else 15
    table = PriceTable.load()
    print(f"checkpoint pass, 50 new events per stream, slice {meter_addon.CHECKPOINT_SLICE * 1e3:g} ms, "
          f"{reps} passes per mode, medians")
    ratios = []
    for n in (20, 100):
        r = measure(n, reps, table)
        (s_stall, s_took), (u_stall, u_took) = r["sliced"], r["unsliced"]
        print(f"{n:>4} streams: longest loop stall {s_stall:6.2f} ms sliced, {u_stall:6.2f} ms unsliced; "
              f"pass {s_took:6.2f} ms sliced, {u_took:6.2f} ms unsliced")
        ratios.append(f"RATIO checkpoint stall sliced/unsliced ({n} streams) = {s_stall / u_stall:.2f}  "
                      f"({s_stall:.2f} vs {u_stall:.2f} ms)")
    for line in ratios:
        print(line)


if __name__ == "__main__":
    main()
