"""Pure aggregation helpers and the history readers (no Textual)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from pouch_addon.budget import Ledger
from pouch_tui.aggregate import (
    Aggregates,
    Periods,
    block_reason,
    client_key,
    day_start,
    days_in_month,
    month_start,
    ranked,
    spend_by,
    spend_per_day,
    spend_per_hour,
    to_decimal,
    week_start,
)
from pouch_tui.reader import PartitionFollower, read_recent

from .conftest import NOW, block, fixed_entries, settle, write_ledger

D = Decimal


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def test_periods_are_utc_day_monday_week_and_month():
    t = ts(2025, 3, 14, 15, 30)  # Friday
    assert day_start(t) == ts(2025, 3, 14)
    assert week_start(t) == ts(2025, 3, 10)
    assert month_start(t) == ts(2025, 3, 1)
    assert days_in_month(t) == 31
    assert days_in_month(ts(2024, 2, 10)) == 29
    # a week that starts in the previous month
    p = Periods.at(ts(2025, 4, 2, 8))
    assert p.week == ts(2025, 3, 31) and p.month == ts(2025, 4, 1) and p.first == p.week
    assert p.same(ts(2025, 4, 2, 23, 59)) and not p.same(ts(2025, 4, 3))


def test_spend_per_hour_today_only():
    entries = [
        settle(1, ts(2025, 3, 14, 0, 0, 1), "m", "0.10"),
        settle(2, ts(2025, 3, 14, 0, 59), "m", "0.05"),
        settle(3, ts(2025, 3, 14, 15, 10), "m", "1.000001"),
        settle(4, ts(2025, 3, 13, 23, 59), "m", "7"),  # yesterday
        block(5, ts(2025, 3, 14, 15, 11), "paused"),
    ]
    hours = spend_per_hour(entries, NOW)
    assert len(hours) == 24
    assert hours[0] == D("0.15") and hours[15] == D("1.000001")
    assert sum(hours, D(0)) == D("1.150001")


def test_spend_per_day_this_month_exact():
    entries = [
        settle(1, ts(2025, 3, 1, 0, 0), "m", "0.1"),
        settle(2, ts(2025, 3, 1, 23, 0), "m", "0.2"),
        settle(3, ts(2025, 3, 14, 1), "m", "0.000000005"),
        settle(4, ts(2025, 2, 28, 23, 59), "m", "9"),  # last month
    ]
    days = spend_per_day(entries, NOW)
    assert len(days) == 31
    assert days[0] == D("0.3") and days[13] == D("0.000000005") and sum(days, D(0)) == D("0.300000005")


def test_today_week_month_totals():
    agg = Aggregates.empty(NOW).add_all(fixed_entries())
    # week starts Monday 10 March: the entries of the last 3 days + today (6 days ago is Saturday 8th)
    today = [e for e in fixed_entries() if e["kind"] == "settle" and e["ts"] >= day_start(NOW)]
    assert agg.today == sum((D(e["cost"]) for e in today), D(0))
    assert agg.requests_today == len(today)
    week = [e for e in fixed_entries() if e["kind"] == "settle" and e["ts"] >= week_start(NOW)]
    assert agg.week == sum((D(e["cost"]) for e in week), D(0))
    month = [e for e in fixed_entries() if e["kind"] == "settle" and e["ts"] >= month_start(NOW)]
    assert agg.month == sum((D(e["cost"]) for e in month), D(0))
    assert agg.requests_month == len(month)
    assert agg.blocked_month == 2
    assert agg.today == sum(agg.per_hour, D(0))
    assert agg.month == sum(agg.per_day, D(0))


def test_breakdown_by_model_and_client():
    entries = [
        settle(1, NOW - 60, "gpt-4o", "0.5", client="10.0.0.1:1000", inp=10, out=5),
        settle(2, NOW - 50, "gpt-4o", "0.25", client="10.0.0.1:1001", inp=20, out=6),
        settle(3, NOW - 40, "gpt-4o-mini", "0.01", client="[::1]:2000"),
        block(4, NOW - 30, "insufficient", model=None, client="10.0.0.2:5"),
    ]
    models = spend_by(entries, NOW, "model")
    assert models["gpt-4o"].requests == 2 and models["gpt-4o"].cost == D("0.75")
    assert models["gpt-4o"].input_tokens == 30 and models["gpt-4o"].output_tokens == 11
    assert models["(unknown)"].blocked == 1 and models["(unknown)"].requests == 0
    clients = spend_by(entries, NOW, "app")
    assert set(clients) == {"10.0.0.1", "::1", "10.0.0.2"}
    assert clients["10.0.0.1"].requests == 2
    assert [name for name, _ in ranked(models)] == ["gpt-4o", "gpt-4o-mini", "(unknown)"]


def test_client_key():
    assert client_key("127.0.0.1:5555") == "127.0.0.1"
    assert client_key("[::1]:80") == "::1"
    assert client_key("unknown") == "unknown"
    assert client_key(None) == "unknown"
    assert client_key("my-agent") == "my-agent"


def test_blocks_and_reasons():
    entries = [block(1, NOW - 9, "paused"), block(2, NOW - 8, "insufficient"),
               {**block(3, NOW - 7, "invalid"), "why": "pouch_unknown_model"}, block(4, NOW - 6, "insufficient")]
    agg = Aggregates.empty(NOW).add_all(entries)
    assert agg.block_reasons == {"budget": 2, "paused": 1, "pouch_unknown_model": 1}
    assert [e["seq"] for e in agg.recent_blocks()] == [4, 3, 2, 1]
    assert block_reason({"reason": "invalid"}) == "invalid"


def test_malformed_entries_do_not_break_aggregation():
    entries = [
        {"kind": "settle", "ts": NOW - 5, "cost": "not money"},
        {"kind": "settle", "ts": "yesterday", "cost": "1"},
        {"kind": "settle", "ts": NOW - 4, "cost": None, "model": None},
        {"kind": "settle", "ts": NOW - 3, "cost": "NaN"},
        {"kind": "mystery", "ts": NOW - 2},
        {"ts": NOW - 1},
        settle(9, NOW - 1, "m", "0.3"),
    ]
    agg = Aggregates.empty(NOW).add_all(entries)
    assert agg.today == D("0.3") and agg.requests_today == 4
    assert to_decimal(1.5) == 0 and to_decimal("2.50") == D("2.50")


def test_copy_is_independent():
    agg = Aggregates.empty(NOW).add_all([settle(1, NOW - 5, "m", "0.1")])
    snap = agg.copy()
    agg.add(settle(2, NOW - 4, "m", "0.2"))
    assert snap.today == D("0.1") and snap.by_model["m"].cost == D("0.1") and snap.per_hour[15] == D("0.1")
    assert agg.by_model["m"].cost == D("0.3")


# -- readers ----------------------------------------------------------------------------------------

def test_read_recent_matches_ledger_history(tmp_path: Path):
    home = tmp_path / "h"
    write_ledger(home, fixed_entries(), budget=D(25))
    ledger = Ledger(home)
    st = ledger.snapshot()
    for limit in (1, 3, 7, 16, 100):
        got, more = read_recent(home / "history", st.history_file, st.history_size, limit=limit)
        assert got == ledger.history(limit=limit, kinds=("settle", "block"))
        assert more == (limit < 16)


def test_read_recent_with_real_ledger_and_small_blocks(tmp_path: Path, monkeypatch):
    import pouch_tui.reader as reader

    monkeypatch.setattr(reader, "BLOCK", 37)  # lines straddle many blocks
    ledger = Ledger(tmp_path / "h", durable=False)
    ledger.set_budget(D(10))
    for i in range(25):
        r = ledger.reserve(D("0.01"), {"model": f"m{i}"})
        ledger.settle(r.id, D("0.001"), details={"input_tokens": i})
    st = ledger.snapshot()
    got, more = read_recent(ledger.home / "history", st.history_file, st.history_size, limit=10)
    assert [e["input_tokens"] for e in got] == list(range(24, 14, -1)) and more
    assert got == ledger.history(limit=10)


def test_read_recent_ignores_unapplied_and_torn_lines(tmp_path: Path):
    home = tmp_path / "h"
    write_ledger(home, fixed_entries(), budget=D(25))
    st = Ledger(home).snapshot()
    part = home / "history" / st.history_file
    with open(part, "a") as fh:  # written ahead, not applied yet, then a torn line
        fh.write(json.dumps(settle(17, NOW, "ahead", "1")) + "\n" + '{"kind": "set')
    got, _ = read_recent(home / "history", st.history_file, st.history_size, limit=5)
    assert got[0]["seq"] == 16
    got, _ = read_recent(home / "history", st.history_file, part.stat().st_size, limit=5)
    assert got[0]["seq"] == 17  # the torn tail is skipped


def test_read_recent_empty(tmp_path: Path):
    assert read_recent(tmp_path, None, 0, limit=10) == ([], False)


def test_partition_follower_reads_each_line_once(tmp_path: Path):
    ledger = Ledger(tmp_path / "h", durable=False)
    ledger.set_budget(D(10))
    follower = PartitionFollower(ledger.home / "history", day_start(NOW) - 86400 * 40)
    seen: list[dict] = []

    def pull() -> None:
        st = ledger.snapshot()
        done = False
        while not done:
            batch, done = follower.read_some(st.history_file, st.history_size, max_bytes=100)
            seen.extend(batch)

    pull()
    assert seen == []
    for i in range(5):
        r = ledger.reserve(D("0.01"), {"model": "m"})
        ledger.settle(r.id, D("0.002"))
        pull()
    pull()
    assert [e["seq"] for e in seen] == [1, 2, 3, 4, 5]


def test_partition_follower_in_slices_matches_whole(tmp_path: Path):
    home = tmp_path / "h"
    write_ledger(home, fixed_entries(), budget=D(25))
    st = Ledger(home).snapshot()
    whole, done = PartitionFollower(home / "history", 0).read_some(st.history_file, st.history_size, 1 << 30)
    assert done and [e["seq"] for e in whole] == list(range(1, 17))
    f = PartitionFollower(home / "history", 0)
    sliced: list[dict] = []
    calls = 0
    while True:
        batch, done = f.read_some(st.history_file, st.history_size, max_bytes=50)  # < one line
        sliced += batch
        calls += 1
        if done:
            break
    assert sliced == whole and calls > 5


def test_calls_are_grouped_by_wallet_when_the_proxy_named_one():
    from pouch_tui.aggregate import caller_key

    entries = [
        settle(1, NOW - 60, "gpt-4o", "0.5", client="127.0.0.1:1000"),
        {**settle(2, NOW - 50, "gpt-4o", "0.25", client="127.0.0.1:1001"), "wallet": "billing"},
        {**block(3, NOW - 40, "insufficient", model=None, client="127.0.0.1:1002"), "wallet": "billing"},
    ]
    callers = spend_by(entries, NOW, "app")
    assert set(callers) == {"127.0.0.1", "billing"}
    assert (callers["billing"].requests, callers["billing"].blocked, callers["billing"].cost) == (1, 1, D("0.25"))
    assert caller_key({"client": "10.0.0.1:5"}) == "10.0.0.1"


def test_burn_rate_minutes_reach_back_over_yesterday_for_the_forecast():
    from pouch_addon.forecast import forecast
    from pouch_tui.aggregate import burn_costs

    monday_first = datetime(2026, 6, 1, 12, tzinfo=UTC).timestamp()  # a Monday and the 1st: week = month = today
    agg = Aggregates.empty(monday_first)
    assert agg.periods.first == day_start(monday_first) - 86400
    agg.add_all([
        {"kind": "settle", "ts": monday_first - 13 * 3600, "cost": "2.4"},  # yesterday, inside the last 24 h
        {"kind": "settle", "ts": monday_first - 60, "cost": "0.5"},
        {"kind": "settle", "ts": monday_first - 50, "cost": "0.25"},  # same minute: one bucket
        {"kind": "block", "ts": monday_first - 40, "cost": "0"},
    ])
    assert agg.month == D("0.75") and len(agg.per_minute) == 2
    one, day = forecast(burn_costs(agg), D("3"), monday_first)
    assert one.rate == D("0.75") and one.seconds == 4 * 3600
    assert day.rate == D("3.15") / 24
