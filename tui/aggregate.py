"""Pure aggregation of ledger history for the dashboard: no I/O, no Textual.

The watcher reads history lines and folds them into an :class:`Aggregates` with
:meth:`Aggregates.add`; everything here is a plain function of the entries and of the
"now" it was built for, so it is unit-tested directly (``tests/tui/test_aggregate.py``).

Periods are UTC: *today* starts at 00:00 UTC, the *week* on Monday 00:00 UTC, the *month* on
the 1st 00:00 UTC. Amounts are exact ``Decimal``; a malformed amount counts as zero rather
than stopping the dashboard.
"""

from __future__ import annotations

import calendar
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from pouch_addon.providers import model_label

ZERO = Decimal(0)
BLOCKS_KEPT = 200  # newest blocks kept for the "Blocked" tab


def to_decimal(value: Any) -> Decimal:
    """An amount from a history entry (a decimal string); anything unreadable is zero."""
    if value is None or isinstance(value, float | bool):
        return ZERO
    try:
        out = Decimal(str(value))
    except (InvalidOperation, ValueError):
        return ZERO
    return out if out.is_finite() else ZERO


def to_int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def day_start(ts: float) -> float:
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def week_start(ts: float) -> float:
    """Monday 00:00 UTC of the week holding ``ts``."""
    d = datetime.fromtimestamp(day_start(ts), UTC)
    return (d - timedelta(days=d.weekday())).timestamp()


def month_start(ts: float) -> float:
    d = datetime.fromtimestamp(ts, UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


def days_in_month(ts: float) -> int:
    d = datetime.fromtimestamp(ts, UTC)
    return calendar.monthrange(d.year, d.month)[1]


def client_key(client: Any) -> str:
    """Group clients by host: the proxy labels a client ``host:port`` and the port changes per connection."""
    text = str(client) if client else "unknown"
    host, sep, port = text.rpartition(":")
    if sep and port.isdigit() and host:
        return host.strip("[]")
    return text


def caller_key(entry: dict[str, Any]) -> str:
    """Who made a call: its wallet (app) when the proxy identified one, else the client's host."""
    wallet = entry.get("wallet")
    return str(wallet) if wallet else client_key(entry.get("client"))


@dataclass
class Bucket:
    """Requests and cost of one model or client."""

    requests: int = 0
    cost: Decimal = ZERO
    input_tokens: int = 0
    output_tokens: int = 0
    blocked: int = 0


@dataclass
class Periods:
    """The UTC period starts an :class:`Aggregates` was built for."""

    now: float
    day: float
    week: float
    month: float
    days: int

    @classmethod
    def at(cls, now: float) -> Periods:
        return cls(now, day_start(now), week_start(now), month_start(now), days_in_month(now))

    @property
    def first(self) -> float:
        """The earliest instant any aggregate needs (the week may start in the previous month;
        the 24 h burn rate needs yesterday)."""
        return min(self.week, self.month, self.day - 86400)

    def same(self, now: float) -> bool:
        """Whether ``now`` is still in the same UTC day (so the aggregates stay valid)."""
        return day_start(now) == self.day


@dataclass
class Aggregates:
    """Spend of today / this week / this month, per hour and per day, by model and by caller.

    ``by_app`` is keyed by :func:`caller_key`: the wallet (app) the proxy charged, or the
    client's host for entries written before wallets existed."""

    periods: Periods
    today: Decimal = ZERO
    week: Decimal = ZERO
    month: Decimal = ZERO
    requests_today: int = 0
    requests_month: int = 0
    blocked_month: int = 0
    per_hour: list[Decimal] = field(default_factory=lambda: [ZERO] * 24)
    per_day: list[Decimal] = field(default_factory=list)
    by_model: dict[str, Bucket] = field(default_factory=dict)
    by_app: dict[str, Bucket] = field(default_factory=dict)
    block_reasons: Counter[str] = field(default_factory=Counter)
    blocks: list[dict[str, Any]] = field(default_factory=list)  # oldest first, the newest BLOCKS_KEPT
    entries: int = 0  # entries folded in (any period)
    per_minute: dict[int, Decimal] = field(default_factory=dict)  # minute (epoch // 60) -> spend, since yesterday 00:00

    @classmethod
    def empty(cls, now: float) -> Aggregates:
        periods = Periods.at(now)
        return cls(periods, per_day=[ZERO] * periods.days)

    def add(self, entry: dict[str, Any]) -> None:
        """Fold one history entry in (entries outside this week and month are ignored)."""
        try:
            ts = float(entry.get("ts", 0))
        except (TypeError, ValueError):
            return
        p = self.periods
        if ts < p.first:
            return
        self.entries += 1
        kind = entry.get("kind")
        in_month = ts >= p.month
        if kind == "block":
            if in_month:
                self.blocked_month += 1
                self.block_reasons[block_reason(entry)] += 1
                self.blocks.append(entry)
                if len(self.blocks) > 2 * BLOCKS_KEPT:
                    del self.blocks[:-BLOCKS_KEPT]
                model = model_label(entry) or "(unknown)"
                self.by_model.setdefault(model, Bucket()).blocked += 1
                self.by_app.setdefault(caller_key(entry), Bucket()).blocked += 1
            return
        if kind != "settle":
            return
        cost = to_decimal(entry.get("cost"))
        if ts >= p.day - 86400:  # for the burn rate (forecast): two days of minutes at most
            minute = int(ts // 60)
            self.per_minute[minute] = self.per_minute.get(minute, ZERO) + cost
        if ts >= p.week:
            self.week += cost
        if ts >= p.day:
            self.today += cost
            self.requests_today += 1
            hour = int((ts - p.day) // 3600)
            if 0 <= hour < 24:
                self.per_hour[hour] += cost
        if in_month:
            self.month += cost
            self.requests_month += 1
            day = int((ts - p.month) // 86400)
            if 0 <= day < len(self.per_day):
                self.per_day[day] += cost
            for key, table in ((model_label(entry) or "(unknown)", self.by_model),
                               (caller_key(entry), self.by_app)):
                b = table.setdefault(key, Bucket())
                b.requests += 1
                b.cost += cost
                b.input_tokens += to_int(entry.get("input_tokens"))
                b.output_tokens += to_int(entry.get("output_tokens"))

    def add_all(self, entries: list[dict[str, Any]]) -> Aggregates:
        for e in entries:
            self.add(e)
        return self

    def copy(self) -> Aggregates:
        """An independent copy (the watcher keeps folding into its own while the UI renders this)."""
        return replace(
            self,
            per_hour=list(self.per_hour),
            per_day=list(self.per_day),
            per_minute=dict(self.per_minute),
            by_model={k: replace(v) for k, v in self.by_model.items()},
            by_app={k: replace(v) for k, v in self.by_app.items()},
            block_reasons=Counter(self.block_reasons),
            blocks=list(self.blocks[-BLOCKS_KEPT:]),
        )

    def recent_blocks(self) -> list[dict[str, Any]]:
        """The newest blocks of the month, newest first."""
        return list(reversed(self.blocks[-BLOCKS_KEPT:]))


def block_reason(entry: dict[str, Any]) -> str:
    """A short reason for a block: ``paused``, ``budget``, or what the proxy refused (``why``)."""
    reason = str(entry.get("reason") or "")
    why = entry.get("why")
    if reason == "insufficient":
        return "budget"
    if reason == "invalid" and why:
        return str(why)
    return reason or str(why or "unknown")


def ranked(table: dict[str, Bucket]) -> list[tuple[str, Bucket]]:
    """Buckets by cost, then requests, then name (a stable order for display)."""
    return sorted(table.items(), key=lambda kv: (-kv[1].cost, -kv[1].requests, -kv[1].blocked, kv[0]))


def spend_per_hour(entries: list[dict[str, Any]], now: float) -> list[Decimal]:
    """Settled spend per UTC hour of the day holding ``now`` (24 values)."""
    return Aggregates.empty(now).add_all(entries).per_hour


def spend_per_day(entries: list[dict[str, Any]], now: float) -> list[Decimal]:
    """Settled spend per UTC day of the month holding ``now`` (one value per day of the month)."""
    return Aggregates.empty(now).add_all(entries).per_day


def spend_by(entries: list[dict[str, Any]], now: float, what: str) -> dict[str, Bucket]:
    """This month's buckets by ``"model"`` or ``"app"`` (see :func:`caller_key`)."""
    agg = Aggregates.empty(now).add_all(entries)
    return agg.by_model if what == "model" else agg.by_app


def burn_costs(agg: Aggregates) -> list[tuple[float, Decimal]]:
    """``(ts, cost)`` per minute of spend, for ``forecast.forecast`` (a minute's spend at its first
    second: never in the future, so the current minute counts)."""
    return [(m * 60.0, c) for m, c in agg.per_minute.items()]
