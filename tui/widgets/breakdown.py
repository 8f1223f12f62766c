"""This month's spend by model and by app (the wallet charged; a host for entries from before wallets)."""

from __future__ import annotations

from decimal import Decimal

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal

from ..aggregate import Aggregates, Bucket, ranked
from ..format import align_points, bar, money, ratio, theme_style, tokens
from .fit import Col, FitTable

COLUMNS = (Col("name", "", 0, soft=14, hard=6), Col("requests", "requests", 2), Col("blocked", "blocked", 5),
           Col("in", "in tok", 4), Col("out", "out tok", 3), Col("cost", "cost", 0), Col("share", "share", 1))


class BreakdownTable(FitTable):
    """Narrow panels drop blocked, in and out tokens, requests, then the share bar; the name
    is cut before the cost is (see :mod:`.fit`)."""

    COLS = COLUMNS

    def __init__(self, title: str, first: str, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.border_title = title
        self.first = first
        self.labels["name"] = first

    def show(self, table: dict[str, Bucket], variables: dict[str, str]) -> None:
        total = sum((b.cost for b in table.values()), Decimal(0))
        rows = []
        for name, b in ranked(table):
            frac = ratio(b.cost, total) if total else 0.0
            filled, empty = bar(frac, 8)
            rows.append((name, {
                "name": Text(name, style="bold"),
                "requests": Text(f"{b.requests:,}", justify="right"),
                "blocked": Text(f"{b.blocked:,}" if b.blocked else "", justify="right",
                                style=theme_style(variables, "error")),
                "in": Text(tokens(b.input_tokens), justify="right"),
                "out": Text(tokens(b.output_tokens), justify="right"),
                "cost": Text(money(b.cost), justify="right"),
                "share": Text.assemble((filled, theme_style(variables, "primary")), empty, f" {frac * 100:3.0f}%"),
            }))
        align_points([cells["cost"] for _, cells in rows])
        self.show_rows(rows)


class Breakdown(Horizontal):
    """Its tables exist from the start (not only once composed): the app may show aggregates
    before this panel, in a tab not yet displayed, has mounted its children."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.by_model = BreakdownTable("By model, this month", "model", id="by-model")
        self.by_app = BreakdownTable("By app, this month", "app", id="by-app")

    def compose(self) -> ComposeResult:
        yield self.by_model
        yield self.by_app

    def show(self, aggregates: Aggregates | None, variables: dict[str, str]) -> None:
        self.by_model.show(aggregates.by_model if aggregates else {}, variables)
        self.by_app.show(aggregates.by_app if aggregates else {}, variables)
