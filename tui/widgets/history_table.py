"""Recent requests, newest first: time, model, endpoint, tokens in/cached/out/reasoning, cost, status."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.widgets import DataTable

from ..aggregate import block_reason, to_decimal
from ..format import clock, money, short_endpoint, status_colour, theme_style, tokens

COLUMNS = (("time", "time (UTC)"), ("model", "model"), ("endpoint", "endpoint"), ("in", "in"),
           ("cached", "cached"), ("out", "out"), ("reasoning", "reasoning"), ("cost", "cost"),
           ("status", "status"))


def entry_key(entry: dict[str, Any]) -> str:
    """A stable row key: the ledger's sequence number (unique per applied entry)."""
    return f"seq-{entry.get('seq', id(entry))}"


class EntryTable(DataTable):
    """A table of ledger entries (history, blocks), one row per entry keyed by :func:`entry_key`."""

    COLUMNS: tuple[tuple[str, str], ...] = ()

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self.entries: dict[str, dict[str, Any]] = {}
        self.keys: list[str] = []
        for key, label in self.COLUMNS:  # here, not on mount: an update may come first
            self.add_column(label, key=key)

    def current_key(self) -> str | None:
        if not self.keys or not (0 <= self.cursor_row < len(self.keys)):
            return None
        return self.keys[self.cursor_row]

    def current_entry(self) -> dict[str, Any] | None:
        key = self.current_key()
        return self.entries.get(key) if key else None


class HistoryTable(EntryTable):
    """Entries are replaced wholesale on each update; the cursor stays on the same entry."""

    COLUMNS = COLUMNS

    def show(self, entries: list[dict[str, Any]], now: float, variables: dict[str, str]) -> None:
        keys = [entry_key(e) for e in entries]
        if keys == self.keys and all(self.entries.get(k) is e for k, e in zip(keys, entries)):
            return
        current = self.current_key()
        at_top = self.cursor_row == 0
        self.clear()
        self.entries = dict(zip(keys, entries))
        self.keys = keys
        for key, entry in zip(keys, entries):
            self.add_row(*self.cells(entry, now, variables), key=key)
        if current in self.entries and not at_top:
            self.move_cursor(row=keys.index(current), animate=False)

    @staticmethod
    def cells(entry: dict[str, Any], now: float, variables: dict[str, str]) -> list[Any]:
        status = str(entry.get("status") or ("blocked" if entry.get("kind") == "block" else "?"))
        blocked = entry.get("kind") == "block"
        flags = [str(f) for f in entry.get("flags") or [] if f != status]
        if blocked:
            flags = [block_reason(entry)]
        label = status + (f" ({', '.join(flags)})" if flags else "")
        num = (lambda k: Text("", justify="right")) if blocked else (
            lambda k: Text(tokens(entry.get(k)), justify="right"))
        cost = to_decimal(entry.get("cost"))
        return [
            Text(clock(entry.get("ts"), now)),
            Text(str(entry.get("model") or "—"), style="bold" if not blocked else ""),
            Text(short_endpoint(entry.get("endpoint"))),
            num("input_tokens"),
            num("cached_tokens"),
            num("output_tokens"),
            num("reasoning_tokens"),
            Text(money(cost) if not blocked else "—", justify="right"),
            Text(label, style=theme_style(variables, status_colour(status))),
        ]
