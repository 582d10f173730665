"""What a provider checks of a federated query beyond column uses: the grants' minimum group
size and differential-privacy demands, clip bounds and categories from the column metadata,
the noise scales (OpenDP, ``secure_agg.dp_noise``) and the ε ledger (docs/query.md).
"""
from __future__ import annotations

from decimal import Decimal

from pc_common import job_kinds, jobspec
from pc_common.errors import InvalidInput, PermissionDenied, ResourceExhausted
from pc_node.policy import PERIODS
from pc_node.secure_agg import dp_noise
from pc_rules.query import QueryPlan, parse_query
from pc_rules.query_catalog import refuse_undisclosable


def params_of(doc: dict) -> job_kinds.QueryParams:
    return job_kinds.params_of(doc, "query")


def plan_of(doc: dict) -> QueryPlan:
    plan = parse_query(params_of(doc).sql)
    if plan.requester != doc["requester"]:
        raise PermissionDenied(f"FROM must be a dataset of the requester ({doc['requester']})")
    return plan



def categories(runtime, plan: QueryPlan) -> tuple[str, ...]:
    """The declared categories of the plan's provider group column (``()`` without one)."""
    if not plan.provider_group:
        return ()
    meta = runtime.store.dataset(plan.join.table.dataset)
    col = next((c for c in meta.columns if c.name == plan.provider_group), None)
    if col is None or not col.categories:
        raise InvalidInput(f"GROUP BY {plan.join.table.alias}.{plan.provider_group}: the column declares no categories"
                           f" in the metadata of '{plan.join.table.ref}' (at most 64; they are one-hot encrypted)")
    return tuple(col.categories)


def check_group_size(p: job_kinds.QueryParams, grants: list) -> None:
    """At admission: the signed minimum group size must be at least what every grant of this node
    demands; a grant with ``epsilon`` / ``epsilon_budget`` demands DP of at most its ε per query."""
    refuse_undisclosable(p.min_group_size, p.epsilon, [(g.min_group_size, g.epsilon, g.epsilon_budget) for g in grants])
    caps = [g.epsilon for g in grants if g.epsilon is not None]
    if p.epsilon and caps and p.epsilon > min(caps):
        raise ResourceExhausted(f"the query asks epsilon {p.epsilon:g}; this provider's grant allows at most"
                                f" {min(caps):g} per query")


def check_combined(plan: QueryPlan, node_id: str, grants: list) -> None:
    """With several provider agencies, every grant used must name the others in ``query_with``:
    nothing proves that a provider answers as the protocol asks, and one that answered falsely
    together with the requester could read the others' answers (docs/query.md)."""
    others = [a for a in plan.providers() if a != node_id]
    missing = [a for a in others if not all(a in g.query_with for g in grants)]
    if missing:
        raise PermissionDenied(f"this provider's grant does not allow its data in one query with {', '.join(missing)}"
                               " (grant field query_with)")


def _unit(text: str, ctype: str) -> int:
    return int(Decimal(text) * 100) if ctype == "decimal" else int(Decimal(text))


def dp_bounds(runtime, plan: QueryPlan) -> dict[str, tuple[int, int]]:
    """Per summed column, a subject's clip bounds in plan units from the column metadata (``min`` /
    ``max``); a DP query over a column without both is refused."""
    if not plan.sum_columns():
        return {}
    meta = runtime.store.dataset(plan.join.table.dataset)
    cols = {c.name: c for c in meta.columns}
    out = {}
    for c in plan.sum_columns():
        col = cols[c]
        if not col.min or not col.max:
            raise InvalidInput(f"column '{c}' of '{plan.join.table.ref}' declares no min and max in its dataset"
                               " metadata: a differentially private SUM or AVG needs both (they bound each subject)")
        out[c] = (_unit(col.min, col.type), _unit(col.max, col.type))
    return out


def dp_scales(plan: QueryPlan, epsilon: float, bounds: dict[str, tuple[int, int]],
              n_categories: int = 0) -> list[float]:
    """Discrete Laplace scales (OpenDP) of the plan's vectors, ε split evenly (dp_noise). With a
    provider GROUP BY one subject reaches at most min(categories, DP_ROW_CAP) groups."""
    e = dp_noise.vector_epsilon(epsilon, len(plan.vectors()))
    reach = dp_noise.subject_sensitivity(n_categories)
    rows = dp_noise.DP_ROW_CAP if plan.join else 1
    return ([dp_noise.scale_for(e, reach), dp_noise.scale_for(e, rows)]
            + [dp_noise.scale_for(e, reach * dp_noise.sum_sensitivity(*bounds[c])) for c in plan.sum_columns()])


def _budgets(grants: list) -> list[tuple[str, float | None, float]]:
    return [(g.dataset, g.epsilon_budget, PERIODS[g.evaluation_period]) for g in grants]


def budget_refusal(runtime, doc: dict, grants: list) -> str | None:
    """Why the ledger would refuse this query's ε now (read only), or None."""
    return runtime.governance.epsilon_refusal(doc["requester"], params_of(doc).epsilon, _budgets(grants))


def charge_epsilon(runtime, doc: dict, grants: list) -> None:
    """The ε ledger (governance): every grant's budget per its period, once per job, all or nothing."""
    p = params_of(doc)
    runtime.governance.charge_epsilon(doc["job_id"] + "#epsilon", doc["requester"], p.epsilon, _budgets(grants),
                                      jobspec.lifetime_end(doc))


def admit_query(runtime, doc: dict, grants: list) -> None:
    """Everything a provider checks of a query at admission (``admit.authorise``): the group size
    and ε demands of its grants, declared categories, bounds for DP sums, the ledger's remaining budget."""
    p = params_of(doc)
    check_group_size(p, grants)
    plan = plan_of(doc)
    check_combined(plan, runtime.node_id, grants)
    if runtime.node_id == plan.main_provider():        # the JOIN's agency holds the group column
        categories(runtime, plan)
    if p.epsilon:
        if runtime.node_id == plan.main_provider():     # the sums' owner holds their clip bounds
            dp_bounds(runtime, plan)
        refusal = budget_refusal(runtime, doc, grants)
        if refusal:
            raise ResourceExhausted(refusal)
