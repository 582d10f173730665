"""Query-private lookup (匿踪查询) steps at the nodes.

Provider: ``lookup.filter``   ships its OPRF filter for a dataset (a snapshot, or only the
                              deltas since the requester's cached version of the same epoch);
                              built once per key epoch and dataset version, kept in memory,
                              with the epoch key stored SM4-encrypted in the node's store.
          ``lookup.evaluate`` raises blinded points to its key: it learns only how many.
Requester: ``lookup.status``  which epoch/version of that filter it has cached;
           ``lookup.blind``   updates its cached filter, blinds its own identifiers;
           ``lookup.finish``  unblinds the answers, checks membership locally, stores results.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import secrets
import struct

from pc_common import job_kinds
from pc_common.errors import FailedPrecondition, InvalidInput, PermissionDenied
from pc_common.steps_schema import (BlindParams, Evaluated, FilterSent, FilterState, LookupBlinded, Queried,
                                    decode_params)
from pc_node.masking import mask
from pc_node.psi import LookupProvider, LookupRequester
from pc_node.steps.admit import checked_spec, require_admitted, use_once
from pc_node.steps.common import ChunkWriter, blob_chunks, done, progress, read_blob, read_stream, store_results
from pc_node.steps.psi import prepare_over_datasets

CHUNK_POINTS = 16384


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


def prepare_job(runtime, params: dict, subject_set: str = "") -> tuple[dict, str]:
    """Complete a lookup spec (``PrepareJob``): the spec's params and purpose."""
    return prepare_over_datasets(runtime, params, job_kinds.LookupParams.from_params(params))


def _params(doc: dict) -> job_kinds.LookupParams:
    return job_kinds.params_of(doc, "lookup")


def _refs(doc: dict) -> tuple[tuple[str, str], tuple[str, str]]:
    own, other = _params(doc).datasets
    return own, other


def _labels(runtime, dataset: str, columns: list[str], masked: bool, keys: list[str]) -> dict[str, bytes] | None:
    if not columns:
        return None
    meta = runtime.store.dataset(dataset)
    names = [c.name for c in meta.columns]
    for col in columns:
        if col not in names:
            raise InvalidInput(f"dataset '{dataset}' has no column '{col}'")
    rows = runtime.store.rows_for_keys(dataset, keys)
    out = {}
    for ident, found in rows.items():
        vals = [[r[names.index(c)] for c in columns] for r in found]
        if masked:
            vals = [[mask(v, "full") if v else v for v in row] for row in vals]
        out[ident] = json.dumps(vals, ensure_ascii=False, separators=(",", ":")).encode()
    return out


def provider_for(runtime, dataset: str, columns: list[str], masked: bool) -> LookupProvider:
    """The filter for (dataset, label columns), rebuilt or updated by delta when data change."""
    meta = runtime.store.dataset(dataset)
    cache = runtime.lookup_providers
    cache_key = (dataset, tuple(columns), masked)
    with runtime.lookup_lock:
        entry = cache.get(cache_key)
        keys = runtime.store.keys(dataset)
        stamp = (meta.version, meta.updated_at)
        if entry is not None and entry["version"] == stamp:
            return entry["provider"]
        if entry is not None and not columns:
            old = entry["keys"]
            new = set(keys)
            entry["provider"].apply_changes(added=sorted(new - old), removed=sorted(old - new),
                                            dataset_version=str(meta.version))
            entry.update(version=stamp, keys=new)
            return entry["provider"]
        key_name = f"{dataset}"
        if runtime.store.has_blob("lookupkey", key_name):
            stored = json.loads(runtime.store.get_blob("lookupkey", key_name))
        else:
            stored = {"epoch": "e" + secrets.token_hex(6), "key": secrets.token_bytes(32).hex()}
            runtime.store.put_blob("lookupkey", key_name, json.dumps(stored).encode())
        # The epoch names key, dataset version at build time and label columns, so a rebuild
        # after a restart never pretends to continue another build's delta chain.
        label_tag = hashlib.sha256(json.dumps([columns, masked]).encode()).hexdigest()[:6]
        built = hashlib.sha256(f"{meta.version}/{meta.updated_at}".encode()).hexdigest()[:8]
        epoch = f"{stored['epoch']}-{built}-{label_tag}"
        labels = _labels(runtime, dataset, columns, masked, keys)
        provider = LookupProvider.build(keys, epoch=epoch, labels=labels, key=bytes.fromhex(stored["key"]),
                                        dataset_version=str(meta.version))
        cache[cache_key] = {"provider": provider, "version": stamp, "keys": set(keys)}
        runtime.audit.append("lookup.build", dataset=dataset, counts={"rows": len(keys)})
        return provider


def _provider_dataset(runtime, doc: dict) -> str:
    """The job's provider dataset, for a provider step this node admitted."""
    require_admitted(runtime, doc)
    _, (agency, ds) = _refs(doc)
    if agency != runtime.node_id:
        raise PermissionDenied("the lookup's provider dataset is not at this node")
    return ds


def _label_columns(doc: dict) -> tuple[list[str], bool]:
    p = _params(doc)
    return list(p.labels), p.masked


def status(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester keeps a lookup filter")
    _, (agency, ds) = _refs(doc)
    name = f"{agency}.{ds}"
    if runtime.store.has_blob("lookupfilter", name):
        parts = _unframe(runtime.store.get_blob("lookupfilter", name))
        req = LookupRequester(parts[0])
        for d in parts[1:]:
            req.apply_delta(d)
        yield done(FilterState(epoch=req.epoch, version=req.version))
    else:
        yield done(FilterState())


def filter_(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    ds = _provider_dataset(runtime, doc)
    cols, masked = _label_columns(doc)
    provider = provider_for(runtime, ds, cols, masked)
    have: FilterState = decode_params(header)
    if have.epoch == provider.epoch and 0 <= have.version <= provider.version:
        try:
            yield from blob_chunks("deltas", _frame(provider.deltas_since(have.version)))
            yield done(FilterSent(epoch=provider.epoch, version=provider.version, kind="deltas"))
            return
        except FailedPrecondition:
            pass
    yield from blob_chunks("snapshot", provider.snapshot())
    yield done(FilterSent(epoch=provider.epoch, version=provider.version, kind="snapshot"))


def blind(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester blinds its own identifiers")
    (_, own_ds), (agency, ds) = _refs(doc)
    name = f"{agency}.{ds}"
    p: BlindParams = decode_params(header)
    kind = p.kind
    data = read_blob(inbound, kind, 1 << 31)
    if kind == "snapshot":
        parts = [data]
    else:
        parts = _unframe(runtime.store.get_blob("lookupfilter", name)) + _unframe(data)
    req = LookupRequester(parts[0])
    for d in parts[1:]:
        req.apply_delta(d)
    runtime.store.put_blob("lookupfilter", name, _frame(parts))
    query = req.query(runtime.store.keys(own_ds))
    runtime.sessions[doc["job_id"]] = query
    out = ChunkWriter("blinded")
    for chunk in query.blinded_chunks(CHUNK_POINTS):
        yield out.chunk(chunk)
    yield out.end()
    yield done(LookupBlinded(queried=query.count, filter_rows=req.count))


def evaluate(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    ds = _provider_dataset(runtime, doc)
    use_once(runtime, doc, "lookup.evaluate")
    cols, masked = _label_columns(doc)
    provider = provider_for(runtime, ds, cols, masked)
    out, n = ChunkWriter("out"), 0
    for c in read_stream(inbound, "in"):
        if c.count or c.data:   # data under a zero count is malformed, never skipped
            yield out.chunk(provider.evaluate(c.data, c.count))
            n += c.count
            yield progress("evaluate", runtime.node_id, n, 0)
    yield out.end()
    runtime.audit.append("lookup.evaluate", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         dataset=ds, counts={"queried": n})
    yield done(Evaluated(evaluated=n))


def finish(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester finishes its lookup")
    query = None
    # The answers exist only once lookup.blind has run (it runs while we wait for them),
    # so the query is looked up after the first chunk arrives.
    for c in read_stream(inbound, "answers"):
        query = query or runtime.sessions.get(doc["job_id"])
        if query is None:
            raise FailedPrecondition("no lookup in progress for this job at this node")
        if c.count or c.data:   # data under a zero count is malformed, never skipped
            query.accept(c.data, c.count)
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
