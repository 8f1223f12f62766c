"""What alerts, metrics and traces cost per settled call, in this process (no mitmproxy).

Per call, on the event loop: each observer's ``on_settle`` (alerting and tracing: a queue put;
metrics: counters and a histogram). Off the loop, still CPU of the proxy's process: the tracing
thread's span (its OTLP bytes, and its share of a 512-span request; not posted here) and, on
the ledger's committer thread, ``core.with_views`` (the spend views a settle returns when there
are observers). Each figure is the median of 5 runs of
``--calls`` calls; ``proxy_bench.py --against-pouch`` measures the same through mitmdump, but on
a loaded machine its figures move by more than these costs.

    .venv/bin/python bench/telemetry_bench.py [--calls N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pouch_addon.addons.alerting import AlertWorker, Alerting  # noqa: E402
from pouch_addon.addons.core import Core, FlowCall, with_views  # noqa: E402
from pouch_addon.addons.metrics import Metrics  # noqa: E402
from pouch_addon.addons.tracing import Tracing  # noqa: E402
from pouch_addon.alert_sinks import Sinks  # noqa: E402
from pouch_addon.telemetry import export_request  # noqa: E402
from pouch_addon.budget import Ledger, LedgerState, Wallet  # noqa: E402
from pouch_addon.plan import PlanSettings, make_plan  # noqa: E402
from pouch_addon.pricing import PriceTable  # noqa: E402


def per_call_us(fn, n: int) -> float:
    runs = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        runs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(runs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=20000)
    n = ap.parse_args().calls
    home = Path(tempfile.mkdtemp(prefix="pouch-telemetry-bench-"))
    ledger = Ledger(home)
    ledger.set_budget(Decimal(100))
    res = ledger.reserve(Decimal("0.01"), wallet="app")
    plan = make_plan("POST", "/v1/chat/completions",
                     {"model": "gpt-4o-mini", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
                     table=PriceTable.load(), remaining=Decimal(1), settings=PlanSettings())
    call = FlowCall(plan=plan, reservation=res, client="127.0.0.1:1", ledger=ledger, wallet="app")
    entry = {"kind": "settle", "id": res.id, "ts": time.time(), "cost": "0.0000123", "status": "ok",
             "provider": "openai", "model": "gpt-4o-mini", "endpoint": "/v1/chat/completions", "wallet": "app",
             "input_tokens": 30, "cached_tokens": 10, "output_tokens": 7, "reasoning_tokens": 2,
             "usage_source": "provider", "flags": [], "http_status": 200, "output_cap": 20}

    class Txn:
        state = LedgerState(budget=Decimal(100), spent=Decimal(3), wallets={"app": Wallet("app", Decimal(5))})
    op = with_views(lambda txn: entry, "app")
    txn = Txn()
    _, views = op(txn)

    core = Core()
    alerting = Alerting(core)
    alerting.worker = AlertWorker(home, Sinks(), 15.0)  # not started: its queue only fills
    metrics = Metrics(core)
    metrics.build(20)
    metrics.on = True
    tracing = Tracing(core)
    os.environ.setdefault("OTEL_BSP_MAX_QUEUE_SIZE", str(10 * n))  # a burst this size is not dropped here
    tracing.start(lambda body: None)  # posting is the exporter's HTTP time; the bytes are made

    spans512 = [tracing._span(call.started, call.reserved, "app", "gpt-4o-mini", entry, time.time_ns())] * 512
    results = {  # the span first: on_settle's queue then keeps the tracing thread busy
        "tracing: a span (its own thread)": per_call_us(
            lambda: tracing._span(call.started, call.reserved, "app", "gpt-4o-mini", entry, time.time_ns()), n),
        "tracing: the request, per span": per_call_us(lambda: export_request(
            tracing._resource, tracing._scope, spans512), n // 512 or 1) / 512,
        "with_views (committer thread)": per_call_us(lambda: op(txn), n),
        "alerting.on_settle": per_call_us(lambda: alerting.on_settle(call, entry, views, 0.001), n),
        "metrics.on_settle": per_call_us(lambda: metrics.on_settle(call, entry, views, 0.001), n),
        "tracing.on_settle": per_call_us(lambda: tracing.on_settle(call, entry, views, 0.001), n),
    }
    tracing.done()
    for name, us in results.items():
        print(f"{name:<32} {us:7.1f} us per call")
    loop = sum(v for k, v in results.items() if "on_settle" in k)
    print(f"event loop, all three observers: {loop:.1f} us per settled call; "
          f"all CPU: {sum(results.values()):.1f} us per settled call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
