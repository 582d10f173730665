"""PRC resident identity numbers (GB 11643-1999)."""
from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_node import idnum
from pc_common.errors import InvalidInput

KNOWN_VALID = "11010519491231002X"
TODAY = date(2025, 6, 1)

regions = st.from_regex(r"[1-8][0-9]{5}", fullmatch=True)
births = st.dates(min_value=date(1900, 1, 1), max_value=TODAY)
seqs = st.integers(min_value=0, max_value=999)


def test_known_valid_example():
    assert idnum.is_valid(KNOWN_VALID)
    assert idnum.validate(KNOWN_VALID) == KNOWN_VALID
    assert idnum.check_digit(KNOWN_VALID[:17]) == "X"
    assert idnum.birth_date(KNOWN_VALID) == date(1949, 12, 31)
    assert idnum.is_male(KNOWN_VALID) is False  # sequence 002 is even


def test_check_digit_examples():
    # weights 7 9 10 5 8 4 2 1 6 3 7 9 10 5 8 4 2: sum 174, 174 mod 11 = 9 → "10X98765432"[9] = "3"
    assert idnum.check_digit("11010119900307123") == "3"
    assert idnum.make_id("110101", date(1990, 3, 7), 123) == "110101199003071233"
    with pytest.raises(InvalidInput):
        idnum.check_digit("1101011990030712")
    with pytest.raises(InvalidInput):
        idnum.check_digit("1101011990030712a")


@pytest.mark.parametrize("raw", [
    "11010519491231002x", " 11010519491231002X ", "110105 19491231 002x", "110105\t1949\n1231002X",
    "\u3000110105194912310０２Ｘ",  # full-width space, digits and letter
])
def test_normalise_variants(raw):
    assert idnum.normalise(raw) == KNOWN_VALID
    assert idnum.validate(raw) == KNOWN_VALID


@pytest.mark.parametrize("value,reason", [
    ("1101051949123100", "wrong length"),
    ("110105491231002", "wrong length"),  # 15-digit first-generation number
    ("11010519491231002XX", "wrong length"),
    ("11010519491231A02X", "invalid characters"),
    ("11010519491231002Y", "invalid characters"),
    ("91010519491231002X", "invalid region code"),
    ("01010519491231002X", "invalid region code"),
    (idnum.make_id("110105", date(1990, 1, 1), 1)[:6] + "19900230" + "0011", "invalid birth date"),
    ("110105189912310020", "invalid birth date"),
    ("110105194912310021", "bad check digit"),
])
def test_validate_reasons_do_not_echo_the_value(value, reason):
    assert not idnum.is_valid(value, today=TODAY)
    with pytest.raises(InvalidInput) as e:
        idnum.validate(value, today=TODAY)
    assert reason in str(e.value)
    assert value not in str(e.value) and value[:17] not in str(e.value)
    assert idnum.validate_many([value], today=TODAY)[1] == [reason]


def test_birth_date_rules():
    leap = idnum.make_id("110105", date(2000, 2, 29), 5)
    assert idnum.is_valid(leap, today=TODAY)
    assert not idnum.is_valid(leap[:6] + "19000229" + "005" + idnum.check_digit(leap[:6] + "19000229005"))
    future = idnum.make_id("110105", date(2025, 6, 2), 5)
    assert not idnum.is_valid(future, today=TODAY)
    assert idnum.is_valid(future, today=date(2025, 6, 2))


def test_make_id_rejects_bad_parts():
    for args in [("910101", date(1990, 1, 1), 1), ("11010", date(1990, 1, 1), 1),
                 ("110101", date(1899, 12, 31), 1), ("110101", date(1990, 1, 1), 1000),
                 ("110101", date(1990, 1, 1), -1)]:
        with pytest.raises(InvalidInput):
            idnum.make_id(*args)


def test_non_text_is_invalid():
    assert not idnum.is_valid(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidInput):
        idnum.validate(110105194912310020)  # type: ignore[arg-type]
    assert idnum.validate_many([110105194912310020, None])[1] == ["invalid characters"] * 2


@settings(max_examples=300, deadline=None)
@given(regions, births, seqs)
def test_make_id_always_validates(region, birth, seq):
    value = idnum.make_id(region, birth, seq)
    assert len(value) == 18
    assert idnum.validate(value, today=TODAY) == value
    assert idnum.birth_date(value) == birth
    assert idnum.is_male(value) == (seq % 2 == 1)


@settings(max_examples=200, deadline=None)
@given(regions, births, seqs, st.lists(st.sampled_from([" ", "\t", "\u3000", "\n"]), max_size=4),
       st.integers(min_value=0, max_value=18), st.booleans())
def test_normalise_handles_case_and_space_variants(region, birth, seq, spaces, pos, lower):
    value = idnum.make_id(region, birth, seq)
    raw = value.lower() if lower else value
    raw = raw[:pos] + "".join(spaces) + raw[pos:]
    assert idnum.normalise(raw) == value
    assert idnum.validate(raw, today=TODAY) == value


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(
    st.builds(idnum.make_id, regions, births, seqs),
    st.text(alphabet="0123456789Xx ", min_size=15, max_size=20),
    st.builds(lambda s, i: s[:i] + "7" + s[i + 1:], st.builds(idnum.make_id, regions, births, seqs),
              st.integers(0, 17)),
), max_size=40))
def test_validate_many_matches_scalar_validate(values):
    norm, reasons = idnum.validate_many(values, today=TODAY)
    for v, n, r in zip(values, norm, reasons):
        assert n == idnum.normalise(v)
        if r is None:
            assert idnum.validate(v, today=TODAY) == n
        else:
            with pytest.raises(InvalidInput, match=r):
                idnum.validate(v, today=TODAY)


def test_validate_many_large_batch_uses_chunks():
    values = [idnum.make_id("320102", date(1960 + i % 50, 1 + i % 12, 1 + i % 28), i % 1000)
              for i in range(70000)]
    values[3] = values[3].lower().replace("x", "x ")
    values[69999] = values[69999][:17] + ("0" if values[69999][17] != "0" else "1")
    norm, reasons = idnum.validate_many(values, today=TODAY)
    assert len(norm) == len(reasons) == 70000
    assert reasons[69999] == "bad check digit"
    assert reasons.count(None) == 69999
    assert idnum.is_valid_many(values[:5], today=TODAY) == [True] * 5
