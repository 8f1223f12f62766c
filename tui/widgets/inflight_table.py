"""Requests in flight: model, client, elapsed time, tokens streamed so far and the running cost
against the reservation (from the proxy's checkpoints, written every 0.5 s while streaming)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from pouch_addon.budget import Reservation

from ..aggregate import client_key, to_decimal
from ..format import bar, duration, money, ratio, short_endpoint, theme_style, tokens
from ..messages import LedgerSnapshot

COLUMNS = (("model", "model"), ("client", "client"), ("endpoint", "endpoint"), ("elapsed", "elapsed"),
           ("tokens", "out tokens"), ("cost", "cost so far"), ("reserved", "reserved"), ("use", "of reservation"),
           ("state", "state"))


class InFlightTable(DataTable):
    """Rows keyed by reservation id: updated in place, so the cursor does not jump."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_cursor=False)
        self.border_title = "In flight"
        self.reservations: dict[str, Reservation] = {}
        self.dead: frozenset[str] = frozenset()
        for key, label in COLUMNS:  # here, not on mount: a ledger update may come first
            self.add_column(label, key=key)

    def show(self, snapshot: LedgerSnapshot | None, now: float, variables: dict[str, str]) -> None:
        reservations = {r.id: r for r in (snapshot.open if snapshot else [])}
        self.dead = snapshot.dead_owners if snapshot else frozenset()
        for gone in set(self.reservations) - set(reservations):
            self.remove_row(gone)
        for res in reservations.values():
            cells = self.cells(res, now, variables)
            if res.id in self.reservations:
                for (key, _), value in zip(COLUMNS, cells):
                    self.update_cell(res.id, key, value)
            else:
                self.add_row(*cells, key=res.id)
        self.reservations = reservations
        n = len(reservations)
        self.border_title = f"In flight ({n})" if n else "In flight"
        self.set_class(n == 0, "-empty")

    def tick(self, now: float) -> None:
        """Only the elapsed time moves between ledger writes."""
        for res in self.reservations.values():
            self.update_cell(res.id, "elapsed", Text(duration(now - res.created), justify="right"))

    def cells(self, res: Reservation, now: float, variables: dict[str, str]) -> list[Any]:
        meta: dict[str, Any] = res.meta or {}
        cp: dict[str, Any] = res.checkpoint if isinstance(res.checkpoint, dict) else {}
        cost = to_decimal(cp.get("running_cost")) if "running_cost" in cp else None
        frac = ratio(cost, res.amount) if cost is not None else 0.0
        colour = "success" if frac < 0.75 else "warning" if frac < 0.95 else "error"
        filled, empty = bar(frac, 10)
        if res.id in self.dead:
            state = Text("owner gone", style=theme_style(variables, "error"))
        elif not cp:
            state = Text("waiting", style=theme_style(variables, "text-muted"))
        elif meta.get("stream"):
            state = Text("streaming", style=theme_style(variables, "success"))
        else:
            state = Text("running", style=theme_style(variables, "success"))
        return [
            Text(str(meta.get("model") or "?"), style="bold"),
            Text(client_key(meta.get("client"))),
            Text(short_endpoint(meta.get("endpoint"))),
            Text(duration(now - res.created), justify="right"),
            Text(tokens(cp.get("output_tokens")), justify="right"),
            Text(money(cost) if cost is not None else "—", justify="right"),
            Text(money(res.amount), justify="right"),
            Text.assemble((filled, theme_style(variables, colour)), empty, f" {frac * 100:3.0f}%"),
            state,
        ]
