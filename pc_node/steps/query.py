"""Federated query steps at the nodes (docs/query.md).

Requester node:
  ``query.prepare``  its own dataset's rows, filtered by its WHERE, grouped by the GROUP BY
                     columns; a fresh one-job BFV key pair; opaque slots (one per row, random);
                     to the provider a sealed (slot, identifier) list in random order; to the
                     coordinator the public key and the slot→group layout (sizes only).
  ``query.release``  decrypts masked values only, learns per group the suppression bit of the
                     garbled-circuit comparison [distinct subjects < k], removes the pads of
                     released groups (keyed by the circuit's output label), writes the results.
Provider node:
  ``query.evaluate`` opens its list, evaluates JOIN / EXISTS / NOT EXISTS and its conditions
                     locally, and returns per slot under the requester's key: the 0/1 subject
                     indicator, its matched-row count and its clipped sums.
"""
from __future__ import annotations

import csv
import io
import json
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from pc_common import job_kinds, money
from pc_common import steps_schema as schema
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.wire import MAX_BLOB
from pc_node.secure_agg import get_backend
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.gc import ComparisonEvaluator
from pc_node.steps.admit import (
    charge_subjects,
    checked_spec,
    require_admitted,
    use_once,
)
from pc_node.steps.common import (
    blob_chunks,
    done,
    hours_from_now,
    progress,
    read_blob,
    store_results,
)
from pc_node.steps import subject_lists
from pc_node.steps.verify import WORKING_DATA_HOURS, wipe
from pc_rules.query import QueryPlan, parse_query
from pc_rules.query_catalog import query_column_uses
from pc_rules.where import check_types

_MASKED_LIMIT = 1 << 31


def _params(doc: dict) -> job_kinds.QueryParams:
    return job_kinds.params_of(doc, "query")


def plan_of(doc: dict) -> QueryPlan:
    plan = parse_query(_params(doc).sql)
    if plan.requester != doc["requester"]:
        raise PermissionDenied(f"FROM must be a dataset of the requester ({doc['requester']})")
    return plan


def vectors(plan: QueryPlan) -> tuple[str, ...]:
    """The aggregate vectors of a plan, in order: distinct subjects, joined rows, one sum per column."""
    return ("subjects", "rows") + tuple(f"sum:{c}" for c in plan.sum_columns())


def _own_catalog(runtime) -> dict:
    return {f"{runtime.node_id}.{m.name}": {"key_column": m.key_column, "columns": {c.name: c.type for c in m.columns}}
            for m in runtime.store.datasets()}


def own_rows(runtime, plan: QueryPlan) -> tuple[list[str], list[tuple[str, ...]]]:
    """(identifiers, group values) of the requester's rows passing its WHERE, one row per subject."""
    meta = runtime.store.dataset(plan.source.dataset)
    names = [c.name for c in meta.columns]
    keys = list(dict.fromkeys(runtime.store.keys(plan.source.dataset)))
    found = runtime.store.rows_for_keys(plan.source.dataset, keys)
    ids, groups = [], []
    for k in keys:
        rows = [dict(zip(names, r)) for r in found.get(k, [])]
        if plan.where is not None:
            rows = [r for r in rows if plan.where.evaluate(r)]
        if len(rows) > 1:
            raise InvalidInput(f"{plan.source.ref} has several rows for one identifier (after WHERE); a query needs"
                               " one row per subject")
        if rows:
            ids.append(k)
            groups.append(tuple(rows[0][g] for g in plan.group_by))
    return ids, groups


def prepare_job(runtime, params: dict, subject_set: str = "") -> tuple[dict, str]:
    """Complete a query spec (``PrepareJob``): the rows it asks about and their groups."""
    p = job_kinds.QueryParams.from_params(params)
    plan = parse_query(p.sql)
    if plan.requester != runtime.node_id:
        raise InvalidInput(f"query: FROM must be a dataset of your own agency ({runtime.node_id}), not"
                           f" {plan.source.ref}")
    own = _own_catalog(runtime).get(plan.source.ref)
    if own is None:
        raise InvalidInput(f"query: this node has no dataset '{plan.source.dataset}'")
    cols = {own["key_column"]: "text", **own["columns"]}
    for c in sorted(set(plan.group_by) | (plan.where.columns() if plan.where is not None else set())):
        if c not in cols:
            raise InvalidInput(f"query: dataset '{plan.source.ref}' has no column '{c}'")
    if plan.where is not None:
        check_types(plan.where, cols)
    ids, groups = own_rows(runtime, plan)
    return {**params, "subjects": len(ids), "groups": len(set(groups))}, p.purpose


def admission(p: job_kinds.QueryParams, node_id: str) -> tuple[dict, str]:
    return query_column_uses(parse_query(p.sql), node_id), "verdict"


def check_group_size(p: job_kinds.QueryParams, grants: list) -> None:
    """The signed minimum group size must be at least what every grant of this node demands."""
    need = max((g.min_group_size for g in grants), default=1)
    if p.min_group_size < need:
        raise PermissionDenied(f"this provider's grant needs a minimum group size of at least {need}"
                               f" (the query asks for {p.min_group_size})")


def prepare(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester node prepares its own job")
    plan, params = plan_of(doc), _params(doc)
    ids, groups = own_rows(runtime, plan)
    distinct = list(dict.fromkeys(groups))
    if len(ids) != params.subjects or len(distinct) != params.groups:
        raise InvalidInput("the requester's dataset changed since the job was signed; submit the query again")
    if not ids:
        raise InvalidInput("no row of your dataset passes the query's WHERE")
    backend = get_backend("bfv")
    pub, secret = backend.generate_keypair()
    placed = subject_lists.assign_slots(groups)
    slots, distinct = placed.slots, placed.distinct
    n = len(ids)
    working = {"slots": slots, "group_no": placed.group_no, "groups": [list(g) for g in distinct]}
    expires = hours_from_now(WORKING_DATA_HOURS)
    runtime.store.put_blob("jobkeys", doc["job_id"], secret.serialize_secret(), expires_at=expires)
    runtime.store.put_blob("queryjob", doc["job_id"], json.dumps(working).encode(), expires_at=expires)
    pubctx = pub.serialize()
    yield from blob_chunks("pubctx", pubctx)
    yield from blob_chunks("layout", placed.layout.tobytes())
    yield from subject_lists.send_lists(runtime, "query", doc["job_id"], plan.providers(), slots, ids, pubctx)
    runtime.audit.append("query.prepare", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"subjects": n, "groups": len(distinct)})
    yield done(schema.QueryPrepared(slots=n, groups=len(distinct)))


def _value(text: str, ctype: str) -> int:
    """A cell in the plan's integer unit: cents for decimal columns, the number for integers."""
    if ctype == "decimal":
        return money.cell_cents(text)
    return 0 if text == "" else int(Decimal(text))


def evaluate_slots(runtime, plan: QueryPlan, items: list[tuple[int, str]], n: int) -> dict[str, list[int]]:
    """Per aggregate vector (:func:`vectors`) one integer per slot."""
    keys = [ident for _, ident in items]
    matched: dict[str, dict[str, list[dict]]] = {}
    metas = {}
    for s in plan.providers_sources():
        meta = metas[s.table.alias] = runtime.store.dataset(s.table.dataset)
        names = [c.name for c in meta.columns]
        found = runtime.store.rows_for_keys(s.table.dataset, keys)
        rows = {}
        for k in keys:
            rs = [dict(zip(names, r)) for r in found.get(k, [])]
            rows[k] = [r for r in rs if s.where is None or s.where.evaluate(r)]
        matched[s.table.alias] = rows
    out = {name: [0] * n for name in vectors(plan)}
    sums = plan.sum_columns()
    join = plan.join
    types = {c.name: c.type for c in metas[join.table.alias].columns} if join else {}
    for slot, k in items:
        ok = all(bool(matched[s.table.alias][k]) == (s.kind != "not_exists") for s in plan.providers_sources())
        if not ok:
            continue
        out["subjects"][slot] = 1
        jrows = matched[join.table.alias][k] if join else []
        out["rows"][slot] = min(len(jrows), qr.ROW_CAP) if join else 1
        for col in sums:
            # Clip per subject (docs/query.md): an error would tell the others that some value is extreme.
            out[f"sum:{col}"][slot] = qr.clamp_subject_sum(sum(_value(r[col], types[col]) for r in jrows[:qr.ROW_CAP]))
    return out


def evaluate(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    grants = require_admitted(runtime, doc)
    params, plan = _params(doc), plan_of(doc)
    check_group_size(params, grants)
    backend = get_backend("bfv")
    pubctx = read_blob(inbound, "pubctx", 64 << 20)
    sealed = read_blob(inbound, "sealed", 1 << 30)
    signature = read_blob(inbound, "binding", 1024)
    subject_lists.check_binding(runtime, "query", doc, pubctx, sealed, signature)
    use_once(runtime, doc, "query.evaluate")
    pub = backend.load_public(pubctx)
    items = subject_lists.open_list(runtime, sealed, subject_lists.aad("query", doc["job_id"], runtime.node_id))
    n = params.subjects
    if len(items) != n or any(not (0 <= s < n) for s, _ in items) or len({s for s, _ in items}) != n:
        raise InvalidInput("sealed subject list does not match the job's slots")
    charge_subjects(runtime, doc, grants, [ident for _, ident in items])
    yield progress("evaluate", runtime.node_id, 0, n)
    values = evaluate_slots(runtime, plan, items, n)
    yield progress("evaluate", runtime.node_id, n, n)
    for name, vec in values.items():
        yield from blob_chunks(schema.ciphertext_stream(name), backend.encrypt(pub, vec).serialize())
    runtime.audit.append("query.evaluate", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"subjects": n})
    yield done(schema.QueryEvaluated(subjects=n, aggregates=tuple(values)))


# ----- requester: release ------------------------------------------------------------------------------
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
    """The results file (docs/query.md): released groups sorted by the group columns."""
    names = vectors(plan)
    rows = []
    for g, v in zip(groups, values):
        if v is None:
            continue
        agg = dict(zip(names, v))
        row = []
        for item in plan.select:
            if item.func == "group":
                row.append(g[plan.group_by.index(item.column)])
            elif item.func == "count":
                row.append(str(agg["rows"]))
            elif item.func == "count_distinct":
                row.append(str(agg["subjects"]))
            else:
                total, decimal = agg[f"sum:{item.column}"], col_types.get(item.column) == "decimal"
                if item.func == "sum":
                    row.append(_two(Decimal(total)) if decimal else str(total))
                else:     # AVG = SUM / COUNT(*) over the same joined rows, half away from zero
                    scale = 1 if decimal else 100
                    cents = (Decimal(total) * scale / Decimal(agg["rows"])).quantize(Decimal(1), rounding=ROUND_HALF_UP)
                    row.append(_two(cents))
        rows.append((g, row))
    rows.sort(key=lambda gr: _sort_key(gr[0], group_types))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow([a.name for a in plan.select])
    for _, r in rows:
        w.writerow(r)
    return buf.getvalue(), len(rows)


def release(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester node releases its own job")
    plan, params = plan_of(doc), _params(doc)
    working = json.loads(runtime.store.get_blob("queryjob", doc["job_id"]))
    backend = get_backend("bfv")
    secret = backend.load_secret(runtime.store.get_blob("jobkeys", doc["job_id"]))
    rp: schema.QueryReleaseParams = schema.decode_params(header)
    n_groups, names = len(working["groups"]), vectors(plan)
    if rp.groups != n_groups or rp.aggregates != names:
        raise InvalidInput("the release does not match this job's groups or the signed query")
    t = secret.public.plaintext_modulus
    slot_group = np.zeros(len(working["slots"]), dtype=np.int64)
    slot_group[np.array(working["slots"], dtype=np.int64)] = np.array(working["group_no"], dtype=np.int64)
    tp = qr.threshold_plan(params.min_group_size, int(np.bincount(slot_group, minlength=n_groups).max()), t)

    def masked(name: str) -> np.ndarray:
        cv = backend.load_ciphertext(secret.public, read_blob(inbound, schema.masked_stream(name), _MASKED_LIMIT))
        if cv.length != len(slot_group):
            raise InvalidInput(f"masked values '{name}' do not match the job's slots")
        return qr.group_values(backend.decrypt(secret, cv), slot_group, n_groups, t)

    d_threshold = masked("threshold")
    d_agg = [masked(name) for name in names]
    evaluator = ComparisonEvaluator(tp.spec, [qr.requester_input(tp, d_threshold, t)])
    yield from blob_chunks(schema.gc_stream(1), evaluator.start())
    yield from blob_chunks(schema.gc_stream(3), evaluator.extend(read_blob(inbound, schema.gc_stream(2), 64 << 10)))
    suppressed = evaluator.evaluate(read_blob(inbound, schema.gc_stream(4), MAX_BLOB))
    opened = qr.open_released(evaluator, suppressed, d_agg, read_blob(inbound, "release", 1 << 30),
                              doc["job_id"].encode(), t)
    meta = runtime.store.dataset(plan.source.dataset)
    src_types = {c.name: c.type for c in meta.columns}
    sum_types = {c: "decimal" if c in rp.decimal_sums else "integer" for c in plan.sum_columns()}
    text, released = results_csv(plan, sum_types,
                                 [src_types.get(g, "text") for g in plan.group_by],
                                 [tuple(g) for g in working["groups"]], opened)
    summary = {"query": "federated", "groups": n_groups, "released": released, "suppressed": n_groups - released,
               "min_group_size": params.min_group_size, "subjects": params.subjects}
    store_results(runtime, doc["job_id"], text, released, summary)
    wipe(runtime, doc["job_id"])
    runtime.audit.append("query.finish", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"groups": n_groups, "released": released})
    # Only the group count goes back: which groups were released stays at this node.
    yield done(schema.QueryReleased(groups=n_groups))

