"""Start with 100,000 history entries: the first screen is populated (timing is in bench/tui_bench.py)."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

from pouch_addon.budget import Ledger, LedgerState, partition_for

from .conftest import NOW, fixed_now, loaded, make_app, run, wait_for

ENTRIES = 100_000
DAYS = 40  # spans the previous month too: only this month's partitions are added up


def seed(home: Path, entries: int = ENTRIES, days: int = DAYS) -> tuple[int, Decimal]:
    """Partition files written directly (like bench/ledger_bench.py's seed); returns this month's count and spend."""
    hist = home / "history"
    hist.mkdir(parents=True)
    per_day = entries // days
    seq, spent = 0, Decimal(0)
    month_count, month_spend = 0, Decimal(0)
    month_first = partition_for(NOW)[:8]  # "2025-03-"
    last, size = None, 0
    for d in range(days):
        ts0 = NOW - 86400 * (days - 1 - d) - 7200
        name = partition_for(ts0)
        lines = []
        for i in range(per_day):
            seq += 1
            cost = Decimal("0.004") if seq % 2 else Decimal("0.0065")
            lines.append(json.dumps({
                "kind": "settle", "id": f"{seq:016x}", "seq": seq, "ts": ts0 + i * 0.05, "time": "",
                "model": ("gpt-4o", "gpt-4o-mini")[seq % 2], "endpoint": "/v1/chat/completions",
                "client": f"10.0.0.{seq % 3}:5{seq % 1000:04d}", "input_tokens": 1000, "cached_tokens": 0,
                "output_tokens": 200, "reasoning_tokens": 0, "reserved": "0.01", "cost": str(cost),
                "status": "ok", "flags": [],
            }, separators=(",", ":")))
            spent += cost
            if name.startswith(month_first):
                month_count += 1
                month_spend += cost
        (hist / name).write_text("\n".join(lines) + "\n")
        last, size = name, (hist / name).stat().st_size
    state = LedgerState(budget=Decimal(1000), spent=spent, requests=seq, seq=seq, history_file=last,
                        history_size=size)
    Ledger(home)._storage.write(state.to_tables())
    return month_count, month_spend


def test_startup_with_100k_entries_populates_first_screen(tmp_path: Path):
    home = tmp_path / "big"
    month_count, month_spend = seed(home)
    assert Ledger(home).status().requests == ENTRIES
    app = make_app(home, now=fixed_now, poll_interval=0.25)

    async def scenario(pilot):
        await loaded(pilot, aggregates=False)
        # the first paint already shows the budget and a screenful of the newest requests
        table = app.history_table
        assert table.row_count >= 20
        assert str(table.get_row_at(0)[1]) in ("gpt-4o", "gpt-4o-mini")
        first = table.current_entry()
        assert first is not None and first["seq"] == ENTRIES  # newest first
        assert f"{ENTRIES:,} requests" in app.gauge.render().plain
        # then the full page, and this month's aggregates in the background
        await wait_for(pilot, lambda: table.row_count == 200, what="full page")
        await wait_for(pilot, lambda: app.aggregates is not None, timeout=60, what="aggregates")
        assert app.aggregates.requests_month == month_count
        assert app.aggregates.month == month_spend
        assert "month $" in app.gauge.render().plain

    run(app, scenario)
