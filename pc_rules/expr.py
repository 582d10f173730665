"""Conditions of the ``where`` language as values: the AST, its dict form, types, evaluation.

:mod:`pc_rules.where` turns text into these nodes (and is the import path for both).
Names, literal limits and column types are defined once, here, for the whole system:
the node importer takes its column-name rule and type names from this module.

Semantics of :meth:`Expr.evaluate` (one row, a mapping column name -> value):

* number literals compare numerically and exactly (:class:`~decimal.Decimal`; text cells
  are read as decimal numbers);
* string literals compare as strings (code-point order), or as dates when the value is a
  date (ISO text compares the same way);
* a missing value (``None``, ``''``, NaN) satisfies no comparison, not even ``!=`` — as
  SQL's NULL.

Error messages name a position or a column, never a literal or a value.
"""
from __future__ import annotations

import datetime as _dt
import math
import numbers
import operator
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterator, Mapping, Union

from pc_common.errors import InvalidInput

__all__ = [
    "And",
    "COLUMN_NAME_RE",
    "COLUMN_TYPES",
    "Comparison",
    "Expr",
    "OPERATORS",
    "Or",
    "RESERVED_WORDS",
    "check_types",
    "is_column_name",
]

OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
#: Column types of datasets, catalogs and rules.
COLUMN_TYPES = ("integer", "decimal", "text", "date")
#: Syntax of a column name (dataset headers, metadata, rules): at most 64 characters.
COLUMN_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z")

MAX_DEPTH = 16          # nesting of parentheses / and-or levels
MAX_COMPARISONS = 64
MAX_STRING_LENGTH = 512
MAX_NUMBER_LENGTH = 32

_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")

# Words that may not be column names in a condition: the grammar's own keywords and the SQL
# words an injection attempt would use, so such text fails with a clear message.
RESERVED_WORDS = frozenset(
    """and or not null is in like between select insert update delete drop union
    from where exec execute true false table create alter truncate grant revoke
    into values case when then else join having""".split()
)

_PY_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}

Number = Union[int, Decimal]


def is_column_name(name: object) -> bool:
    """True for a syntactically valid column name that is not a reserved word."""
    return isinstance(name, str) and bool(COLUMN_NAME_RE.match(name)) and name.lower() not in RESERVED_WORDS


def string_char_ok(ch: str) -> bool:
    """Whether a string literal may hold ``ch``.

    Control characters and invisible format characters (zero-width spaces, bidi overrides,
    BOM) are refused: they make a condition read differently from what it does. Ordinary
    text in any script is fine.
    """
    return unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def parse_number(word: str) -> Number:
    """A number literal already matched by the grammar: int, or Decimal when it has a point."""
    if "." in word:
        return Decimal(word)
    return int(word)


# ---------------------------------------------------------------------------
# AST
# ---------------------------------------------------------------------------


class Expr:
    """Base of the condition AST (immutable; compare with ``==``)."""

    def columns(self) -> set[str]:
        return {c.column for c in self.comparisons()}

    def comparisons(self) -> Iterator["Comparison"]:
        raise NotImplementedError

    def evaluate(self, row: Mapping[str, Any]) -> bool:
        """Evaluate on one row (a mapping column name -> value)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        """A JSON-able form (numbers as decimal strings, so nothing is rounded)."""
        raise NotImplementedError

    @staticmethod
    def from_dict(data: object) -> "Expr":
        """Rebuild from :meth:`to_dict` output, validating it like parsed text."""
        return _from_dict(data, 0, [0])

    def to_text(self) -> str:
        """Canonical text; ``parse_where(e.to_text()) == e``."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.to_text()


@dataclass(frozen=True)
class Comparison(Expr):
    column: str
    op: str
    value: Union[int, Decimal, str]

    def comparisons(self) -> Iterator["Comparison"]:
        yield self

    @property
    def is_number(self) -> bool:
        return not isinstance(self.value, str)

    def evaluate(self, row: Mapping[str, Any]) -> bool:
        try:
            raw = row[self.column]
        except KeyError:
            raise InvalidInput(f"where: the row has no column '{self.column}'") from None
        return _compare(self, raw)

    def to_dict(self) -> dict:
        if self.is_number:
            return {"kind": "compare", "column": self.column, "op": self.op,
                    "number": str(self.value)}
        return {"kind": "compare", "column": self.column, "op": self.op,
                "string": self.value}

    def to_text(self) -> str:
        if self.is_number:
            lit = str(self.value)
        else:
            lit = "'" + str(self.value).replace("'", "''") + "'"
        return f"{self.column} {self.op} {lit}"


@dataclass(frozen=True)
class And(Expr):
    operands: tuple[Expr, ...]

    def comparisons(self) -> Iterator[Comparison]:
        for o in self.operands:
            yield from o.comparisons()

    def evaluate(self, row: Mapping[str, Any]) -> bool:
        # Evaluate every operand (no short-circuit) so type errors surface regardless of data.
        results = [o.evaluate(row) for o in self.operands]
        return all(results)

    def to_dict(self) -> dict:
        return {"kind": "and", "operands": [o.to_dict() for o in self.operands]}

    def to_text(self) -> str:
        return " and ".join(
            f"({o.to_text()})" if isinstance(o, Or) else o.to_text() for o in self.operands
        )


@dataclass(frozen=True)
class Or(Expr):
    operands: tuple[Expr, ...]

    def comparisons(self) -> Iterator[Comparison]:
        for o in self.operands:
            yield from o.comparisons()

    def evaluate(self, row: Mapping[str, Any]) -> bool:
        results = [o.evaluate(row) for o in self.operands]
        return any(results)

    def to_dict(self) -> dict:
        return {"kind": "or", "operands": [o.to_dict() for o in self.operands]}

    def to_text(self) -> str:
        return " or ".join(o.to_text() for o in self.operands)


def combine(cls: type, operands: list[Expr]) -> Expr:
    """Build And/Or, flattening nested nodes of the same kind (canonical form)."""
    flat: list[Expr] = []
    for o in operands:
        if isinstance(o, cls):
            flat.extend(o.operands)  # type: ignore[attr-defined]
        else:
            flat.append(o)
    if len(flat) == 1:
        return flat[0]
    return cls(tuple(flat))


# ---------------------------------------------------------------------------
# Dict form
# ---------------------------------------------------------------------------


def _malformed(msg: str) -> InvalidInput:
    return InvalidInput(f"where: malformed expression: {msg}")


def _from_dict(data: object, depth: int, counter: list[int]) -> Expr:
    if depth > MAX_DEPTH:
        raise _malformed("nested too deeply")
    if not isinstance(data, dict):
        raise _malformed("each node must be an object")
    kind = data.get("kind")
    if kind in ("and", "or"):
        if set(data) != {"kind", "operands"}:
            raise _malformed(f"'{kind}' node must have exactly the keys kind, operands")
        ops = data["operands"]
        if not isinstance(ops, (list, tuple)) or len(ops) < 2:
            raise _malformed(f"'{kind}' node needs a list of at least two operands")
        children = [_from_dict(o, depth + 1, counter) for o in ops]
        return combine(And if kind == "and" else Or, children)
    if kind == "compare":
        keys = set(data)
        if keys not in ({"kind", "column", "op", "number"}, {"kind", "column", "op", "string"}):
            raise _malformed("'compare' node must have kind, column, op and one of number, string")
        counter[0] += 1
        if counter[0] > MAX_COMPARISONS:
            raise _malformed(f"too many comparisons (at most {MAX_COMPARISONS})")
        column = data["column"]
        if not is_column_name(column):
            raise _malformed("invalid column name")
        op = data["op"]
        if op not in OPERATORS:
            raise _malformed("unknown operator")
        if "number" in data:
            num = data["number"]
            if isinstance(num, bool) or not isinstance(num, (str, int)):
                raise _malformed("number must be a decimal string")
            num = str(num)
            if len(num) > MAX_NUMBER_LENGTH or not _NUMBER_RE.match(num):
                raise _malformed("number must be a decimal string")
            return Comparison(column, op, parse_number(num))
        s = data["string"]
        if not isinstance(s, str) or len(s) > MAX_STRING_LENGTH:
            raise _malformed("string must be a string of limited length")
        if not all(string_char_ok(c) for c in s):
            raise _malformed("string holds a control or invisible character")
        return Comparison(column, op, s)
    raise _malformed("unknown node kind")


# ---------------------------------------------------------------------------
# Types
# ---------------------------------------------------------------------------


def _parse_date_literal(s: str) -> _dt.date:
    if not _DATE_RE.match(s):
        raise ValueError("not YYYY-MM-DD")
    return _dt.date.fromisoformat(s)


def check_types(expr: Expr, column_types: Mapping[str, str]) -> None:
    """Check every comparison's literal against its column's type.

    ``column_types`` maps column names to ``integer``, ``decimal``, ``text`` or
    ``date``. Raises :class:`InvalidInput` for an unknown column or a mismatch.
    """
    for c in expr.comparisons():
        if c.column not in column_types:
            raise InvalidInput(f"where: unknown column '{c.column}'")
        ctype = column_types[c.column]
        if ctype not in COLUMN_TYPES:
            raise InvalidInput(f"where: column '{c.column}' has unknown type '{ctype}'")
        if ctype in ("integer", "decimal"):
            if not c.is_number:
                raise InvalidInput(
                    f"where: column '{c.column}' is {ctype} but is compared with a string literal"
                )
        elif ctype == "text":
            if c.is_number:
                raise InvalidInput(
                    f"where: column '{c.column}' is text but is compared with a number; quote the literal"
                )
        else:  # date
            if c.is_number:
                raise InvalidInput(
                    f"where: column '{c.column}' is a date; write the literal as 'YYYY-MM-DD'"
                )
            try:
                _parse_date_literal(c.value)  # type: ignore[arg-type]
            except ValueError:
                raise InvalidInput(
                    f"where: column '{c.column}' is a date; the literal is not a valid 'YYYY-MM-DD' date"
                ) from None


# ---------------------------------------------------------------------------
# Evaluation of one value
# ---------------------------------------------------------------------------


def _is_missing(v: object) -> bool:
    if v is None:
        return True
    if isinstance(v, str):
        return v == ""
    if isinstance(v, float):
        return v != v
    if isinstance(v, Decimal):
        return v.is_nan()
    return False


def _to_number(column: str, v: object) -> Decimal | int:
    if isinstance(v, bool):
        raise InvalidInput(f"where: column '{column}' holds booleans, not numbers")
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise InvalidInput(f"where: column '{column}' holds a value that is not a finite number")
        return v
    if isinstance(v, numbers.Real):
        f = float(v)
        if not math.isfinite(f):
            raise InvalidInput(f"where: column '{column}' holds a value that is not a finite number")
        return Decimal(repr(f))
    if isinstance(v, str):
        s = v.strip()
        if len(s) <= 64:
            try:
                d = Decimal(s)
            except InvalidOperation:
                d = None
            if d is not None and d.is_finite():
                return d
        raise InvalidInput(f"where: column '{column}' holds a value that is not a number")
    raise InvalidInput(f"where: column '{column}' is not numeric but is compared with a number")


def _compare(c: Comparison, raw: object) -> bool:
    if _is_missing(raw):
        return False
    fn = _PY_OPS[c.op]
    if c.is_number:
        return bool(fn(_to_number(c.column, raw), c.value))
    lit = c.value
    if isinstance(raw, _dt.datetime):
        raw = raw.date()
    if isinstance(raw, _dt.date):
        try:
            return bool(fn(raw, _parse_date_literal(lit)))  # type: ignore[arg-type]
        except ValueError:
            raise InvalidInput(
                f"where: column '{c.column}' is a date; the literal is not a valid 'YYYY-MM-DD' date"
            ) from None
    if isinstance(raw, str):
        return bool(fn(str(raw), lit))
    raise InvalidInput(f"where: column '{c.column}' is not text but is compared with a string literal")
