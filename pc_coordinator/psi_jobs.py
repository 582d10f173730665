"""PSI jobs at the coordinator: two-party PSI, PSI-CA and k-party PSI, streamed.

The coordinator relays blinded group elements chunk by chunk from one node's stream into
the next node's stream (bounded memory, flow control end to end) and, for k ≥ 3, combines
the providers' fully re-encrypted sets (``pc_common.psi_plan``: it holds no key, so it
learns only sizes). The intersection and its size are computed and kept at the requester's
node.
"""
from __future__ import annotations

import itertools
import time
from typing import Iterable, Iterator

from pc_common import job_kinds, wire
from pc_common.errors import InvalidInput, PcError, PermissionDenied
from pc_common.pb import node_pb2
from pc_common.psi_plan import Combiner, provider_chain_order
from pc_common.steps_schema import HopParams
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.runner import JobContext
from pc_coordinator.streams import Relay, collect_blobs, raise_first

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


def _points(stream: str, parts: Iterable[bytes]) -> Iterator[node_pb2.StepMessage]:
    out = wire.ChunkWriter(stream)
    for data in parts:
        yield out.chunk(data)
    yield out.end()


def _chain(ctx: JobContext, source_node: str, source, hops: list[tuple[str, bool]], label: str):
    """A stream passed through each (node, shuffle) hop in turn; returns (final relay, relays)."""
    relays = []
    current, current_node, name = source, source_node, None
    for i, (node, shuffle) in enumerate(hops):
        r = Relay(ctx, current_node, current, {name: "in"} if name else {"a": "in", "own": "in"})
        relays.append(r)
        head = ctx.header("psi.hop", ctx.requester, HopParams(shuffle=shuffle, label=label))
        current = ctx.step(node, itertools.chain([head], r))
        current_node, name = node, "out"
    return current, current_node, name, relays


def run(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    params = job_params(doc)
    requester = doc["requester"]
    providers = params.providers()
    ca = params.cardinality_only
    relays: list[Relay] = []
    try:
        admit_all(ctx, providers)
        combined = None
        sizes: dict[str, int] = {}
        if len(providers) >= 2:
            # Providers' sets, each re-encrypted and reshuffled by every other provider, combined here.
            combiner = Combiner(len(providers))
            for i, owner in enumerate(providers):
                own = ctx.step(owner, [ctx.header("psi.own", requester)])
                hops = [(providers[j], True) for j in provider_chain_order(i, len(providers))]
                stream, last_node, name, rs = _chain(ctx, owner, own, hops, f"reencrypt:{owner}")
                relays += rs
                try:
                    for msg in stream:
                        kind = msg.WhichOneof("kind")
                        if kind == "chunk" and (msg.chunk.count or msg.chunk.data):
                            combiner.accept(i, msg.chunk.data, msg.chunk.count)
                        elif kind == "progress":
                            ctx.progress(msg.progress.step, last_node, msg.progress.done, msg.progress.total)
                except PcError as exc:
                    raise_first(relays, exc)
            sizes = dict(zip(providers, combiner.set_sizes()))
            combined = combiner
        # The requester's set through every provider (the last one shuffles for PSI-CA).
        blind = ctx.step(requester, [ctx.header("psi.blind", requester)])
        hops = [(p, ca and i == len(providers) - 1) for i, p in enumerate(providers)]
        double_src, last_node, name, rs = _chain(ctx, requester, blind, hops, "reencrypt")
        relays += rs
        from_requester = rs[0]             # counts the requester's blinded set
        double = Relay(ctx, last_node, double_src, {"out": "double"})
        relays.append(double)
        if combined is None:
            own = Relay(ctx, providers[0], (m for m in ctx.step(providers[0], [ctx.header("psi.own", requester)])),
                        {"own": "provider"})
            relays.append(own)
            provider_stream: Iterable = own
        else:
            provider_stream = _points("provider", combined.result_chunks(CHUNK_POINTS))
        head = ctx.header("psi.finish", requester)
        try:
            _, finished = collect_blobs(ctx, requester, itertools.chain([head], double, provider_stream))
        except PcError as exc:
            raise_first(relays, exc)
        indices = finished.get("indices", b"")
        if params.result_to_all:
            collect_blobs(ctx, providers[0], itertools.chain([ctx.header("psi.learn", requester)],
                                                             wire.chunks("indices", indices, 4, len(indices) // 4)))
        n_x = from_requester.count
        if combined is None:
            sizes = {providers[0]: own.count}
        elapsed = time.perf_counter() - t0
        ctx.jobs.record(ctx.job_id, summary={
            "requester_set": n_x, "provider_sets": sizes, "cardinality_only": ca, "parties": 1 + len(providers),
            "total_s": round(elapsed, 3),
            "items_per_s": round((n_x + sum(sizes.values())) / 2 / elapsed, 1) if elapsed else 0},
            leakage=leakage_report(requester, providers, n_x, sizes, ca, params.result_to_all))
    finally:
        ctx.cleanup([requester] + providers)


def leakage_report(requester: str, providers: list[str], n_x: int, sizes: dict, ca: bool, to_all: bool) -> dict:
    k = 1 + len(providers)
    what = "the size of the intersection only" if ca else "the intersection (its own identifiers in it)"
    report = {
        requester: [f"{what}" + (" of all parties' sets" if k > 2 else ""),
                    (f"the size of the providers' common set (|Y1 ∩ … ∩ Y{k - 1}|)" if k > 2
                     else f"the provider's set size ({sum(sizes.values())})")],
        "coordinator": [f"set sizes: requester {n_x}, " + ", ".join(f"{p} {n}" for p, n in sizes.items()),
                        "blinded group elements only (every value under at least one key it does not hold), timings"]
        + (["the size of the providers' common set (it combines their fully re-encrypted sets)"] if k > 2 else []),
    }
    for p in providers:
        report[p] = [f"the requester's set size ({n_x})"] + (
            ["the intersection (result shared with both parties)"] if to_all else
            ["nothing about which of its records matched"])
        if k > 2:
            report[p].append("the other providers' set sizes")
    return report


