"""Query-private lookup (匿踪查询) steps at the nodes.

Provider: ``lookup.filter``   ships its OPRF filter of a dataset for the requester (a snapshot,
                              or only the deltas since the requester's cached version of the
                              same epoch), sealed to the requester node (digital envelope);
                              keys per requester and epoch (:mod:`pc_node.steps.lookup_epochs`).
          ``lookup.evaluate`` checks the requester's signed binding (key epoch, point count,
                              SHA-256 of every chunk), charges the points (quota and the
                              per-epoch cap), raises exactly those points to the epoch key once
                              per job and seals each answer chunk to the requester: it learns
                              only how many.
Requester: ``lookup.status``  which epoch/version of that filter it has cached;
           ``lookup.blind``   opens and caches the filter, blinds its own identifiers and signs
                              their count and digests;
           ``lookup.finish``  opens the answers, unblinds, checks membership locally, stores results.

The coordinator relays sealed filters and answers, and blinded points: bytes it cannot use.
"""
from __future__ import annotations

import csv
import hashlib
import io
import struct

from pc_common import gm, job_kinds, jobspec
from pc_common.errors import FailedPrecondition, IntegrityError, InvalidInput, PermissionDenied, ResourceExhausted
from pc_common.pb import common_pb2, node_pb2
from pc_common.steps_schema import (BlindParams, Evaluated, FilterSent, FilterState, LookupBlinded, Queried,
                                    decode_params)
from pc_node import envelope
from pc_node.psi import LookupRequester
from pc_node.psi.lookup_format import binding_message, parse_binding
from pc_node.steps.admit import checked_spec, require_admitted, use_once
from pc_node.steps.common import ChunkWriter, blob_chunks, done, progress, read_blob, read_stream, store_results
from pc_node.steps.lookup_epochs import evaluator, provider_for  # noqa: F401 (provider_for: tests, tools)
from pc_node.steps.psi import prepare_over_datasets

CHUNK_POINTS = 16384
MAX_BINDING = 4 << 20


def _frame(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in parts)


def _unframe(data: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(data):
        if i + 4 > len(data):
            raise InvalidInput("framed lookup data is truncated")
        (n,) = struct.unpack_from(">I", data, i)
        if i + 4 + n > len(data):
            raise InvalidInput("framed lookup data is truncated")
        out.append(data[i + 4:i + 4 + n])
        i += 4 + n
    return out


def aad(job_id: str, what: str) -> bytes:
    """Associated data of a lookup envelope: the job and what it carries (``snapshot``,
    ``deltas``, ``answers/<chunk>``), so no envelope is accepted in another job or place."""
    return f"pc/lookup/{job_id}/{what}".encode()


def _open(runtime, blob: bytes, job_id: str, what: str) -> bytes:
    try:
        return envelope.open_envelope(runtime.x25519_private, blob, aad(job_id, what))
    except IntegrityError:
        raise PermissionDenied(f"the lookup's {what.split('/')[0]} were not sealed to this node for this job") from None


def prepare_job(runtime, params: dict, subject_set: str = "") -> tuple[dict, str]:
    """Complete a lookup spec (``PrepareJob``): the spec's params and purpose."""
    return prepare_over_datasets(runtime, params, job_kinds.LookupParams.from_params(params))


def _params(doc: dict) -> job_kinds.LookupParams:
    return job_kinds.params_of(doc, "lookup")


def _refs(doc: dict) -> tuple[tuple[str, str], tuple[str, str]]:
    own, other = _params(doc).datasets
    return own, other


def _provider_dataset(runtime, doc: dict) -> tuple[str, list]:
    """The job's provider dataset and its grants, for a provider step this node admitted."""
    grants = require_admitted(runtime, doc)
    _, (agency, ds) = _refs(doc)
    if agency != runtime.node_id:
        raise PermissionDenied("the lookup's provider dataset is not at this node")
    return ds, grants


def _label_columns(doc: dict) -> tuple[list[str], bool]:
    p = _params(doc)
    return list(p.labels), p.masked


def _cached_filter(runtime, name: str) -> LookupRequester:
    parts = _unframe(runtime.store.get_blob("lookupfilter", name))
    req = LookupRequester(parts[0])
    for d in parts[1:]:
        req.apply_delta(d)
    return req


def status(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester keeps a lookup filter")
    _, (agency, ds) = _refs(doc)
    name = f"{agency}.{ds}"
    if runtime.store.has_blob("lookupfilter", name):
        req = _cached_filter(runtime, name)
        yield done(FilterState(epoch=req.epoch, version=req.version))
    else:
        yield done(FilterState())


def filter_(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    ds, _ = _provider_dataset(runtime, doc)
    use_once(runtime, doc, "lookup.filter")
    cols, masked = _label_columns(doc)
    provider = provider_for(runtime, ds, doc["requester"], cols, masked)
    have: FilterState = decode_params(header)
    kind, payload = "snapshot", None
    if have.epoch == provider.epoch and 0 <= have.version <= provider.version:
        try:
            kind, payload = "deltas", _frame(provider.deltas_since(have.version))
        except FailedPrecondition:
            kind = "snapshot"
    if payload is None:
        payload = provider.snapshot()
    # Sealed to the requester's certified envelope key: the coordinator relays bytes it cannot
    # test identifiers against, and the labels inside never cross it in any form it can open.
    sealed = envelope.seal(runtime.peer_keys(doc["requester"]).x25519_public, payload, aad(doc["job_id"], kind))
    yield from blob_chunks(kind, sealed)
    yield done(FilterSent(epoch=provider.epoch, version=provider.version, kind=kind))


def blind(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester blinds its own identifiers")
    (_, own_ds), (agency, ds) = _refs(doc)
    name = f"{agency}.{ds}"
    p: BlindParams = decode_params(header)
    kind = p.kind
    data = _open(runtime, read_blob(inbound, kind, 1 << 31), doc["job_id"], kind)
    if kind == "snapshot":
        parts = [data]      # a new snapshot (a new key epoch, or a rebuild) replaces the old filter
    else:
        parts = _unframe(runtime.store.get_blob("lookupfilter", name)) + _unframe(data)
    req = LookupRequester(parts[0])
    for d in parts[1:]:
        req.apply_delta(d)
    runtime.store.put_blob("lookupfilter", name, _frame(parts))
    query = req.query(runtime.store.keys(own_ds))
    runtime.sessions[doc["job_id"]] = query
    chunks = list(query.blinded_chunks(CHUNK_POINTS))
    # What the provider may evaluate for this job, signed: the key epoch, and per chunk its
    # point count and digest. A coordinator can neither add points nor swap them.
    message = binding_message(doc["job_id"], agency, req.epoch,
                              [(len(c) // 32, hashlib.sha256(c).digest()) for c in chunks])
    yield from blob_chunks("binding", struct.pack(">I", len(message)) + message + runtime.sm2.sign(message))
    out = ChunkWriter("blinded")
    for chunk in chunks:
        yield out.chunk(chunk)
    yield out.end()
    yield done(LookupBlinded(queried=query.count, filter_rows=req.count))


def _read_binding(runtime, doc: dict, inbound) -> tuple[str, int, list[tuple[int, bytes]]]:
    blob = read_blob(inbound, "binding", MAX_BINDING)
    if len(blob) < 4 or struct.unpack_from(">I", blob)[0] > len(blob) - 4:
        raise InvalidInput("the lookup binding is malformed")
    n = struct.unpack_from(">I", blob)[0]
    message, signature = blob[4:4 + n], blob[4 + n:]
    try:
        gm.Sm2PublicKey.from_hex(runtime.peer_keys(doc["requester"]).sm2_public).verify(message, signature)
    except (IntegrityError, InvalidInput, ValueError):
        raise PermissionDenied("the blinded points are not signed by the requester for this job") from None
    return parse_binding(message, doc["job_id"], runtime.node_id)


def _charge(runtime, doc: dict, grants: list, ds: str, epoch: int, points: int) -> None:
    """Quota per point actually evaluated (beyond the declared count admission charged) and the
    cumulative cap per requester and key epoch."""
    quota = {k: min(g.quota[k] for g in grants) for k in grants[0].quota}
    extra = max(0, points - _params(doc).subjects)
    try:
        runtime.governance.charge_points(doc["job_id"] + "#lookup.points", doc["requester"], points, extra, quota,
                                         ds, epoch, int(runtime.config.lookup_points_per_epoch),
                                         jobspec.lifetime_end(doc))
    except ResourceExhausted as exc:
        runtime.audit.append("alert.quota", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                             dataset=ds, counts={"points": points}, detail=str(exc)[:200], outcome="refused")
        raise


def _sealed_chunk(seq: int, count: int, data: bytes) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="out", seq=seq, count=count, data=data, last=False))


def evaluate(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    ds, grants = _provider_dataset(runtime, doc)
    epoch_name, total, signed = _read_binding(runtime, doc, inbound)
    use_once(runtime, doc, "lookup.evaluate")
    epoch, provider = evaluator(runtime, ds, doc["requester"], epoch_name)
    _charge(runtime, doc, grants, ds, epoch, total)
    recipient = runtime.peer_keys(doc["requester"]).x25519_public
    seq = n = 0
    for c in read_stream(inbound, "in"):
        if not (c.count or c.data):   # the stream's empty closing chunk
            continue
        if seq >= len(signed) or c.count != signed[seq][0] or hashlib.sha256(c.data).digest() != signed[seq][1]:
            runtime.audit.append("alert.lookup", job=doc["job_id"], requester=doc["requester"], dataset=ds,
                                 detail="blinded points the requester did not sign", outcome="refused")
            raise PermissionDenied("blinded points that the requester did not sign for this job (added, changed or"
                                   " reordered on the way)")
        answer = provider.evaluate(c.data, c.count)     # malformed points: INVALID_ARGUMENT
        yield _sealed_chunk(seq, c.count, envelope.seal(recipient, answer, aad(doc["job_id"], f"answers/{seq}")))
        seq += 1
        n += c.count
        yield progress("evaluate", runtime.node_id, n, total)
    if seq != len(signed):
        raise InvalidInput(f"the blinded stream ended after {n} of the {total} points the requester signed")
    yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="out", seq=seq, count=0, data=b"", last=True))
    runtime.audit.append("lookup.evaluate", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         dataset=ds, counts={"queried": n})
    yield done(Evaluated(evaluated=n))


def finish(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester finishes its lookup")
    query, seq = None, 0
    # The answers exist only once lookup.blind has run (it runs while we wait for them),
    # so the query is looked up after the first chunk arrives.
    for c in read_stream(inbound, "answers"):
        query = query or runtime.sessions.get(doc["job_id"])
        if query is None:
            raise FailedPrecondition("no lookup in progress for this job at this node")
        if c.count or c.data:   # data under a zero count is malformed, never skipped
            query.accept(_open(runtime, c.data, doc["job_id"], f"answers/{seq}"), c.count)
            seq += 1
    if query is None:
        raise FailedPrecondition("no lookup in progress for this job at this node")
    result = query.finish()
    cols, _ = _label_columns(doc)
    members = set(result.members)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["id_number", "found"] + (["records"] if cols else []))
    for ident in query.ids:
        row = [ident, "true" if ident in members else "false"]
        if cols:
            label = result.labels.get(ident)
            row.append(label.decode() if label else "")
        w.writerow(row)
    store_results(runtime, doc["job_id"], buf.getvalue(), query.count,
                  {"queried": query.count, "found": len(members), "labels": cols})
    runtime.audit.append("lookup.finish", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"queried": query.count})
    yield done(Queried(queried=query.count))
