"""Alerts: tell the user as the money runs low, not only when it has run out. Pure (no I/O).

Thresholds are percentages of a budget's period: the global budget (one window, ``total``) and
each wallet (its ``daily``/``weekly``/``monthly``/``total`` window). The default is 50/80/95/100;
``pouch alert set`` changes them for the global budget or for one wallet (``alerts.json``).

The rule (:func:`spend_alerts`), per scope:

- a threshold fires once when the period's settled spend reaches it (``spent >= t% of budget``);
  when one settle crosses several, one alert names the highest and all of them count as fired;
- it stays quiet while the spend stays at or above it, and a new period re-arms every threshold;
- spend below a fired threshold re-arms it (a top-up, a higher budget): crossing it again fires again.

Also alerted, once each: the first request refused for money in a period (:func:`block_alert`;
the global budget has no period, so for it the UTC day), a wallet or virtual key that expired,
and a ledger that needs attention (:func:`once`). What fired is kept in :class:`AlertState`,
which the proxy persists (``alerts-state.json``) so a restart does not fire again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from .money import ZERO, format_usd, usd_str
from .periods import period_key

__all__ = [
    "CONFIG_FILE", "DEFAULT_THRESHOLDS", "STATE_FILE", "Alert", "AlertConfig", "AlertState", "SpendView",
    "block_alert", "global_view", "once", "parse_thresholds", "spend_alerts", "wallet_view",
]

CONFIG_FILE = "alerts.json"  # thresholds and sinks, written by `pouch alert set`
STATE_FILE = "alerts-state.json"  # what fired, written by the proxy; read by the TUI for its banner
DEFAULT_THRESHOLDS: tuple[int, ...] = (50, 80, 95, 100)
GLOBAL = "global"
RECENT = 20  # alerts kept in the state for the TUI's banner


def parse_thresholds(text: str) -> tuple[int, ...]:
    """``"50,80,95,100"`` -> (50, 80, 95, 100); ``off``/``none`` -> () (no threshold alerts)."""
    word = str(text).strip().lower()
    if word in ("off", "none", ""):
        return ()
    out = set()
    for part in word.replace(" ", "").split(","):
        try:
            n = int(part.rstrip("%"))
        except ValueError:
            raise ValueError(f"thresholds: expected whole percentages like 50,80,95,100, got {text!r}") from None
        if not 1 <= n <= 1000:
            raise ValueError(f"thresholds: each must be 1 to 1000 (%), got {n}")
        out.add(n)
    return tuple(sorted(out))


def scope_name(wallet: str | None) -> str:
    return GLOBAL if wallet is None else f"wallet:{wallet}"


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class SpendView:
    """A budget's settled spend in its current window, as one settle left it."""

    scope: str  # "global" or "wallet:NAME"
    window: str  # periods.period_key of the window the spend counts in
    spent: Decimal
    budget: Decimal
    period: str = "total"


def global_view(state: Any) -> SpendView:
    """The global budget of a ``LedgerState`` (one window for all time)."""
    return SpendView(GLOBAL, "total", state.spent, state.budget)


def wallet_view(state: Any, name: str, now: float) -> SpendView | None:
    """A configured wallet of a ``LedgerState`` at ``now`` (None: a label without a wallet)."""
    w = state.wallets.get(name)
    if w is None:
        return None
    return SpendView(scope_name(name), max(w.window, period_key(w.period, now)), w.spent_at(now), w.budget, w.period)


@dataclass(frozen=True)
class Alert:
    kind: str  # threshold | blocked | wallet_expired | key_expired | ledger | test
    scope: str
    message: str
    ts: float
    window: str = ""
    threshold: int | None = None
    spent: Decimal | None = None
    budget: Decimal | None = None

    def to_json(self) -> dict[str, Any]:
        """The alert as sinks get it: ``text`` is what Slack and Discord show as it is."""
        out: dict[str, Any] = {"text": self.message, "content": self.message, "kind": self.kind,
                               "scope": self.scope, "time": _iso(self.ts), "ts": self.ts, "window": self.window}
        if self.threshold is not None:
            out["threshold_pct"] = self.threshold
        if self.spent is not None:
            out["spent_usd"] = usd_str(self.spent)
        if self.budget is not None:
            out["budget_usd"] = usd_str(self.budget)
        return out


@dataclass
class ScopeState:
    window: str
    fired: set[int] = field(default_factory=set)


@dataclass
class AlertState:
    scopes: dict[str, ScopeState] = field(default_factory=dict)
    done: set[str] = field(default_factory=set)  # keys of one-off alerts already sent
    recent: list[dict[str, Any]] = field(default_factory=list)  # newest last, for the TUI banner
    blocked: dict[str, str] = field(default_factory=dict)  # scope -> the window whose first 402 was alerted

    def scope(self, name: str, window: str) -> ScopeState:
        s = self.scopes.get(name)
        if s is None or s.window != window:  # a new period re-arms everything
            s = self.scopes[name] = ScopeState(window)
        return s

    def remember(self, alerts: list[Alert]) -> None:
        self.recent.extend(a.to_json() for a in alerts)
        del self.recent[:-RECENT]

    def to_json(self) -> dict[str, Any]:
        return {"scopes": {k: {"window": s.window, "fired": sorted(s.fired)} for k, s in sorted(self.scopes.items())},
                "done": sorted(self.done), "blocked": dict(sorted(self.blocked.items())), "recent": self.recent}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AlertState:
        scopes = {str(k): ScopeState(str(v["window"]), {int(t) for t in v.get("fired", [])})
                  for k, v in (d.get("scopes") or {}).items()}
        return cls(scopes, {str(x) for x in d.get("done", [])}, list(d.get("recent") or [])[-RECENT:],
                   {str(k): str(v) for k, v in (d.get("blocked") or {}).items()})

    @classmethod
    def loads(cls, text: str) -> AlertState:
        return cls.from_json(json.loads(text))


@dataclass(frozen=True)
class AlertConfig:
    """``alerts.json``: thresholds (global, per wallet) and the sinks ``pouch alert test`` uses."""

    thresholds: tuple[int, ...] = DEFAULT_THRESHOLDS
    wallets: dict[str, tuple[int, ...]] = field(default_factory=dict)
    webhook: str | None = None
    command: str | None = None
    desktop: bool = True

    def thresholds_for(self, scope: str) -> tuple[int, ...]:
        if scope.startswith("wallet:"):
            return self.wallets.get(scope[len("wallet:"):], self.thresholds)
        return self.thresholds

    def to_json(self) -> dict[str, Any]:
        return {"thresholds": list(self.thresholds), "wallets": {k: list(v) for k, v in sorted(self.wallets.items())},
                "webhook": self.webhook, "command": self.command, "desktop": self.desktop}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AlertConfig:
        def ints(v: Any) -> tuple[int, ...]:
            return parse_thresholds(",".join(str(x) for x in v)) if v else ()
        return cls(ints(d.get("thresholds", DEFAULT_THRESHOLDS)) if "thresholds" in d else DEFAULT_THRESHOLDS,
                   {str(k): ints(v) for k, v in (d.get("wallets") or {}).items()},
                   d.get("webhook") or None, d.get("command") or None, bool(d.get("desktop", True)))


def _what(scope: str, period: str) -> str:
    if scope == GLOBAL:
        return "the global budget"
    name = scope[len("wallet:"):]
    return f"wallet {name!r}" + ("" if period == "total" else f" ({period} budget)")


def spend_alerts(state: AlertState, view: SpendView, thresholds: tuple[int, ...], now: float) -> list[Alert]:
    """Apply the threshold rule (module doc) to one scope's spend; changes ``state``; the alerts to send."""
    s = state.scope(view.scope, view.window)
    if view.budget <= 0:
        return []  # no budget: every call is refused, which the first-402 alert says
    pct = view.spent * 100 / view.budget
    crossed = []
    for t in thresholds:
        if pct >= t:
            if t not in s.fired:
                s.fired.add(t)
                crossed.append(t)
        else:
            s.fired.discard(t)  # re-armed: spend fell below it (top-up) or it never got there
    if not crossed:
        return []
    t = max(crossed)
    left = view.budget - view.spent
    tail = f"{format_usd(left)} left" if left > 0 else (
        "used up: calls are refused" if left == 0 else f"{format_usd(-left)} over")
    msg = (f"pouch: {_what(view.scope, view.period)} is {t}% spent: {format_usd(view.spent)} of "
           f"{format_usd(view.budget)} ({tail})")
    return [Alert("threshold", view.scope, msg, now, view.window, t, view.spent, view.budget)]


def block_alert(state: AlertState, wallet: str | None, window: str | None, message: str, now: float) -> list[Alert]:
    """The first request refused for money (402) in a scope's period; ``window`` None: the UTC day."""
    scope = scope_name(wallet)
    win = window if window is not None else _day(now)
    if state.blocked.get(scope) == win:
        return []
    state.blocked[scope] = win
    return [Alert("blocked", scope, f"pouch: first request refused (402) for {_what(scope, 'total')} "
                                    f"in {win}: {message}", now, win)]


def once(state: AlertState, key: str, alert: Alert) -> list[Alert]:
    """A one-off alert (an expired wallet or key, a ledger problem): sent the first time ``key`` is seen."""
    if key in state.done:
        return []
    state.done.add(key)
    return [alert]


def zero_view(scope: str) -> SpendView:  # for tests and `pouch alert test`
    return SpendView(scope, "total", ZERO, ZERO)
