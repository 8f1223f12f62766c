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
    value = value.normalize()
    # ``str`` writes what ``format(value, "f")`` writes (in a third of the time: the ledger writes
    # several amounts per admission) unless it chose an exponent: 1E+2, 1E-7 (1e-7 in a context
    # with ``capitals=0``)
    text = str(value)
    return format(value, "f") if "E" in text or "e" in text else text


#: beyond this many decimal places an amount is rounded for display (see :func:`format_usd`)
MAX_DISPLAY_PLACES = 12


def format_usd(value: Decimal) -> str:
    """The one way pouch shows an amount to a person (CLI, TUI, log lines, error messages).

    The rule: the exact amount, with at least 2 decimals (cents) and no trailing zeros beyond
    them, thousands separated, never in scientific notation: ``$3.00``, ``$2.999825``,
    ``$0.000175``, ``$0.0000001``, ``$1,234.50``, ``-$0.25``. Nothing is rounded away, so a
    non-zero spend never shows as ``$0.00`` and ``remaining`` + ``spent`` visibly add up.
    Amounts pouch computes have at most ~11 decimals (prices per 1M tokens have at most 4), so
    the rule shows them exactly; an amount with more than ``MAX_DISPLAY_PLACES`` decimals (only
    a hand-typed one) is rounded to that many, but never to zero: a tiny amount keeps its first
    two significant digits. Storage and JSON use :func:`usd_str` instead.
    """
    if not value.is_finite():  # never produced by pouch (parse_usd refuses them); shown, not raised
        return f"${value}"
    sign = "-" if value < 0 else ""
    amount = abs(value)
    exponent = amount.normalize().as_tuple().exponent
    places = max(2, -exponent) if isinstance(exponent, int) else 2
    if places > MAX_DISPLAY_PLACES:
        places = max(MAX_DISPLAY_PLACES, 1 - amount.adjusted())
    text = format(amount, f",.{places}f")
    if places > 2:
        text = text.rstrip("0")
        whole, _, frac = text.partition(".")
        text = f"{whole}.{frac:0<2}"
    return f"{sign}${text}"
