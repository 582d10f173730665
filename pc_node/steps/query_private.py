"""Query-private federated query steps at the nodes (``query_private`` jobs, docs/query_private.md).

Requester node:
  ``query_private.prepare``  its rows after its WHERE, grouped; a one-job BFV key and ECDH key
                             ``a``; to the provider, sealed and signed, the group sizes and
                             ``H(x)^a`` in per-group batches; to the coordinator the public key
                             and the group sizes only.
  ``query_private.release``  opens the provider's double-blinded batches and table, matches,
                             sends the coordinator an assignment of provider positions to groups
                             (each group exactly its size: matches padded with dummies), then as
                             the default mode: masked decryption, garbled threshold, label-keyed
                             unpadding of released groups, the results file.
Provider node:
  ``query_private.evaluate`` evaluates its JOIN / EXISTS / NOT EXISTS and conditions on **its own**
                             identifiers (it never sees the requester's), re-encrypts the batches
                             (shuffled inside each), and returns its table ``H(y)^b`` (sealed to
                             the requester) and per position, under the requester's key, the
                             subject indicator, row count and clipped sums (0 at dummy positions).
"""
from __future__ import annotations

import json
import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from pc_common import job_kinds
from pc_common import steps_schema as schema
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.wire import MAX_BLOB
from pc_node import envelope
from pc_node.psi import intersection_sum as isum
from pc_node.psi.curve import best_backend
from pc_node.psi.encoding import decode_points
from pc_node.secure_agg import get_backend
from pc_node.secure_agg import position_release as pr
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.gc import ComparisonEvaluator
from pc_node.steps import query, subject_lists
from pc_node.steps.admit import checked_spec, require_admitted, use_once
from pc_node.steps.common import blob_chunks, done, hours_from_now, progress, read_blob, store_results
from pc_node.steps.verify import WORKING_DATA_HOURS, wipe
from pc_rules.query import QueryPlan, parse_query

KIND = "query_private"
_U32 = struct.Struct("<I")


refusal = pr.unsupported


def _params(doc: dict) -> job_kinds.QueryPrivateParams:
    return job_kinds.params_of(doc, KIND)


def plan_of(doc: dict) -> QueryPlan:
    plan = parse_query(_params(doc).sql)
    if plan.requester != doc["requester"]:
        raise PermissionDenied(f"FROM must be a dataset of the requester ({doc['requester']})")
    why = refusal(plan)
    if why:
        raise InvalidInput(why)
    return plan


def prepare_job(runtime, params: dict, subject_set: str = "") -> tuple[dict, str]:
    job_kinds.QueryPrivateParams.from_params(params)        # refuses --epsilon with one line
    why = refusal(parse_query(params["sql"]))
    if why:
        raise InvalidInput(why)
    return query.prepare_job(runtime, params, subject_set)


def admission(p, node_id: str) -> tuple[dict, str]:
    return query.admission(p, node_id)


def _aad(job_id: str, what: str) -> bytes:
    return f"pc/{KIND}/{job_id}/{what}".encode()


def _u32s(values) -> bytes:
    return np.asarray(values, dtype="<u4").tobytes()


# ----- requester: prepare -----------------------------------------------------------------------------
def prepare(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester node prepares its own job")
    plan, params = plan_of(doc), _params(doc)
    use_once(runtime, doc, "query_private.prepare")
    ids, groups = query.own_rows(runtime, plan)
    placed = subject_lists.assign_slots(groups)
    if len(ids) != params.subjects or len(placed.distinct) != params.groups:
        raise InvalidInput("the requester's dataset changed since the job was signed; submit the query again")
    if not ids:
        raise InvalidInput("no row of your dataset passes the query's WHERE")
    ec = best_backend()
    key = ec.random_scalar()
    n_groups = len(placed.distinct)
    points, sizes = isum.blind_groups(ids, np.array(placed.group_no), n_groups, key, isum.domain_for(doc["job_id"]),
                                      ec)
    del ids
    pub, secret = get_backend("bfv").generate_keypair()
    expires = hours_from_now(WORKING_DATA_HOURS)
    runtime.store.put_blob("jobkeys", doc["job_id"], secret.serialize_secret(), expires_at=expires)
    working = {"ec_key": key.hex(), "groups": [list(g) for g in placed.distinct], "sizes": sizes.tolist()}
    runtime.store.put_blob("queryjob", doc["job_id"], json.dumps(working).encode(), expires_at=expires)
    pubctx = pub.serialize()
    yield from blob_chunks("pubctx", pubctx)
    yield from blob_chunks("sizes", _u32s(sizes))
    provider = plan.providers()[0]
    sealed = envelope.seal(runtime.peer_keys(provider).x25519_public,
                           _U32.pack(n_groups) + _u32s(sizes) + points.tobytes(), _aad(doc["job_id"], provider))
    yield from blob_chunks(schema.sealed_stream(provider), sealed)
    yield from blob_chunks(schema.binding_stream(provider),
                           runtime.sm2.sign(subject_lists.binding(KIND, doc["job_id"], provider, pubctx, sealed)))
    runtime.audit.append("query_private.prepare", job=doc["job_id"], requester=runtime.node_id,
                         purpose=doc["purpose"], counts={"subjects": len(points), "groups": n_groups})
    yield done(schema.PrivatePrepared(rows=len(points), groups=n_groups))


# ----- provider: evaluate -----------------------------------------------------------------------------
def _open_batches(runtime, doc: dict, sealed: bytes, params) -> tuple[np.ndarray, np.ndarray]:
    raw = envelope.open_envelope(runtime.x25519_private, sealed, _aad(doc["job_id"], runtime.node_id))
    if len(raw) < 4:
        raise InvalidInput("the blinded batches are malformed")
    (g,) = _U32.unpack_from(raw)
    if g != params.groups or len(raw) != 4 + 4 * g + 32 * params.subjects:
        raise InvalidInput("the blinded batches do not match the signed job (rows and groups)")
    sizes = np.frombuffer(raw, dtype="<u4", count=g, offset=4).astype(np.int64)
    if int(sizes.sum()) != params.subjects or (sizes < 1).any():
        raise InvalidInput("the blinded batches do not match the signed job (rows and groups)")
    return decode_points(raw[4 + 4 * g:], params.subjects), sizes


def own_table(runtime, plan: QueryPlan) -> tuple[list[str], dict[str, list[int]]]:
    """P's distinct identifiers that pass its part of the query, with their aggregate values.

    Candidates are the identifiers of its JOIN dataset (else of its EXISTS datasets); the
    default mode's evaluation decides each one (all provider conditions apply to the subject)."""
    base = [s for s in plan.providers_sources() if s.kind == ("join" if plan.join else "exists")]
    keys: list[str] = []
    for s in base:
        keys.extend(runtime.store.keys(s.table.dataset))
    keys = list(dict.fromkeys(keys))
    values = query.evaluate_slots(runtime, plan, list(enumerate(keys)), len(keys))
    keep = [i for i, v in enumerate(values["subjects"]) if v]
    return [keys[i] for i in keep], {name: [vec[i] for i in keep] for name, vec in values.items()}


def admit_private(runtime, doc: dict, grants: list) -> None:
    """What a provider checks of a private query at admission and again at evaluate: no grant
    demands differential privacy, and the signed minimum group size is at least the grants'."""
    if any(g.epsilon is not None or g.epsilon_budget is not None for g in grants):
        raise PermissionDenied("this provider's grant demands differential privacy, which --private cannot carry"
                               " (the requester learns exact per-group match counts); run the query without"
                               " --private")
    query.check_group_size(_params(doc), grants)


def evaluate(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    grants = require_admitted(runtime, doc)
    params, plan = _params(doc), plan_of(doc)
    admit_private(runtime, doc, grants)
    backend = get_backend("bfv")
    pubctx = read_blob(inbound, "pubctx", 64 << 20)
    sealed = read_blob(inbound, "sealed", 64 + 4 * params.groups + 32 * params.subjects + 4096)
    signature = read_blob(inbound, "binding", 1024)
    subject_lists.check_binding(runtime, KIND, doc, pubctx, sealed, signature)
    use_once(runtime, doc, "query_private.evaluate")
    pub = backend.load_public(pubctx)
    points, sizes = _open_batches(runtime, doc, sealed, params)
    ec = best_backend()
    key = ec.random_scalar()
    n = params.subjects
    yield progress("evaluate", runtime.node_id, 0, n)
    # The re-blinding runs in C (GIL released) while this thread reads and evaluates its own rows.
    with ThreadPoolExecutor(1) as pool:
        reblinding = pool.submit(isum.double_blind, points, sizes, key, ec)
        ids, values = own_table(runtime, plan)
        double = reblinding.result()
    del points
    table = isum.provider_table(ids, n, key, isum.domain_for(doc["job_id"]), ec)
    requester_key = runtime.peer_keys(doc["requester"]).x25519_public
    yield from blob_chunks("double", envelope.seal(requester_key, double.tobytes(), _aad(doc["job_id"], "double")))
    own = _U32.pack(len(ids)) + _U32.pack(table.total) + _u32s(table.real_positions) + table.points.tobytes()
    yield from blob_chunks("own", envelope.seal(requester_key, own, _aad(doc["job_id"], "own")))
    del double, own
    yield progress("evaluate", runtime.node_id, n, n)
    for name in plan.vectors():
        yield from blob_chunks(schema.ciphertext_stream(name),
                               backend.encrypt(pub, table.spread(values[name])).serialize())
    runtime.audit.append("query_private.evaluate", job=doc["job_id"], requester=doc["requester"],
                         purpose=doc["purpose"], counts={"asked": n, "own": len(ids)})
    yield done(schema.PrivateEvaluated(rows=len(ids), positions=table.total, aggregates=plan.vectors()))


# ----- requester: release -----------------------------------------------------------------------------
def _open_table(runtime, job_id: str, blob: bytes, rp: schema.PrivateReleaseParams, n: int):
    raw = envelope.open_envelope(runtime.x25519_private, blob, _aad(job_id, "own"))
    if len(raw) < 8:
        raise InvalidInput("the provider's table is malformed")
    m, total = _U32.unpack_from(raw, 0)[0], _U32.unpack_from(raw, 4)[0]
    if m != rp.provider_rows or total != rp.positions or total != m + n or len(raw) != 8 + 36 * m:
        raise InvalidInput("the provider's table does not match its announced sizes")
    positions = np.frombuffer(raw, dtype="<u4", count=m, offset=8).astype(np.int64)
    return decode_points(raw[8 + 4 * m:], m), positions, total


def release(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester node releases its own job")
    plan, params = plan_of(doc), _params(doc)
    rp: schema.PrivateReleaseParams = schema.decode_params(header)
    names = plan.vectors()
    if rp.aggregates != names:
        raise InvalidInput("the release does not match the signed query")
    use_once(runtime, doc, "query_private.release")
    job = doc["job_id"]
    working = json.loads(runtime.store.get_blob("queryjob", job))
    sizes, n = np.array(working["sizes"], dtype=np.int64), params.subjects
    n_groups = len(sizes)
    ec = best_backend()
    key = bytes.fromhex(working["ec_key"])
    double = decode_points(envelope.open_envelope(runtime.x25519_private, read_blob(inbound, "double", 32 * n + 4096),
                                                  _aad(job, "double")), n)
    points, positions, total = _open_table(runtime, job, read_blob(inbound, "own", 36 * (rp.positions + 1) + 4096),
                                           rp, n)
    layout, _matches = isum.assign_positions(double, sizes, points, positions, total, key, ec)
    del double, points
    yield from blob_chunks("assignment", layout.astype("<i4").tobytes())
    backend = get_backend("bfv")
    secret = backend.load_secret(runtime.store.get_blob("jobkeys", job))
    t = secret.public.plaintext_modulus
    tp = qr.threshold_plan(params.min_group_size, int(sizes.max()), t)

    def masked(name: str) -> np.ndarray:
        cv = backend.load_ciphertext(secret.public, read_blob(inbound, schema.masked_stream(name), MAX_BLOB))
        if cv.length != total:
            raise InvalidInput(f"masked values '{name}' do not match the provider's positions")
        return pr.requester_groups(backend.decrypt(secret, cv), layout, n_groups, t)

    d_threshold = masked("threshold")
    d_agg = [masked(name) for name in names]
    circuit_input, bad = qr.requester_input(tp, d_threshold, t)
    evaluator = ComparisonEvaluator(tp.spec, [circuit_input])
    yield from blob_chunks(schema.gc_stream(1), evaluator.start())
    yield from blob_chunks(schema.gc_stream(3), evaluator.extend(read_blob(inbound, schema.gc_stream(2), 64 << 10)))
    suppressed = evaluator.evaluate(read_blob(inbound, schema.gc_stream(4), MAX_BLOB))
    opened = qr.open_released(evaluator, suppressed, d_agg, read_blob(inbound, "release", 1 << 30), job.encode(), t,
                              bad)
    src_types = {c.name: c.type for c in runtime.store.dataset(plan.source.dataset).columns}
    sum_types = {c: "decimal" if c in rp.decimal_sums else "integer" for c in plan.sum_columns()}
    text, released = query.results_csv(plan, sum_types, [src_types.get(g, "text") for g in plan.group_by],
                                       [tuple(g) for g in working["groups"]], opened)
    summary = {"query": "federated", "mode": "private", "groups": n_groups, "released": released,
               "suppressed": n_groups - released, "min_group_size": params.min_group_size, "subjects": n,
               "provider_rows": rp.provider_rows}
    store_results(runtime, job, text, released, summary)
    wipe(runtime, job)
    runtime.audit.append("query_private.finish", job=job, requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"groups": n_groups, "released": released})
    yield done(schema.QueryReleased(groups=n_groups))
