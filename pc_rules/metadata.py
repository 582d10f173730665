"""Dataset metadata: the one model of a dataset's columns, and its file ``<dataset>.toml``.

The node importer reads the file beside a CSV (format in docs/rules.md, "Dataset
metadata"), the node's store keeps the resulting :class:`DatasetMeta`, and the node
publishes it in the catalog (政务数据目录) that rules are validated against
(:func:`pc_rules.catalog.validate_against_catalog`). Column names and types are the rule
language's (:mod:`pc_rules.expr`).

Every part of the file is optional: without a ``key_column`` the caller's default applies
(``id_number``), and a column's ``type`` left out (or a column not described at all) is
inferred by the importer from the values. Unknown keys are errors; every error is one line
naming the file and the column, e.g. ``v.toml: column 'weight': type must be one of …``.
"""
from __future__ import annotations

import dataclasses
import math
import pathlib
import tomllib
from decimal import Decimal
from typing import Optional

from pc_common.errors import InvalidInput
from pc_rules.expr import COLUMN_NAME_RE, COLUMN_TYPES

__all__ = ["SHARING_CLASSES", "ColumnMeta", "DatasetMeta", "load_metadata", "parse_metadata"]

#: 共享属性: open 无条件共享, conditional 有条件共享, closed 不予共享.
SHARING_CLASSES = ("open", "conditional", "closed")
_META_KEYS = ("key_column", "description", "columns")
_COLUMN_KEYS = ("type", "description", "sharing", "sensitivity", "unit", "min", "max", "categories")
MAX_CATEGORIES = 64


@dataclasses.dataclass
class ColumnMeta:
    name: str
    type: str                      # one of COLUMN_TYPES; "" only while the importer has to infer it
    description: str = ""
    sharing: str = "conditional"
    sensitivity: int = 3           # 1 (public) … 4 (most sensitive)
    unit: str = ""
    #: Bounds of one subject's contribution (decimal text, "" = none): a differentially private
    #: query clips each subject's SUM into [min, max] and needs both (docs/query.md).
    min: str = ""
    max: str = ""
    #: The values a column may hold (at most 64): a federated query may GROUP BY it at a provider.
    categories: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class DatasetMeta:
    name: str
    key_column: str
    description: str
    columns: list[ColumnMeta]          # the non-key columns, in stored (file) order
    rows: int = 0
    key_meta: Optional[ColumnMeta] = None  # catalog description of the key column
    version: int = 1
    updated_at: str = ""

    def all_columns(self) -> list[ColumnMeta]:
        """The key column (when described) first, then the others: the catalog's column list."""
        return ([self.key_meta] if self.key_meta else []) + list(self.columns)


def _clip(s: str, n: int = 40) -> str:
    s = s.replace("\n", " ")
    return s if len(s) <= n else s[:n] + "…"


def _column(source_name: str, name: object, spec: object) -> ColumnMeta:
    if not isinstance(name, str) or not COLUMN_NAME_RE.match(name):
        raise InvalidInput(f"{source_name}: column '{_clip(str(name))}': invalid column name "
                           "(letters, digits and _, not starting with a digit)")
    where = f"{source_name}: column '{name}'"
    if not isinstance(spec, dict):
        raise InvalidInput(f"{where}: [columns.{name}] must be a table")
    for key in spec:
        if key not in _COLUMN_KEYS:
            raise InvalidInput(f"{where}: unknown key '{_clip(key)}' (allowed: {', '.join(_COLUMN_KEYS)})")
    ctype = spec.get("type", "")
    if "type" in spec and ctype not in COLUMN_TYPES:
        raise InvalidInput(f"{where}: type must be one of {', '.join(COLUMN_TYPES)}")
    desc = spec.get("description", "")
    if not isinstance(desc, str):
        raise InvalidInput(f"{where}: description must be a string")
    sharing = spec.get("sharing", "conditional")
    if sharing not in SHARING_CLASSES:
        raise InvalidInput(f"{where}: sharing must be one of {', '.join(SHARING_CLASSES)}")
    sens = spec.get("sensitivity", 3)
    if isinstance(sens, bool) or not isinstance(sens, int) or not 1 <= sens <= 4:
        raise InvalidInput(f"{where}: sensitivity must be an integer from 1 to 4")
    unit = spec.get("unit", "")
    if not isinstance(unit, str):
        raise InvalidInput(f"{where}: unit must be a string")
    low, high = (_bound(where, k, spec[k]) if k in spec else "" for k in ("min", "max"))
    if low and high and Decimal(low) > Decimal(high):
        raise InvalidInput(f"{where}: min must not exceed max")
    cats = spec.get("categories", [])
    if not isinstance(cats, list) or not all(isinstance(c, str) and len(c) <= 64 for c in cats) \
            or len(set(cats)) != len(cats) or len(cats) > MAX_CATEGORIES or ("categories" in spec and not cats):
        raise InvalidInput(f"{where}: categories must be a list of 1 to {MAX_CATEGORIES} distinct strings"
                           " (each at most 64 characters)")
    return ColumnMeta(name, ctype, desc, sharing, sens, unit, low, high, list(cats))


def _bound(where: str, key: str, v: object) -> str:
    """A ``min`` / ``max`` bound as canonical decimal text (at most two decimals: cents)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        raise InvalidInput(f"{where}: {key} must be a number")
    d = Decimal(repr(v) if isinstance(v, float) else str(v))
    if d != d.quantize(Decimal("0.01")) or abs(d) > 10 ** 8:
        raise InvalidInput(f"{where}: {key} must have at most two decimals and magnitude at most 100000000")
    return str(int(d)) if d == d.to_integral_value() else str(d)


def parse_metadata(text: str, source_name: str = "dataset.toml", *, name: str = "",
                   default_key: str = "id_number") -> DatasetMeta:
    """Parse a metadata file; ``default_key`` is the key column when the file names none."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InvalidInput(f"{source_name}: not valid TOML: {e}") from None
    for key in data:
        if key not in _META_KEYS:
            raise InvalidInput(f"{source_name}: unknown key '{_clip(key)}' (allowed: {', '.join(_META_KEYS)})")
    key_column = data.get("key_column", default_key)
    if "key_column" in data and (not isinstance(key_column, str) or not COLUMN_NAME_RE.match(key_column)):
        raise InvalidInput(f"{source_name}: key_column must be a column name "
                           "(letters, digits and _, not starting with a digit)")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise InvalidInput(f"{source_name}: description must be a string")
    raw = data.get("columns", {})
    if not isinstance(raw, dict):
        raise InvalidInput(f"{source_name}: 'columns' must be tables, one [columns.<name>] per column")
    columns = [_column(source_name, n, spec) for n, spec in raw.items()]
    key_meta = next((c for c in columns if c.name == key_column), None)
    if key_meta is not None:
        if key_meta.type not in ("", "text"):
            raise InvalidInput(f"{source_name}: key column '{key_column}' holds identity numbers "
                               "and must have type 'text'")
        key_meta.type = "text"
    return DatasetMeta(name=name, key_column=key_column, description=description,
                       columns=[c for c in columns if c is not key_meta], key_meta=key_meta)


def load_metadata(path: str | pathlib.Path | None, *, default_key: str = "id_number") -> DatasetMeta:
    """The metadata file at ``path``; an absent file describes nothing (all defaults)."""
    p = pathlib.Path(path) if path is not None else None
    if p is None or not p.exists():
        return DatasetMeta(name=p.stem if p else "", key_column=default_key, description="", columns=[])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        raise InvalidInput(f"{p.name}: cannot read the metadata file as UTF-8") from None
    return parse_metadata(text, p.name, name=p.stem, default_key=default_key)
