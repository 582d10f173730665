"""Eligibility verification at the coordinator: validate, relay, aggregate, mask, garble.

The coordinator handles only ciphertexts under the requester's per-job key, sealed
envelopes it cannot open, and the slot→group layout (household sizes, no identifiers).
It never holds a secret key: it uses only the public side of the HE engine, through the
backend interface (``HeBackend``: sums, group sums where the scheme allows, plaintext
additions, re-randomisation), and the garbler's side of the comparison
(``pc_coordinator.verify_compare``). It sees no verdict.
"""
from __future__ import annotations

import time
from concurrent import futures

import numpy as np

from pc_common import job_kinds
from pc_common import steps_schema as schema
from pc_common.catalog import catalog_view
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.wire import MAX_GROUP
from pc_rules.rules import Rule, validate_against_catalog
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.limits import check_verification_size
from pc_coordinator.runner import JobContext
from pc_coordinator.streams import collect_blobs, send_blobs, subject_lists
from pc_coordinator.verify_compare import mask_all, run_compare
from pc_node.secure_agg import verdict
from pc_node.secure_agg.backend import HeBackend, get_backend


def published_grant_check(rule: Rule, directory: Directory) -> None:
    """Refuse up front what a provider's published policy summary cannot allow."""
    datasets = {f"{d.agency}.{d.name}": d for d in directory.catalog().datasets}
    for c in rule.criteria:
        for ref in c.datasets():
            ds = datasets[ref]
            grants = [g for g in ds.grants if g.requester == rule.requester]
            if not grants:
                raise PermissionDenied(f"criterion '{c.name}': {ref} publishes no grant for '{rule.requester}'")
            if not any(rule.purpose in g.purposes for g in grants):
                raise PermissionDenied(f"criterion '{c.name}': {ref} does not grant purpose '{rule.purpose}'")
            if rule.reveal == "reasons" and not any(g.reveal == "reasons" and rule.purpose in g.purposes
                                                   for g in grants):
                raise PermissionDenied(f"criterion '{c.name}': {ref} allows reveal 'verdict' only")


def validate(doc: dict, directory: Directory) -> list[str]:
    """Check a verification against the catalog and published grants; its providers admit it."""
    rule = Rule.from_dict(job_kinds.params_of(doc, "verify").rule, "job spec")
    check_verification_size(len(rule.criteria), job_kinds.params_of(doc, "verify").groups)
    if rule.requester != doc["requester"]:
        raise PermissionDenied("the rule's requester differs from the job's requester")
    validate_against_catalog(rule, catalog_view(directory.catalog()))
    for c in rule.criteria:
        verdict.check_criterion(c)
    published_grant_check(rule, directory)
    providers = rule.providers()
    if rule.requester in providers:
        raise InvalidInput(f"a criterion reads the requester's own data ({rule.requester}); verify it locally"
                           " instead of through the federation")
    for p in providers + [rule.requester]:
        if not directory.node(p)["online"]:
            raise InvalidInput(f"node '{p}' is offline")
    return providers


def run(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    params = job_kinds.params_of(doc, "verify")
    rule = Rule.from_dict(params.rule, "job spec")
    requester = doc["requester"]
    providers = rule.providers()
    try:
        admit_all(ctx, providers)
        timings["admit_s"] = time.perf_counter() - t0

        # 1. requester: key pair, slots, sealed lists, layout.
        t = time.perf_counter()
        prep_done, blobs = collect_blobs(ctx, requester, [ctx.header("verify.prepare", requester)])
        prepared: schema.VerifyPrepared = schema.decode_result("verify.prepare", prep_done)
        pubctx, layout_bytes, lists = subject_lists(blobs, providers)
        layout = np.frombuffer(layout_bytes, dtype="<u4")
        n_slots, n_groups = len(layout), prepared.groups
        if n_slots != params.subjects or (n_slots and int(layout.max()) >= n_groups):
            raise InvalidInput("the requester's layout does not match the job")
        sizes = np.bincount(layout, minlength=n_groups)
        if sizes.max(initial=0) > MAX_GROUP:
            raise InvalidInput(f"a group has more than {MAX_GROUP} members")
        backend = get_backend(prepared.he)
        pub = backend.load_public(pubctx)
        ctx.progress("prepare", requester, n_slots, n_slots)
        timings["prepare_s"] = time.perf_counter() - t

        # 2. providers evaluate in parallel, each on its own sealed list.
        t = time.perf_counter()

        def evaluate(p: str):
            msgs = [ctx.header("verify.evaluate", requester)]
            return collect_blobs(ctx, p, send_blobs(msgs, lists[p]))
        with futures.ThreadPoolExecutor(max_workers=max(1, len(providers))) as pool:
            results = dict(zip(providers, pool.map(evaluate, providers)))
        timings["evaluate_s"] = time.perf_counter() - t

        # 3. per criterion: sum over providers (per slot).
        t = time.perf_counter()
        per_slot = {}
        for c in rule.criteria:
            stream = schema.ciphertext_stream(c.name)
            parts = [backend.load_ciphertext(pub, res[1][stream]) for res in results.values() if stream in res[1]]
            if not parts:
                raise InvalidInput(f"no provider returned criterion '{c.name}'")
            per_slot[c.name] = backend.sum(parts)
        del results
        timings["aggregate_s"] = time.perf_counter() - t
        if n_groups < 1:
            raise InvalidInput("the job has no subjects")

        # 4. mask: plaintext additions only (BFV per slot; Paillier per group, re-randomised).
        t = time.perf_counter()
        plans, masked, g_inputs = mask_all(backend, rule, per_slot, layout, sizes, n_groups)
        del per_slot
        timings["mask_s"] = time.perf_counter() - t

        # 5. the requester decrypts masked values, the garbled-circuit comparison gives it one bit
        #    per household (or per criterion) and it writes the verdicts; we learn none of them.
        t = time.perf_counter()
        answer = run_compare(ctx, requester, rule, plans, masked, g_inputs, n_groups, timings)
        if answer.rows != n_slots:
            raise InvalidInput("the requester's results do not match the job")
        timings["compare_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        ctx.progress("finish", requester, n_slots, n_slots)
        ctx.jobs.record(ctx.job_id, summary={
            "subjects": n_slots, "groups": n_groups, "providers": providers, "he": backend.name,
            "reveal": rule.reveal, "rule": rule.id, **{k: round(v, 3) for k, v in timings.items()}},
            leakage=leakage_report(rule, providers, n_slots, n_groups, backend, plans))
    finally:
        ctx.cleanup([requester] + providers)


def leakage_report(rule: Rule, providers: list[str], n: int, groups: int, backend: HeBackend,
                   plans: list) -> dict:
    """What each party decrypted or saw in this job, with its numbers."""
    he = backend.name
    k = len(rule.criteria)
    modes = ", ".join(f"{p.name}: {p.mode} l={p.bits}" for p in plans)
    if rule.reveal == "reasons":
        bits = f"{groups * k} output bits: per group ({groups}) and criterion ({k}) whether it passed (reasons mode)"
    else:
        bits = f"{groups} output bits: per group ({groups}) the verdict, eligible or not (verdict mode)"
    if backend.supports_group_sum:
        decrypted = (f"{groups * k} Paillier decryptions ({groups} groups × {k} criteria): each a group sum plus an "
                     "offset and a mask r uniform in [0, 2^(l+40)) (statistical masking, κ = 40: within 2^−39 of a "
                     "value independent of the sum), re-randomised by a fresh rⁿ")
    else:
        decrypted = (f"{n * k} BFV slot values ({n} slots × {k} criteria), each one-time-padded by a mask uniform "
                     "mod t (their per-group sums are the masked group values); no ciphertext it decrypts was "
                     "multiplied by another party's secret, and it encrypts nothing after prepare")
    report = {
        "coordinator": [
            f"sizes: {n} subjects in {groups} groups, and the household size of each opaque group number",
            f"which providers took part ({', '.join(providers)}) and how long each step took",
            (f"only ciphertexts under the requester's one-job {he.upper()} key and sealed envelopes it cannot open;"
             " no identifier, value, count or verdict"),
            (f"its own masks and garbled circuit ({k} comparisons: {modes}) and the requester's OT messages,"
             " which hide the requester's inputs; no output bit"),
        ],
        rule.requester: [
            bits + "; nothing else",
            decrypted,
            ("garbled-circuit labels (one per wire, never both) and the tables of the comparison circuit, "
             "which reveal only the output bits"),
        ],
    }
    for p in providers:
        crit = [c.name for c in rule.criteria if p in c.agencies()]
        report[p] = [
            f"the {n} identifiers it was asked about, in random order with opaque slots",
            f"the rule id '{rule.id}', purpose '{rule.purpose}' and its own criteria ({', '.join(crit)})",
            "nothing about groups, other agencies' criteria or outcomes",
        ]
    return report
