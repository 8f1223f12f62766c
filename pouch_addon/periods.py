"""Budget periods: which window of time a wallet's spend counts in. Pure; all times are UTC.

Periods are computed lazily from timestamps, never by a background job that "resets" wallets
at midnight: the spend that counts now is the settled cost whose timestamp falls in the
window containing ``now``. A stored per-wallet counter can be kept in step the same way by
remembering its :func:`period_key` and starting from zero when ``period_key(p, now)`` differs.

Windows are half-open, ``[start, end)``:
- ``total``: one window for all time (start and end are ``None``);
- ``daily``: 00:00 UTC to the next 00:00 UTC;
- ``weekly``: ISO weeks, Monday 00:00 UTC to the next Monday 00:00 UTC;
- ``monthly``: the 1st 00:00 UTC to the next month's 1st 00:00 UTC.

So an instant exactly on a boundary (Monday 00:00:00) belongs to the window it opens.

API: ``Period``, ``PERIODS``, :func:`parse_period`, :func:`period_start`, :func:`period_end`,
:func:`period_key`, :func:`in_window`, :func:`window_spend`, :func:`spend_in_new_period`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal, cast

from .money import ZERO

Period = Literal["total", "daily", "weekly", "monthly"]
PERIODS: tuple[Period, ...] = ("total", "daily", "weekly", "monthly")
_ALIASES = {"day": "daily", "week": "weekly", "month": "monthly", "all": "total"}


def parse_period(text: str) -> Period:
    """A period from user input: ``total|daily|weekly|monthly`` (or day/week/month), any case."""
    word = str(text).strip().lower()
    word = _ALIASES.get(word, word)
    if word not in PERIODS:
        raise ValueError(f"unknown budget period {text!r}: use one of total, daily, weekly, monthly")
    return cast(Period, word)


def _window(period: Period, ts: float) -> tuple[datetime, datetime] | None:
    if period == "total":
        return None
    # Boundaries are whole seconds, so flooring first keeps ts in its window while avoiding
    # datetime's rounding to the microsecond (23:59:59.9999999 must not become the next day).
    d = datetime.fromtimestamp(math.floor(ts), UTC)
    day = datetime(d.year, d.month, d.day, tzinfo=UTC)
    if period == "daily":
        return day, day + timedelta(days=1)
    if period == "weekly":
        monday = day - timedelta(days=d.weekday())
        return monday, monday + timedelta(days=7)
    if period == "monthly":
        first = day.replace(day=1)
        nxt = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
        return first, nxt
    raise ValueError(f"unknown budget period {period!r}")


def period_start(period: Period, ts: float) -> float | None:
    """Start (inclusive, epoch seconds) of the window holding ``ts``; ``None`` for ``total``."""
    win = _window(period, ts)
    return None if win is None else win[0].timestamp()


def period_end(period: Period, ts: float) -> float | None:
    """End (exclusive) of the window holding ``ts``, i.e. the next window's start; ``None`` for ``total``."""
    win = _window(period, ts)
    return None if win is None else win[1].timestamp()


#: per period, the last window named: (its start, its end, its key) in epoch seconds. A wallet's
#: admission and settle ask for the key of ``now`` several times, nearly always in the same window
_last_window: dict[str, tuple[float, float, str]] = {}


def period_key(period: Period, ts: float) -> str:
    """A stable name for the window holding ``ts``: ``2026-11-23``, ``2026-W48``, ``2026-11``, ``total``.

    Weekly keys use the ISO year, which differs from the calendar year around New Year
    (2026-12-31 is in ``2026-W53``, 2024-12-30 in ``2025-W01``).
    """
    last = _last_window.get(period)
    if last is not None and last[0] <= ts < last[1]:  # the window's bounds are whole seconds
        return last[2]
    win = _window(period, ts)
    if win is None:
        return "total"
    key = _key(period, win[0])
    _last_window[period] = (win[0].timestamp(), win[1].timestamp(), key)
    return key


def _key(period: Period, start: datetime) -> str:
    if period == "daily":
        return start.strftime("%Y-%m-%d")
    if period == "weekly":
        iso = start.isocalendar()
        return f"{iso.year}-W{iso.week:02d}"
    return start.strftime("%Y-%m")


def in_window(period: Period, ts: float, now: float) -> bool:
    """Whether an entry at ``ts`` counts in the window holding ``now``."""
    win = _window(period, now)
    if win is None:
        return True
    return win[0].timestamp() <= ts < win[1].timestamp()


def window_spend(period: Period, entries_ts_costs: Iterable[tuple[float, Decimal]], now: float) -> Decimal:
    """Sum of the costs whose timestamp falls in the window holding ``now`` (exact)."""
    win = _window(period, now)
    if win is None:
        return sum((cost for _, cost in entries_ts_costs), ZERO)
    start, end = win[0].timestamp(), win[1].timestamp()
    return sum((cost for ts, cost in entries_ts_costs if start <= ts < end), ZERO)


def spend_in_new_period(
    old_period: Period, new_period: Period, entries_ts_costs: Iterable[tuple[float, Decimal]], now: float
) -> Decimal:
    """The spend that counts against a wallet right after its period changes.

    Rule: it is the sum of the settled costs (``(ts, cost)`` pairs) whose timestamp falls in
    the *new* period's window holding ``now``. The old period plays no part: spend is never
    carried over or prorated, it is recomputed from history. Hence

    - total -> monthly keeps only this calendar month's spend;
    - monthly -> daily keeps only today's spend;
    - daily -> total (or weekly -> monthly, …) counts everything in the new, wider window,
      including spend from earlier days that had already "reset" under the old period.

    Because the result depends only on history and the new period, switching back and forth
    can neither create nor lose spend. ``old_period`` is validated and kept in the signature
    so callers (and the audit log) state the transition explicitly.
    """
    parse_period(old_period)
    parse_period(new_period)
    return window_spend(new_period, entries_ts_costs, now)
