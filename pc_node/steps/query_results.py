"""The results file of a federated query (docs/query.md, "Results file — contract"): released
groups only, sorted by the group columns in GROUP BY order as SQLite orders them."""
from __future__ import annotations

import csv
import io
from decimal import ROUND_HALF_UP, Decimal

from pc_rules.query import QueryPlan


def group_keys(plan: QueryPlan) -> list[tuple[str, str]]:
    """(table alias, column) of the group columns in GROUP BY order (the provider's at its place)."""
    keys = [(plan.source.alias, c) for c in plan.group_by]
    if plan.provider_group:
        keys.insert(plan.provider_group_at, (plan.join.table.alias, plan.provider_group))
    return keys


def full_group(plan: QueryPlan, own: tuple[str, ...], category: str | None) -> tuple[str, ...]:
    """A group's values in GROUP BY order: the requester's, with the provider's category at its place."""
    if category is None:
        return tuple(own)
    values = list(own)
    values.insert(plan.provider_group_at, category)
    return tuple(values)


def _sort_key(values: tuple[str, ...], types: list[str]):
    out = []
    for v, t in zip(values, types):
        if t in ("integer", "decimal") and v != "":
            out.append((1, Decimal(v), ""))
        else:
            out.append((0 if v == "" else 2, Decimal(0), v))    # SQLite: NULL first, numbers, then text
    return out


def _two(cents: Decimal) -> str:
    return str((cents / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def results_csv(plan: QueryPlan, col_types: dict[str, str], group_types: list[str],
                groups: list[tuple[str, ...]], values: list[list[int] | None]) -> tuple[str, int]:
    """The results file: released groups (values in GROUP BY order, ``group_types`` likewise)
    sorted by the group columns; COUNTs of noisy (DP) answers are shown at least 0."""
    names, keys = plan.vectors(), group_keys(plan)
    rows = []
    for g, v in zip(groups, values):
        if v is None:
            continue
        agg = dict(zip(names, v))
        row = []
        for item in plan.select:
            if item.func == "group":
                row.append(g[keys.index((item.alias, item.column))])
            elif item.func == "count":        # a noisy count (DP) is shown at least 0
                row.append(str(max(agg["rows"], 0)))
            elif item.func == "count_distinct":
                row.append(str(max(agg["subjects"], 0)))
            else:
                total, decimal = agg[f"sum:{item.column}"], col_types.get(item.column) == "decimal"
                if item.func == "sum":
                    row.append(_two(Decimal(total)) if decimal else str(total))
                else:     # AVG = SUM / COUNT(*) over the same joined rows, half away from zero
                    scale = 1 if decimal else 100
                    rows_n = Decimal(max(agg["rows"], 1))          # a noisy count (DP) may fall below 1
                    cents = (Decimal(total) * scale / rows_n).quantize(Decimal(1), rounding=ROUND_HALF_UP)
                    row.append(_two(cents))
        rows.append((g, row))
    rows.sort(key=lambda gr: _sort_key(gr[0], group_types))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([a.name for a in plan.select])
    for _, r in rows:
        w.writerow(r)
    return buf.getvalue(), len(rows)
