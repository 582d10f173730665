"""Eligibility rule files: the model, parsing and validation of the file.

A rule file is TOML (contract in DESIGN.md, "Rule file"; user guide in
docs/rules.md). :func:`load_rule` / :func:`parse_rule` turn it into a
:class:`Rule`; :meth:`Rule.to_dict` / :meth:`Rule.from_dict` carry it inside job
specs (``from_dict`` validates exactly like the parser, since the dict may come
from a peer). Checking a rule against the catalog and deriving the column uses it
asks of an agency are in :mod:`pc_rules.catalog` (re-exported here).

Every error is one line naming the file, the criterion and the field, e.g.::

    dibao.toml: criterion 'no_car': field 'type': unknown type 'none_exist' (expected one of ...)
"""
from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Mapping, Optional

from pc_common import money
from pc_common.errors import InvalidInput
from pc_rules.where import Expr, is_column_name, parse_where

__all__ = [
    "CRITERION_TYPES",
    "COUNT_TYPES",
    "Criterion",
    "ErrorContext",
    "Rule",
    "column_uses",
    "load_rule",
    "parse_rule",
    "validate_against_catalog",
]

COUNT_TYPES = ("none_exists", "exists", "count_at_most")
CRITERION_TYPES = COUNT_TYPES + ("sum_below",)
REVEAL_MODES = ("verdict", "reasons")

MAX_CRITERIA = 64
MAX_SOURCES = 16
MAX_COUNT = 1_000_000
MAX_MONEY = Decimal("1000000000")          # 1e9 yuan per member / in total
MAX_FILE_BYTES = 256 * 1024

_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}\Z")
_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")           # agency, dataset, criterion
_PURPOSE_RE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*){0,7}\Z")

_RULE_KEYS = ("id", "title", "purpose", "requester", "subject_column", "group_column",
              "reveal", "criteria")
_CRITERION_KEYS = ("name", "type", "source", "sources", "where", "max", "per_member", "limit")


# ---------------------------------------------------------------------------
# Data model
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    """One test of a rule.

    ``source`` is ``agency.dataset`` for the count types; ``sources`` lists
    ``agency.dataset.column`` for ``sum_below`` (its ``where`` filters the rows
    summed, in every source). Money is a :class:`Decimal` with at most two places;
    ``*_cents`` give the same as integer cents (:func:`pc_common.money.to_cents`).
    """

    name: str
    type: str
    source: Optional[str] = None
    sources: tuple[str, ...] = ()
    where: Optional[Expr] = None
    max: Optional[int] = None
    per_member: Optional[Decimal] = None
    limit: Optional[Decimal] = None

    @property
    def per_member_cents(self) -> Optional[int]:
        return None if self.per_member is None else money.to_cents(self.per_member)

    @property
    def limit_cents(self) -> Optional[int]:
        return None if self.limit is None else money.to_cents(self.limit)

    def threshold_cents(self, group_size: int) -> int:
        """The ``sum_below`` threshold for a group: sum must be strictly below it."""
        if self.type != "sum_below":
            raise ValueError("only sum_below criteria have a threshold")
        if self.per_member is not None:
            return self.per_member_cents * group_size  # type: ignore[operator]
        return self.limit_cents  # type: ignore[return-value]

    def datasets(self) -> dict[str, set[str]]:
        """``{"agency.dataset": {columns used}}`` — where columns and summed columns."""
        where_cols = self.where.columns() if self.where is not None else set()
        if self.type == "sum_below":
            out: dict[str, set[str]] = {}
            for s in self.sources:
                agency, dataset, column = s.split(".")
                out.setdefault(f"{agency}.{dataset}", set(where_cols)).add(column)
            return out
        return {self.source: set(where_cols)}  # type: ignore[dict-item]

    def agencies(self) -> list[str]:
        return sorted({d.split(".")[0] for d in self.datasets()})

    def to_dict(self) -> dict:
        d: dict[str, Any] = {"name": self.name, "type": self.type}
        if self.type == "sum_below":
            d["sources"] = list(self.sources)
        else:
            d["source"] = self.source
        if self.where is not None:
            d["where"] = self.where.to_text()
        if self.max is not None:
            d["max"] = self.max
        if self.per_member is not None:
            d["per_member"] = str(self.per_member)
        if self.limit is not None:
            d["limit"] = str(self.limit)
        return d


@dataclass(frozen=True)
class Rule:
    id: str
    title: str
    purpose: str
    requester: str
    subject_column: str
    group_column: Optional[str]
    reveal: str
    criteria: tuple[Criterion, ...]
    origin: str = field(default="", compare=False)   # file name, for messages

    def providers(self) -> list[str]:
        """The agencies whose data the rule reads, sorted (may include the requester)."""
        return sorted({a for c in self.criteria for a in c.agencies()})

    def datasets(self) -> dict[str, set[str]]:
        """``{"agency.dataset": {columns the rule reads besides the key}}``."""
        out: dict[str, set[str]] = {}
        for c in self.criteria:
            for ds, cols in c.datasets().items():
                out.setdefault(ds, set()).update(cols)
        return out

    def criterion(self, name: str) -> Criterion:
        for c in self.criteria:
            if c.name == name:
                return c
        raise KeyError(name)

    def criteria_digest(self, agency: str) -> str:
        """SM3 hex of the criteria touching ``agency``: what its grants pin (:mod:`pc_rules.pinning`)."""
        from pc_rules.pinning import criteria_digest
        return criteria_digest(self, agency)

    def to_dict(self) -> dict:
        """JSON-able form with the same shape as the TOML file (money as strings)."""
        d: dict[str, Any] = {
            "id": self.id,
            "title": self.title,
            "purpose": self.purpose,
            "requester": self.requester,
            "subject_column": self.subject_column,
        }
        if self.group_column is not None:
            d["group_column"] = self.group_column
        d["reveal"] = self.reveal
        d["criteria"] = [c.to_dict() for c in self.criteria]
        return d

    @classmethod
    def from_dict(cls, data: object, source_name: str = "rule") -> "Rule":
        """Rebuild from :meth:`to_dict` output (or a parsed TOML table), fully validated."""
        return _build_rule(data, source_name)


# ---------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------


def load_rule(path: str | Path) -> Rule:
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise InvalidInput(f"{p.name}: cannot read the rule file ({e.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise InvalidInput(f"{p.name}: rule file larger than {MAX_FILE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{p.name}: rule file is not UTF-8") from None
    return parse_rule(text, p.name)


def parse_rule(text: str, source_name: str = "rule.toml") -> Rule:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{source_name}: not valid TOML: {e}") from None
    return _build_rule(data, source_name)


class ErrorContext:
    """Formats one-line errors: ``file: criterion 'x': field 'y': message`` (also for the catalog checks)."""

    def __init__(self, source_name: str, criterion: Optional[str] = None, index: int = 0):
        self.source_name = source_name
        self.criterion = criterion
        self.index = index

    def error(self, fieldname: Optional[str], msg: str) -> InvalidInput:
        parts = [self.source_name]
        if self.criterion is not None:
            parts.append(f"criterion '{self.criterion}'")
        elif self.index:
            parts.append(f"criterion #{self.index}")
        if fieldname is not None:
            parts.append(f"field '{fieldname}'")
        parts.append(msg)
        return InvalidInput(": ".join(parts))


def _check_keys(ctx: ErrorContext, data: Mapping, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise ctx.error(str(key), f"unknown key (allowed: {', '.join(allowed)})")


def _req_str(ctx: ErrorContext, data: Mapping, key: str, pattern: Optional[re.Pattern] = None,
             what: str = "", required: bool = True) -> Optional[str]:
    if key not in data:
        if required:
            raise ctx.error(key, "missing")
        return None
    v = data[key]
    if not isinstance(v, str):
        raise ctx.error(key, f"must be a string, not {_type_name(v)}")
    if pattern is not None and not pattern.match(v):
        raise ctx.error(key, f"invalid {what}")
    return v


def _type_name(v: object) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _column(ctx: ErrorContext, data: Mapping, key: str, required: bool) -> Optional[str]:
    v = _req_str(ctx, data, key, required=required)
    if v is not None and not is_column_name(v):
        raise ctx.error(key, "invalid column name (letters, digits and _, not starting with a digit)")
    return v


def _build_rule(data: object, source_name: str) -> Rule:
    ctx = ErrorContext(source_name)
    if not isinstance(data, dict):
        raise ctx.error(None, "a rule must be a table")
    _check_keys(ctx, data, _RULE_KEYS)
    rule_id = _req_str(ctx, data, "id", _ID_RE, "id (letters, digits, _ and -, at most 64)")
    title = _req_str(ctx, data, "title", required=False)
    if title is None:
        title = rule_id
    if len(title) > 200 or "\n" in title:
        raise ctx.error("title", "must be one line of at most 200 characters")
    purpose = _req_str(ctx, data, "purpose", _PURPOSE_RE,
                       "purpose (dotted lowercase words, e.g. social_assistance.eligibility)")
    requester = _req_str(ctx, data, "requester", _NAME_RE, "agency name (lowercase letters, digits, _)")
    subject_column = _column(ctx, data, "subject_column", required=True)
    group_column = _column(ctx, data, "group_column", required=False)
    if group_column is not None and group_column == subject_column:
        raise ctx.error("group_column", "must differ from subject_column")
    reveal = _req_str(ctx, data, "reveal", required=False) or "verdict"
    if reveal not in REVEAL_MODES:
        raise ctx.error("reveal", f"unknown mode '{_clip(reveal)}' (expected one of {', '.join(REVEAL_MODES)})")

    raw_criteria = data.get("criteria")
    if raw_criteria is None:
        raise ctx.error("criteria", "missing; add at least one [[criteria]] table")
    if not isinstance(raw_criteria, list) or not raw_criteria:
        raise ctx.error("criteria", "must be a non-empty array of tables ([[criteria]])")
    if len(raw_criteria) > MAX_CRITERIA:
        raise ctx.error("criteria", f"at most {MAX_CRITERIA} criteria")
    criteria: list[Criterion] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_criteria, start=1):
        c = _build_criterion(source_name, raw, i)
        if c.name in seen:
            raise ErrorContext(source_name, c.name).error("name", "duplicate criterion name")
        seen.add(c.name)
        criteria.append(c)
    return Rule(
        id=rule_id,  # type: ignore[arg-type]
        title=title,  # type: ignore[arg-type]
        purpose=purpose,  # type: ignore[arg-type]
        requester=requester,  # type: ignore[arg-type]
        subject_column=subject_column,  # type: ignore[arg-type]
        group_column=group_column,
        reveal=reveal,
        criteria=tuple(criteria),
        origin=source_name,
    )


def _clip(s: str, n: int = 40) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[:n] + "…"


def _build_criterion(source_name: str, raw: object, index: int) -> Criterion:
    ctx = ErrorContext(source_name, index=index)
    if not isinstance(raw, dict):
        raise ctx.error(None, "must be a table")
    name = raw.get("name")
    if isinstance(name, str) and _NAME_RE.match(name):
        ctx = ErrorContext(source_name, name)
    _check_keys(ctx, raw, _CRITERION_KEYS)
    name = _req_str(ctx, raw, "name", _NAME_RE, "criterion name (lowercase letters, digits, _)")
    ctype = _req_str(ctx, raw, "type")
    if ctype not in CRITERION_TYPES:
        raise ctx.error("type", f"unknown type '{_clip(str(ctype))}' "
                                f"(expected one of {', '.join(CRITERION_TYPES)})")

    where: Optional[Expr] = None
    if "where" in raw:
        text = _req_str(ctx, raw, "where")
        try:
            where = parse_where(text)  # type: ignore[arg-type]
        except InvalidInput as e:
            msg = str(e)
            raise ctx.error("where", msg[len("where: "):] if msg.startswith("where: ") else msg) from None

    source: Optional[str] = None
    sources: tuple[str, ...] = ()
    max_: Optional[int] = None
    per_member: Optional[Decimal] = None
    limit: Optional[Decimal] = None

    if ctype in COUNT_TYPES:
        for bad in ("sources", "per_member", "limit"):
            if bad in raw:
                raise ctx.error(bad, f"not allowed for type '{ctype}'")
        source = _req_str(ctx, raw, "source")
        _check_ref(ctx, "source", source, 2)  # type: ignore[arg-type]
        if ctype == "count_at_most":
            if "max" not in raw:
                raise ctx.error("max", "missing (required for count_at_most)")
            max_ = raw["max"]
            if isinstance(max_, bool) or not isinstance(max_, int):
                raise ctx.error("max", f"must be an integer, not {_type_name(max_)}")
            if max_ < 0 or max_ > MAX_COUNT:
                raise ctx.error("max", f"must be between 0 and {MAX_COUNT}")
        elif "max" in raw:
            raise ctx.error("max", f"not allowed for type '{ctype}' (only count_at_most)")
    else:  # sum_below
        if "max" in raw:
            raise ctx.error("max", "not allowed for type 'sum_below'")
        if "source" in raw and "sources" in raw:
            raise ctx.error("sources", "give either 'source' or 'sources', not both")
        if "source" in raw:
            one = _req_str(ctx, raw, "source")
            _check_ref(ctx, "source", one, 3)  # type: ignore[arg-type]
            sources = (one,)  # type: ignore[assignment]
        elif "sources" in raw:
            lst = raw["sources"]
            if not isinstance(lst, list) or not lst:
                raise ctx.error("sources", "must be a non-empty array of \"agency.dataset.column\"")
            if len(lst) > MAX_SOURCES:
                raise ctx.error("sources", f"at most {MAX_SOURCES} sources")
            for s in lst:
                if not isinstance(s, str):
                    raise ctx.error("sources", f"entries must be strings, not {_type_name(s)}")
                _check_ref(ctx, "sources", s, 3)
            if len(set(lst)) != len(lst):
                raise ctx.error("sources", "lists the same column twice")
            sources = tuple(lst)
        else:
            raise ctx.error("sources", "missing (required for sum_below: [\"agency.dataset.column\", …])")
        has_pm, has_limit = "per_member" in raw, "limit" in raw
        if has_pm == has_limit:
            raise ctx.error("per_member", "give exactly one of 'per_member' and 'limit'")
        if has_pm:
            per_member = _money(ctx, "per_member", raw["per_member"])
        else:
            limit = _money(ctx, "limit", raw["limit"])
    return Criterion(
        name=name,  # type: ignore[arg-type]
        type=ctype,  # type: ignore[arg-type]
        source=source,
        sources=sources,
        where=where,
        max=max_,
        per_member=per_member,
        limit=limit,
    )


def _check_ref(ctx: ErrorContext, fieldname: str, ref: str, parts: int) -> None:
    pieces = ref.split(".")
    shape = "agency.dataset" if parts == 2 else "agency.dataset.column"
    if len(pieces) != parts:
        raise ctx.error(fieldname, f"must have the form \"{shape}\"")
    for p in pieces[:2]:
        if not _NAME_RE.match(p):
            raise ctx.error(fieldname, f"invalid agency or dataset name in \"{shape}\" (lowercase letters, digits, _)")
    if parts == 3 and not is_column_name(pieces[2]):
        raise ctx.error(fieldname, "invalid column name")


def _money(ctx: ErrorContext, fieldname: str, v: object) -> Decimal:
    """A non-negative amount with at most two decimal places (:mod:`pc_common.money`).

    Accepts TOML integers, floats (``1100.00`` — read back through their shortest
    repr, so ``1100.00`` is exactly 1100) and strings (``"1100.00"``, exact).
    """
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        raise ctx.error(fieldname, f"must be a number, not {_type_name(v)}")
    try:
        return money.amount(v, floats=True, negative=False, maximum=MAX_MONEY)
    except money.BadAmount as e:
        raise ctx.error(fieldname, e.reason) from None


# The catalog side of a rule, kept importable from here (callers use ``pc_rules.rules``).
from pc_rules.catalog import column_uses, validate_against_catalog  # noqa: E402
