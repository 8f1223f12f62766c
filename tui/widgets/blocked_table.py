"""Blocked requests this month and why: paused, budget, or what the proxy refused."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ..aggregate import Aggregates, block_reason, caller_key
from ..format import clock, money, short_endpoint, theme_style
from .history_table import EntryTable, entry_key

COLUMNS = (("time", "time (UTC)"), ("model", "model"), ("app", "app"), ("endpoint", "endpoint"),
           ("reason", "reason"), ("needed", "needed"), ("remaining", "remaining"), ("message", "message"))


class BlockedTable(EntryTable):
    """Blocks of the month, newest first; rebuilt on each update."""

    COLUMNS = COLUMNS

    def show(self, blocks: list[dict[str, Any]], now: float, variables: dict[str, str]) -> None:
        self.clear()
        self.keys = [entry_key(e) for e in blocks]
        self.entries = dict(zip(self.keys, blocks))
        for key, e in zip(self.keys, blocks):
            why = block_reason(e)
            message = str(e.get("detail") or e.get("message") or "")
            self.add_row(
                Text(clock(e.get("ts"), now)),
                Text(str(e.get("model") or "—")),
                Text(caller_key(e)),
                Text(short_endpoint(e.get("endpoint"))),
                Text(why, style=theme_style(variables, "warning" if why == "paused" else "error")),
                Text(money(e.get("needed")) if e.get("reason") == "insufficient" else "—", justify="right"),
                Text(money(e.get("remaining")) if e.get("reason") == "insufficient" else "—", justify="right"),
                Text(message, no_wrap=True, overflow="ellipsis"),
                key=key,
            )


class BlockedPanel(Vertical):
    """Its children exist from the start (not only once composed): the app may show aggregates
    before this panel, in a tab not yet displayed, has mounted them."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.summary = Static("", id="blocked-summary", markup=False)
        self.table = BlockedTable(id="blocked-table")

    def compose(self) -> ComposeResult:
        yield self.summary
        yield self.table

    def show(self, aggregates: Aggregates | None, now: float, variables: dict[str, str]) -> None:
        if aggregates is None:
            self.summary.update("")
            self.table.show([], now, variables)
            return
        reasons = ", ".join(f"{why} {n:,}" for why, n in aggregates.block_reasons.most_common())
        summary = (f"{aggregates.blocked_month:,} blocked this month" + (f": {reasons}" if reasons else "")
                   if aggregates.blocked_month else "Nothing blocked this month.")
        self.summary.update(summary)
        self.table.show(aggregates.recent_blocks(), now, variables)
