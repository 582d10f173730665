"""A federated query's plan against the published catalog, and the column uses it asks for.

:func:`validate_query` is what the client (before submitting) and the coordinator (before
creating a job) run on a :class:`pc_rules.query.QueryPlan`; :func:`query_column_uses` is what
a provider's admission and the sandbox's grants derive from it. :func:`check_disclosure` refuses
up front, from the published grants, what a provider's admission would refuse for the minimum
group size or a missing ε — same message, same status; the provider still checks (and alone
checks ε against the cap and the budget, which change).
"""
from __future__ import annotations

from typing import Any, Mapping

from pc_common.errors import InvalidInput, PermissionDenied
from pc_rules.catalog import NUMERIC_TYPES, USE_RANK
from pc_rules.expr import Expr, check_types
from pc_rules.query import QueryPlan, TableRef

__all__ = ["check_disclosure", "query_column_uses", "validate_query"]


def _fail(msg: str) -> InvalidInput:
    return InvalidInput(f"query: {msg}")


def validate_query(plan: QueryPlan, catalog: Mapping[str, Mapping[str, Any]], requester: str | None = None) -> None:
    """Datasets, key columns, column names and literal types against the published catalog view
    (``{"agency.dataset": {"key_column": …, "columns": {name: type}}}``)."""
    if requester is not None and plan.requester != requester:
        raise _fail(f"FROM must be a dataset of your own agency ({requester}), not {plan.source.ref}")

    def entry(t: TableRef) -> Mapping[str, Any]:
        e = catalog.get(t.ref)
        if e is None:
            if any(k.split(".")[0] == t.agency for k in catalog):
                raise _fail(f"agency '{t.agency}' has no dataset '{t.dataset}' in the catalog")
            raise _fail(f"unknown agency '{t.agency}' (not in the catalog)")
        return e

    def columns(t: TableRef) -> dict[str, str]:
        e = entry(t)
        cols = dict(e.get("columns", {}))
        cols.setdefault(e.get("key_column", "id_number"), "text")
        return cols

    def need(t: TableRef, col: str) -> str:
        cols = columns(t)
        if col not in cols:
            raise _fail(f"dataset '{t.ref}' has no column '{col}'")
        return cols[col]

    def key_of(t: TableRef) -> str:
        return entry(t).get("key_column", "id_number")

    src_key = key_of(plan.source)
    for g in plan.group_by:
        need(plan.source, g)
    if plan.provider_group:
        need(plan.join.table, plan.provider_group)
        if plan.provider_group == key_of(plan.join.table):
            raise _fail(f"GROUP BY {plan.join.table.alias}.{plan.provider_group}: the key column cannot be a group")
    if plan.where is not None:
        _types(plan.where, columns(plan.source), plan.source)
    for s in plan.providers_sources():
        if s.key != key_of(s.table):
            raise _fail(f"{s.table.alias}.{s.key} is not the key column of {s.table.ref} ({key_of(s.table)})")
        if s.outer_key != src_key:
            raise _fail(f"{plan.source.alias}.{s.outer_key} is not the key column of {plan.source.ref} ({src_key})")
        if s.where is not None:
            _types(s.where, columns(s.table), s.table)
    for a in plan.select:
        if a.func == "count_distinct" and a.column != src_key:
            raise _fail(f"COUNT(DISTINCT {a.alias}.{a.column}): only the key column ({src_key}) can be counted distinct")
        if a.func in ("sum", "avg"):
            t = plan.table(a.alias)
            ctype = need(t, a.column)
            if a.column == key_of(t):
                raise _fail(f"{a.alias}.{a.column} is the key column and cannot be summed")
            if ctype not in NUMERIC_TYPES:
                raise _fail(f"{a.func.upper()}({a.alias}.{a.column}): the column is {ctype}; only integer or decimal"
                            " columns can be summed")


def _types(where: Expr, cols: Mapping[str, str], t: TableRef) -> None:
    for c in where.columns():
        if c not in cols:
            raise _fail(f"dataset '{t.ref}' has no column '{c}'")
    try:
        check_types(where, cols)
    except InvalidInput as e:
        raise _fail(f"in {t.ref}: {str(e).removeprefix('where: ')}") from None


def _allows(granted: Mapping[str, str], col: str, use: str, key_column: str) -> bool:
    """As a provider's ``Grant.allows``: may a published grant's column uses serve ``col`` as ``use``."""
    g = granted.get(col, "none")
    if use == "join_key":
        return col == key_column and g in ("join_key", "plaintext")
    return g != "join_key" and USE_RANK.get(g, 0) >= USE_RANK[use] > 0


def _published_grant(e: Mapping[str, Any], requester: str, purpose: str, uses: Mapping[str, str]):
    """The published grant a provider's admission would pick (the first that allows all ``uses``), or None."""
    key = e.get("key_column", "id_number")
    needed = {key: "join_key", **uses}
    for g in e.get("grants", ()):
        if g["requester"] == requester and purpose in g["purposes"] and \
                all(_allows(g["column_uses"], c, u, key) for c, u in needed.items()):
            return g
    return None


def check_disclosure(plan: QueryPlan, catalog: Mapping[str, Mapping[str, Any]], requester: str, purpose: str,
                     min_group_size: int, epsilon: float | None, private: bool = False) -> None:
    """Per provider (in admission order), the grants its admission would use, then its refusals:
    ``--private`` under a DP grant, a minimum group size below the grants', no ε under a DP grant
    (PermissionDenied, the provider's own one-line messages); then a provider GROUP BY column
    without declared categories (InvalidInput). A provider whose grants do not all match is left
    to the column-use checks and its own admission."""
    for agency in plan.providers():
        grants = []
        for ds, uses in query_column_uses(plan, agency).items():
            g = _published_grant(catalog.get(f"{agency}.{ds}", {}), requester, purpose, uses)
            if g is None:
                break
            grants.append(g)
        else:
            if not grants:
                continue
            demands_dp = any(g["epsilon"] is not None or g["epsilon_budget"] is not None for g in grants)
            if private and demands_dp:
                raise PermissionDenied("this provider's grant demands differential privacy, which --private cannot"
                                       " carry (the requester learns exact per-group match counts); run the query"
                                       " without --private")
            refuse_undisclosable(min_group_size, epsilon,
                                 [(g["min_group_size"], g["epsilon"], g["epsilon_budget"]) for g in grants])
            t = plan.join.table if plan.join is not None else None
            if t is not None and t.agency == agency and plan.provider_group and \
                    plan.provider_group not in catalog.get(t.ref, {}).get("categories", {plan.provider_group: 1}):
                raise InvalidInput(f"GROUP BY {t.alias}.{plan.provider_group}: the column declares no categories"
                                   f" in the metadata of '{t.ref}' (at most 64; they are one-hot encrypted)")


def refuse_undisclosable(min_group_size: int, epsilon: float | None, grants) -> None:
    """A query's minimum group size and ε against the ``(min_group_size, epsilon, epsilon_budget)``
    of each grant it would use: PermissionDenied when the group size is below the largest the
    grants demand, or ε is missing while a grant demands DP. One wording for the client and the
    coordinator (from the catalog) and the provider's admission (from its policy)."""
    need = max((max(int(k), 1) for k, _, _ in grants), default=1)
    if min_group_size < need:
        raise PermissionDenied(f"this provider's grant needs a minimum group size of at least {need}"
                               f" (the query asks for {min_group_size})")
    if not epsilon and any(e is not None or b is not None for _, e, b in grants):
        caps = [e for _, e, _ in grants if e is not None]
        most = f" (at most {min(caps):g} per query)" if caps else ""
        raise PermissionDenied(f"this provider's grant demands differential privacy: run the query with"
                               f" --epsilon E{most}")


def query_column_uses(plan: QueryPlan, agency: str) -> dict[str, dict[str, str]]:
    """What the query asks of ``agency``'s datasets: ``{dataset: {column: use}}`` — ``aggregate``
    for SUM/AVG columns, ``group_by`` for a provider group column, ``predicate`` for condition columns
    (the key's ``join_key`` is implied)."""
    out: dict[str, dict[str, str]] = {}

    def need(dataset: str, col: str, use: str) -> None:
        uses = out.setdefault(dataset, {})
        if col not in uses or USE_RANK[use] > USE_RANK[uses[col]]:
            uses[col] = use

    for s in plan.providers_sources():
        if s.table.agency != agency:
            continue
        out.setdefault(s.table.dataset, {})
        for col in sorted(s.where.columns() if s.where is not None else ()):
            need(s.table.dataset, col, "predicate")
        for a in plan.select:
            if a.func in ("sum", "avg") and a.alias == s.table.alias:
                need(s.table.dataset, a.column, "aggregate")
        if s.kind == "join" and plan.provider_group:
            need(s.table.dataset, plan.provider_group, "group_by")
    return out
