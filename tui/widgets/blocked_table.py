"""Blocked requests this month and why: paused, budget, or what the proxy refused."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

from ..aggregate import Aggregates, block_reason, caller_key
from ..format import align_points, clock, money, short_endpoint, theme_style
from .fit import Col
from .history_table import EntryTable, entry_key

COLUMNS = (Col("time", "time (UTC)", 1), Col("model", "model", 5, soft=12, hard=6),
           Col("app", "app", 4, soft=12, hard=6), Col("endpoint", "endpoint", 7), Col("reason", "reason", 0),
           Col("needed", "needed", 2), Col("remaining", "remaining", 3),
           Col("message", "message", 6, soft=20, hard=10))


class BlockedTable(EntryTable):
    """Blocks of the month, newest first; rebuilt on each update."""

    COLS = COLUMNS

    def show(self, blocks: list[dict[str, Any]], now: float, variables: dict[str, str]) -> None:
        self.keys = [entry_key(e) for e in blocks]
        self.entries = dict(zip(self.keys, blocks))
        rows = []
        for key, e in zip(self.keys, blocks):
            why = block_reason(e)
            insufficient = e.get("reason") == "insufficient"
            rows.append((key, {
                "time": Text(clock(e.get("ts"), now)),
                "model": Text(str(e.get("model") or "—")),
                "app": Text(caller_key(e)),
                "endpoint": Text(short_endpoint(e.get("endpoint"))),
                "reason": Text(why, style=theme_style(variables, "warning" if why == "paused" else "error")),
                "needed": Text(money(e.get("needed")) if insufficient else "—", justify="right"),
                "remaining": Text(money(e.get("remaining")) if insufficient else "—", justify="right"),
                "message": Text(str(e.get("detail") or e.get("message") or ""), no_wrap=True, overflow="ellipsis"),
            }))
        for col in ("needed", "remaining"):
            align_points([cells[col] for _, cells in rows])
        self.show_rows(rows)


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
