"""Eligibility verification at the coordinator: validate, relay, aggregate, blind.

The coordinator handles only ciphertexts under the requester's per-job key, sealed
envelopes it cannot open, and the slot→group layout (household sizes, no identifiers).
It never holds a secret key: it uses only the public side of the HE engine, through the
backend interface (``HeBackend``: sums, group sums where the scheme allows, blinding).
"""
from __future__ import annotations

import secrets
import time
from concurrent import futures

import numpy as np

from pc_common import job_kinds
from pc_common import steps_schema as schema
from pc_common.catalog import catalog_view
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.wire import MAX_GROUP, MAX_VALUE_CENTS as MAX_SUBJECT_VALUE
from pc_rules.rules import Rule, validate_against_catalog
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.runner import JobContext
from pc_coordinator.streams import collect_blobs, send_blobs
from pc_node.secure_agg import blinding
from pc_node.secure_agg.backend import HeBackend, get_backend

_rng = secrets.SystemRandom()


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
    if rule.requester != doc["requester"]:
        raise PermissionDenied("the rule's requester differs from the job's requester")
    validate_against_catalog(rule, catalog_view(directory.catalog()))
    published_grant_check(rule, directory)
    providers = rule.providers()
    if rule.requester in providers:
        raise InvalidInput(f"a criterion reads the requester's own data ({rule.requester}); verify it locally"
                           " instead of through the federation")
    for p in providers + [rule.requester]:
        if not directory.node(p)["online"]:
            raise InvalidInput(f"node '{p}' is offline")
    return providers


def _tests(rule: Rule, sizes: np.ndarray):
    """Per criterion: ('zero', None) or ('lt'|'gt', thresholds per group)."""
    out = []
    for c in rule.criteria:
        if c.type == "none_exists":
            out.append((c.name, "zero", None))
        elif c.type == "exists":
            out.append((c.name, "gt", [0] * len(sizes)))
        elif c.type == "count_at_most":
            out.append((c.name, "lt", [c.max + 1] * len(sizes)))
        else:
            out.append((c.name, "lt", [c.threshold_cents(int(s)) for s in sizes]))
    return out


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
        pubctx, layout_bytes = blobs.pop("pubctx"), blobs.pop("layout")
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
            return collect_blobs(ctx, p, send_blobs(msgs, {"pubctx": pubctx, "sealed": blobs[schema.sealed_stream(p)],
                                                           "binding": blobs[schema.binding_stream(p)]}))
        with futures.ThreadPoolExecutor(max_workers=max(1, len(providers))) as pool:
            results = dict(zip(providers, pool.map(evaluate, providers)))
        timings["evaluate_s"] = time.perf_counter() - t

        # 3. per criterion: sum over providers, then per group.
        t = time.perf_counter()
        per_slot = {}
        for c in rule.criteria:
            stream = schema.ciphertext_stream(c.name)
            parts = [backend.load_ciphertext(pub, res[1][stream]) for res in results.values() if stream in res[1]]
            if not parts:
                raise InvalidInput(f"no provider returned criterion '{c.name}'")
            per_slot[c.name] = backend.sum(parts)
        if backend.supports_group_sum:
            grouped = {name: backend.group_sum(cv, layout, n_groups) for name, cv in per_slot.items()}
        else:   # batched values (BFV): regrouped by the key holder under one-time masks
            grouped = _regroup_via_requester(ctx, backend, pub, per_slot, layout, n_groups, requester)
        timings["aggregate_s"] = time.perf_counter() - t

        # 4. blind, fold and shuffle per reveal mode.
        t = time.perf_counter()
        # |T − S| <= |T| + |S|; S sums at most MAX_GROUP members, each bounded per criterion by providers.
        max_t = max([c.threshold_cents(MAX_GROUP) for c in rule.criteria if c.type == "sum_below"]
                    + [c.max + 1 for c in rule.criteria if c.type == "count_at_most"] + [0])
        n_providers = max(1, max(len(c.agencies()) for c in rule.criteria))
        value_bound = MAX_GROUP * MAX_SUBJECT_VALUE * n_providers + abs(max_t)
        tests = _tests(rule, sizes)
        outputs, meta = [], []     # meta: (test, criterion or "") per output, see FinishParams
        if rule.reveal == "reasons":
            for name, kind, thr in tests:
                if kind == "zero":
                    outputs.append(blinding.zero_test(pub, grouped[name], _rng))
                    meta.append(("zero", name))
                else:
                    fn = blinding.less_than if kind == "lt" else blinding.greater_than
                    outputs.append(fn(pub, grouped[name], thr, value_bound, _rng))
                    meta.append(("positive", name))
        else:
            zeros = [grouped[n] for n, k, _ in tests if k == "zero"]
            comps = [blinding.Comparison(grouped[n], thr, k) for n, k, thr in tests if k != "zero"]
            if zeros:
                outputs.append(blinding.fold_zero_tests(pub, zeros, MAX_GROUP * MAX_SUBJECT_VALUE, _rng))
                meta.append(("zero", ""))
            if comps:
                for cv in blinding.shuffle_comparisons(pub, comps, value_bound, _rng):
                    outputs.append(cv)
                    meta.append(("positive", ""))
        rho_k = blinding.rho_bits(pub, value_bound)
        blur = blinding.blur_window_bits(pub, value_bound)
        timings["blind_s"] = time.perf_counter() - t

        # 5. requester decrypts and writes the verdicts.
        t = time.perf_counter()
        finish = schema.FinishParams(tests=tuple(t for t, _ in meta), criteria=tuple(c for _, c in meta))
        msgs = [ctx.header("verify.finish", requester, finish)]
        collect_blobs(ctx, requester, send_blobs(msgs, {schema.output_stream(i): cv.serialize()
                                                        for i, cv in enumerate(outputs)}))
        timings["finish_s"] = time.perf_counter() - t
        timings["total_s"] = time.perf_counter() - t0
        ctx.progress("finish", requester, n_slots, n_slots)
        ctx.jobs.record(ctx.job_id, summary={
            "subjects": n_slots, "groups": n_groups, "providers": providers, "he": backend.name,
            "reveal": rule.reveal, "rule": rule.id, **{k: round(v, 3) for k, v in timings.items()}},
            leakage=leakage_report(rule, providers, n_slots, n_groups, backend, rho_k, blur))
    finally:
        ctx.cleanup([requester] + providers)


def _regroup_via_requester(ctx, backend: HeBackend, pub, per_slot: dict, layout, n_groups: int,
                           requester: str) -> dict:
    """BFV group sums without rotations: mask per slot with uniform noise, let the requester
    add up per group (it sees only v + r mod t, a one-time pad), remove the masks' sums."""
    m = pub.plaintext_modulus
    half = m // 2
    masked, mask_sums = {}, {}
    for name, cv in per_slot.items():
        r = [_rng.randrange(0, m) for _ in range(len(layout))]
        masked[name] = backend.add_plain(cv, [x - m if x > half else x for x in r]).serialize()
        sums = [0] * n_groups
        for slot, x in enumerate(r):
            g = int(layout[slot])
            sums[g] = (sums[g] + x) % m
        mask_sums[name] = [(-s) % m for s in sums]
    names = list(per_slot)
    msgs = [ctx.header("verify.regroup", requester, schema.RegroupParams(criteria=tuple(names)))]
    _, blobs = collect_blobs(ctx, requester, send_blobs(msgs, {schema.masked_stream(n): masked[n] for n in names}))
    out = {}
    for name in names:
        cv = backend.load_ciphertext(pub, blobs[schema.grouped_stream(name)])
        out[name] = backend.add_plain(cv, [x - m if x > half else x for x in mask_sums[name]])
    return out


def leakage_report(rule: Rule, providers: list[str], n: int, groups: int, backend: HeBackend, rho_k: int,
                   blur: int) -> dict:
    he = backend.name
    report = {
        "coordinator": [
            f"sizes: {n} subjects in {groups} groups, and the household size of each opaque group number",
            f"which providers took part ({', '.join(providers)}) and how long each step took",
            f"only ciphertexts under the requester's one-job {he.upper()} key and sealed envelopes it cannot open;"
            " no identifier, value, count or verdict",
        ],
        rule.requester: [
            "per group the verdict (eligible or not)",
        ],
    }
    if rule.reveal == "reasons":
        report[rule.requester].append("per group which criteria failed (reasons mode)")
    else:
        report[rule.requester].append(
            "per group the number of failed comparison criteria, in shuffled order; a failed zero test "
            "(none_exists) is folded into one bit")
    report[rule.requester].append(
        f"each comparison decrypts to ρ·(T−S)−ρ′ with ρ log-uniform in [2^7, 2^{rho_k}) and 1 ≤ ρ′ < ρ: "
        f"its sign is the answer; its magnitude leaks log2|T−S| only to within a window of {blur} bits")
    if not backend.supports_group_sum:
        report[rule.requester].append("per-slot values masked by uniform noise mod t during regrouping (nothing)")
    for p in providers:
        crit = [c.name for c in rule.criteria if p in c.agencies()]
        report[p] = [
            f"the {n} identifiers it was asked about, in random order with opaque slots",
            f"the rule id '{rule.id}', purpose '{rule.purpose}' and its own criteria ({', '.join(crit)})",
            "nothing about groups, other agencies' criteria or outcomes",
        ]
    return report
