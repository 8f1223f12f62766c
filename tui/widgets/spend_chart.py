"""Spend over time: a bar chart drawn with block characters, per hour today or per day this month."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from textual.content import Content
from textual.reactive import reactive
from textual.widget import Widget

from ..aggregate import Aggregates
from ..format import fitting, money

EIGHTHS = " ▁▂▃▄▅▆▇█"


def bar_rows(values: list[Decimal], rows: int) -> list[list[str]]:
    """Columns of block characters, top row first: ``rows`` cells of eighths per value.

    Each value is scaled to the largest; a non-zero value always shows at least one eighth.
    """
    top = max(values, default=Decimal(0))
    grid = [[" "] * len(values) for _ in range(rows)]
    if top <= 0:
        return grid
    total = rows * 8
    for x, v in enumerate(values):
        units = 0 if v <= 0 else max(1, round(float(v / top) * total))
        for r in range(rows):  # r = 0 is the bottom row
            cell = min(8, max(0, units - r * 8))
            grid[rows - 1 - r][x] = EIGHTHS[cell]
    return grid


class SpendChart(Widget):
    """Renders the spend series of an :class:`Aggregates`; ``mode`` is ``hour`` or ``day``."""

    mode: reactive[str] = reactive("hour")

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.aggregates: Aggregates | None = None
        self.placeholder = "adding up this month…"
        self.border_title = "Spend"

    def show(self, aggregates: Aggregates | None, placeholder: str = "adding up this month…") -> None:
        self.aggregates = aggregates
        self.placeholder = placeholder
        self.refresh()

    def toggle(self) -> None:
        self.mode = "day" if self.mode == "hour" else "hour"

    def watch_mode(self) -> None:
        self.border_title = "Spend per hour, today (UTC)" if self.mode == "hour" else "Spend per day, this month (UTC)"

    def render(self) -> Content:
        agg = self.aggregates
        if agg is None:
            return Content.styled(self.placeholder, "$text-muted")
        width = max(10, self.size.width or 50)
        height = max(3, self.size.height or 6)
        p = agg.periods
        if self.mode == "hour":
            values = agg.per_hour
            current = int((p.now - p.day) // 3600)
            total, label = agg.today, "today"
            ticks = {0: "0h", 6: "6", 12: "12", 18: "18", 23: "23"}
        else:
            values = agg.per_day
            current = int((p.now - p.month) // 86400)
            total, label = agg.month, datetime.fromtimestamp(p.month, UTC).strftime("%B")
            ticks = {i: str(i + 1) for i in range(0, len(values), 7)} | {len(values) - 1: str(len(values))}
        n = len(values)
        slot = max(1, width // n)  # cells per value
        bar_w = max(1, slot - 1) if slot >= 3 else slot
        peak = max(values, default=Decimal(0))
        unit = "hour" if self.mode == "hour" else "day"
        head = fitting(
            width,
            Content.assemble((f"{label} ", "$text-muted"), (money(total), "bold"),
                             ("   peak ", "$text-muted"), (money(peak), "bold"), (f" per {unit}", "$text-muted")),
            Content.assemble((f"{label} ", "$text-muted"), (money(total), "bold"),
                             ("  peak ", "$text-muted"), (money(peak), "bold"), (f"/{unit[0]}", "$text-muted")),
            Content.assemble((f"{label} ", "$text-muted"), (money(total), "bold")),
        )
        rows = height - 2
        grid = bar_rows(values, rows)
        lines = [head]
        for row in grid:
            parts: list[tuple[str, str] | str] = []
            for x, ch in enumerate(row):
                style = "$accent" if x == current else "$text-muted" if x > current else "$primary"
                if x > current:
                    ch = " "
                parts.append((ch * bar_w, style))
                if slot > bar_w:
                    parts.append(" " * (slot - bar_w))
            lines.append(Content.assemble(*parts))
        axis = [" "] * (n * slot)
        for i, text in ticks.items():
            start = min(i * slot, len(axis) - len(text))
            if all(c == " " for c in axis[max(0, start - 1):start + len(text)]):
                axis[start:start + len(text)] = list(text)
        lines.append(Content.styled("".join(axis), "$text-muted"))
        return Content("\n").join(line.truncate(width) for line in lines)
