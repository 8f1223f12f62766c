"""This month's spend by model and by app (the wallet charged; a host for entries from before wallets)."""

from __future__ import annotations

from decimal import Decimal

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import DataTable

from ..aggregate import Aggregates, Bucket, ranked
from ..format import bar, money, ratio, theme_style, tokens

COLUMNS = (("name", ""), ("requests", "requests"), ("blocked", "blocked"), ("in", "in tok"),
           ("out", "out tok"), ("cost", "cost"), ("share", "share"))


class BreakdownTable(DataTable):
    def __init__(self, title: str, first: str, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.border_title = title
        self.first = first
        for key, label in COLUMNS:  # here, not on mount: aggregates may come first
            self.add_column(label or first, key=key)

    def show(self, table: dict[str, Bucket], variables: dict[str, str]) -> None:
        self.clear()
        total = sum((b.cost for b in table.values()), Decimal(0))
        for name, b in ranked(table):
            frac = ratio(b.cost, total) if total else 0.0
            filled, empty = bar(frac, 8)
            self.add_row(
                Text(name, style="bold"),
                Text(f"{b.requests:,}", justify="right"),
                Text(f"{b.blocked:,}" if b.blocked else "", justify="right",
                     style=theme_style(variables, "error")),
                Text(tokens(b.input_tokens), justify="right"),
                Text(tokens(b.output_tokens), justify="right"),
                Text(money(b.cost), justify="right"),
                Text.assemble((filled, theme_style(variables, "primary")), empty, f" {frac * 100:3.0f}%"),
                key=name,
            )


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
