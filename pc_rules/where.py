"""The ``where`` language of rule criteria: its text syntax, and the import path for all of it.

A condition is ``column op literal`` comparisons joined by ``and`` / ``or``
(``and`` binds tighter; parentheses group)::

    vehicle_type != 'motorcycle'
    usage = 'residential' and (area_m2 >= 20.5 or district = '南山区')
    registered_on >= '2015-01-01'

Operators are ``= != < <= > >=``; literals are numbers (``12``, ``-3``, ``1100.00``)
or single-quoted strings (``''`` escapes a quote; dates are written as
``'YYYY-MM-DD'``). Nothing else is accepted — no functions, no SQL, no double
quotes, no comments — and a condition is only ever evaluated in Python
(:meth:`Expr.evaluate`); it is never turned into SQL.

This module holds the tokenizer and the parser (:func:`parse_where`); the parsed nodes,
their dict form, the type check and the evaluation are in :mod:`pc_rules.expr` and are
re-exported here. Error messages name a position, never a literal.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from pc_common.errors import InvalidInput
from pc_rules.expr import (
    COLUMN_NAME_RE,
    COLUMN_TYPES,
    MAX_COMPARISONS,
    MAX_DEPTH,
    MAX_NUMBER_LENGTH,
    MAX_STRING_LENGTH,
    OPERATORS,
    RESERVED_WORDS,
    And,
    Comparison,
    Expr,
    Or,
    check_types,
    combine,
    is_column_name,
    parse_number,
    string_char_ok,
)

__all__ = [
    "And",
    "COLUMN_NAME_RE",
    "COLUMN_TYPES",
    "Comparison",
    "Expr",
    "Or",
    "OPERATORS",
    "check_types",
    "is_column_name",
    "parse_where",
]

MAX_TEXT_LENGTH = 4000


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
            yield _Token("number", word, pos, parse_number(word))
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
                if not string_char_ok(c):
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
        return combine(Or, operands)

    def parse_and(self, depth: int) -> Expr:
        operands = [self.parse_primary(depth + 1)]
        while self.peek().kind == "and":
            self.take()
            operands.append(self.parse_primary(depth + 1))
        return combine(And, operands)

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
