"""Money: the one encoding (decimal amounts with at most two places as integer cents)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_common.money import BadAmount, amount, cell_cents, to_cents


@pytest.mark.parametrize(
    "value, cents",
    [
        ("12.34", 1234),
        ("12.3", 1230),
        ("12", 1200),
        ("-0.01", -1),
        ("1.230", 123),
        (" 7.00 ", 700),
        (Decimal("1E+3"), 100000),
        (Decimal("-5.5"), -550),
        (25, 2500),
        ("0", 0),
        ("123456789012345678901234567890.12", 12345678901234567890123456789012),
    ],
)
def test_to_cents(value, cents):
    assert to_cents(value) == cents


@pytest.mark.parametrize(
    "bad", ["1.234", "0.001", 1.5, 0.1, True, "abc", "NaN", "Infinity", Decimal("sNaN"), None, b"1",
            "", "1e3", "1,5", Decimal("1E+999999999999"), Decimal("1E-999999999999")]
)
def test_to_cents_refuses(bad):
    with pytest.raises(InvalidInput):
        to_cents(bad)


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_cents_round_trip(cents):
    text = f"{'-' if cents < 0 else ''}{abs(cents) // 100}.{abs(cents) % 100:02d}"
    assert to_cents(text) == cents
    d = amount(text)
    assert d.as_tuple().exponent == -2 and str(d) == text
    assert to_cents(d) == cents


def test_cells_count_empty_as_zero():
    assert cell_cents("") == 0
    assert cell_cents("1100.50") == 110050
    assert cell_cents("-3") == -300
    with pytest.raises(BadAmount, match="two decimal places"):
        cell_cents("1.005")
    with pytest.raises(InvalidInput):
        cell_cents("NaN")


def test_amount_for_rule_files():
    assert amount(1100.00, floats=True) == Decimal("1100.00") and str(amount(1100.0, floats=True)) == "1100.00"
    assert str(amount(0.01, floats=True)) == "0.01"
    assert str(amount("1999.5")) == "1999.50"
    assert str(amount(2000)) == "2000.00"
    for value, reason in [(-1, "must not be negative"), (1100.005, "at most two decimal places"),
                          ("lots", "must be a decimal number"), (True, "not a boolean"),
                          (float("inf"), "finite"), (Decimal("1000000000.01"), "at most 1000000000")]:
        with pytest.raises(BadAmount) as exc:
            amount(value, floats=True, negative=False, maximum=Decimal("1000000000"))
        assert exc.value.reason.startswith(reason) or reason in exc.value.reason
    with pytest.raises(BadAmount, match="binary float"):
        amount(1.5)
