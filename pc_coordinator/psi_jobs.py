"""PSI jobs at the coordinator: two-party PSI, PSI-CA and k-party PSI, streamed.

The coordinator relays blinded group elements chunk by chunk from one node's stream into
the next node's stream (bounded memory, flow control end to end) and, for k ≥ 3, combines
the providers' fully re-encrypted sets (it holds no key, so it learns only sizes). The
intersection and its size are computed and kept at the requester's node.
"""
from __future__ import annotations

import itertools
import time
from typing import Iterable, Iterator

from pc_common.errors import InvalidInput, PcError, PermissionDenied
from pc_common.pb import common_pb2, node_pb2
from pc_coordinator import kinds
from pc_coordinator.admission import admit_all
from pc_coordinator.directory import Directory
from pc_coordinator.runner import JobContext, orchestrator
from pc_coordinator.streams import collect_blobs, send_blobs
from pc_node.psi import Combiner, provider_chain_order

CHUNK_POINTS = 16384


def parse_datasets(doc: dict) -> list[tuple[str, str]]:
    refs = doc["params"].get("datasets")
    if not isinstance(refs, list) or len(refs) < 2:
        raise InvalidInput("PSI needs your dataset and at least one provider dataset (AGENCY.DATASET)")
    out = []
    for r in refs:
        agency, _, ds = str(r).partition(".")
        if not agency or not ds or "." in ds:
            raise InvalidInput(f"'{str(r)[:64]}' is not of the form AGENCY.DATASET")
        out.append((agency, ds))
    agencies = [a for a, _ in out]
    if agencies[0] != doc["requester"]:
        raise PermissionDenied("the first dataset must belong to the requester")
    if len(set(agencies)) != len(agencies):
        raise InvalidInput("each agency may take part with one dataset only")
    return out


@kinds.validator("psi")
def validate(doc: dict, directory: Directory) -> list[str]:
    refs = parse_datasets(doc)
    catalog = {(d.agency, d.name): d for d in directory.catalog().datasets}
    for agency, ds in refs:
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
    if doc["params"].get("result_to_all") and (len(refs) != 2 or doc["params"].get("cardinality_only")):
        raise InvalidInput("--result-to-all is for two-party PSI without --cardinality-only")
    return [a for a, _ in refs[1:]]


class Relay:
    """Forward one node's output stream into another's input, renaming the stream.

    Errors raised while gRPC pulls from this iterator would be lost (the downstream call is
    just cancelled), so they are kept in ``error`` and re-raised by the orchestrator.
    """

    def __init__(self, ctx: JobContext, node: str, source: Iterable[node_pb2.StepMessage], rename: dict[str, str]):
        self.ctx, self.node, self.source, self.rename = ctx, node, source, rename
        self.error: BaseException | None = None
        self.count = 0
        self.done: node_pb2.StepDone | None = None

    def __iter__(self) -> Iterator[node_pb2.StepMessage]:
        try:
            for msg in self.source:
                kind = msg.WhichOneof("kind")
                if kind == "chunk":
                    target = self.rename.get(msg.chunk.stream)
                    if target is None:
                        raise InvalidInput(f"node '{self.node}' sent an unexpected stream")
                    self.count += msg.chunk.count
                    c = msg.chunk
                    yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=target, seq=c.seq, count=c.count,
                                                                          data=c.data, last=c.last))
                elif kind == "progress":
                    p = msg.progress
                    self.ctx.progress(p.step, self.node, p.done, p.total)
                elif kind == "done":
                    self.done = msg.done
        except BaseException as exc:  # noqa: BLE001 - handed to the orchestrator
            self.error = exc
            raise


def _raise_first(relays: list[Relay], exc: BaseException) -> None:
    for r in relays:
        if r.error is not None and isinstance(r.error, PcError):
            raise r.error from None
    raise exc


def _chunks(stream: str, parts: Iterable[bytes]) -> Iterator[node_pb2.StepMessage]:
    seq = 0
    for data in parts:
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=stream, seq=seq, count=len(data) // 32,
                                                              data=data))
        seq += 1
    yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=stream, seq=seq, count=0, data=b"", last=True))


def _chain(ctx: JobContext, source_node: str, source, hops: list[tuple[str, bool]], label: str):
    """A stream passed through each (node, shuffle) hop in turn; returns (final relay, relays)."""
    relays = []
    current, current_node, name = source, source_node, None
    for i, (node, shuffle) in enumerate(hops):
        r = Relay(ctx, current_node, current, {name: "in"} if name else {"a": "in", "own": "in"})
        relays.append(r)
        head = ctx.header("psi.hop", ctx.requester, {"shuffle": "1" if shuffle else "0", "label": label})
        current = ctx.step(node, itertools.chain([head], r))
        current_node, name = node, "out"
    return current, current_node, name, relays


@orchestrator("psi")
def run(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    refs = parse_datasets(doc)
    requester = doc["requester"]
    providers = [a for a, _ in refs[1:]]
    params = doc["params"]
    ca = bool(params.get("cardinality_only"))
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
                    _raise_first(relays, exc)
            sizes = dict(zip(providers, combiner.set_sizes()))
            combined = combiner
        # The requester's set through every provider (the last one shuffles for PSI-CA).
        blind = ctx.step(requester, [ctx.header("psi.blind", requester)])
        hops = [(p, ca and i == len(providers) - 1) for i, p in enumerate(providers)]
        double_src, last_node, name, rs = _chain(ctx, requester, blind, hops, "reencrypt")
        relays += rs
        double = Relay(ctx, last_node, double_src, {"out": "double"})
        relays.append(double)
        if combined is None:
            own = Relay(ctx, providers[0], (m for m in ctx.step(providers[0], [ctx.header("psi.own", requester)])),
                        {"own": "provider"})
            relays.append(own)
            provider_stream: Iterable = own
        else:
            provider_stream = _chunks("provider", combined.result_chunks(CHUNK_POINTS))
        head = ctx.header("psi.finish", requester)
        try:
            _, finished = collect_blobs(ctx, requester, itertools.chain([head], double, provider_stream))
        except PcError as exc:
            _raise_first(relays, exc)
        indices = finished.get("indices", b"")
        if params.get("result_to_all"):
            collect_blobs(ctx, providers[0], [ctx.header("psi.learn", requester),
                                              node_pb2.StepMessage(chunk=common_pb2.DataChunk(
                                                  stream="indices", seq=0, count=len(indices) // 4, data=indices,
                                                  last=True))])
        n_x = relays[0].count if relays else 0
        if combined is None:
            sizes = {providers[0]: own.count}
        elapsed = time.perf_counter() - t0
        ctx.jobs.record(ctx.job_id, summary={
            "requester_set": n_x, "provider_sets": sizes, "cardinality_only": ca, "parties": 1 + len(providers),
            "total_s": round(elapsed, 3),
            "items_per_s": round((n_x + sum(sizes.values())) / 2 / elapsed, 1) if elapsed else 0},
            leakage=leakage_report(requester, providers, n_x, sizes, ca, bool(params.get("result_to_all"))))
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


# ----- query-private lookup (匿踪查询) ---------------------------------------------------------
@kinds.validator("lookup")
def validate_lookup(doc: dict, directory: Directory) -> list[str]:
    refs = parse_datasets(doc)
    if len(refs) != 2:
        raise InvalidInput("a lookup names your dataset and exactly one provider dataset")
    (agency, ds) = refs[1]
    d = next((d for d in directory.catalog().datasets if d.agency == agency and d.name == ds), None)
    if d is None:
        raise InvalidInput(f"the catalog has no dataset '{agency}.{ds}'")
    if not directory.node(agency)["online"]:
        raise InvalidInput(f"node '{agency}' is offline")
    labels = doc["params"].get("labels", [])
    if not isinstance(labels, list) or not all(isinstance(c, str) for c in labels):
        raise InvalidInput("labels must be a list of column names")
    for col in labels:
        if col not in {c.name for c in d.columns}:
            raise InvalidInput(f"{agency}.{ds} has no column '{col}'")
    return [agency]


@orchestrator("lookup")
def run_lookup(ctx: JobContext, doc: dict) -> None:
    t0 = time.perf_counter()
    refs = parse_datasets(doc)
    requester, provider = doc["requester"], refs[1][0]
    relays: list[Relay] = []
    try:
        admit_all(ctx, [provider])
        status = collect_blobs(ctx, requester, [ctx.header("lookup.status", requester)])[0].summary
        t_filter = time.perf_counter()
        fdone, fblobs = collect_blobs(ctx, provider, [ctx.header("lookup.filter", requester,
                                                                 {"epoch": status.get("epoch", ""),
                                                                  "version": status.get("version", "-1")})])
        filter_kind = fdone.summary.get("kind", "snapshot")
        filter_bytes = fblobs.get(filter_kind, b"")
        t_online = time.perf_counter()
        blind_src = ctx.step(requester, send_blobs([ctx.header("lookup.blind", requester, {"kind": filter_kind})],
                                                   {filter_kind: filter_bytes}))
        to_provider = Relay(ctx, requester, blind_src, {"blinded": "in"})
        answers = Relay(ctx, provider, ctx.step(provider, itertools.chain(
            [ctx.header("lookup.evaluate", requester)], to_provider)), {"out": "answers"})
        relays += [to_provider, answers]
        try:
            collect_blobs(ctx, requester, itertools.chain([ctx.header("lookup.finish", requester)], answers))
        except PcError as exc:
            _raise_first(relays, exc)
        online = time.perf_counter() - t_online
        ctx.jobs.record(ctx.job_id, summary={
            "queried": to_provider.count, "filter": filter_kind, "filter_bytes": len(filter_bytes),
            "filter_s": round(t_online - t_filter, 3), "online_s": round(online, 3),
            "total_s": round(time.perf_counter() - t0, 3)},
            leakage={
                requester: ["for each of its own identifiers whether it is in the provider's dataset"
                            + (" and the granted label columns of matches" if doc["params"].get("labels") else ""),
                            "the provider dataset's size and, through deltas, how many rows changed"],
                provider: [f"how many identifiers were asked ({to_provider.count}) and when; never which"],
                "coordinator": [f"sizes only: {to_provider.count} blinded points and a {len(filter_bytes)}-byte filter"
                                " of keyed hashes it cannot invert"]})
    finally:
        ctx.cleanup([requester, provider])
