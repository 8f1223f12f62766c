"""Budget periods: UTC windows, keys, boundaries, and the period-change rule."""

import math
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from pouch_addon.periods import (
    PERIODS,
    in_window,
    parse_period,
    period_end,
    period_key,
    period_start,
    spend_in_new_period,
    window_spend,
)


def t(text: str) -> float:
    """Epoch seconds of an ISO UTC time such as ``2026-01-31T23:59:59``."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# -- parse_period -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "text, expected",
    [("total", "total"), ("daily", "daily"), ("Weekly", "weekly"), (" MONTHLY ", "monthly"),
     ("day", "daily"), ("week", "weekly"), ("month", "monthly"), ("all", "total")],
)
def test_parse_period_accepts_names_and_aliases(text, expected):
    assert parse_period(text) == expected


@pytest.mark.parametrize("text", ["", "yearly", "hourly", "dailyy", "1d"])
def test_parse_period_rejects_with_a_clear_message(text):
    with pytest.raises(ValueError) as err:
        parse_period(text)
    assert str(err.value) == f"unknown budget period {text!r}: use one of total, daily, weekly, monthly"


def test_periods_tuple():
    assert PERIODS == ("total", "daily", "weekly", "monthly")


# -- total -----------------------------------------------------------------------------------
def test_total_has_no_window():
    now = t("2026-11-23T12:00:00")
    assert period_start("total", now) is None
    assert period_end("total", now) is None
    assert period_key("total", now) == "total"
    assert in_window("total", 0.0, now) and in_window("total", now + 1e9, now)


# -- daily -----------------------------------------------------------------------------------
def test_daily_window_and_key():
    now = t("2026-11-23T15:30:00")
    assert period_start("daily", now) == t("2026-11-23T00:00:00")
    assert period_end("daily", now) == t("2026-11-24T00:00:00")
    assert period_key("daily", now) == "2026-11-23"


@pytest.mark.parametrize(
    "before, after, key_before, key_after",
    [
        ("2026-01-31T23:59:59", "2026-02-01T00:00:00", "2026-01-31", "2026-02-01"),
        ("2026-12-31T23:59:59", "2027-01-01T00:00:00", "2026-12-31", "2027-01-01"),
        ("2028-02-28T23:59:59", "2028-02-29T00:00:00", "2028-02-28", "2028-02-29"),
        ("2028-02-29T23:59:59", "2028-03-01T00:00:00", "2028-02-29", "2028-03-01"),
        ("2027-02-28T23:59:59", "2027-03-01T00:00:00", "2027-02-28", "2027-03-01"),
    ],
)
def test_daily_boundaries(before, after, key_before, key_after):
    assert period_key("daily", t(before)) == key_before
    assert period_key("daily", t(after)) == key_after
    assert period_end("daily", t(before)) == t(after) == period_start("daily", t(after))


def test_sub_second_before_midnight_stays_in_the_old_day():
    # the last float before midnight: datetime.fromtimestamp rounds it up to the next day
    ts = math.nextafter(t("2026-02-01T00:00:00"), 0)
    assert ts < t("2026-02-01T00:00:00")
    assert datetime.fromtimestamp(ts, UTC).day == 1  # the trap the module avoids
    assert period_key("daily", ts) == "2026-01-31"
    assert period_key("monthly", ts) == "2026-01"
    assert in_window("daily", ts, t("2026-01-31T12:00:00"))


# -- weekly -----------------------------------------------------------------------------------
def test_weekly_starts_monday_midnight():
    wed = t("2026-11-25T10:00:00")
    assert period_start("weekly", wed) == t("2026-11-23T00:00:00")  # Monday
    assert period_end("weekly", wed) == t("2026-11-30T00:00:00")
    assert period_key("weekly", wed) == "2026-W48"


def test_weekly_sunday_last_second_vs_monday_midnight():
    sunday = t("2026-11-29T23:59:59")
    monday = t("2026-11-30T00:00:00")
    assert period_key("weekly", sunday) == "2026-W48"
    assert period_key("weekly", monday) == "2026-W49"
    assert period_start("weekly", sunday) == t("2026-11-23T00:00:00")
    assert period_start("weekly", monday) == monday
    assert period_end("weekly", sunday) == monday


@pytest.mark.parametrize(
    "when, key",
    [
        ("2026-12-31T12:00:00", "2026-W53"),  # Thursday: 2026 has 53 ISO weeks
        ("2027-01-01T00:00:00", "2026-W53"),  # Friday of the same week, next calendar year
        ("2027-01-03T23:59:59", "2026-W53"),  # Sunday
        ("2027-01-04T00:00:00", "2027-W01"),  # Monday
        ("2024-12-30T00:00:00", "2025-W01"),  # Monday in December, next ISO year
        ("2025-12-28T23:59:59", "2025-W52"),
        ("2025-12-29T00:00:00", "2026-W01"),
    ],
)
def test_weekly_keys_use_the_iso_year(when, key):
    assert period_key("weekly", t(when)) == key


def test_year_crossing_week_window():
    ts = t("2026-12-31T12:00:00")
    assert period_start("weekly", ts) == t("2026-12-28T00:00:00")
    assert period_end("weekly", ts) == t("2027-01-04T00:00:00")


# -- monthly -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "when, start, end, key",
    [
        ("2026-01-31T23:59:59", "2026-01-01", "2026-02-01", "2026-01"),
        ("2026-02-01T00:00:00", "2026-02-01", "2026-03-01", "2026-02"),
        ("2026-12-31T23:59:59", "2026-12-01", "2027-01-01", "2026-12"),
        ("2027-01-01T00:00:00", "2027-01-01", "2027-02-01", "2027-01"),
        ("2028-02-29T12:00:00", "2028-02-01", "2028-03-01", "2028-02"),
        ("2026-11-01T00:00:00", "2026-11-01", "2026-12-01", "2026-11"),
    ],
)
def test_monthly_windows(when, start, end, key):
    ts = t(when)
    assert period_start("monthly", ts) == t(start + "T00:00:00")
    assert period_end("monthly", ts) == t(end + "T00:00:00")
    assert period_key("monthly", ts) == key


# -- windows and spend ---------------------------------------------------------------------------
def test_in_window_is_half_open():
    now = t("2026-11-23T12:00:00")
    assert in_window("daily", t("2026-11-23T00:00:00"), now)
    assert not in_window("daily", t("2026-11-22T23:59:59"), now)
    assert in_window("daily", t("2026-11-23T23:59:59"), now)
    assert not in_window("daily", t("2026-11-24T00:00:00"), now)


ENTRIES = [
    (t("2025-12-31T23:59:59"), D("10")),      # last year
    (t("2026-10-31T23:59:59"), D("5")),       # last month
    (t("2026-11-01T00:00:00"), D("0.25")),    # first instant of this month
    (t("2026-11-22T23:59:59"), D("1.5")),     # Sunday, last week
    (t("2026-11-23T00:00:00"), D("0.000001")),  # Monday 00:00, this week, earlier today
    (t("2026-11-23T09:00:00"), D("2")),       # today
]
NOW = t("2026-11-23T12:00:00")  # a Monday


def test_window_spend_per_period():
    assert window_spend("total", ENTRIES, NOW) == D("18.750001")
    assert window_spend("monthly", ENTRIES, NOW) == D("3.750001")
    assert window_spend("weekly", ENTRIES, NOW) == D("2.000001")
    assert window_spend("daily", ENTRIES, NOW) == D("2.000001")
    assert window_spend("daily", [], NOW) == D(0)


def test_window_spend_excludes_the_next_window_start():
    entries = [(t("2026-11-23T00:00:00"), D("1")), (t("2026-11-24T00:00:00"), D("2")),
               (t("2026-11-30T00:00:00"), D("4")), (t("2026-12-01T00:00:00"), D("8"))]
    assert window_spend("daily", entries, NOW) == D("1")
    assert window_spend("weekly", entries, NOW) == D("3")
    assert window_spend("monthly", entries, NOW) == D("7")
    assert window_spend("total", entries, NOW) == D("15")


def test_period_change_total_to_monthly_keeps_only_this_month():
    assert spend_in_new_period("total", "monthly", ENTRIES, NOW) == D("3.750001")


def test_period_change_monthly_to_daily_keeps_only_today():
    assert spend_in_new_period("monthly", "daily", ENTRIES, NOW) == D("2.000001")


def test_period_change_daily_to_total_counts_everything():
    assert spend_in_new_period("daily", "total", ENTRIES, NOW) == D("18.750001")


def test_period_change_depends_only_on_the_new_period():
    for old in PERIODS:
        assert spend_in_new_period(old, "weekly", ENTRIES, NOW) == D("2.000001")
    # back and forth changes nothing
    there = spend_in_new_period("monthly", "daily", ENTRIES, NOW)
    back = spend_in_new_period("daily", "monthly", ENTRIES, NOW)
    assert (there, back) == (D("2.000001"), D("3.750001"))


def test_period_change_accepts_a_generator_and_is_exact():
    gen = ((NOW - i, D("0.1")) for i in range(10))
    assert spend_in_new_period("total", "daily", gen, NOW) == D("1.0")


def test_period_change_rejects_unknown_periods():
    with pytest.raises(ValueError):
        spend_in_new_period("yearly", "daily", ENTRIES, NOW)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        spend_in_new_period("daily", "hourly", ENTRIES, NOW)  # type: ignore[arg-type]


def test_period_key_from_the_last_window_is_the_key_datetime_gives():
    """``period_key`` names a timestamp in the window it named last without datetime: timestamps
    in order, jumping back and forth, and on each side of midnight, a Monday and a month's first
    second, against the key computed from datetime each time."""
    import math
    import random
    from datetime import UTC, datetime, timedelta

    def reference(period, ts):
        d = datetime.fromtimestamp(math.floor(ts), UTC)
        day = datetime(d.year, d.month, d.day, tzinfo=UTC)
        if period == "daily":
            return day.strftime("%Y-%m-%d")
        if period == "weekly":
            iso = (day - timedelta(days=d.weekday())).isocalendar()
            return f"{iso.year}-W{iso.week:02d}"
        return day.strftime("%Y-%m")

    rng = random.Random(20)
    base = 1.78e9
    stamps = [base + rng.uniform(0, 3 * 86400) for _ in range(3000)]
    stamps += sorted(base + rng.uniform(0, 90 * 86400) for _ in range(3000))
    stamps += [rng.uniform(0, 4e9) for _ in range(3000)]
    for day in range(20000, 20500):  # around each midnight of 500 days (months, weeks, years turn)
        stamps += [day * 86400 - 1e-7, day * 86400 - 0.5, day * 86400, day * 86400 + 1e-6, day * 86400 - 1]
    for period in ("daily", "weekly", "monthly"):
        for ts in stamps:
            assert period_key(period, ts) == reference(period, ts), (period, ts)
    assert period_key("total", base) == "total"
