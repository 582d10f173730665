"""PSI jobs at the coordinator: two-party PSI, PSI-CA and k-party PSI, streamed.

The coordinator computes the job's plan (``pc_common.psi_plan``, the same one every node
computes from the signed spec) and relays chunk by chunk from one node's stream into the
next node's stream (bounded memory, flow control end to end). It holds no key and combines
nothing: what it relays is either blinded group elements for the next hop (each under a
different set of keys it does not hold, so no two streams can be compared) or envelopes
sealed to the recipient node. It learns the set sizes (stream lengths) and timings; the
intersection and its size are computed and kept at the requester's node.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Iterable

from pc_common import job_kinds
from pc_common.errors import InvalidInput, PcError, PermissionDenied
from pc_common.pb import node_pb2
from pc_common.psi_plan import Chain, chain_id, plan
from pc_common.steps_schema import HopParams
from pc_coordinator import psi_kkrt
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.runner import JobContext
from pc_coordinator.streams import Relay, raise_first

CHUNK_POINTS = 16384


def job_params(doc: dict, kind: str = "psi"):
    """The job's typed parameters; the first dataset must be the requester's (PSI and lookups)."""
    p = job_kinds.params_of(doc, kind)
    if p.datasets[0][0] != doc["requester"]:
        raise PermissionDenied("the first dataset must belong to the requester")
    return p


def validate(doc: dict, directory: Directory) -> list[str]:
    """Check a PSI job against the catalog and published grants; its providers admit it."""
    p = job_params(doc)
    catalog = {(d.agency, d.name): d for d in directory.catalog().datasets}
    for agency, ds in p.datasets:
        d = catalog.get((agency, ds))
        if d is None:
            raise InvalidInput(f"the catalog has no dataset '{agency}.{ds}'")
        if not directory.node(agency)["online"]:
            raise InvalidInput(f"node '{agency}' is offline")
        if agency == doc["requester"]:
            continue
        grants = [g for g in d.grants if g.requester == doc["requester"] and doc["purpose"] in g.purposes]
        if not grants:
            raise PermissionDenied(f"{agency}.{ds} publishes no grant for '{doc['requester']}' with purpose "
                                   f"'{doc['purpose']}'")
        if not any(g.column_uses.get(d.key_column) in ("join_key", "plaintext") for g in grants):
            raise PermissionDenied(f"{agency}.{ds} does not allow its key column as a join key")
    return p.providers()


def _chain(ctx: JobContext, source_node: str, source, chain: Chain, label: str):
    """A stream passed through each hop of ``chain`` in turn; returns (last hop's answer, relays)."""
    relays = []
    current, current_node = source, source_node
    for hop in chain.hops:
        r = Relay(ctx, current_node, current, {"out": "in", "binding": "binding"})
        relays.append(r)
        head = ctx.header("psi.hop", ctx.requester, HopParams(shuffle=hop.shuffle, label=label, chain=chain.id))
        current = ctx.step(hop.node, itertools.chain([head], r))
        current_node = hop.node
    return current, relays


def _sealed_answer(ctx: JobContext, node: str, answers: Iterable[node_pb2.StepMessage], stream: str):
    """A step's answer whose only stream is sealed: its chunks kept as they are (one envelope
    each, to be relayed unopened) and the done message."""
    kept, done = [], None
    for msg in answers:
        kind = msg.WhichOneof("kind")
        if kind == "chunk":
            if msg.chunk.stream != stream:
                raise InvalidInput(f"node '{node}' sent an unexpected stream")
            kept.append(msg)
        elif kind == "progress":
            ctx.progress(msg.progress.step, node, msg.progress.done, msg.progress.total)
        elif kind == "done":
            done = msg.done
    if done is None:
        raise InvalidInput(f"node '{node}' ended the step without finishing it")
    return done, kept


def run(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    params = job_params(doc)
    requester = doc["requester"]
    providers = params.providers()
    ca = params.cardinality_only
    job_plan = plan(requester, providers, ca)
    relays: list[Relay] = []
    if params.engine == "kkrt":
        try:
            got = psi_kkrt.run(ctx, doc, params, t0)
            n_x, sizes, elapsed = got["n_x"], got["sizes"], got["elapsed"]
            ctx.jobs.record(ctx.job_id, summary={
                "requester_set": n_x, "provider_sets": sizes, "cardinality_only": False, "parties": 2,
                "protocol": "kkrt", "sealed_bytes": got["sealed_bytes"], "total_s": round(elapsed, 3),
                "items_per_s": round((n_x + sum(sizes.values())) / 2 / elapsed, 1) if elapsed else 0},
                leakage=leakage_report(requester, providers, n_x, sizes, False, False, kkrt=got["sealed_bytes"]))
        finally:
            ctx.cleanup([requester] + providers)
        return
    try:
        admit_all(ctx, providers)
        own_relays: dict[str, Relay] = {}
        if job_plan.combiner is not None:
            # Each provider's set through every other provider; the last hop seals it to the
            # combining provider, which seals the padded common rows to the requester.
            sets = []
            for owner in providers:
                chain = job_plan.chain(chain_id(owner))
                own = ctx.step(owner, [ctx.header("psi.own", requester)])
                final, rs = _chain(ctx, owner, own, chain, f"reencrypt:{owner}")
                own_relays[owner] = rs[0]
                relays += rs
                sets.append(Relay(ctx, chain.hops[-1].node, final, {"sealed": f"set:{owner}"}))
            relays += sets
            combined = ctx.step(job_plan.combiner,
                                itertools.chain([ctx.header("psi.combine", requester)], *sets))
            provider_stream = Relay(ctx, job_plan.combiner, combined, {"sealed": "provider"})
        else:
            own = ctx.step(providers[0], [ctx.header("psi.own", requester)])
            provider_stream = own_relays[providers[0]] = Relay(ctx, providers[0], own, {"sealed": "provider"})
        relays.append(provider_stream)
        # The requester's set through every provider (the last one shuffles for PSI-CA).
        rchain = job_plan.requester_chain
        blind = ctx.step(requester, [ctx.header("psi.blind", requester)])
        double_src, rs = _chain(ctx, requester, blind, rchain, "reencrypt")
        relays += rs
        from_requester = rs[0]             # counts the requester's blinded set
        double = Relay(ctx, rchain.hops[-1].node, double_src, {"sealed": "double"})
        relays.append(double)
        head = ctx.header("psi.finish", requester)
        try:
            _, bitmap = _sealed_answer(ctx, requester, ctx.step(requester, itertools.chain([head], double,
                                                                                           provider_stream)),
                                       "sealed")
        except PcError as exc:
            raise_first(relays, exc)
        if params.result_to_all:
            for msg in bitmap:
                msg.chunk.stream = "indices"      # sealed to the provider: relayed unopened
            _sealed_answer(ctx, providers[0], ctx.step(providers[0], itertools.chain(
                [ctx.header("psi.learn", requester)], bitmap)), "-")
        n_x = from_requester.count
        sizes = {p: own_relays[p].count for p in providers}
        elapsed = time.perf_counter() - t0
        ctx.jobs.record(ctx.job_id, summary={
            "requester_set": n_x, "provider_sets": sizes, "cardinality_only": ca, "parties": 1 + len(providers),
            "protocol": "ecdh", "total_s": round(elapsed, 3),
            "items_per_s": round((n_x + sum(sizes.values())) / 2 / elapsed, 1) if elapsed else 0},
            leakage=leakage_report(requester, providers, n_x, sizes, ca, params.result_to_all,
                                   job_plan.combiner))
    finally:
        ctx.cleanup([requester] + providers)


def leakage_report(requester: str, providers: list[str], n_x: int, sizes: dict, ca: bool, to_all: bool,
                   combiner: str | None = None, kkrt: dict | None = None) -> dict:
    """Who learned what, from the sizes the coordinator actually relayed (``sizes``: the
    count of each provider's own stream, ``n_x``: of the requester's blinded stream; with
    ``kkrt``, the sealed bytes each way of a KKRT16 job and the sizes its nodes reported)."""
    k = 1 + len(providers)
    what = "the size of the intersection only" if ca else "the intersection (its own identifiers in it)"
    set_sizes = f"set sizes: requester {n_x}, " + ", ".join(f"{p} {n}" for p, n in sizes.items())
    if kkrt is not None:
        report = {
            requester: [what, f"the provider's set size ({sum(sizes.values())})"],
            "coordinator": [set_sizes,
                            f"KKRT16 messages as envelopes sealed to the provider ({kkrt['to_provider']} bytes) "
                            f"and to the requester ({kkrt['to_requester']} bytes) that it cannot open, timings"],
        }
    elif k == 2:
        report = {
            requester: [what, f"the provider's set size ({sum(sizes.values())})"],
            "coordinator": [set_sizes,
                            "blinded group elements under a key it does not hold (the requester's set), "
                            "envelopes sealed to the requester" + (" and to the provider (the result, at a "
                                                                   "fixed length)" if to_all else "")
                            + " that it cannot open, timings"],
        }
    else:
        smallest = min(sizes.values())
        report = {
            requester: [f"{what} of all parties' sets",
                        (f"the size of the smallest provider set ({smallest}): the providers' common set "
                         "reaches it padded with rows that match nothing, so not the size of that common set")],
            "coordinator": [set_sizes,
                            ("blinded group elements, no two streams under the same keys (nothing it can "
                             "intersect), and envelopes sealed to the combining provider and the requester "
                             "that it cannot open, timings")],
        }
    for p in providers:
        report[p] = [f"the requester's set size ({n_x})"] + (
            ["the intersection (result shared with both parties)"] if to_all else
            ["nothing about which of its records matched"])
        if k > 2:
            report[p].append("the other providers' set sizes (" + ", ".join(
                f"{q} {n}" for q, n in sizes.items() if q != p) + ")")
        if p == combiner:
            report[p].append("as the combining provider: the sizes of the intersections among the providers' "
                             f"sets (every |Yi ∩ Yj| and |Y1 ∩ … ∩ Y{k - 1}|), not which records")
    return report
