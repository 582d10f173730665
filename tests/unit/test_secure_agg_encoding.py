"""Money/count encoding, overflow guards and verdict interpretation."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pc_common.errors import InvalidInput, OverflowDetected
from pc_node.secure_agg import (
    amounts_to_cents,
    centre,
    check_inputs,
    check_no_overflow,
    check_sums,
    from_cents,
    get_backend,
    is_positive,
    is_zero,
    to_cents,
)


@pytest.mark.parametrize(
    "amount, cents",
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
def test_to_cents(amount, cents):
    assert to_cents(amount) == cents


@pytest.mark.parametrize(
    "bad", ["1.234", "0.001", 1.5, 0.1, True, "abc", "NaN", "Infinity", Decimal("sNaN"), None, b"1"]
)
def test_to_cents_refuses(bad):
    with pytest.raises(InvalidInput):
        to_cents(bad)


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_cents_round_trip(cents):
    d = from_cents(cents)
    assert d.as_tuple().exponent == -2
    assert to_cents(d) == cents
    assert to_cents(str(d)) == cents


def test_from_cents_refuses_non_integers():
    with pytest.raises(InvalidInput):
        from_cents(1.0)  # type: ignore[arg-type]
    assert amounts_to_cents(["1.01", 2]) == [101, 200]


def test_check_no_overflow_bfv():
    bfv = get_backend("bfv")
    bound = bfv.fixed_plaintext_bound
    assert check_no_overflow(10**6, 24, bfv) == 24 * 10**6
    assert check_no_overflow(bound, 1, bfv) == bound
    with pytest.raises(OverflowDetected):
        check_no_overflow(bound // 2 + 1, 2, bfv)
    with pytest.raises(InvalidInput):
        check_no_overflow(-1, 2, bfv)
    with pytest.raises(InvalidInput):
        check_no_overflow(1, 2, get_backend("paillier"))  # bound depends on the key
    assert check_no_overflow(5, 3, 15) == 15
    with pytest.raises(OverflowDetected):
        check_no_overflow(5, 4, 15)


def test_check_no_overflow_with_public_context():
    be = get_backend("paillier")
    pub, _ = be.generate_keypair(key_bits=1024, allow_test_key=True)
    assert check_no_overflow(2**400, 2**20, pub) == 2**420  # bound is 2^510 - 1
    with pytest.raises(OverflowDetected):
        check_no_overflow(pub.plaintext_bound, 2, pub)


def test_check_inputs():
    assert check_inputs([1, -5, 3], 5) == [1, -5, 3]
    assert check_inputs(np.array([1, 2], dtype=np.int64), 2) == [1, 2]
    with pytest.raises(OverflowDetected):
        check_inputs([6], 5)
    with pytest.raises(InvalidInput):
        check_inputs([1.0], 5)


def test_interpret_helpers():
    assert list(centre([0, 1, 6, 7, 12], 13)) == [0, 1, 6, -6, -1]
    assert list(is_zero(np.array([0, 5, -1], dtype=object))) == [True, False, False]
    assert list(is_positive(np.array([0, 5, -1], dtype=np.int64))) == [False, True, False]
    assert list(check_sums(np.array([3, -3]), 3)) == [3, -3]
    with pytest.raises(OverflowDetected):
        check_sums(np.array([4]), 3)
