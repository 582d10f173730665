"""The small, safe ``where`` grammar of rule criteria.

A condition is ``column op literal`` comparisons joined by ``and`` / ``or``
(``and`` binds tighter; parentheses group)::

    vehicle_type != 'motorcycle'
    usage = 'residential' and (area_m2 >= 20.5 or district = '南山区')
    registered_on >= '2015-01-01'

Operators are ``= != < <= > >=``; literals are numbers (``12``, ``-3``, ``1100.00``)
or single-quoted strings (``''`` escapes a quote; dates are written as
``'YYYY-MM-DD'``). Nothing else is accepted — no functions, no SQL, no double
quotes, no comments — and a condition is only ever evaluated here, in Python;
it is never turned into SQL.

Semantics (the same in :meth:`Expr.evaluate` and :meth:`Expr.evaluate_columns`):

* number literals compare numerically (exactly, with :class:`~decimal.Decimal`, for
  scalar rows; vectorised float columns compare as float64, which is exact for
  values of up to 15 significant digits);
* string literals compare as strings (code-point order), or as dates when the
  value is a date;
* a missing value (``None``, ``''``, NaN, NaT) satisfies no comparison, not
  even ``!=`` — as SQL's NULL.

Error messages name a position or a column, never a literal or a value.
"""
from __future__ import annotations

import datetime as _dt
import operator
import re
import unicodedata
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Callable, Iterator, Mapping, Union

import numpy as np

from pc_common.errors import InvalidInput

__all__ = [
    "And",
    "Comparison",
    "Expr",
    "Or",
    "OPERATORS",
    "COLUMN_TYPES",
    "check_types",
    "evaluate_columns",
    "is_column_name",
    "parse_where",
]

OPERATORS = ("=", "!=", "<", "<=", ">", ">=")
COLUMN_TYPES = ("integer", "decimal", "text", "date")

MAX_TEXT_LENGTH = 4000
MAX_DEPTH = 16          # nesting of parentheses / and-or levels
MAX_COMPARISONS = 64
MAX_STRING_LENGTH = 512
MAX_NUMBER_LENGTH = 32

_COLUMN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NUMBER_RE = re.compile(r"-?[0-9]+(?:\.[0-9]+)?\Z")
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")

# Words that may not be column names: the grammar's own keywords and the SQL
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


def is_column_name(name: object) -> bool:
    """True for a syntactically valid, non-reserved column name."""
    return (
        isinstance(name, str)
        and len(name) <= 64
        and bool(_COLUMN_RE.match(name))
        and name.lower() not in RESERVED_WORDS
    )


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

    def evaluate_columns(self, columns: Mapping[str, Any]) -> np.ndarray:
        """Evaluate on whole columns at once; returns a boolean array."""
        return evaluate_columns(self, columns)

    def to_dict(self) -> dict:
        """A JSON-able form (numbers as decimal strings, so nothing is rounded)."""
        raise NotImplementedError

    @staticmethod
    def from_dict(data: object) -> "Expr":
        """Rebuild from :meth:`to_dict` output, validating it like parsed text."""
        counter = [0]
        expr = _from_dict(data, 0, counter)
        return expr

    def to_text(self) -> str:
        """Canonical text; ``parse_where(e.to_text()) == e``."""
        raise NotImplementedError

    def __str__(self) -> str:
        return self.to_text()


Number = Union[int, Decimal]


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
        return _compare_scalar(self, raw)

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
        # Evaluate every operand (no short-circuit) so type errors surface
        # regardless of data, exactly as in the vectorised path.
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


def _combine(cls: type, operands: list[Expr]) -> Expr:
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
# Lexer and parser
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str       # ident, and, or, number, string, op, lparen, rparen, end
    text: str
    pos: int        # 1-based character position
    value: Any = None


def _fail(pos: int, msg: str) -> InvalidInput:
    return InvalidInput(f"where: position {pos}: {msg}")


def _describe_char(ch: str) -> str:
    if ch.isascii() and ch.isprintable():
        return f"'{ch}'"
    return f"U+{ord(ch):04X}"


_WHITESPACE = " \t\r\n"
_IDENT_START = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_IDENT_CHARS = _IDENT_START | set("0123456789")
_DIGITS = set("0123456789")


def _string_char_ok(ch: str) -> bool:
    # Reject control characters and invisible format characters (zero-width
    # spaces, bidi overrides, BOM): they make a condition read differently
    # from what it does. Ordinary text in any script is fine.
    return unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp")


def _tokenize(text: str) -> Iterator[_Token]:
    """Yield tokens lazily, so the first error in reading order is reported."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        pos = i + 1
        if ch in _WHITESPACE:
            i += 1
            continue
        if ch in _IDENT_START:
            j = i + 1
            while j < n and text[j] in _IDENT_CHARS:
                j += 1
            word = text[i:j]
            low = word.lower()
            if low in ("and", "or"):
                yield _Token(low, word, pos)
            else:
                yield _Token("ident", word, pos)
            i = j
            continue
        if ch in _DIGITS or (ch == "-" and i + 1 < n and text[i + 1] in _DIGITS):
            j = i + 1
            while j < n and text[j] in _DIGITS:
                j += 1
            if j < n and text[j] == ".":
                k = j + 1
                while k < n and text[k] in _DIGITS:
                    k += 1
                if k == j + 1:
                    raise _fail(j + 1, "a decimal point must be followed by digits")
                j = k
            if j < n and (text[j] in _IDENT_CHARS or text[j] == "."):
                raise _fail(j + 1, "malformed number")
            word = text[i:j]
            if len(word) > MAX_NUMBER_LENGTH:
                raise _fail(pos, "number literal too long")
            yield _Token("number", word, pos, _parse_number(word))
            i = j
            continue
        if ch == "'":
            j = i + 1
            parts: list[str] = []
            while True:
                if j >= n:
                    raise _fail(pos, "unterminated string literal (missing closing ')")
                c = text[j]
                if c == "'":
                    if j + 1 < n and text[j + 1] == "'":
                        parts.append("'")
                        j += 2
                        continue
                    j += 1
                    break
                if not _string_char_ok(c):
                    raise _fail(j + 1, f"character {_describe_char(c)} is not allowed in a string literal")
                parts.append(c)
                j += 1
            value = "".join(parts)
            if len(value) > MAX_STRING_LENGTH:
                raise _fail(pos, "string literal too long")
            yield _Token("string", text[i:j], pos, value)
            i = j
            continue
        if ch in "<>!=":
            two = text[i:i + 2]
            if two in ("<=", ">=", "!="):
                yield _Token("op", two, pos)
                i += 2
                continue
            if two in ("==", "<>"):
                raise _fail(pos, f"unknown operator '{two}' (use one of {' '.join(OPERATORS)})")
            if ch == "!":
                raise _fail(pos, "unexpected '!' (did you mean '!='?)")
            yield _Token("op", ch, pos)
            i += 1
            continue
        if ch == "(":
            yield _Token("lparen", ch, pos)
            i += 1
            continue
        if ch == ")":
            yield _Token("rparen", ch, pos)
            i += 1
            continue
        if ch == '"':
            raise _fail(pos, "double quotes are not allowed; quote strings with '")
        if ch == ";":
            raise _fail(pos, "unexpected ';' (only one condition is allowed, no statements)")
        if ch == "-" and text[i:i + 2] == "--":
            raise _fail(pos, "comments are not allowed")
        raise _fail(pos, f"unexpected character {_describe_char(ch)}")
    yield _Token("end", "", n + 1)


def _parse_number(word: str) -> Number:
    if "." in word:
        return Decimal(word)
    return int(word)


class _Parser:
    def __init__(self, tokens: Iterator[_Token]):
        self.tokens = tokens
        self.current = next(tokens)
        self.comparisons = 0

    def peek(self) -> _Token:
        return self.current

    def take(self) -> _Token:
        tok = self.current
        if tok.kind != "end":
            self.current = next(self.tokens)
        return tok

    def parse(self) -> Expr:
        if self.peek().kind == "end":
            raise _fail(1, "empty condition")
        expr = self.parse_or(0)
        tok = self.peek()
        if tok.kind == "rparen":
            raise _fail(tok.pos, "unbalanced ')'")
        if tok.kind != "end":
            raise _fail(tok.pos, "expected 'and', 'or' or the end of the condition, "
                                 f"found {self.describe(tok)}")
        return expr

    def describe(self, tok: _Token) -> str:
        if tok.kind == "end":
            return "the end of the condition"
        if tok.kind == "string":
            return "a string literal"
        if tok.kind == "number":
            return "a number"
        if tok.kind == "ident":
            return f"'{tok.text}'"
        return f"'{tok.text}'"

    def parse_or(self, depth: int) -> Expr:
        if depth > MAX_DEPTH:
            raise _fail(self.peek().pos, "condition nested too deeply")
        operands = [self.parse_and(depth + 1)]
        while self.peek().kind == "or":
            self.take()
            operands.append(self.parse_and(depth + 1))
        return _combine(Or, operands)

    def parse_and(self, depth: int) -> Expr:
        operands = [self.parse_primary(depth + 1)]
        while self.peek().kind == "and":
            self.take()
            operands.append(self.parse_primary(depth + 1))
        return _combine(And, operands)

    def parse_primary(self, depth: int) -> Expr:
        tok = self.peek()
        if tok.kind == "lparen":
            self.take()
            if self.peek().kind == "rparen":
                raise _fail(self.peek().pos, "empty parentheses")
            inner = self.parse_or(depth + 1)
            close = self.peek()
            if close.kind != "rparen":
                if close.kind == "end":
                    raise _fail(tok.pos, "unbalanced '(' (missing ')')")
                raise _fail(close.pos, f"expected ')', found {self.describe(close)}")
            self.take()
            return inner
        return self.parse_comparison()

    def parse_comparison(self) -> Comparison:
        tok = self.take()
        if tok.kind in ("and", "or"):
            raise _fail(tok.pos, f"expected a column name, found keyword '{tok.text}'")
        if tok.kind != "ident":
            raise _fail(tok.pos, f"expected a column name, found {self.describe(tok)}")
        name = tok.text
        if name.lower() in RESERVED_WORDS:
            raise _fail(tok.pos, f"'{name}' is a reserved word, not a column name")
        if len(name) > 64:
            raise _fail(tok.pos, "column name too long")
        op = self.take()
        if op.kind == "lparen":
            raise _fail(op.pos, "functions are not supported")
        if op.kind != "op":
            raise _fail(op.pos, f"expected a comparison operator ({' '.join(OPERATORS)}) "
                                f"after column '{name}', found {self.describe(op)}")
        lit = self.take()
        if lit.kind not in ("number", "string"):
            if lit.kind == "ident":
                raise _fail(lit.pos, "expected a number or a quoted string; comparing two columns is not supported")
            raise _fail(lit.pos, f"expected a number or a quoted string, found {self.describe(lit)}")
        self.comparisons += 1
        if self.comparisons > MAX_COMPARISONS:
            raise _fail(tok.pos, f"too many comparisons (at most {MAX_COMPARISONS})")
        return Comparison(name, op.text, lit.value)


def parse_where(text: str) -> Expr:
    """Parse a condition; raises :class:`InvalidInput` naming the position."""
    if not isinstance(text, str):
        raise InvalidInput("where: the condition must be a string")
    if len(text) > MAX_TEXT_LENGTH:
        raise InvalidInput(f"where: condition longer than {MAX_TEXT_LENGTH} characters")
    return _Parser(_tokenize(text)).parse()


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
        return _combine(And if kind == "and" else Or, children)
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
            return Comparison(column, op, _parse_number(num))
        s = data["string"]
        if not isinstance(s, str) or len(s) > MAX_STRING_LENGTH:
            raise _malformed("string must be a string of limited length")
        if not all(_string_char_ok(c) for c in s):
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
# Scalar evaluation
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
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, Decimal):
        if not v.is_finite():
            raise InvalidInput(f"where: column '{column}' holds a value that is not a finite number")
        return v
    if isinstance(v, (float, np.floating)):
        if not np.isfinite(v):
            raise InvalidInput(f"where: column '{column}' holds a value that is not a finite number")
        return Decimal(repr(float(v)))
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


def _compare_scalar(c: Comparison, raw: object) -> bool:
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
    if isinstance(raw, np.datetime64):
        return _compare_scalar(c, raw.astype("datetime64[D]").astype(object))
    if isinstance(raw, (str, np.str_)):
        return bool(fn(str(raw), lit))
    raise InvalidInput(f"where: column '{c.column}' is not text but is compared with a string literal")


# ---------------------------------------------------------------------------
# Vectorised evaluation
# ---------------------------------------------------------------------------


def evaluate_columns(expr: Expr, columns: Mapping[str, Any]) -> np.ndarray:
    """Evaluate ``expr`` over whole columns (numpy arrays or lists).

    All referenced columns must be one-dimensional and of equal length. Returns
    a boolean numpy array with one entry per row.
    """
    arrays: dict[str, np.ndarray] = {}
    length: int | None = None
    for name in sorted(expr.columns()):
        if name not in columns:
            raise InvalidInput(f"where: no column '{name}' among the given columns")
        col = columns[name]
        arr = col if isinstance(col, np.ndarray) else _as_array(col)
        if arr.ndim != 1:
            raise InvalidInput(f"where: column '{name}' is not one-dimensional")
        if length is None:
            length = len(arr)
        elif len(arr) != length:
            raise InvalidInput("where: columns have different lengths")
        arrays[name] = arr
    return _eval_vec(expr, arrays)


def _as_array(col: Any) -> np.ndarray:
    seq = list(col)
    if seq and all(isinstance(v, str) for v in seq):
        return np.array(seq, dtype=str)
    if seq and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in seq):
        try:
            return np.array(seq, dtype=np.int64)
        except OverflowError:
            pass
    arr = np.empty(len(seq), dtype=object)
    arr[:] = seq
    return arr


def _eval_vec(expr: Expr, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    if isinstance(expr, And):
        return np.logical_and.reduce([_eval_vec(o, arrays) for o in expr.operands])
    if isinstance(expr, Or):
        return np.logical_or.reduce([_eval_vec(o, arrays) for o in expr.operands])
    assert isinstance(expr, Comparison)
    return _compare_vec(expr, arrays[expr.column])


_NP_OPS: dict[str, Callable[[Any, Any], np.ndarray]] = {
    "=": np.equal,
    "!=": np.not_equal,
    "<": np.less,
    "<=": np.less_equal,
    ">": np.greater,
    ">=": np.greater_equal,
}


def _compare_elementwise(c: Comparison, arr: np.ndarray) -> np.ndarray:
    return np.fromiter((_compare_scalar(c, v) for v in arr), dtype=bool, count=len(arr))


def _compare_vec(c: Comparison, arr: np.ndarray) -> np.ndarray:
    kind = arr.dtype.kind
    fn = _NP_OPS[c.op]
    if kind == "O":
        return _compare_elementwise(c, arr)
    if kind == "S":
        arr = np.char.decode(arr, "utf-8")
        kind = "U"
    if kind == "T":  # numpy StringDType
        arr = arr.astype(str)
        kind = "U"
    if c.is_number:
        if kind in "iu":
            return _compare_int_array(c, arr)
        if kind == "f":
            lit = c.value
            if len(str(lit).lstrip("-").replace(".", "").lstrip("0")) > 15:
                return _compare_elementwise(c, arr)
            with np.errstate(invalid="ignore"):
                return fn(arr, float(lit)) & ~np.isnan(arr)
        if kind == "U":
            try:  # fast path: every cell is a number
                values = arr.astype(np.float64)
                present = np.ones(len(arr), dtype=bool)
            except ValueError:  # some cells are empty (missing) or not numbers
                stripped = np.char.strip(arr)
                present = np.char.str_len(stripped) > 0
                values = np.zeros(len(arr), dtype=np.float64)
                try:
                    values[present] = stripped[present].astype(np.float64)
                except ValueError:
                    raise InvalidInput(
                        f"where: column '{c.column}' holds a value that is not a number"
                    ) from None
            present &= np.isfinite(values)
            lit = c.value
            if len(str(lit).lstrip("-").replace(".", "").lstrip("0")) > 15:
                return _compare_elementwise(c, arr)
            return fn(values, float(lit)) & present
        if kind == "b":
            raise InvalidInput(f"where: column '{c.column}' holds booleans, not numbers")
        raise InvalidInput(f"where: column '{c.column}' is not numeric but is compared with a number")
    # string literal
    if kind == "U":
        return fn(arr, c.value) & (arr != "")
    if kind == "M":
        try:
            lit = np.datetime64(_parse_date_literal(c.value), "D")  # type: ignore[arg-type]
        except ValueError:
            raise InvalidInput(
                f"where: column '{c.column}' is a date; the literal is not a valid 'YYYY-MM-DD' date"
            ) from None
        days = arr.astype("datetime64[D]")
        return fn(days, lit) & ~np.isnat(days)
    raise InvalidInput(f"where: column '{c.column}' is not text but is compared with a string literal")


def _compare_int_array(c: Comparison, arr: np.ndarray) -> np.ndarray:
    fn = _NP_OPS[c.op]
    lit = c.value
    info = np.iinfo(arr.dtype)
    if isinstance(lit, Decimal):
        if lit == lit.to_integral_value():
            lit = int(lit)
        else:
            # Non-integral literal against integers: x < 2.5 <=> x <= 2, etc.
            floor = int(lit.to_integral_value(rounding="ROUND_FLOOR"))
            if c.op == "=":
                return np.zeros(len(arr), dtype=bool)
            if c.op == "!=":
                return np.ones(len(arr), dtype=bool)
            if not (info.min <= floor <= info.max):
                return _compare_elementwise(c, arr.astype(object))
            if c.op in ("<", "<="):
                return arr <= floor
            return arr > floor
    if not (info.min <= lit <= info.max):
        return _compare_elementwise(c, arr.astype(object))
    return fn(arr, lit)
