"""Every field of one history entry (a settled or a blocked request)."""

from __future__ import annotations

import json
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Label, Static

from ..format import status_colour

FIRST = ("kind", "status", "time", "model", "endpoint", "client", "cost", "reserved", "input_tokens",
         "cached_tokens", "output_tokens", "reasoning_tokens", "flags", "reason", "needed", "remaining", "message")


def ordered_fields(entry: dict[str, Any]) -> list[tuple[str, Any]]:
    """The well-known fields first in a fixed order, then the rest alphabetically."""
    rest = sorted(k for k in entry if k not in FIRST)
    return [(k, entry[k]) for k in FIRST if k in entry] + [(k, entry[k]) for k in rest]


def show_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True) if value else ("[]" if isinstance(value, list) else "{}")
    return json.dumps(value)


class DetailScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,enter", "close", "Close")]

    def __init__(self, entry: dict[str, Any]) -> None:
        super().__init__(classes="dialog")
        self.entry = entry

    def compose(self) -> ComposeResult:
        e = self.entry
        what = "Blocked request" if e.get("kind") == "block" else "Request"
        ident = e.get("id") or f"#{e.get('seq', '?')}"
        with Vertical(id="detail-box", classes="dialog-box"):
            yield Label(f"{what} {ident}", classes="dialog-title")
            with VerticalScroll(id="detail-scroll"):
                yield Static(self.fields(), id="detail-fields")
            yield Static(Content.styled("esc / q / enter: close", "$text-muted"), classes="dialog-hint")

    def fields(self) -> Content:
        pairs = ordered_fields(self.entry)
        width = max((len(k) for k, _ in pairs), default=0)
        lines = []
        for key, value in pairs:
            style = f"bold ${status_colour(str(value))}" if key == "status" else ""
            lines.append(Content.assemble((key.ljust(width) + "  ", "$text-muted"), (show_value(value), style)))
        return Content("\n").join(lines)

    def action_close(self) -> None:
        self.dismiss(None)
