"""Query-private lookups (匿踪查询) at the coordinator: validate, ship the filter, relay.

The provider's OPRF filter goes to the requester (a snapshot, or deltas since the version the
requester holds), sealed to the requester node; the requester's blinded identifiers, with its
SM2 binding of their count and digests to the job, go to the provider, and the answers come
back sealed to the requester, chunk by chunk. The coordinator sees sizes, envelopes it cannot
open and blinded points it cannot add to: the provider evaluates only what the requester signed,
once per job.
"""
from __future__ import annotations

import itertools
import time

from pc_common import steps_schema as schema
from pc_common.errors import InvalidInput, PcError
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.psi_jobs import job_params
from pc_coordinator.runner import JobContext
from pc_coordinator.streams import Relay, collect_blobs, raise_first, send_blobs


def validate(doc: dict, directory: Directory) -> list[str]:
    """Check a lookup against the catalog (dataset, label columns); its provider admits it."""
    p = job_params(doc, "lookup")
    agency, ds = p.provider
    d = next((d for d in directory.catalog().datasets if d.agency == agency and d.name == ds), None)
    if d is None:
        raise InvalidInput(f"the catalog has no dataset '{agency}.{ds}'")
    if not directory.node(agency)["online"]:
        raise InvalidInput(f"node '{agency}' is offline")
    for col in p.labels:
        if col not in {c.name for c in d.columns}:
            raise InvalidInput(f"{agency}.{ds} has no column '{col}'")
    return p.providers()


def run(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    params = job_params(doc, "lookup")
    requester, provider = doc["requester"], params.provider[0]
    relays: list[Relay] = []
    try:
        admit_all(ctx, [provider])
        held = schema.decode_result("lookup.status", collect_blobs(
            ctx, requester, [ctx.header("lookup.status", requester)])[0])
        t_filter = time.perf_counter()
        fdone, fblobs = collect_blobs(ctx, provider, [ctx.header("lookup.filter", requester, held)])
        filter_kind = schema.decode_result("lookup.filter", fdone).kind
        filter_bytes = fblobs.get(filter_kind, b"")
        t_online = time.perf_counter()
        blind_src = ctx.step(requester, send_blobs(
            [ctx.header("lookup.blind", requester, schema.BlindParams(kind=filter_kind))], {filter_kind: filter_bytes}))
        to_provider = Relay(ctx, requester, blind_src, {"binding": "binding", "blinded": "in"})
        answers = Relay(ctx, provider, ctx.step(provider, itertools.chain(
            [ctx.header("lookup.evaluate", requester)], to_provider)), {"out": "answers"})
        relays += [to_provider, answers]
        try:
            collect_blobs(ctx, requester, itertools.chain([ctx.header("lookup.finish", requester)], answers))
        except PcError as exc:
            raise_first(relays, exc)
        online = time.perf_counter() - t_online
        queried = answers.count         # points in the answers the requester accepted (sealed chunks)
        ctx.jobs.record(ctx.job_id, summary={
            "queried": queried, "filter": filter_kind, "filter_bytes": len(filter_bytes),
            "filter_s": round(t_online - t_filter, 3), "online_s": round(online, 3),
            "total_s": round(time.perf_counter() - t0, 3)},
            leakage={
                requester: ["for each of its own identifiers whether it is in the provider's dataset"
                            + (" and the granted label columns of matches" if params.labels else ""),
                            "the provider dataset's size and, through deltas, how many rows changed"],
                provider: [f"how many identifiers were asked ({queried}) and when; never which"],
                "coordinator": [f"sizes only: {queried} blinded points, a {len(filter_bytes)}-byte sealed filter"
                                f" ({filter_kind}) and {queried} sealed answers, which it cannot open"]})
    finally:
        ctx.cleanup([requester, provider])
