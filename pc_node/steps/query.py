"""Federated query steps at the nodes (docs/query.md).

Requester node:
  ``query.prepare``  its own dataset's rows, filtered by its WHERE, grouped by the GROUP BY
                     columns; a fresh one-job key pair (BFV, or Paillier where the answer is a
                     product of two agencies' data: ``QueryPlan.he_scheme``); opaque slots (one
                     per row, random); to each provider a sealed (slot, identifier) list in random
                     order; to the coordinator the public key and the slot→group layout (sizes only).
  ``query.release``  decrypts masked values only, learns per group the suppression bit of the
                     garbled-circuit comparison [distinct subjects < k], removes the pads of
                     released groups (keyed by the circuit's output label), writes the results.
Provider node:
  ``query.evaluate`` opens its list, evaluates JOIN / EXISTS / NOT EXISTS and its conditions
                     locally, and returns per slot under the requester's key: the 0/1 subject
                     indicator, its matched-row count and its clipped sums — per category and slot
                     for a provider GROUP BY (one-hot); with DP (signed ε) also its encrypted noise
                     shares per group, after the ε ledger (``query_disclosure``) charged the job.
                     Under Paillier the vectors are digits of packs (``query_paillier``). A
                     further provider agency (semi-joins only, after charging its own ledger)
                     gets the main provider's packs masked by the coordinator, keeps them where its
                     semi-joins hold and puts a fresh encryption of zero elsewhere, and returns its
                     0/1 tests encrypted so that the coordinator can remove its masks.
"""
from __future__ import annotations

import json
import logging
import time

import numpy as np

from pc_common import job_kinds
from pc_common import steps_schema as schema
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.wire import MAX_BLOB
from pc_node.secure_agg import dp_noise, get_backend
from pc_node.secure_agg import query_paillier as qp
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
from pc_node.steps.query_disclosure import (  # noqa: F401  (check_group_size: admit.authorise's hook)
    admit_query,
    categories,
    charge_epsilon,
    check_group_size,
    dp_bounds,
    dp_scales,
    plan_of,
)
from pc_node.steps.query_disclosure import params_of as _params
from pc_node.steps.query_eval import INDICATOR, evaluate_slots
from pc_node.steps.query_results import full_group, results_csv
from pc_node.steps.verify import WORKING_DATA_HOURS, wipe
from pc_rules.query import QueryPlan, parse_query
from pc_rules.query_catalog import query_column_uses
from pc_rules.where import check_types

log = logging.getLogger(__name__)
_MASKED_LIMIT = 1 << 31
#: The last query's own rows at this node, by (SQL, dataset, change stamp): one entry.
_own_cache: dict = {}


class _Clock:
    """Step timings for the node's log (sizes and seconds only)."""

    def __init__(self) -> None:
        self.t, self.laps = time.perf_counter(), []

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps.append(f"{name} {now - self.t:.2f} s")
        self.t = now

    def __str__(self) -> str:
        return ", ".join(self.laps)


def _own_catalog(runtime) -> dict:
    return {f"{runtime.node_id}.{m.name}": {"key_column": m.key_column, "columns": {c.name: c.type for c in m.columns}}
            for m in runtime.store.datasets()}


def own_rows(runtime, plan: QueryPlan) -> tuple[list[str], list[tuple[str, ...]]]:
    """(identifiers, group values) of the requester's rows passing its WHERE, one row per subject.

    Kept for the dataset's current version and the query (submission and ``query.prepare`` both
    need it; a changed dataset reads anew, and ``prepare`` compares the counts with the signed ones)."""
    stamp = (plan.sql, plan.source.dataset, runtime.store.change_stamp(plan.source.dataset))
    cached = _own_cache.get("rows")
    if cached is not None and cached[0] == stamp:
        return cached[1]
    meta = runtime.store.dataset(plan.source.dataset)
    names = [c.name for c in meta.columns]
    at = [names.index(g) for g in plan.group_by]
    wanted = set(plan.group_by) | (plan.where.columns() if plan.where is not None else set())
    keys = list(dict.fromkeys(runtime.store.keys(plan.source.dataset)))
    found = runtime.store.rows_for_keys(plan.source.dataset, keys, columns=sorted(wanted))
    where = plan.where
    per_key = [found.get(k, ()) for k in keys]
    if where is not None:
        per_key = [[r for r in rs if where.evaluate(dict(zip(names, r)))] if rs else rs for rs in per_key]
    if any(len(rs) > 1 for rs in per_key):
        raise InvalidInput(f"{plan.source.ref} has several rows for one identifier (after WHERE); a query needs"
                           " one row per subject")
    ids = [k for k, rs in zip(keys, per_key) if rs]
    groups = [tuple(rs[0][j] for j in at) for rs in per_key if rs]
    _own_cache.clear()
    _own_cache["rows"] = (stamp, (ids, groups))
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
    backend = get_backend(plan.he_scheme())
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


def evaluate(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    grants = require_admitted(runtime, doc)
    params, plan = _params(doc), plan_of(doc)
    admit_query(runtime, doc, grants)
    main = runtime.node_id == plan.main_provider()     # else a further provider: it selects the main one's packs
    bounds = dp_bounds(runtime, plan) if params.epsilon and main else None
    cats = categories(runtime, plan) if main else ()
    scheme = plan.he_scheme()
    backend = get_backend(scheme)
    pubctx = read_blob(inbound, "pubctx", 64 << 20)
    sealed = read_blob(inbound, "sealed", 1 << 30)
    signature = read_blob(inbound, "binding", 1024)
    pub = backend.load_public(pubctx)
    names = qp.pack_names(plan.vectors(), qp.digits_per_pack(pub)) if scheme == "paillier" else []
    limit = params.subjects * 64 * getattr(pub, "ct_bytes", 0) + 4096
    theirs = [] if main or scheme != "paillier" else \
        [read_blob(inbound, schema.ciphertext_stream(qp.pack_stream(k)), limit) for k in range(len(names))]
    subject_lists.check_binding(runtime, "query", doc, pubctx, sealed, signature)
    if params.epsilon:
        charge_epsilon(runtime, doc, grants)      # before the list is opened or anything evaluated
    use_once(runtime, doc, "query.evaluate")
    clock = _Clock()
    items = subject_lists.open_list(runtime, sealed, subject_lists.aad("query", doc["job_id"], runtime.node_id))
    n = params.subjects
    slots = np.fromiter((s for s, _ in items), dtype=np.int64, count=len(items))
    if len(items) != n or (n and (slots.min() < 0 or slots.max() >= n)) or len(np.unique(slots)) != n:
        raise InvalidInput("sealed subject list does not match the job's slots")
    clock.lap("open")
    charge_subjects(runtime, doc, grants, [ident for _, ident in items])
    clock.lap("charge")
    yield progress("evaluate", runtime.node_id, 0, n)
    values = evaluate_slots(runtime, plan, items, n, bounds, cats)
    clock.lap("evaluate")
    yield progress("evaluate", runtime.node_id, n, n)
    if not main:                  # keep the (masked) main provider's packs where this node's semi-joins hold
        selected, kept = qp.select(backend, [backend.load_ciphertext(pub, b) for b in theirs], values[INDICATOR], pub)
        for k, cv in enumerate(selected):
            yield from blob_chunks(schema.ciphertext_stream(qp.pack_stream(k)), cv.serialize())
        yield from blob_chunks(schema.ciphertext_stream(qp.KEPT), kept.serialize())
    elif scheme == "paillier":
        for k, cv in enumerate(qp.encrypt_packs(backend, pub, names, values)):
            yield from blob_chunks(schema.ciphertext_stream(qp.pack_stream(k)), cv.serialize())
    else:
        for name, vec in values.items():
            yield from blob_chunks(schema.ciphertext_stream(name), backend.encrypt(pub, vec).serialize())
    clock.lap("encrypt+send")
    log.info("query.evaluate %s: %d slots, %s", doc["job_id"], n, clock)
    scales = dp_scales(plan, params.epsilon, bounds, len(cats)) if bounds is not None else []
    if scales:     # this provider's noise shares, one per group (× category) and vector (docs/query.md, DP)
        source, parties = dp_noise.fresh_source(), plan.noise_parties()
        shares = {name: source.share(scale, parties, params.groups * max(len(cats), 1))
                  for name, scale in zip(plan.vectors(), scales)}
        if scheme == "paillier":
            for k, cv in enumerate(qp.encrypt_packs(backend, pub, names, shares)):
                yield from blob_chunks(schema.ciphertext_stream("noise:" + qp.pack_stream(k)), cv.serialize())
        else:
            for name, share in shares.items():
                yield from blob_chunks(schema.ciphertext_stream("noise:" + name), backend.encrypt(pub, share).serialize())
    runtime.audit.append("query.evaluate", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"subjects": n})
    yield done(schema.QueryEvaluated(subjects=n, aggregates=plan.vectors(), noise_scales=tuple(map(repr, scales)),
                                     categories=cats))


# ----- requester: release ------------------------------------------------------------------------------
def release(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester node releases its own job")
    plan, params = plan_of(doc), _params(doc)
    working = json.loads(runtime.store.get_blob("queryjob", doc["job_id"]))
    scheme = plan.he_scheme()
    backend = get_backend(scheme)
    secret = backend.load_secret(runtime.store.get_blob("jobkeys", doc["job_id"]))
    rp: schema.QueryReleaseParams = schema.decode_params(header)
    own_groups, names, cats = len(working["groups"]), plan.vectors(), rp.categories
    if bool(cats) != bool(plan.provider_group) or len(cats) > 64 or len(set(cats)) != len(cats):
        raise InvalidInput("the release's categories do not match the query's GROUP BY")
    n_groups = own_groups * max(len(cats), 1)         # requester group × category (index c·groups + g)
    if rp.groups != n_groups or rp.aggregates != names:
        raise InvalidInput("the release does not match this job's groups or the signed query")
    t = secret.public.plaintext_modulus if scheme == "bfv" else qp.DIGIT_MOD
    own = np.zeros(len(working["slots"]), dtype=np.int64)
    own[np.array(working["slots"], dtype=np.int64)] = np.array(working["group_no"], dtype=np.int64)
    slot_group = np.concatenate([own + c * own_groups for c in range(max(len(cats), 1))])
    largest = int(np.bincount(own, minlength=own_groups).max())
    if params.epsilon:
        shift = qr.dp_shift(params.epsilon, len(names), plan.noise_parties(), len(cats))
        tp = qr.dp_threshold_plan(params.min_group_size, largest, t, shift)
    else:
        tp = qr.threshold_plan(params.min_group_size, largest, t)

    def load(name: str, length: int) -> list:
        cv = backend.load_ciphertext(secret.public, read_blob(inbound, schema.masked_stream(name), _MASKED_LIMIT))
        if cv.length != length:
            raise InvalidInput(f"masked values '{name}' do not match the job's slots")
        return backend.decrypt(secret, cv)

    def masked(name: str) -> np.ndarray:
        values = load(name, len(slot_group))
        noise = load("noise:" + name, n_groups) if params.epsilon else None
        return qr.group_values(values, slot_group, n_groups, t, noise)

    clock = _Clock()
    bad = None                    # Paillier: groups whose packs did not decode (open_packs)
    if scheme == "bfv":
        d_threshold = masked("threshold")
        d_agg = [masked(name) for name in names]
    else:                         # one masked ciphertext per group and pack (query_paillier)
        packs = qp.pack_names(names, qp.digits_per_pack(secret.public))
        cvs = [backend.load_ciphertext(secret.public, read_blob(inbound, schema.masked_stream(qp.pack_stream(k)),
                                                                _MASKED_LIMIT)) for k in range(len(packs))]
        digits, bad = qp.open_packs(backend, secret, packs, cvs, n_groups)
        d_threshold, d_agg = digits[qp.THRESHOLD], [digits[name] for name in names]
    clock.lap("receive+decrypt")
    circuit_input, bad = qr.requester_input(tp, d_threshold, t, bad)
    evaluator = ComparisonEvaluator(tp.spec, [circuit_input])
    yield from blob_chunks(schema.gc_stream(1), evaluator.start())
    yield from blob_chunks(schema.gc_stream(3), evaluator.extend(read_blob(inbound, schema.gc_stream(2), 64 << 10)))
    suppressed = evaluator.evaluate(read_blob(inbound, schema.gc_stream(4), MAX_BLOB))
    opened = qr.open_released(evaluator, suppressed, d_agg, read_blob(inbound, "release", 1 << 30),
                              doc["job_id"].encode(), t, bad)
    if scheme == "paillier":      # a released digit beyond any true total: made up, withheld (no failure)
        over = np.array([o is not None and any(abs(v) >= 1 << qp.VALUE_BITS for v in o) for o in opened])
        opened, bad = [None if x else o for o, x in zip(opened, over.tolist())], bad | over
    if bad.any():     # for this node's operator; the coordinator must see no difference
        log.warning("query.release %s: %d group(s) held values the protocol cannot produce (a deviating"
                    " coordinator); they were withheld", doc["job_id"], int(bad.sum()))
    meta = runtime.store.dataset(plan.source.dataset)
    src_types = {c.name: c.type for c in meta.columns}
    sum_types = {c: "decimal" if c in rp.decimal_sums else "integer" for c in plan.sum_columns()}
    group_types = [src_types.get(g, "text") for g in plan.group_by]
    if cats:
        group_types.insert(plan.provider_group_at, rp.category_type)
    groups = [full_group(plan, tuple(g), cat) for cat in (cats or (None,)) for g in working["groups"]]
    text, released = results_csv(plan, sum_types, group_types, groups, opened)
    summary = {"query": "federated", "groups": n_groups, "released": released, "suppressed": n_groups - released,
               "min_group_size": params.min_group_size, "subjects": params.subjects,
               **({"epsilon": params.epsilon} if params.epsilon else {})}
    store_results(runtime, doc["job_id"], text, released, summary)
    wipe(runtime, doc["job_id"])
    clock.lap("threshold circuit+results")
    log.info("query.release %s: %d groups, %s", doc["job_id"], n_groups, clock)
    runtime.audit.append("query.finish", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"groups": n_groups, "released": released})
    # Only the group count goes back: which groups were released stays at this node.
    yield done(schema.QueryReleased(groups=n_groups))

