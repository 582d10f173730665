"""A rule against the datasets it reads: the catalog check and the column uses it asks for.

:func:`validate_against_catalog` is what the client (before submitting) and the coordinator
(before creating a job) run against the published catalog (政务数据目录);
:func:`column_uses` is what a provider's admission and the sandbox's grants derive from a rule.
Both are importable from :mod:`pc_rules.rules` as well.
"""
from __future__ import annotations

from typing import Any, Mapping

from pc_common.errors import InvalidInput
from pc_rules.rules import ErrorContext, Rule
from pc_rules.where import check_types

__all__ = ["NUMERIC_TYPES", "USE_RANK", "column_uses", "validate_against_catalog"]

#: Column types a ``sum_below`` criterion can sum.
NUMERIC_TYPES = ("integer", "decimal")


def validate_against_catalog(rule: Rule, catalog: Mapping[str, Mapping[str, Any]]) -> None:
    """Check that every dataset, column and literal type in ``rule`` fits ``catalog``.

    ``catalog`` is ``{"agency.dataset": {"key_column": str, "columns": {name: type}}}``
    (``pc_common.catalog.catalog_view`` of the published catalog). Raises :class:`InvalidInput`.
    """
    for c in rule.criteria:
        ctx = ErrorContext(rule.origin or f"rule '{rule.id}'", c.name)
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


#: Column uses a rule can ask for, lowest first: a column's use is the highest any criterion needs.
USE_RANK = {"join_key": 0, "predicate": 1, "group_by": 1.5, "aggregate": 2, "masked": 3, "plaintext": 4}


def column_uses(rule: Rule, agency: str) -> dict[str, dict[str, str]]:
    """What the rule asks of ``agency``'s datasets: ``{dataset: {column: use}}``.

    A column that a criterion sums needs ``aggregate`` (only blinded aggregates leave), whatever
    its ``where`` says; a column only in ``where`` clauses needs ``predicate`` (only pass/fail
    bits leave). Each column gets the highest rank any criterion needs (:data:`USE_RANK`), so
    ``where = "monthly_income >= 0"`` on a ``sum_below`` of ``monthly_income`` still asks for
    ``aggregate``. The key column (``join_key``) is the caller's to add. Both the provider's
    admission and the sandbox's grants derive from this one function.
    """
    out: dict[str, dict[str, str]] = {}

    def need(dataset: str, col: str, use: str) -> None:
        uses = out.setdefault(dataset, {})
        if col not in uses or USE_RANK[use] > USE_RANK[uses[col]]:
            uses[col] = use

    for c in rule.criteria:
        where_cols = c.where.columns() if c.where is not None else set()
        summed = {tuple(s.split(".")) for s in c.sources} if c.type == "sum_below" else set()
        for ref in c.datasets():
            owner, dataset = ref.split(".")
            if owner != agency:
                continue
            out.setdefault(dataset, {})
            for col in sorted(where_cols):
                need(dataset, col, "predicate")
            for a, d, col in sorted(summed):
                if (a, d) == (owner, dataset):
                    need(dataset, col, "aggregate")
    return out
