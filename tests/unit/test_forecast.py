"""Burn rate and time until the money runs out (pouch_addon/forecast.py)."""

from __future__ import annotations

from decimal import Decimal as D

from pouch_addon.forecast import burn_rate, describe, duration_text, forecast, seconds_left, settle_costs

NOW = 1_796_515_200.0  # 2026-12-06T00:00Z


def test_burn_rate_counts_only_its_window_exactly():
    costs = [(NOW - 10, D("0.10")), (NOW - 1800, D("0.20")), (NOW - 3600, D("5")), (NOW - 7200, D("2.4"))]
    assert burn_rate(costs, NOW, 3600) == D("0.30")  # (now-1h, now]: the entry at exactly now-1h is out
    assert burn_rate(costs, NOW, 86400) == D("0.32083333")  # 7.70 / 24, to 8 significant digits
    assert burn_rate([(NOW + 5, D(1))], NOW, 3600) == 0  # the future does not count


def test_seconds_left():
    assert seconds_left(D("1"), D("0.5")) == 7200
    assert seconds_left(D("1"), D("3")) == 1200
    assert seconds_left(D("0.0000001"), D("1000")) == 1  # rounded up, never "0 s" while money remains
    assert seconds_left(D("0"), D("1")) == 0 and seconds_left(D("-1"), D("1")) == 0
    assert seconds_left(D("1"), D("0")) is None


def test_forecast_both_windows_and_a_period_that_ends_first():
    costs = [(NOW - 60, D("1"))]  # $1 in the last hour, $1 in 24 h
    one, day = forecast(costs, D("2"), NOW)
    assert (one.rate, one.seconds) == (D("1"), 7200)
    assert day.rate == D("0.041666667") and day.seconds == 172800  # $2 at 1/24 $/h, rounded up
    one, day = forecast(costs, D("2"), NOW, period_end=NOW + 3 * 3600)  # a daily wallet resetting in 3 h
    assert not one.lasts_period and day.lasts_period
    j = one.to_json(NOW)
    assert j == {"window": "1h", "usd_per_hour": "1", "runs_out_in_s": 7200, "runs_out_at": "2026-12-06T02:00:00Z",
                 "lasts_period": False}


def test_no_spend_no_estimate():
    one, day = forecast([], D("5"), NOW)
    assert one.seconds is None and day.seconds is None and one.rate == 0
    assert "no spend in the last 24 h" in describe([one, day])


def test_describe_and_duration_text():
    text = describe(forecast([(NOW - 60, D("0.5"))], D("1"), NOW))
    assert text.startswith("burn $0.50/h (1 h), ") and text.endswith("runs out in 2 h at the 1 h rate")
    assert [duration_text(s) for s in (5, 600, 3600 + 1200, 3 * 86400)] == ["5 s", "10 min", "1 h 20 min", "3.0 days"]


def test_settle_costs_skips_blocks_and_other_wallets():
    entries = [{"kind": "settle", "ts": 1, "cost": "0.1", "wallet": "a"}, {"kind": "block", "ts": 2, "cost": "0"},
               {"kind": "settle", "ts": 3, "cost": "0.2", "wallet": "b"}]
    assert settle_costs(entries) == [(1.0, D("0.1")), (3.0, D("0.2"))]
    assert settle_costs(entries, "b") == [(3.0, D("0.2"))]
