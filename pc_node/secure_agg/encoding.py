"""Money and count encoding, and the overflow guard for homomorphic sums.

Money is carried as integer cents (分): exact, signed, and additive under HE.
Binary floats are refused outright — 0.1 + 0.2 is not 0.3 — and so are amounts
with sub-cent digits, rather than rounding someone's income silently.

Homomorphic sums wrap modulo the plaintext modulus without any sign of it, so
every sum is bounded *before* it is computed (``check_no_overflow``) and every
input is checked against the declared bound before it is encrypted
(``check_inputs``).
"""
from __future__ import annotations

import numbers
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation

from pc_common.errors import InvalidInput, OverflowDetected

from .backend import HeBackend, PublicContext, as_int_list


def to_cents(amount: Decimal | str | int) -> int:
    """Exact cents for a Decimal, a decimal string ("12.30") or whole yuan (int)."""
    if isinstance(amount, bool) or isinstance(amount, float):
        raise InvalidInput("amounts must be Decimal, decimal strings or integers, not floats")
    if isinstance(amount, numbers.Integral):
        return int(amount) * 100
    if isinstance(amount, str):
        try:
            amount = Decimal(amount.strip())
        except InvalidOperation:
            raise InvalidInput("amount is not a decimal number") from None
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise InvalidInput("amount is not a finite decimal number")
    sign, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    value = int("".join(map(str, digits)) or "0")
    shift = exponent + 2
    if shift >= 0:
        cents = value * 10**shift
    else:
        cents, rest = divmod(value, 10**-shift)
        if rest:
            raise InvalidInput("amount has more than two decimal places")
    return -cents if sign else cents


def from_cents(cents: int) -> Decimal:
    """The exact Decimal amount (two places) for integer cents."""
    if isinstance(cents, bool) or not isinstance(cents, numbers.Integral):
        raise InvalidInput("cents must be an integer")
    cents = int(cents)
    sign = 1 if cents < 0 else 0
    return Decimal((sign, tuple(int(d) for d in str(abs(cents))), -2))


def amounts_to_cents(amounts: Iterable[Decimal | str | int]) -> list[int]:
    return [to_cents(a) for a in amounts]


def _bound_of(space: PublicContext | HeBackend | int) -> int:
    if isinstance(space, PublicContext):
        return space.plaintext_bound
    if isinstance(space, HeBackend):
        bound = getattr(space, "fixed_plaintext_bound", None)
        if bound is None:
            raise InvalidInput("this backend's plaintext space depends on the key; pass the public context")
        return bound
    if isinstance(space, numbers.Integral) and not isinstance(space, bool) and space > 0:
        return int(space)
    raise InvalidInput("expected a public context, a backend or a positive bound")


def check_no_overflow(max_abs_input: int, n_terms: int, backend: PublicContext | HeBackend | int) -> int:
    """Bound on |sum of n_terms values each within ±max_abs_input|; raises if it can wrap.

    ``backend`` is the job's public context (or the BFV backend, whose plaintext
    space is fixed, or an explicit bound). Returns the bound of the sum, to be
    used as the next stage's input bound (e.g. a comparison's ``value_bound``).
    """
    for x in (max_abs_input, n_terms):
        if isinstance(x, bool) or not isinstance(x, numbers.Integral) or x < 0:
            raise InvalidInput("bounds must be non-negative integers")
    total = int(max_abs_input) * int(n_terms)
    if total > _bound_of(backend):
        raise OverflowDetected("the sum could leave the plaintext space")
    return total


def check_inputs(values: Iterable[int], max_abs_input: int) -> list[int]:
    """Refuse inputs outside the declared bound (the overflow proof relies on it)."""
    ints = as_int_list(list(values) if not hasattr(values, "dtype") else values)  # type: ignore[arg-type]
    if ints and (max(ints) > max_abs_input or min(ints) < -max_abs_input):
        raise OverflowDetected("an input is outside the declared bound")
    return ints
