"""Plaintext reference evaluator for eligibility rules — the test oracle.

It reads the agencies' CSV files directly and applies a rule with plain loops,
sharing no code with the protocols (only the rule and ``where`` parsers), so
whole-system tests can compare the private computation against it::

    rows = evaluate(load_rule("rules/dibao.toml"), city_dir, city_dir / "civil_affairs/applicants.csv")

Semantics (the contract the protocols must reproduce):

* identity numbers match after normalising: full-width forms folded (NFKC),
  whitespace removed, upper case (as ``pc_node.idnum.normalise``);
* a group is the set of subject rows sharing ``group_column`` (each subject row
  alone without one); group size is its number of subject rows;
* per criterion, the matching records (``where`` true) of all members are
  counted (count types) or their columns summed (``sum_below``, empty cells are 0);
* ``none_exists``: count == 0; ``exists``: count >= 1; ``count_at_most``:
  count <= max; ``sum_below``: sum < per_member × group size, or sum < limit
  (strictly: a sum exactly on the line fails);
* a dataset's key column is ``key_column`` from ``<dataset>.toml`` (default
  ``id_number``); column types there decide how ``where`` literals compare.

Never use this in production: it reads everyone's data in one place.
"""
from __future__ import annotations

import csv
import datetime as dt
import tomllib
import unicodedata
from collections import defaultdict
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from pc_common.errors import InvalidInput
from pc_rules.rules import Rule

__all__ = ["evaluate", "normalise_id"]


def normalise_id(value: str) -> str:
    """Fold full-width forms (NFKC), drop all whitespace, upper-case (``x`` -> ``X``)."""
    return "".join(unicodedata.normalize("NFKC", value).split()).upper()


def _read_dataset(city_dir: Path, dataset: str) -> tuple[str, list[dict[str, Any]]]:
    """Rows of ``city_dir/<agency>/<dataset>.csv`` with values converted by metadata type."""
    agency, name = dataset.split(".")
    csv_path = city_dir / agency / f"{name}.csv"
    meta_path = city_dir / agency / f"{name}.toml"
    key_column = "id_number"
    types: dict[str, str] = {}
    if meta_path.exists():
        meta = tomllib.loads(meta_path.read_text(encoding="utf-8"))
        key_column = meta.get("key_column", "id_number")
        types = {col: spec.get("type", "text") for col, spec in meta.get("columns", {}).items()}
    if not csv_path.exists():
        raise InvalidInput(f"ground truth: no file for dataset '{dataset}'")
    rows = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = {}
            for col, text in raw.items():
                row[col] = _convert(text, types.get(col, "text"))
            row[key_column] = normalise_id(raw[key_column] or "")
            rows.append(row)
    return key_column, rows


def _convert(text: str | None, ctype: str) -> Any:
    if text is None or text == "":
        return None
    if ctype == "integer":
        return int(text.strip())
    if ctype == "decimal":
        return Decimal(text.strip())
    if ctype == "date":
        return dt.date.fromisoformat(text.strip())
    return text


def _amount(value: Any) -> Decimal:
    if value is None or value == "":
        return Decimal(0)
    if isinstance(value, Decimal):
        return value
    try:
        return Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput("ground truth: a summed column holds a value that is not a number") from None


def evaluate(rule: Rule, city_dir: str | Path, subjects_csv: str | Path) -> list[dict]:
    """Evaluate ``rule`` on every subject row; returns rows in input order.

    Each row: ``{subject_column: id as given, group_column: group (if the rule has
    one), "eligible": bool, "failed": [criterion names in rule order]}``.
    """
    city = Path(city_dir)
    with open(subjects_csv, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        subjects = list(reader)
    if rule.subject_column not in header:
        raise InvalidInput(f"ground truth: subjects file has no column '{rule.subject_column}'")
    if rule.group_column is not None and rule.group_column not in header:
        raise InvalidInput(f"ground truth: subjects file has no column '{rule.group_column}'")

    ids = [normalise_id(s[rule.subject_column] or "") for s in subjects]
    if rule.group_column is not None:
        groups: list[Any] = [s[rule.group_column] for s in subjects]
    else:
        groups = list(range(len(subjects)))
    group_size: dict[Any, int] = defaultdict(int)
    for g in groups:
        group_size[g] += 1
    wanted = set(ids)

    cache: dict[str, tuple[str, list[dict[str, Any]]]] = {}

    def dataset(ds: str) -> tuple[str, list[dict[str, Any]]]:
        if ds not in cache:
            cache[ds] = _read_dataset(city, ds)
        return cache[ds]

    failed_by_group: dict[Any, list[str]] = defaultdict(list)
    for crit in rule.criteria:
        # Per person: number of matching records, or sum of the summed columns.
        per_person: dict[str, Any] = defaultdict(int)
        if crit.type == "sum_below":
            for ref in crit.sources:
                agency, name, column = ref.split(".")
                key, rows = dataset(f"{agency}.{name}")
                for row in rows:
                    if row[key] in wanted and (crit.where is None or crit.where.evaluate(row)):
                        per_person[row[key]] += _amount(row[column])
        else:
            key, rows = dataset(crit.source)  # type: ignore[arg-type]
            for row in rows:
                if row[key] in wanted and (crit.where is None or crit.where.evaluate(row)):
                    per_person[row[key]] += 1

        per_group: dict[Any, Any] = defaultdict(int)
        for person, g in zip(ids, groups):
            per_group[g] += per_person.get(person, 0)

        for g in group_size:
            total = per_group[g]
            if crit.type == "none_exists":
                ok = total == 0
            elif crit.type == "exists":
                ok = total >= 1
            elif crit.type == "count_at_most":
                ok = total <= crit.max
            else:
                if crit.per_member is not None:
                    threshold = crit.per_member * group_size[g]
                else:
                    threshold = crit.limit
                ok = Decimal(total) < threshold
            if not ok:
                failed_by_group[g].append(crit.name)

    out = []
    for s, g in zip(subjects, groups):
        row: dict[str, Any] = {rule.subject_column: s[rule.subject_column]}
        if rule.group_column is not None:
            row[rule.group_column] = g
        failed = list(failed_by_group.get(g, []))
        row["eligible"] = not failed
        row["failed"] = failed
        out.append(row)
    return out
