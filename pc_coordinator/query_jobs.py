"""Federated queries at the coordinator: validate, relay, mask, garble the threshold, release.

The coordinator handles only ciphertexts under the requester's one-job BFV key, the sealed
list it cannot open, and the slot→group layout (group sizes, no identifiers, no group values).
It adds plaintext masks (``pc_node.secure_agg.query_release``), garbles the comparison
[distinct subjects < k] and sends, per group, the aggregates' pads encrypted under the circuit's
label of "released": it learns no count, no aggregate and no suppression bit (docs/query.md).
With a second provider agency (semi-joins only) it multiplies that provider's encrypted 0/1
indicator into the main provider's vectors, ciphertext × ciphertext, before masking.
"""
from __future__ import annotations

import time

import numpy as np

from pc_common import job_kinds
from pc_common import steps_schema as schema
from pc_common.catalog import catalog_view
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.wire import MAX_BLOB, blob_chunks
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.runner import JobContext
from pc_coordinator.streams import collect_blobs, send_blobs, subject_lists
from pc_coordinator.verify_compare import Outbox, _read_blob, _read_done
from pc_node.secure_agg import query_paillier as qp
from pc_node.secure_agg import query_release as qr
from pc_node.secure_agg.backend import get_backend
from pc_node.secure_agg.gc import ComparisonGarbler
from pc_rules.query import QueryPlan, parse_query
from pc_rules.query_catalog import check_disclosure, query_column_uses, validate_query

_RANK = {"none": 0, "predicate": 1, "group_by": 1.5, "aggregate": 2, "masked": 3, "plaintext": 4}



def _plan(doc: dict) -> tuple[job_kinds.QueryParams, QueryPlan]:
    p = job_kinds.params_of(doc, "query")
    return p, parse_query(p.sql)


def published_grant_check(plan: QueryPlan, p: job_kinds.QueryParams, requester: str, directory: Directory) -> None:
    """Refuse up front what the providers' published grants cannot allow (column uses, purpose)."""
    datasets = {(d.agency, d.name): d for d in directory.catalog().datasets}
    for agency in plan.providers():
        for ds, uses in query_column_uses(plan, agency).items():
            d = datasets[(agency, ds)]
            grants = [g for g in d.grants if g.requester == requester and p.purpose in g.purposes]
            if not grants:
                raise PermissionDenied(f"{agency}.{ds} publishes no grant for '{requester}' with purpose '{p.purpose}'")
            needed = {d.key_column: "join_key", **uses}

            def allows(g, col: str, use: str) -> bool:
                granted = g.column_uses.get(col, "none")
                if use == "join_key":
                    return granted in ("join_key", "plaintext")
                return granted != "join_key" and _RANK.get(granted, 0) >= _RANK[use]
            if not any(all(allows(g, c, u) for c, u in needed.items()) for g in grants):
                missing = sorted(f"{c} as {u}" for c, u in needed.items() if not any(allows(g, c, u) for g in grants))
                raise PermissionDenied(f"{agency}.{ds} does not grant '{requester}' the column use: "
                                       f"{', '.join(missing) or 'this combination'}")


def validate(doc: dict, directory: Directory) -> list[str]:
    """Check a query against the catalog and the published grants; its provider admits it."""
    p, plan = _plan(doc)
    view = catalog_view(directory.catalog())
    validate_query(plan, view, doc["requester"])
    published_grant_check(plan, p, doc["requester"], directory)
    # the published k and ε demands: refused here, before any admission round (the provider re-checks)
    check_disclosure(plan, view, doc["requester"], p.purpose, p.min_group_size, p.epsilon)
    providers = plan.providers()
    for a in providers + [doc["requester"]]:
        if not directory.node(a)["online"]:
            raise InvalidInput(f"node '{a}' is offline")
    return providers


def _decimal_sums(plan: QueryPlan, directory: Directory) -> tuple[str, ...]:
    if plan.join is None:
        return ()
    cols = catalog_view(directory.catalog()).get(plan.join.table.ref, {}).get("columns", {})
    return tuple(c for c in plan.sum_columns() if cols.get(c) == "decimal")


def run(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    p, plan = _plan(doc)
    requester = doc["requester"]
    providers = plan.providers()
    provider = plan.main_provider()
    try:
        admit_all(ctx, providers)
        timings["admit_s"] = time.perf_counter() - t0

        t = time.perf_counter()
        prep_done, blobs = collect_blobs(ctx, requester, [ctx.header("query.prepare", requester)])
        prepared: schema.QueryPrepared = schema.decode_result("query.prepare", prep_done)
        pubctx, layout_bytes, lists = subject_lists(blobs, providers)
        layout = np.frombuffer(layout_bytes, dtype="<u4").astype(np.int64)
        n_slots, n_groups = len(layout), prepared.groups
        if n_slots != p.subjects or n_groups != p.groups or not n_slots or int(layout.max()) >= n_groups:
            raise InvalidInput("the requester's layout does not match the job")
        sizes = np.bincount(layout, minlength=n_groups)
        if sizes.min() < 1 or sizes.max() > qr.MAX_GROUP_ROWS:
            raise InvalidInput(f"every group needs 1 to {qr.MAX_GROUP_ROWS} rows")
        scheme = plan.he_scheme()
        backend = get_backend(scheme)
        pub = backend.load_public(pubctx)
        timings["prepare_s"] = time.perf_counter() - t

        t = time.perf_counter()
        msgs = [ctx.header("query.evaluate", requester)]
        ev_done, ev_blobs = collect_blobs(ctx, provider, send_blobs(msgs, lists[provider]))
        evaluated: schema.QueryEvaluated = schema.decode_result("query.evaluate", ev_done)
        names = plan.vectors()
        if evaluated.aggregates != names or evaluated.subjects != n_slots:
            raise InvalidInput(f"provider '{provider}' answered other aggregates than the query's")
        cats = evaluated.categories
        if bool(cats) != bool(plan.provider_group) or len(cats) > 64 or len(set(cats)) != len(cats):
            raise InvalidInput(f"provider '{provider}' answered no valid categories for the query's GROUP BY")
        # A provider GROUP BY: slot s of category c at c·n + s; group g of category c is c·groups + g.
        reps = max(len(cats), 1)
        layout = np.concatenate([layout + c * n_groups for c in range(reps)])
        n_groups *= reps
        packs = qp.pack_names(names, qp.digits_per_pack(pub)) if scheme == "paillier" else []
        # what the main provider answers: one stream per vector (BFV) or per pack (Paillier)
        parts = list(names) if scheme == "bfv" else [qp.pack_stream(k) for k in range(len(packs))]
        streams = [schema.ciphertext_stream(part) for part in parts]
        cvs = _load_answer(provider, ev_blobs, streams, backend, pub, n_slots * reps)
        timings["evaluate_s"] = time.perf_counter() - t
        for agency in plan.indicator_providers():     # each keeps the answer where its semi-joins hold
            t = time.perf_counter()
            cvs = _select_at(ctx, agency, requester, lists[agency], backend, pub, packs, streams, cvs, names,
                             n_slots)
            timings[f"select_{agency}_s"] = time.perf_counter() - t
        cvs = dict(zip(streams, cvs))

        t = time.perf_counter()
        t_mod = pub.plaintext_modulus if scheme == "bfv" else qp.DIGIT_MOD
        noise = _dp_noise(p, evaluated, ev_blobs, backend, pub, names, plan.noise_parties(), n_groups, len(cats),
                          parts)
        if noise is None:
            tp = qr.threshold_plan(p.min_group_size, int(sizes.max()), t_mod)
        else:
            tp = qr.dp_threshold_plan(p.min_group_size, int(sizes.max()), t_mod, noise.shift)
        if scheme == "bfv":
            cm = qr.mask(backend, tp, cvs[streams[0]], [cvs[s] for s in streams], layout, n_groups, noise)
            # in the order query.release reads them: each vector, then (DP) its masked noise
            masked = []
            for j, (name, cv) in enumerate(zip(("threshold",) + names, [cm.masked_subjects, *cm.masked_aggregates])):
                masked.append((schema.masked_stream(name), cv))
                if noise is not None:
                    masked.append((schema.masked_stream("noise:" + name), cm.masked_noise[j]))
        else:
            cm = qp.mask(backend, tp, packs, names,
                         [cvs[s] for s in streams], layout, n_groups, None if noise is None else noise.provider,
                         None if noise is None else noise.coordinator, 0 if noise is None else noise.shift)
            masked = [(schema.masked_stream(qp.pack_stream(k)), cv) for k, cv in enumerate(cm.masked)]
        del cvs, ev_blobs, noise
        timings["mask_s"] = time.perf_counter() - t

        t = time.perf_counter()
        released = _release(ctx, requester, tp, cm.garbler_input, cm.pads, t_mod, masked, names, n_groups,
                            _decimal_sums(plan, ctx.runner.directory), doc["job_id"].encode(), timings, cats,
                            _column_type(plan, ctx.runner.directory))
        if released.groups != n_groups:
            raise InvalidInput("the requester's release does not match the job")
        timings["release_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        ctx.progress("finish", requester, n_slots, n_slots)
        ctx.jobs.record(ctx.job_id, summary={
            "subjects": n_slots, "groups": n_groups, **({"categories": len(cats)} if cats else {}),
            "providers": providers, "he": scheme,
            "min_group_size": p.min_group_size, **({"epsilon": p.epsilon} if p.epsilon else {}),
            **{k: round(v, 3) for k, v in timings.items()}},
            leakage=leakage_report(plan, requester, provider, n_slots, n_groups, p.min_group_size, tp, p.epsilon,
                                   len(cats)))
    finally:
        ctx.cleanup([requester] + providers)


def _load_answer(agency: str, blobs: dict[str, bytes], streams: list[str], backend, pub, length: int) -> list:
    """A provider's answer streams as ciphertexts, each present and of the job's length."""
    missing = [name for name in streams if name not in blobs]
    if missing:
        raise InvalidInput(f"provider '{agency}' did not send {', '.join(missing)}")
    cvs = [backend.load_ciphertext(pub, blobs[name]) for name in streams]
    if any(cv.length != length for cv in cvs):
        raise InvalidInput(f"provider '{agency}' answered another number of slots")
    return cvs


def _select_at(ctx: JobContext, agency: str, requester: str, streams_in: dict, backend, pub, packs, streams,
               cvs: list, names, n_slots: int) -> list:
    """A further agency's selection of the answer so far, between this coordinator's masks: it
    never holds the main provider's ciphertexts unmasked (``query_paillier.mask_for_selection``)."""
    masked, masks = qp.mask_for_selection(backend, packs, cvs)
    done_msg, blobs = collect_blobs(ctx, agency, send_blobs(
        [ctx.header("query.evaluate", requester)],
        {**streams_in, **{s: cv.serialize() for s, cv in zip(streams, masked)}}))
    answer: schema.QueryEvaluated = schema.decode_result("query.evaluate", done_msg)
    if answer.aggregates != names or answer.subjects != n_slots or answer.categories:
        raise InvalidInput(f"provider '{agency}' answered other aggregates than the query's")
    selected = _load_answer(agency, blobs, streams, backend, pub, cvs[0].length)
    kept = _load_answer(agency, blobs, [schema.ciphertext_stream(qp.KEPT)], backend, pub, n_slots)[0]
    return qp.unmask_selection(backend, selected, kept, masks)


def _column_type(plan: QueryPlan, directory: Directory) -> str:
    if not plan.provider_group:
        return "text"
    return catalog_view(directory.catalog()).get(plan.join.table.ref, {}).get("columns", {}).get(
        plan.provider_group, "text")


def _dp_noise(p, evaluated, blobs: dict, backend, pub, names, parties: int, n_groups: int, n_categories: int,
              parts: list[str] | None = None):
    """DP: the provider's encrypted noise shares (``ct:noise:<part>`` per vector, or per pack under
    Paillier; ``parts`` default to the vectors), checked, and the coordinator's own (docs/query.md)."""
    if not p.epsilon:
        return None
    try:
        scales = [float(x) for x in evaluated.noise_scales]
    except ValueError:
        scales = []
    if len(scales) != len(names) or not all(0 < s < 1e15 for s in scales):
        raise InvalidInput("the provider answered no noise scales for this differentially private query")
    if abs(scales[0] - qr.dp_subject_scale(p.epsilon, len(names), n_categories)) > 1e-9 * scales[0]:
        raise InvalidInput("the provider's noise scale of the distinct-subject count is not the signed epsilon's")
    provider = []
    for part in parts or names:
        blob = blobs.get(schema.ciphertext_stream("noise:" + part))
        cv = backend.load_ciphertext(pub, blob) if blob is not None else None
        if cv is None or cv.length != n_groups:
            raise InvalidInput(f"the provider's noise shares of '{part}' do not match the job's groups")
        provider.append(cv)
    return qr.DpNoise(provider, qr.coordinator_shares(scales, parties, n_groups),
                      qr.dp_shift(p.epsilon, len(names), parties, n_categories))


def _release(ctx: JobContext, requester: str, tp, garbler_input, pads, t_mod: int, masked: list, names,
             n_groups: int, decimal_sums, context: bytes, timings: dict, cats: tuple[str, ...] = (),
             category_type: str = "text") -> schema.QueryReleased:
    garbler = ComparisonGarbler(tp.spec, [garbler_input])
    out = Outbox()
    out.put([ctx.header("query.release", requester, schema.QueryReleaseParams(
        groups=n_groups, aggregates=tuple(names), decimal_sums=tuple(decimal_sums), categories=tuple(cats),
        category_type=category_type))])
    for stream, cv in masked:
        out.put(blob_chunks(stream, cv.serialize()))
    try:
        answers = iter(ctx.step(requester, out))
        m1 = _read_blob(ctx, requester, answers, schema.gc_stream(1), 1 << 16)
        out.put(blob_chunks(schema.gc_stream(2), garbler.respond(m1)))
        m3 = _read_blob(ctx, requester, answers, schema.gc_stream(3), MAX_BLOB)
        ctx.check_cancelled()
        tg = time.perf_counter()
        out.put(blob_chunks(schema.gc_stream(4), garbler.garble(m3)))
        out.put(blob_chunks("release", qr.release_message(garbler, pads, context, t_mod)))
        timings["garble_s"] = time.perf_counter() - tg
        out.close()
        return schema.decode_result("query.release", _read_done(ctx, requester, answers))
    finally:
        out.close()


def leakage_report(plan: QueryPlan, requester: str, provider: str, n: int, groups: int, k: int, tp,
                   epsilon: float = 0.0, n_categories: int = 0) -> dict:
    aggs = len(plan.vectors())
    paillier = plan.he_scheme() == "paillier"
    key = "Paillier" if paillier else "BFV"
    asked = [f"the {n} identifiers it was asked about (the requester's rows after its WHERE), in random order",
             f"the SQL text of the query, its purpose and minimum group size {k}"]
    report = {
        "coordinator": [
            f"sizes: {n} requester rows in {groups} opaque groups and each group's row count",
            (f"which providers took part ({', '.join(plan.providers())}) and how long each step took"),
            (f"only ciphertexts under the requester's one-job {key} key and sealed lists it cannot open; no identifier,"
             " group value, count, aggregate or suppression bit"),
            (f"its own masks and pads and the garbled circuit of {groups} comparisons [distinct subjects < {k}]"
             f" ({tp.plan.mode} mode, l={tp.plan.bits}); the requester's OT messages hide its inputs"),
        ],
        requester: [
            f"per group ({groups}): whether it was released (at least {k} distinct subjects) and, if released, "
            "its aggregates — exactly the group totals; suppressed groups' counts and aggregates stay masked",
            (f"per group one re-randomised Paillier ciphertext per pack of its {aggs + 1} values, each value"
             " statistically masked (κ = 40), unmasked only for released groups" if paillier else
             f"{n * (aggs + 1)} BFV slot values, one-time-padded mod t; per group the threshold count statistically "
             "masked (κ = 40) or padded mod t, and the aggregates padded mod t, unpadded only for released groups"),
            "garbled-circuit labels and tables, which reveal only the suppression bits",
        ],
        provider: asked + ["nothing about groups, group values or results"],
    }
    for other in plan.indicator_providers():
        report[other] = asked + [
            (f"nothing about groups, group values, results or {provider}'s answers: it kept {provider}'s encrypted"
             " answer where its own semi-joins hold and put an encryption of zero elsewhere, each re-randomised, so"
             " neither the coordinator nor the requester can tell which")]
        if epsilon:
            report[other].append(f"epsilon {epsilon:g} charged to '{requester}' in its ledger (it adds no noise share)")
    if plan.indicator_providers():
        for agency in plan.providers():
            report[agency].append("its grant names the other agencies of this query in query_with: nothing proves that"
                                  " they answer as the protocol asks, so it trusts them not to answer falsely together"
                                  " with the requester")
    if n_categories:
        report["coordinator"].append(f"the {n_categories} declared categories of {plan.join.table.ref}"
                                     f".{plan.provider_group} (catalog metadata; groups = requester groups × these)")
    if epsilon:
        report["coordinator"].append(f"its own noise shares (it never learns the total noise); epsilon {epsilon:g}")
        report[requester][0] = (f"per group ({groups}): whether its noisy distinct-subject count reached {k} and, if"
                                f" released, its aggregates with discrete Laplace noise — epsilon {epsilon:g} spent,"
                                " split evenly over the aggregates; it knows none of the noise")
        report[provider].append(f"its own noise shares; epsilon {epsilon:g} charged to '{requester}' in its ledger")
        report["epsilon_spent"] = f"{epsilon:g} (discrete Laplace, distributed over {provider} and the coordinator)"
    return report
