"""Eligibility rules: parse, validate, ship, and check against the catalog.

A rule file is TOML (contract in DESIGN.md, "Rule file"; user guide in
docs/rules.md). :func:`load_rule` / :func:`parse_rule` turn it into a
:class:`Rule`; :meth:`Rule.to_dict` / :meth:`Rule.from_dict` carry it inside job
specs (``from_dict`` validates exactly like the parser, since the dict may come
from a peer); :func:`validate_against_catalog` checks datasets, columns and types.

This module also reads the per-dataset column metadata files
(``<agency>/<dataset>.toml``, format in docs/rules.md "Dataset metadata") and
builds a catalog from a directory of them.

Every error is one line naming the file, the criterion and the field, e.g.::

    dibao.toml: criterion 'no_car': field 'type': unknown type 'none_exist' (expected one of ...)
"""
from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Mapping, Optional

from pc_common.errors import InvalidInput
from pc_rules.where import COLUMN_TYPES, Expr, check_types, is_column_name, parse_where

__all__ = [
    "CRITERION_TYPES",
    "COUNT_TYPES",
    "Criterion",
    "Rule",
    "ColumnMeta",
    "DatasetMeta",
    "load_rule",
    "parse_rule",
    "validate_against_catalog",
    "load_dataset_metadata",
    "parse_dataset_metadata",
    "catalog_from_directory",
]

COUNT_TYPES = ("none_exists", "exists", "count_at_most")
CRITERION_TYPES = COUNT_TYPES + ("sum_below",)
REVEAL_MODES = ("verdict", "reasons")
NUMERIC_TYPES = ("integer", "decimal")

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
    ``*_cents`` give the same as integers.
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
        return None if self.per_member is None else int(self.per_member * 100)

    @property
    def limit_cents(self) -> Optional[int]:
        return None if self.limit is None else int(self.limit * 100)

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


class _Ctx:
    """Formats one-line errors: ``file: criterion 'x': field 'y': message``."""

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


def _check_keys(ctx: _Ctx, data: Mapping, allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            raise ctx.error(str(key), f"unknown key (allowed: {', '.join(allowed)})")


def _req_str(ctx: _Ctx, data: Mapping, key: str, pattern: Optional[re.Pattern] = None,
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


def _column(ctx: _Ctx, data: Mapping, key: str, required: bool) -> Optional[str]:
    v = _req_str(ctx, data, key, required=required)
    if v is not None and not is_column_name(v):
        raise ctx.error(key, "invalid column name (letters, digits and _, not starting with a digit)")
    return v


def _build_rule(data: object, source_name: str) -> Rule:
    ctx = _Ctx(source_name)
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
            raise _Ctx(source_name, c.name).error("name", "duplicate criterion name")
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
    ctx = _Ctx(source_name, index=index)
    if not isinstance(raw, dict):
        raise ctx.error(None, "must be a table")
    name = raw.get("name")
    if isinstance(name, str) and _NAME_RE.match(name):
        ctx = _Ctx(source_name, name)
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


def _check_ref(ctx: _Ctx, fieldname: str, ref: str, parts: int) -> None:
    pieces = ref.split(".")
    shape = "agency.dataset" if parts == 2 else "agency.dataset.column"
    if len(pieces) != parts:
        raise ctx.error(fieldname, f"must have the form \"{shape}\"")
    for p in pieces[:2]:
        if not _NAME_RE.match(p):
            raise ctx.error(fieldname, f"invalid agency or dataset name in \"{shape}\" (lowercase letters, digits, _)")
    if parts == 3 and not is_column_name(pieces[2]):
        raise ctx.error(fieldname, "invalid column name")


def _money(ctx: _Ctx, fieldname: str, v: object) -> Decimal:
    """A non-negative amount with at most two decimal places.

    Accepts TOML integers, floats (``1100.00`` — read back through their shortest
    repr, so ``1100.00`` is exactly 1100) and strings (``"1100.00"``, exact).
    """
    if isinstance(v, bool):
        raise ctx.error(fieldname, "must be a number, not a boolean")
    if isinstance(v, int):
        d = Decimal(v)
    elif isinstance(v, float):
        if not math.isfinite(v):
            raise ctx.error(fieldname, "must be a finite number")
        d = Decimal(repr(v))
    elif isinstance(v, str):
        if not re.fullmatch(r"-?[0-9]+(\.[0-9]+)?", v.strip()):
            raise ctx.error(fieldname, "must be a decimal number like 1100.00")
        try:
            d = Decimal(v.strip())
        except InvalidOperation:  # pragma: no cover - regex guards it
            raise ctx.error(fieldname, "must be a decimal number like 1100.00") from None
    else:
        raise ctx.error(fieldname, f"must be a number, not {_type_name(v)}")
    if d < 0:
        raise ctx.error(fieldname, "must not be negative")
    if d > MAX_MONEY:
        raise ctx.error(fieldname, f"must be at most {MAX_MONEY}")
    if d != d.quantize(Decimal("0.01")):
        raise ctx.error(fieldname, "at most two decimal places (amounts are whole cents)")
    return d.quantize(Decimal("0.01"))


# ---------------------------------------------------------------------------
# Catalog validation
# ---------------------------------------------------------------------------


def validate_against_catalog(rule: Rule, catalog: Mapping[str, Mapping[str, Any]]) -> None:
    """Check that every dataset, column and literal type in ``rule`` fits ``catalog``.

    ``catalog`` is ``{"agency.dataset": {"key_column": str, "columns": {name: type}}}``
    (see :func:`catalog_from_directory`). Raises :class:`InvalidInput`.
    """
    for c in rule.criteria:
        ctx = _Ctx(rule.origin or f"rule '{rule.id}'", c.name)
        fieldname = "sources" if c.type == "sum_below" else "source"
        for ds, _cols in c.datasets().items():
            entry = catalog.get(ds)
            agency, dataset = ds.split(".")
            if entry is None:
                if any(k.split(".")[0] == agency for k in catalog):
                    raise ctx.error(fieldname, f"agency '{agency}' has no dataset '{dataset}' in the catalog")
                raise ctx.error(fieldname, f"unknown agency '{agency}' (not in the catalog)")
            columns = entry.get("columns", {})
            key_column = entry.get("key_column", "id_number")
            if c.where is not None:
                try:
                    check_types(c.where, columns)
                except InvalidInput as e:
                    msg = str(e)
                    msg = msg[len("where: "):] if msg.startswith("where: ") else msg
                    raise ctx.error("where", f"in {ds}: {msg}") from None
            if c.type == "sum_below":
                for s in c.sources:
                    a, d, col = s.split(".")
                    if f"{a}.{d}" != ds:
                        continue
                    if col not in columns:
                        raise ctx.error("sources", f"dataset '{ds}' has no column '{col}'")
                    if col == key_column:
                        raise ctx.error("sources", f"'{s}' is the key column and cannot be summed")
                    if columns[col] not in NUMERIC_TYPES:
                        raise ctx.error(
                            "sources", f"column '{s}' is {columns[col]}; only integer or decimal columns can be summed"
                        )


# ---------------------------------------------------------------------------
# Dataset metadata (<agency>/<dataset>.toml) and catalogs built from it
# ---------------------------------------------------------------------------

SHARING_CLASSES = ("open", "conditional", "closed")
_META_KEYS = ("key_column", "description", "columns")
_COLUMN_META_KEYS = ("type", "description", "sharing", "sensitivity", "unit")


@dataclass(frozen=True)
class ColumnMeta:
    name: str
    type: str
    description: str = ""
    sharing: str = "conditional"
    sensitivity: int = 3
    unit: Optional[str] = None


@dataclass(frozen=True)
class DatasetMeta:
    key_column: str
    description: str
    columns: dict[str, ColumnMeta]

    def column_types(self) -> dict[str, str]:
        return {n: c.type for n, c in self.columns.items()}

    def catalog_entry(self) -> dict:
        return {"key_column": self.key_column, "columns": self.column_types()}


def parse_dataset_metadata(text: str, source_name: str = "dataset.toml") -> DatasetMeta:
    """Parse a dataset metadata file (format: docs/rules.md, "Dataset metadata").

    Stricter than the node importer in one way: every described column needs a
    ``type``, since a catalog built offline has no values to infer it from.
    """
    ctx = _Ctx(source_name)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{source_name}: not valid TOML: {e}") from None
    _check_keys(ctx, data, _META_KEYS)
    key_column = _column(ctx, data, "key_column", required=False) or "id_number"
    description = _req_str(ctx, data, "description", required=False) or ""
    raw_cols = data.get("columns")
    if not isinstance(raw_cols, dict) or not raw_cols:
        raise ctx.error("columns", "missing; describe each column in a [columns.<name>] table")
    columns: dict[str, ColumnMeta] = {}
    for name, spec in raw_cols.items():
        cctx = _Ctx(source_name)
        if not is_column_name(name):
            raise cctx.error(f"columns.{_clip(name)}", "invalid column name")
        if not isinstance(spec, dict):
            raise cctx.error(f"columns.{name}", "must be a table")
        for key in spec:
            if key not in _COLUMN_META_KEYS:
                raise cctx.error(f"columns.{name}.{key}", f"unknown key (allowed: {', '.join(_COLUMN_META_KEYS)})")
        ctype = spec.get("type")
        if ctype not in COLUMN_TYPES:
            raise cctx.error(f"columns.{name}.type", f"must be one of {', '.join(COLUMN_TYPES)}")
        desc = spec.get("description", "")
        if not isinstance(desc, str):
            raise cctx.error(f"columns.{name}.description", "must be a string")
        sharing = spec.get("sharing", "conditional")
        if sharing not in SHARING_CLASSES:
            raise cctx.error(f"columns.{name}.sharing", f"must be one of {', '.join(SHARING_CLASSES)}")
        sens = spec.get("sensitivity", 3)
        if isinstance(sens, bool) or not isinstance(sens, int) or not 1 <= sens <= 4:
            raise cctx.error(f"columns.{name}.sensitivity", "must be an integer from 1 to 4")
        unit = spec.get("unit")
        if unit is not None and not isinstance(unit, str):
            raise cctx.error(f"columns.{name}.unit", "must be a string")
        columns[name] = ColumnMeta(name, ctype, desc, sharing, sens, unit)
    if key_column not in columns:
        raise ctx.error("key_column", f"column '{key_column}' is not described under [columns]")
    if columns[key_column].type != "text":
        raise ctx.error("key_column", "the key column holds identity numbers and must have type 'text'")
    return DatasetMeta(key_column, description, columns)


def load_dataset_metadata(path: str | Path) -> DatasetMeta:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise InvalidInput(f"{p.name}: cannot read the metadata file as UTF-8") from None
    return parse_dataset_metadata(text, f"{p.parent.name}/{p.name}")


def catalog_from_directory(directory: str | Path) -> dict[str, dict]:
    """Build ``{"agency.dataset": {"key_column", "columns"}}`` from ``DIR/<agency>/<dataset>.toml``.

    Only datasets that have both a CSV and a metadata file are listed; ``rules/``
    and hidden folders are skipped.
    """
    root = Path(directory)
    catalog: dict[str, dict] = {}
    for agency_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if agency_dir.name.startswith(".") or agency_dir.name == "rules":
            continue
        for meta_path in sorted(agency_dir.glob("*.toml")):
            if not meta_path.with_suffix(".csv").exists():
                continue
            meta = load_dataset_metadata(meta_path)
            catalog[f"{agency_dir.name}.{meta_path.stem}"] = meta.catalog_entry()
    return catalog


def column_uses(rule: Rule, agency: str) -> dict[str, dict[str, str]]:
    """What the rule asks of ``agency``'s datasets: ``{dataset: {column: use}}``.

    Columns in a ``where`` are used as ``predicate`` (only pass/fail bits leave); summed
    columns as ``aggregate``. The key column (``join_key``) is the caller's to add. Both the
    provider's admission and the sandbox's grants derive from this one function.
    """
    out: dict[str, dict[str, str]] = {}
    for c in rule.criteria:
        where_cols = c.where.columns() if c.where is not None else set()
        for ref, cols in c.datasets().items():
            owner, dataset = ref.split(".")
            if owner != agency:
                continue
            uses = out.setdefault(dataset, {})
            for col in where_cols:
                uses.setdefault(col, "predicate")
            for col in cols - where_cols:
                uses[col] = "aggregate"
    return out
