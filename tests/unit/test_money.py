"""The one display rule for money (``format_usd``) and the storage form (``usd_str``)."""

from decimal import Decimal as D

import pytest

from pouch_addon.money import format_usd, usd_str


@pytest.mark.parametrize("value,shown", [
    ("3", "$3.00"),                      # at least cents
    ("0", "$0.00"),
    ("0.10", "$0.10"),
    ("2.999825", "$2.999825"),           # $3.00 minus a small spend is not "$3.00"
    ("0.000175", "$0.000175"),
    ("0.0000001", "$0.0000001"),         # never scientific notation (was "$1.0E-7")
    ("0.000000005", "$0.000000005"),     # one cached gpt-5-nano token
    ("0.0000000050", "$0.000000005"),    # trailing zeros beyond cents are trimmed
    ("0.001250", "$0.00125"),
    ("12.5", "$12.50"),
    ("1234.5", "$1,234.50"),
    ("5E+2", "$500.00"),
    ("-0.25", "-$0.25"),
    ("-0", "$0.00"),
    ("0.617283945", "$0.617283945"),     # every digit pouch computes is shown
])
def test_format_usd_rule(value, shown):
    assert format_usd(D(value)) == shown


def test_format_usd_rounds_only_beyond_twelve_places_and_never_to_zero():
    assert format_usd(D("0.1234567890123456789")) == "$0.123456789012"
    assert format_usd(D("1.0000000000000001")) == "$1.00"
    assert format_usd(D("1E-20")) == "$0.00000000000000000001"
    assert format_usd(D("0.000000000000123456")) == "$0.00000000000012"


def test_a_nonzero_amount_never_shows_as_zero():
    for exp in range(-30, 1):
        value = D(1).scaleb(exp) * 3
        assert format_usd(value).strip("$0.,") != "", value


def test_usd_str_is_unchanged_storage_form():
    assert usd_str(D("0.0000001")) == "0.0000001"
    assert usd_str(D("12.50")) == "12.5"
    assert usd_str(D("0")) == "0"


def test_usd_str_writes_what_fixed_point_format_writes():
    """``usd_str``'s shortcut (``str`` unless it chose an exponent) against the long way, over
    random amounts of every size and sign, and in a context that writes a lowercase exponent."""
    import decimal
    import random

    def reference(value):
        return "0" if value == 0 else format(value.normalize(), "f")

    rng = random.Random(16)
    values = [D(rng.randint(-10 ** rng.randint(0, 30), 10 ** rng.randint(0, 30))).scaleb(rng.randint(-40, 12))
              for _ in range(20000)]
    values += [D(s) for s in ("0E-7", "-0", "0.000", "1E+30", "1.0E+3", "-1E-9", "1000000", "50", "0.0001",
                              "0.00000010", "123456789.000000001", "Infinity", "-Infinity", "NaN", "1E-6", "1E-7")]
    for value in values:
        assert usd_str(value) == reference(value), value
    with decimal.localcontext() as ctx:
        ctx.capitals = 0
        for value in (D("1E+2"), D("1E-7"), D("0.0001"), D("5E+1")):
            assert usd_str(value) == reference(value), value
            assert "e" not in usd_str(value)
