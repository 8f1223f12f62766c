"""Exact money: USD amounts are ``Decimal``; never float.

Costs are computed at full precision (a gpt-5-nano cached token costs $0.000000005) and only
rounded for display.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

ZERO = Decimal(0)
PER_MILLION = Decimal(1_000_000)


class MoneyError(ValueError):
    """An amount a user typed (or a file holds) is not a valid USD amount."""


def parse_usd(text: str | int | Decimal, *, allow_negative: bool = False) -> Decimal:
    """Parse a USD amount such as ``"12.50"`` or ``"$3"``; floats are refused on purpose."""
    if isinstance(text, float):  # pragma: no cover - a programming error, not user input
        raise TypeError("USD amounts must not be floats")
    raw = str(text).strip().removeprefix("$").replace("_", "")
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise MoneyError(f"not a USD amount: {text!r}") from None
    if not value.is_finite():
        raise MoneyError(f"not a USD amount: {text!r}")
    if value < 0 and not allow_negative:
        raise MoneyError(f"amount must not be negative: {text!r}")
    return value


def usd_str(value: Decimal) -> str:
    """Exact decimal string for storage and JSON (no exponent, no trailing zeros)."""
    if value == 0:
        return "0"
    text = format(value.normalize(), "f")
    return text


def format_usd(value: Decimal, places: int = 6) -> str:
    """Human display, e.g. ``$0.001250``; rounding happens only here."""
    quant = Decimal(1).scaleb(-places)
    return f"${value.quantize(quant):,}" if value >= 0 else f"-${(-value).quantize(quant):,}"
