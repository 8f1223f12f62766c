"""Display helpers: money, tokens, durations, statuses."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.style import Style as RichStyle
    from rich.text import Text
    from textual.content import Content

from pouch_addon.money import format_usd

from .aggregate import to_decimal

_AMOUNT = re.compile(r"-?\$[0-9,]+\.[0-9]+$")

# status -> semantic colour name (a Textual theme variable, resolved per theme)
STATUS_COLOUR = {
    "ok": "success",
    "blocked": "error",
    "orphaned": "error",
    "cut_off": "warning",
    "client_disconnect": "warning",
    "upstream_disconnect": "warning",
    "pouch_error": "error",
    "released": "text-muted",
    "abandoned": "text-muted",  # reserved, then the request was cancelled before it was sent
}


def status_colour(status: str) -> str:
    if status in STATUS_COLOUR:
        return STATUS_COLOUR[status]
    if status.startswith("http_5") or status.startswith("http_4"):
        return "warning"
    return "text"


def money(value: Decimal | str | None) -> str:
    """An amount by pouch's one display rule (:func:`pouch_addon.money.format_usd`): exact, at
    least cents, e.g. ``$12.35``, ``$2.999825``, ``$0.000175``; unreadable amounts show ``$0.00``."""
    return format_usd(to_decimal(value))


def align_points(cells: list["Text"]) -> None:
    """Pad right-justified amounts of one column with spaces so their decimal points line up
    (``$0.05`` above ``$0.0873``); other cells (``—``) are left alone. In place."""
    places = {id(t): len(t.plain) - t.plain.index(".") - 1 for t in cells if _AMOUNT.match(t.plain)}
    most = max(places.values(), default=0)
    for t in cells:
        if id(t) in places and places[id(t)] < most:
            t.append(" " * (most - places[id(t)]))


def fitting(width: int, *variants: "Content") -> "Content":
    """The first variant that fits ``width`` cells; the last one, cut with ``…``, if none does.

    Lines holding amounts offer shorter wordings so an amount is never the part that is cut."""
    for line in variants:
        if line.cell_length <= width:
            return line
    return variants[-1].truncate(width, ellipsis=True)


def tokens(value: Any) -> str:
    if value is None or value == "":
        return "—"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return "—"


def duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours}h{minutes:02d}m"
    return f"{hours // 24}d{hours % 24:02d}h"


def clock(ts: Any, now: float) -> str:
    """``14:03:07`` today (UTC), ``Mar 02 14:03`` on another day."""
    try:
        t = float(ts)
    except (TypeError, ValueError):
        return "?"
    d = datetime.fromtimestamp(t, UTC)
    if d.date() == datetime.fromtimestamp(now, UTC).date():
        return d.strftime("%H:%M:%S")
    return d.strftime("%b %d %H:%M")


def short_endpoint(endpoint: Any) -> str:
    text = str(endpoint or "")
    return text.removeprefix("/v1/") if text.startswith("/v1/") else text


def ratio(part: Decimal, whole: Decimal) -> float:
    if whole <= 0:
        return 0.0
    return max(0.0, float(part / whole))


def bar(fraction: float, width: int) -> tuple[str, str]:
    """A horizontal bar in eighths: (filled part, empty part) of exactly ``width`` cells."""
    fraction = min(1.0, max(0.0, fraction))
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    filled = "█" * full + ("▏▎▍▌▋▊▉"[part - 1] if part else "")
    return filled, " " * (width - len(filled))


def theme_style(variables: dict[str, str], name: str, *, bold: bool = False) -> "RichStyle":
    """A Rich style for a theme colour, for DataTable cells (which render Rich text, not CSS).

    ``name`` is a Textual theme variable (``success``, ``text-warning``, …); ``text-muted`` and
    anything that is not a plain colour fall back to ``dim`` so every theme stays readable.
    Tables re-render when the theme changes, so the colours follow it.
    """
    from rich.style import Style as RichStyle
    from textual.color import Color, ColorParseError

    if name in ("text-muted", "text", ""):
        return RichStyle(dim=name == "text-muted", bold=bold)
    value = variables.get(f"text-{name}") or variables.get(name) or ""
    try:
        colour = Color.parse(value)
    except (ColorParseError, ValueError):
        return RichStyle(bold=bold)
    return RichStyle(color=colour.rich_color, bold=bold)
