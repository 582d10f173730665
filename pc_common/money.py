"""Money: decimal amounts with at most two places, carried as integer cents (分).

The one money encoding of the system. Rule thresholds (``pc_rules``), the decimal cells a
node imported (``pc_node.importer``, summed by ``pc_node.steps.verify``) and the values
encrypted for homomorphic sums are all exact integer cents. Binary floats are refused —
0.1 + 0.2 is not 0.3 — and so are amounts with sub-cent digits, rather than rounding
someone's income silently. The one exception is a TOML float literal in a rule file, which
is read back through its shortest repr (``1100.00`` is exactly 1100) when the caller asks.

Errors are :class:`BadAmount` (an :class:`~pc_common.errors.InvalidInput`) whose
``reason`` completes a sentence about the field, e.g. "at most two decimal places …".
"""
from __future__ import annotations

import math
import numbers
import re
from decimal import Decimal

from pc_common.errors import InvalidInput

__all__ = ["BadAmount", "amount", "cell_cents", "to_cents"]

#: Digits before the decimal point an amount may have (far above any real sum; bounds the work).
MAX_DIGITS = 40
_TEXT_RE = re.compile(r"-?[0-9]+(\.[0-9]+)?\Z")


class BadAmount(InvalidInput):
    """A value that is not an exact amount of whole cents."""

    def __init__(self, reason: str):
        super().__init__(f"amount: {reason}")
        self.reason = reason


def _decimal(value: object, floats: bool) -> Decimal:
    if isinstance(value, bool):
        raise BadAmount("must be a number, not a boolean")
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise BadAmount("must be a finite number")
        return value
    if isinstance(value, numbers.Integral):
        return Decimal(int(value))
    if isinstance(value, float):
        if not floats:
            raise BadAmount("must be a decimal string, a Decimal or an integer, not a binary float")
        if not math.isfinite(value):
            raise BadAmount("must be a finite number")
        return Decimal(repr(value))
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 2 * MAX_DIGITS or not _TEXT_RE.match(text):
            raise BadAmount("must be a decimal number like 1100.00")
        return Decimal(text)
    raise BadAmount(f"must be a number, not {type(value).__name__}")


def _cents(d: Decimal) -> int:
    """Exact integer cents of a finite Decimal, without context rounding."""
    sign, digits, exponent = d.as_tuple()
    assert isinstance(exponent, int)  # finite
    value = int("".join(map(str, digits)) or "0")
    if value == 0:
        return 0
    if d.adjusted() >= MAX_DIGITS:
        raise BadAmount(f"must have at most {MAX_DIGITS} digits before the decimal point")
    shift = exponent + 2
    if shift >= 0:
        cents = value * 10**shift
    else:
        if -shift >= len(digits):      # every digit is below a cent
            raise BadAmount("at most two decimal places (amounts are whole cents)")
        cents, rest = divmod(value, 10**-shift)
        if rest:
            raise BadAmount("at most two decimal places (amounts are whole cents)")
    return -cents if sign else cents


def to_cents(value: Decimal | str | int, *, floats: bool = False) -> int:
    """Exact cents for a Decimal, a decimal string (``"12.30"``) or whole yuan (an int).

    ``floats=True`` also accepts a float through its shortest repr (TOML literals only).
    """
    return _cents(_decimal(value, floats))


def amount(value: object, *, floats: bool = False, negative: bool = True,
           maximum: Decimal | None = None) -> Decimal:
    """The exact amount as a Decimal with two places (``Decimal("1100.00")``).

    ``negative=False`` refuses amounts below zero; ``maximum`` bounds it from above.
    """
    cents = to_cents(value, floats=floats)  # type: ignore[arg-type]
    if cents < 0 and not negative:
        raise BadAmount("must not be negative")
    if maximum is not None and cents > _cents(maximum):
        raise BadAmount(f"must be at most {maximum}")
    return Decimal((1 if cents < 0 else 0, tuple(int(c) for c in str(abs(cents)).rjust(3, "0")), -2))


def cell_cents(text: str) -> int:
    """A stored decimal or integer cell as cents; an empty cell (missing data) counts as zero."""
    return 0 if text == "" else to_cents(text)
