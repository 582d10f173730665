"""Query-private federated queries at the coordinator (``query_private``, docs/query_private.md).

The coordinator relays sealed point sets it cannot open (the requester's blinded batches to the
provider, the provider's double-blinded batches and table back), holds the provider's
ciphertexts under the requester's one-job BFV key, receives the requester's assignment of
provider positions to groups (each group exactly its public size; matches and dummies look
alike), masks as the default mode does and runs the same garbled threshold and label-keyed
release. It learns sizes and timings only.
"""
from __future__ import annotations

import time

import numpy as np

from pc_common import job_kinds
from pc_common import steps_schema as schema
from pc_common.catalog import catalog_view
from pc_common.errors import InvalidInput
from pc_common.wire import MAX_BLOB, blob_chunks
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.query_jobs import _decimal_sums, published_grant_check
from pc_coordinator.runner import JobContext
from pc_coordinator.streams import collect_blobs, send_blobs
from pc_coordinator.verify_compare import Outbox, _read_blob, _read_done
from pc_node.secure_agg import position_release as pr
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.backend import get_backend
from pc_node.secure_agg.gc import ComparisonGarbler
from pc_rules.query import QueryPlan, parse_query
from pc_rules.query_catalog import check_disclosure, validate_query

KIND = "query_private"



def _plan(doc: dict) -> tuple[job_kinds.QueryPrivateParams, QueryPlan]:
    p = job_kinds.params_of(doc, KIND)
    return p, parse_query(p.sql)


refusal = pr.unsupported


def validate(doc: dict, directory: Directory) -> list[str]:
    p, plan = _plan(doc)
    view = catalog_view(directory.catalog())
    validate_query(plan, view, doc["requester"])
    why = refusal(plan)
    if why:
        raise InvalidInput(why)
    published_grant_check(plan, p, doc["requester"], directory)
    # the published k and DP demands: refused here, before any admission round (the provider re-checks)
    check_disclosure(plan, view, doc["requester"], p.purpose, p.min_group_size, None, private=True)
    for a in plan.providers() + [doc["requester"]]:
        if not directory.node(a)["online"]:
            raise InvalidInput(f"node '{a}' is offline")
    return plan.providers()


def run(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    p, plan = _plan(doc)
    requester, provider = doc["requester"], plan.providers()[0]
    names = plan.vectors()
    try:
        admit_all(ctx, [provider])
        timings["admit_s"] = time.perf_counter() - t0

        t = time.perf_counter()
        prep_done, blobs = collect_blobs(ctx, requester, [ctx.header("query_private.prepare", requester)])
        prepared: schema.PrivatePrepared = schema.decode_result("query_private.prepare", prep_done)
        needed = ["pubctx", "sizes", schema.sealed_stream(provider), schema.binding_stream(provider)]
        if any(n not in blobs for n in needed):
            raise InvalidInput("the requester's node did not send its blinded batches")
        sizes = np.frombuffer(blobs["sizes"], dtype="<u4").astype(np.int64)
        if prepared.rows != p.subjects or prepared.groups != p.groups or len(sizes) != p.groups \
                or int(sizes.sum()) != p.subjects or not len(sizes) or sizes.min() < 1 \
                or sizes.max() > qr.MAX_GROUP_ROWS:
            raise InvalidInput("the requester's group sizes do not match the job")
        pubctx = blobs["pubctx"]
        timings["prepare_s"] = time.perf_counter() - t

        t = time.perf_counter()
        ev_done, ev = collect_blobs(ctx, provider, send_blobs(
            [ctx.header("query_private.evaluate", requester)],
            {"pubctx": pubctx, "sealed": blobs[schema.sealed_stream(provider)],
             "binding": blobs[schema.binding_stream(provider)]}))
        del blobs
        evaluated: schema.PrivateEvaluated = schema.decode_result("query_private.evaluate", ev_done)
        if evaluated.aggregates != names or evaluated.positions != evaluated.rows + p.subjects:
            raise InvalidInput(f"provider '{provider}' answered other vectors or sizes than the job's")
        backend = get_backend("bfv")
        pub = backend.load_public(pubctx)
        missing = [n for n in ["double", "own"] + [schema.ciphertext_stream(n) for n in names] if n not in ev]
        if missing:
            raise InvalidInput(f"provider '{provider}' did not send {', '.join(missing)}")
        cvs = {n: backend.load_ciphertext(pub, ev.pop(schema.ciphertext_stream(n))) for n in names}
        if any(cv.length != evaluated.positions for cv in cvs.values()):
            raise InvalidInput(f"provider '{provider}' answered another number of positions")
        timings["evaluate_s"] = time.perf_counter() - t

        t = time.perf_counter()
        answer = _release(ctx, requester, p, plan, names, sizes, evaluated, ev, cvs, doc["job_id"].encode(), timings)
        if answer.groups != p.groups:
            raise InvalidInput("the requester's release does not match the job")
        timings["release_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        ctx.progress("finish", requester, p.subjects, p.subjects)
        ctx.jobs.record(ctx.job_id, summary={
            "subjects": p.subjects, "groups": p.groups, "provider_rows": evaluated.rows,
            "positions": evaluated.positions, "providers": [provider], "he": "bfv", "mode": "private",
            "min_group_size": p.min_group_size, **{k: round(v, 3) for k, v in timings.items()}},
            leakage=leakage_report(requester, provider, p.subjects, p.groups, evaluated.rows, p.min_group_size))
    finally:
        ctx.cleanup([requester, provider])


def _release(ctx: JobContext, requester: str, p, plan: QueryPlan, names, sizes: np.ndarray, evaluated, ev: dict,
             cvs: dict, context: bytes, timings: dict) -> schema.QueryReleased:
    out = Outbox()
    out.put([ctx.header("query_private.release", requester, schema.PrivateReleaseParams(
        positions=evaluated.positions, provider_rows=evaluated.rows, aggregates=tuple(names),
        decimal_sums=_decimal_sums(plan, ctx.runner.directory)))])
    out.put(blob_chunks("double", ev.pop("double")))
    out.put(blob_chunks("own", ev.pop("own")))
    try:
        answers = iter(ctx.step(requester, out))
        raw = _read_blob(ctx, requester, answers, "assignment", 4 * evaluated.positions)
        if len(raw) != 4 * evaluated.positions:
            raise InvalidInput("the requester's assignment does not match the provider's positions")
        layout = pr.check_assignment(np.frombuffer(raw, dtype="<i4"), sizes, evaluated.positions)
        tm = time.perf_counter()
        t_mod = cvs["subjects"].public.plaintext_modulus
        tp = qr.threshold_plan(p.min_group_size, int(sizes.max()), t_mod)
        cm = pr.mask_positions(get_backend("bfv"), tp, cvs["subjects"], [cvs[n] for n in names], layout, len(sizes))
        cvs.clear()
        out.put(blob_chunks(schema.masked_stream("threshold"), cm.masked_subjects.serialize()))
        for name, cv in zip(names, cm.masked_aggregates):
            out.put(blob_chunks(schema.masked_stream(name), cv.serialize()))
        timings["mask_s"] = time.perf_counter() - tm
        garbler = ComparisonGarbler(tp.spec, [cm.garbler_input])
        m1 = _read_blob(ctx, requester, answers, schema.gc_stream(1), 1 << 16)
        out.put(blob_chunks(schema.gc_stream(2), garbler.respond(m1)))
        m3 = _read_blob(ctx, requester, answers, schema.gc_stream(3), MAX_BLOB)
        ctx.check_cancelled()
        out.put(blob_chunks(schema.gc_stream(4), garbler.garble(m3)))
        out.put(blob_chunks("release", qr.release_message(garbler, cm.pads, context, t_mod)))
        out.close()
        return schema.decode_result("query_private.release", _read_done(ctx, requester, answers))
    finally:
        out.close()


def leakage_report(requester: str, provider: str, n: int, groups: int, m: int, k: int) -> dict:
    return {
        "coordinator": [
            f"sizes: {n} requester rows in {groups} opaque groups and each group's size; the provider's {m} "
            f"matching identifiers and {m + n} positions",
            "sealed point sets it cannot open, ciphertexts under the requester's one-job BFV key, and the "
            "requester's assignment of positions to groups (matches and dummies look alike)",
            "no identifier, value, count, aggregate, match or suppression bit; its own masks, pads and garbled "
            f"circuit of {groups} comparisons [distinct subjects < {k}]",
        ],
        requester: [
            f"per group ({groups}): the exact number of its rows the provider matched (a group's match count, "
            "which is why this mode cannot carry differential privacy on counts)",
            f"for groups with at least {k} matched subjects their aggregates (exact totals); nothing else of "
            "suppressed groups",
            f"the provider's number of matching identifiers ({m}) and its blinded points, which it cannot link "
            "to identifiers; not which of its own rows matched (batches are shuffled inside each group)",
        ],
        provider: [
            f"sizes only: {n} blinded requester points in {groups} batches and each batch's size — never an "
            "identifier of the requester, nor which of its own rows matched",
            f"the SQL text of the query, its purpose and minimum group size {k}",
        ],
    }
