"""When the money runs out: burn rate over the last hour and the last 24 h, and the time until a
budget is spent at that rate. Pure functions over ``(ts, cost)`` pairs of settled history; money
stays ``Decimal`` (a rate is USD per hour), only the time left is whole seconds.

The estimate is linear: what remains divided by the rate of the window. No spend in a window
means no estimate (``None``: "not at this rate"). A wallet whose period ends before it would run
out is reported as lasting its period (``lasts_period``): its spend starts again from zero.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import ROUND_CEILING, Context, Decimal
from typing import Any

from .money import ZERO, format_usd, usd_str

HOUR, DAY = 3600, 86400
_RATE = Context(prec=8)  # a rate is a quotient: kept to 8 significant digits, not 28
WINDOWS = ((HOUR, "1h"), (DAY, "24h"))


def burn_rate(costs: Iterable[tuple[float, Decimal]], now: float, window_s: int) -> Decimal:
    """USD per hour settled in ``(now - window_s, now]`` (8 significant digits)."""
    start = now - window_s
    total = sum((c for ts, c in costs if start < ts <= now), ZERO)
    return _RATE.divide(total * HOUR, Decimal(window_s)).normalize(_RATE) if total else ZERO


def seconds_left(remaining: Decimal, rate_per_hour: Decimal) -> int | None:
    """Whole seconds until ``remaining`` is spent at ``rate_per_hour`` (rounded up); 0 when nothing
    remains; None when nothing is being spent."""
    if remaining <= 0:
        return 0
    if rate_per_hour <= 0:
        return None
    return int((remaining * HOUR / rate_per_hour).to_integral_value(rounding=ROUND_CEILING))


@dataclass(frozen=True)
class Estimate:
    window: str  # "1h" or "24h"
    rate: Decimal  # USD per hour over the window
    seconds: int | None  # until the budget is spent at that rate (None: no spend in the window)
    lasts_period: bool = False  # the period ends (and the spend resets) before then

    def to_json(self, now: float) -> dict[str, Any]:
        at = None if self.seconds is None else datetime.fromtimestamp(now + self.seconds, UTC)
        return {"window": self.window, "usd_per_hour": usd_str(self.rate), "runs_out_in_s": self.seconds,
                "runs_out_at": None if at is None else at.isoformat(timespec="seconds").replace("+00:00", "Z"),
                "lasts_period": self.lasts_period}


def forecast(costs: Iterable[tuple[float, Decimal]], remaining: Decimal, now: float,
             period_end: float | None = None) -> list[Estimate]:
    """The 1 h and 24 h estimates for a budget with ``remaining`` left (``period_end``: a wallet's
    window end, after which its spend starts again)."""
    pairs = list(costs)
    out = []
    for window_s, name in WINDOWS:
        rate = burn_rate(pairs, now, window_s)
        secs = seconds_left(remaining, rate)
        lasts = secs is not None and secs > 0 and period_end is not None and now + secs >= period_end
        out.append(Estimate(name, rate, secs, lasts))
    return out


def duration_text(seconds: int) -> str:
    """``45 s``, ``12 min``, ``3 h 20 min``, ``4.5 days`` (for people; exact figures are in --json)."""
    if seconds < 60:
        return f"{seconds} s"
    if seconds < HOUR:
        return f"{seconds // 60} min"
    if seconds < 2 * DAY:
        h, m = divmod(seconds // 60, 60)
        return f"{h} h" + (f" {m} min" if m else "")
    return f"{seconds / DAY:.1f} days"


def describe(estimates: list[Estimate]) -> str:
    """One line: ``burn $0.50/h (1 h), $0.20/h (24 h); runs out in 3 h 20 min at the 1 h rate``."""
    rates = ", ".join(f"{format_usd(e.rate)}/h ({e.window[:-1]} {e.window[-1]})" for e in estimates)
    first = next((e for e in estimates if e.seconds is not None), None)
    if first is None:
        return f"burn {rates}; no spend in the last 24 h"
    if first.seconds == 0:
        return f"burn {rates}; nothing left"
    if first.lasts_period:
        return f"burn {rates}; lasts its period at the {first.window[:-1]} {first.window[-1]} rate"
    return f"burn {rates}; runs out in {duration_text(first.seconds)} at the {first.window[:-1]} {first.window[-1]} rate"


def settle_costs(entries: Iterable[dict[str, Any]], wallet: str | None = None) -> list[tuple[float, Decimal]]:
    """``(ts, cost)`` of the settles among history ``entries`` (of one wallet, if given)."""
    return [(float(e["ts"]), Decimal(e["cost"])) for e in entries
            if e.get("kind") == "settle" and (wallet is None or e.get("wallet") == wallet)]
