"""The safe ``where`` grammar: parsing, evaluation, types, dict form, injection."""
from __future__ import annotations

import datetime as dt
import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import InvalidInput
from pc_rules.where import (
    And,
    Comparison,
    Expr,
    Or,
    check_types,
    parse_where,
)

# ---------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------


def test_single_comparison():
    assert parse_where("vehicle_type != 'motorcycle'") == Comparison("vehicle_type", "!=", "motorcycle")


@pytest.mark.parametrize("op", ["=", "!=", "<", "<=", ">", ">="])
def test_every_operator(op):
    assert parse_where(f"a {op} 1") == Comparison("a", op, 1)
    assert parse_where(f"a{op}1") == Comparison("a", op, 1)


def test_numbers():
    assert parse_where("a = 12").value == 12
    assert isinstance(parse_where("a = 12").value, int)
    assert parse_where("a = -3").value == -3
    v = parse_where("a >= 1100.00").value
    assert isinstance(v, Decimal) and str(v) == "1100.00"
    assert parse_where("a > -0.5").value == Decimal("-0.5")


def test_strings_and_escaped_quote():
    assert parse_where("name = 'it''s'").value == "it's"
    assert parse_where("name = ''").value == ""
    assert parse_where("district = '南山区'").value == "南山区"
    assert parse_where("a = 'x and y or z'").value == "x and y or z"


def test_and_binds_tighter_than_or():
    e = parse_where("a = 1 or b = 2 and c = 3")
    assert e == Or((Comparison("a", "=", 1), And((Comparison("b", "=", 2), Comparison("c", "=", 3)))))
    e = parse_where("a = 1 and b = 2 or c = 3")
    assert e == Or((And((Comparison("a", "=", 1), Comparison("b", "=", 2))), Comparison("c", "=", 3)))


def test_parentheses_override_precedence():
    e = parse_where("(a = 1 or b = 2) and c = 3")
    assert e == And((Or((Comparison("a", "=", 1), Comparison("b", "=", 2))), Comparison("c", "=", 3)))
    assert parse_where("((a = 1))") == Comparison("a", "=", 1)


def test_same_operator_chains_are_flattened():
    e = parse_where("a = 1 and (b = 2 and c = 3)")
    assert isinstance(e, And) and len(e.operands) == 3


def test_keywords_case_insensitive():
    assert parse_where("a = 1 AND b = 2 Or c = 3") == parse_where("a = 1 and b = 2 or c = 3")


def test_columns():
    assert parse_where("a = 1 or (b = 'x' and a < 3)").columns() == {"a", "b"}


def test_canonical_text_round_trip():
    for text in ["a = 1 or b = 'x' and (c >= -2.50 or d < 'it''s')", "(a = 1 or b = 2) and c = 3"]:
        e = parse_where(text)
        assert parse_where(e.to_text()) == e
        assert str(e) == e.to_text()


# ---------------------------------------------------------------------------
# Rejections: everything outside the grammar, injection attempts
# ---------------------------------------------------------------------------

BAD = [
    "1=1; DROP TABLE vehicles",
    "x = 'a' or 1=1 --",
    "x = 'a' -- comment",
    "x = 'a'; DELETE FROM t",
    "x = 'abc",
    "x = 'a''",
    "x = \"a\"",
    "lower(x) = 'a'",
    "x = lower('a')",
    "select = 1",
    "x = 1 union select 1",
    "x in (1, 2)",
    "x like 'a%'",
    "x is null",
    "not x = 1",
    "x = 1 and",
    "and x = 1",
    "x = 1 or or y = 2",
    "(x = 1",
    "x = 1)",
    "()",
    "",
    "   ",
    "x",
    "x =",
    "= 1",
    "x == 1",
    "x <> 1",
    "x ! 1",
    "x = y",
    "1 = x",
    "x = 1e5",
    "x = 1.",
    "x = .5",
    "x = 1.2.3",
    "x = 0x10",
    "x = 12abc",
    "x = --1",
    "x = +1",
    "`x` = 1",
    "[x] = 1",
    "x.y = 1",
    "t.x = 1",
    "x = 1 /* c */",
    "x = @p",
    "x = ?",
    "x = :p",
    "x = $1",
    "x\u3000= 1",            # ideographic space
    "x\u00a0= 1",            # no-break space
    "x = 'a\u200b'",         # zero-width space inside a literal
    "x = 'a\u202eb'",        # right-to-left override
    "x = 'a\x00'",           # NUL
    "x = 'a\nb'",            # newline inside a literal
    "ｘ = 1",                # full-width letter
    "х = 1",                 # Cyrillic ha
    "x ＝ 1",                # full-width equals
    "x = ‘a’",               # curly quotes
    "x = 1 ;",
    "1=1",
    "x = 'a' or 'b' = 'b'",
]


@pytest.mark.parametrize("text", BAD)
def test_rejected_with_position(text):
    with pytest.raises(InvalidInput) as exc:
        parse_where(text)
    msg = str(exc.value)
    assert msg.startswith("where: ")
    assert "\n" not in msg
    if text.strip():
        assert "position" in msg or "empty" in msg


def test_position_points_at_problem():
    with pytest.raises(InvalidInput, match=r"position 7: unexpected ';'"):
        parse_where("a = 1 ; drop")
    with pytest.raises(InvalidInput, match=r"position 5: unterminated string"):
        parse_where("a = 'abc")
    with pytest.raises(InvalidInput, match=r"position 1: 'drop' is a reserved word"):
        parse_where("drop = 1")


def test_error_messages_do_not_echo_literals():
    with pytest.raises(InvalidInput) as exc:
        parse_where("a = '110101199003074514' x")
    assert "110101199003074514" not in str(exc.value)


def test_limits():
    with pytest.raises(InvalidInput, match="nested too deeply"):
        parse_where("(" * 40 + "a = 1" + ")" * 40)
    with pytest.raises(InvalidInput, match="too many comparisons"):
        parse_where(" or ".join(["a = 1"] * 100))
    with pytest.raises(InvalidInput, match="longer than"):
        parse_where("a = '" + "x" * 5000 + "'")
    with pytest.raises(InvalidInput):
        parse_where(123)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# Scalar evaluation
# ---------------------------------------------------------------------------


def test_evaluate_strings():
    e = parse_where("vehicle_type != 'motorcycle'")
    assert e.evaluate({"vehicle_type": "car"})
    assert not e.evaluate({"vehicle_type": "motorcycle"})


def test_evaluate_numbers_exactly():
    e = parse_where("amount < 1100.00")
    assert e.evaluate({"amount": "1099.99"})
    assert not e.evaluate({"amount": "1100"})
    assert not e.evaluate({"amount": Decimal("1100.00")})
    assert e.evaluate({"amount": 1099})
    assert parse_where("a = 0.3").evaluate({"a": Decimal("0.1") + Decimal("0.2")})
    assert parse_where("a = 1100").evaluate({"a": " 1100.00 "})
    assert parse_where("a > 2.5").evaluate({"a": 3})
    for cell, below in [(1099.99, True), (1100.0, False), (float("nan"), False), (5, True), ("1099.99", True),
                        ("1100.00", False), ("", False), (" 7 ", True), (Decimal("1099.99"), True), (None, False),
                        (Decimal("1100"), False), (1101, False)]:
        assert e.evaluate({"amount": cell}) is below, cell


def test_integers_against_a_fraction():
    for op, expect in [("<", [True, True, False]), ("<=", [True, True, False]), (">", [False, False, True]),
                       (">=", [False, False, True]), ("=", [False, False, False]), ("!=", [True, True, True])]:
        assert [parse_where(f"n {op} 2.5").evaluate({"n": n}) for n in (1, 2, 3)] == expect
    assert all(parse_where("n < 99999999999999999999").evaluate({"n": n}) for n in (1, 2, 3))


def test_evaluate_dates():
    e = parse_where("registered_on >= '2015-01-01'")
    assert e.evaluate({"registered_on": dt.date(2015, 1, 1)})
    assert not e.evaluate({"registered_on": dt.date(2014, 12, 31)})
    assert e.evaluate({"registered_on": "2020-06-30"})   # ISO text compares the same way
    both = parse_where("vehicle_type != 'motorcycle' and registered_on >= '2015-01-01'")
    rows = [("car", "2016-01-01"), ("motorcycle", "2020-01-01"), ("car", "2014-12-31"), ("truck", dt.date(2015, 1, 1)),
            ("", "2020-01-01")]
    assert [both.evaluate({"vehicle_type": v, "registered_on": d}) for v, d in rows] == [True, False, False, True,
                                                                                         False]


def test_missing_values_match_nothing():
    for op in ["=", "!=", "<", ">"]:
        e = parse_where(f"a {op} 1")
        assert not e.evaluate({"a": None})
        assert not e.evaluate({"a": ""})
    assert not parse_where("a != 'x'").evaluate({"a": None})


def test_evaluate_and_or():
    e = parse_where("usage = 'residential' and (area > 100 or district = '南山区')")
    assert e.evaluate({"usage": "residential", "area": "120.5", "district": "福田区"})
    assert e.evaluate({"usage": "residential", "area": "50", "district": "南山区"})
    assert not e.evaluate({"usage": "commercial", "area": "500", "district": "南山区"})


def test_evaluate_type_errors():
    with pytest.raises(InvalidInput, match="not a number"):
        parse_where("a < 5").evaluate({"a": "abc"})
    with pytest.raises(InvalidInput, match="not text"):
        parse_where("a = 'x'").evaluate({"a": 5})
    with pytest.raises(InvalidInput, match="no column"):
        parse_where("a = 'x'").evaluate({"b": "x"})
    with pytest.raises(InvalidInput, match="date"):
        parse_where("d = 'yesterday'").evaluate({"d": dt.date(2020, 1, 1)})
    with pytest.raises(InvalidInput, match="not a number"):
        parse_where("a > 1").evaluate({"a": "two"})
    with pytest.raises(InvalidInput, match="booleans"):
        parse_where("a > 1").evaluate({"a": True})
    with pytest.raises(InvalidInput, match="not a finite number"):
        parse_where("a > 1").evaluate({"a": float("inf")})


# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------

TYPES = {"n": "integer", "amount": "decimal", "kind": "text", "day": "date"}


def test_check_types_accepts_matching_literals():
    check_types(parse_where("n > 2 and amount <= 10.50 and kind = 'car' and day >= '2020-02-29'"), TYPES)
    check_types(parse_where("n > 2.5"), TYPES)


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("kind = 1", "column 'kind' is text but is compared with a number"),
        ("n = '1'", "column 'n' is integer but is compared with a string"),
        ("amount < '10'", "column 'amount' is decimal"),
        ("day > 20200101", "column 'day' is a date"),
        ("day > '2020-02-30'", "not a valid 'YYYY-MM-DD' date"),
        ("day > '2020/01/01'", "not a valid 'YYYY-MM-DD' date"),
        ("colour = 'red'", "unknown column 'colour'"),
    ],
)
def test_check_types_rejects(text, fragment):
    with pytest.raises(InvalidInput, match=fragment.replace("(", r"\(")):
        check_types(parse_where(text), TYPES)


def test_check_types_unknown_type_name():
    with pytest.raises(InvalidInput, match="unknown type"):
        check_types(parse_where("a = 1"), {"a": "float"})


# ---------------------------------------------------------------------------
# Dict form
# ---------------------------------------------------------------------------

_columns = st.sampled_from(["a", "b", "vehicle_type", "usage", "_x1", "Area"])
_ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">="])
_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")), max_size=12
)
_number = st.one_of(
    st.integers(-10**12, 10**12),
    st.decimals(min_value=-10**9, max_value=10**9, places=2, allow_nan=False, allow_infinity=False),
)
_comparison = st.builds(Comparison, _columns, _ops, st.one_of(_text, _number))


def _canon(cls, ops):
    flat = []
    for o in ops:
        flat.extend(o.operands if isinstance(o, cls) else [o])
    return cls(tuple(flat))


_exprs = st.recursive(
    _comparison,
    lambda children: st.one_of(
        st.lists(children, min_size=2, max_size=3).map(lambda ops: _canon(And, ops)),
        st.lists(children, min_size=2, max_size=3).map(lambda ops: _canon(Or, ops)),
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_exprs)
def test_dict_round_trip(expr):
    d = expr.to_dict()
    again = Expr.from_dict(json.loads(json.dumps(d)))
    assert again == expr
    assert again.to_dict() == d


@settings(max_examples=200, deadline=None)
@given(_exprs)
def test_text_round_trip(expr):
    assert parse_where(expr.to_text()) == expr


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        "a = 1",
        {"kind": "compare", "column": "a", "op": "=", "number": "1", "extra": 1},
        {"kind": "compare", "column": "a; drop", "op": "=", "number": "1"},
        {"kind": "compare", "column": "select", "op": "=", "number": "1"},
        {"kind": "compare", "column": "a", "op": "LIKE", "string": "x"},
        {"kind": "compare", "column": "a", "op": "=", "number": "1e9"},
        {"kind": "compare", "column": "a", "op": "=", "number": 1.5},
        {"kind": "compare", "column": "a", "op": "=", "number": True},
        {"kind": "compare", "column": "a", "op": "=", "string": 5},
        {"kind": "compare", "column": "a", "op": "=", "string": "a\u202e"},
        {"kind": "compare", "column": "a", "op": "=", "number": "1", "string": "x"},
        {"kind": "and", "operands": [{"kind": "compare", "column": "a", "op": "=", "number": "1"}]},
        {"kind": "or", "operands": "x"},
        {"kind": "not", "operand": {}},
        {"kind": "sql", "text": "1=1"},
    ],
)
def test_from_dict_rejects_malformed(bad):
    with pytest.raises(InvalidInput, match="where: malformed"):
        Expr.from_dict(bad)


def test_from_dict_depth_limit():
    node = {"kind": "compare", "column": "a", "op": "=", "number": "1"}
    for i in range(40):
        node = {"kind": "and" if i % 2 else "or", "operands": [node, node]}
    with pytest.raises(InvalidInput):
        Expr.from_dict(node)
