"""Recent requests, newest first: time, model, endpoint, tokens in/cached/out/reasoning, cost, status.

Narrow terminals drop endpoint, reasoning, cached, in and out tokens (in that order); the cost
is always shown in full (see :mod:`.fit`)."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from ..aggregate import block_reason, to_decimal
from ..format import align_points, clock, money, short_endpoint, status_colour, theme_style, tokens
from .fit import Col, FitTable
from pouch_addon.providers import model_label

COLUMNS = (Col("time", "time (UTC)", 1), Col("model", "model", 0, soft=16, hard=6),
           Col("endpoint", "endpoint", 8), Col("in", "in", 5), Col("cached", "cached", 6), Col("out", "out", 4),
           Col("reasoning", "reasoning", 7), Col("cost", "cost", 0), Col("status", "status", 2, soft=12, hard=6))


def entry_key(entry: dict[str, Any]) -> str:
    """A stable row key: the ledger's sequence number (unique per applied entry)."""
    return f"seq-{entry.get('seq', id(entry))}"


class EntryTable(FitTable):
    """A table of ledger entries (history, blocks), one row per entry keyed by :func:`entry_key`."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.entries: dict[str, dict[str, Any]] = {}
        self.keys: list[str] = []

    def current_key(self) -> str | None:
        if not self.keys or not (0 <= self.cursor_row < len(self.keys)):
            return None
        return self.keys[self.cursor_row]

    def current_entry(self) -> dict[str, Any] | None:
        key = self.current_key()
        return self.entries.get(key) if key else None


class HistoryTable(EntryTable):
    """Entries are replaced wholesale on each update; the cursor stays on the same entry (or on
    the newest one when it was there)."""

    COLS = COLUMNS

    def show(self, entries: list[dict[str, Any]], now: float, variables: dict[str, str]) -> None:
        keys = [entry_key(e) for e in entries]
        if keys == self.keys and all(self.entries.get(k) is e for k, e in zip(keys, entries)):
            return
        at_top = self.cursor_row == 0
        self.entries = dict(zip(keys, entries))
        self.keys = keys
        rows = [(key, self.cells(entry, now, variables)) for key, entry in zip(keys, entries)]
        align_points([cells["cost"] for _, cells in rows])
        self.show_rows(rows, follow_top=at_top)

    @staticmethod
    def cells(entry: dict[str, Any], now: float, variables: dict[str, str]) -> dict[str, Text]:
        status = str(entry.get("status") or ("blocked" if entry.get("kind") == "block" else "?"))
        blocked = entry.get("kind") == "block"
        flags = [str(f) for f in entry.get("flags") or [] if f != status]
        if blocked:
            flags = [block_reason(entry)]
        elif entry.get("local") is True:  # a local model server's call, at an explicit $0
            flags.append("local")
        label = status + (f" ({', '.join(flags)})" if flags else "")
        num = (lambda k: Text("", justify="right")) if blocked else (
            lambda k: Text(tokens(entry.get(k)), justify="right"))
        cost = to_decimal(entry.get("cost"))
        return {
            "time": Text(clock(entry.get("ts"), now)),
            "model": Text(model_label(entry) or "—", style="bold" if not blocked else ""),
            "endpoint": Text(short_endpoint(entry.get("endpoint"))),
            "in": num("input_tokens"),
            "cached": num("cached_tokens"),
            "out": num("output_tokens"),
            "reasoning": num("reasoning_tokens"),
            "cost": Text(money(cost) if not blocked else "—", justify="right"),
            "status": Text(label, style=theme_style(variables, status_colour(status))),
        }
