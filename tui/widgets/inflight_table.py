"""Requests in flight: model, app, elapsed time, tokens streamed so far and the running cost
against the reservation (from the proxy's checkpoints, written every 0.5 s while streaming)."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from pouch_addon.budget import Reservation

from ..aggregate import caller_key, to_decimal
from ..format import align_points, bar, duration, money, ratio, short_endpoint, theme_style, tokens
from ..messages import LedgerSnapshot
from .fit import Col, FitTable
from pouch_addon.providers import model_label

COLUMNS = (Col("model", "model", 0, soft=14, hard=6), Col("app", "app", 2, soft=12, hard=6),
           Col("endpoint", "endpoint", 7), Col("elapsed", "elapsed", 5), Col("tokens", "out tokens", 6),
           Col("cost", "cost so far", 0), Col("reserved", "reserved", 3), Col("use", "of reservation", 4),
           Col("state", "state", 1))


class InFlightTable(FitTable):
    """Rows keyed by reservation id, updated in place (see :class:`.fit.FitTable`). The app is
    the wallet the proxy charges (else the client's host), as in the Breakdown's "By app"."""

    COLS = COLUMNS

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False, show_cursor=False)
        self.border_title = "In flight"
        self.reservations: dict[str, Reservation] = {}
        self.dead: frozenset[str] = frozenset()
        self.variables: dict[str, str] = {}

    def show(self, snapshot: LedgerSnapshot | None, now: float, variables: dict[str, str]) -> None:
        self.reservations = {r.id: r for r in (snapshot.open if snapshot else [])}
        self.dead = snapshot.dead_owners if snapshot else frozenset()
        self.variables = variables
        self._show(now)
        n = len(self.reservations)
        self.border_title = f"In flight ({n})" if n else "In flight"
        self.set_class(n == 0, "-empty")

    def tick(self, now: float) -> None:
        """Only the elapsed time moves between ledger writes."""
        if self.reservations:
            self._show(now)

    def _show(self, now: float) -> None:
        rows = [(res.id, self.cells(res, now, self.variables)) for res in self.reservations.values()]
        for col in ("cost", "reserved"):
            align_points([cells[col] for _, cells in rows])
        self.show_rows(rows)

    def cells(self, res: Reservation, now: float, variables: dict[str, str]) -> dict[str, Text]:
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
        return {
            "model": Text(model_label(meta) or "?", style="bold"),
            "app": Text(caller_key(meta)),
            "endpoint": Text(short_endpoint(meta.get("endpoint"))),
            "elapsed": Text(duration(now - res.created), justify="right"),
            "tokens": Text(tokens(cp.get("output_tokens")), justify="right"),
            "cost": Text(money(cost) if cost is not None else "—", justify="right"),
            "reserved": Text(money(res.amount), justify="right"),
            "use": Text.assemble((filled, theme_style(variables, colour)), empty, f" {frac * 100:3.0f}%"),
            "state": state,
        }
