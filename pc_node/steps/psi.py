"""PSI steps at the nodes (two-party, PSI-CA, k-party) and the query-private lookup.

A job's EC key lives only in this node's memory (``runtime.sessions``) for the job's
lifetime; ``job.cleanup`` drops it. Streams carry 32-byte group elements in chunks of at
most 1 MiB; every received chunk is checked (length, on-curve, order) by the PSI core.

Requester:  ``psi.blind``   H(x)^a in its own secret order           → stream "a"
            ``psi.finish``  "double" (own values under every key) and "provider"
                            (the provider's or the combined set)      → result at this node
Provider:   ``psi.hop``     re-encrypt a stream under its key, in order or shuffled
            ``psi.own``     H(y)^b of its own dataset, shuffled       → stream "own"
            ``psi.learn``   (result to both) positions of the intersection in its list
"""
from __future__ import annotations

from pc_common import job_kinds
from pc_common.errors import FailedPrecondition, InvalidInput, PermissionDenied
from pc_common.steps_schema import Count, HopParams, NoResult, PsiFinished, decode_params
from pc_node.psi import ProviderSession, RequesterSession
from pc_node.steps.admit import checked_spec, require_admitted, use_once
from pc_node.steps.common import ChunkWriter, chunks, done, progress, read_stream, store_results

CHUNK_POINTS = 16384          # 512 KiB of points per message


def prepare_job(runtime, params: dict, subject_set: str = "") -> tuple[dict, str]:
    """Complete a PSI spec (``PrepareJob``): the spec's params and purpose."""
    return prepare_over_datasets(runtime, params, job_kinds.PsiParams.from_params(params))


def prepare_over_datasets(runtime, params: dict, p) -> tuple[dict, str]:
    """PSI and lookups: the requester's dataset comes first; its rows are the job's subjects."""
    agency, dataset = p.datasets[0]
    if agency != runtime.node_id:
        raise InvalidInput(f"the first dataset must be one of this node's ('{runtime.node_id}.…')")
    return {**params, "subjects": runtime.store.dataset(dataset).rows}, p.purpose


def admission(p, node_id: str) -> tuple[dict, str]:
    """What a PSI job or a lookup asks of this node's datasets (see ``admit.needs``)."""
    return p.uses(node_id), "verdict"


def own_dataset(runtime, doc: dict) -> str:
    dataset = job_kinds.params_of(doc, "psi").own_dataset(runtime.node_id)
    if dataset is None:
        raise PermissionDenied("the job names no dataset of this node")
    return dataset


def session(runtime, doc: dict):
    """This node's PSI session for the job, created (with a fresh key) on first use."""
    sessions = runtime.sessions
    with runtime.sessions_lock:
        s = sessions.get(doc["job_id"])
    if s is not None:
        return s
    ids = runtime.store.keys(own_dataset(runtime, doc))
    cardinality_only = job_kinds.params_of(doc, "psi").cardinality_only
    cls = RequesterSession if doc["requester"] == runtime.node_id else ProviderSession
    s = cls(ids, cardinality_only=cardinality_only and cls is RequesterSession)
    with runtime.sessions_lock:
        return sessions.setdefault(doc["job_id"], s)


def drop_session(runtime, job_id: str) -> bool:
    with runtime.sessions_lock:
        return runtime.sessions.pop(job_id, None) is not None


def _stream_points(inbound, name: str):
    for c in read_stream(inbound, name):
        if c.count or c.data:   # data under a zero count is malformed, never skipped
            yield c.data, c.count


def blind(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester blinds its own set")
    s = session(runtime, doc)
    out, sent = ChunkWriter("a"), 0
    for data in s.blinded_chunks(CHUNK_POINTS):
        msg = out.chunk(data)
        sent += msg.chunk.count
        yield msg
        yield progress("blind", runtime.node_id, sent, s.count)
    yield out.end()
    yield done(Count(count=s.count))


def hop(runtime, header, inbound):
    """Raise a stream to this provider's key: in order (streamed) or shuffled (whole set)."""
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    p: HopParams = decode_params(header)
    # One hop per set in the job (k-party: every other party's set passes once).
    use_once(runtime, doc, "psi.hop", limit=len(job_kinds.params_of(doc, "psi").datasets))
    s = session(runtime, doc)
    stage = s.hop(shuffle=p.shuffle)
    out, n_in = ChunkWriter("out"), 0
    for data, count in _stream_points(inbound, "in"):
        n_in += count
        if p.shuffle:
            stage.accept(data, count)
        else:
            yield out.chunk(stage.process(data, count))
        yield progress(p.label, runtime.node_id, n_in, 0)
    if p.shuffle:
        for data in stage.output_chunks(CHUNK_POINTS):
            yield out.chunk(data)
    yield out.end()
    runtime.audit.append("psi.hop", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"points": n_in})
    yield done(Count(count=n_in))


def own(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    use_once(runtime, doc, "psi.own")
    s = session(runtime, doc)
    out, sent = ChunkWriter("own"), 0
    for data in s.own_chunks(CHUNK_POINTS, shuffle=True):
        msg = out.chunk(data)
        sent += msg.chunk.count
        yield msg
        yield progress("own", runtime.node_id, sent, s.count)
    yield out.end()
    runtime.audit.append("psi.own", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         dataset=own_dataset(runtime, doc), counts={"rows": s.count})
    yield done(Count(count=s.count))


def finish(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester finishes its own PSI")
    s = session(runtime, doc)
    n = 0
    for data, count in _stream_points(inbound, "double"):
        s.accept_double(data, count)
        n += count
        yield progress("receive", runtime.node_id, n, s.count)
    m = 0
    for data, count in _stream_points(inbound, "provider"):
        s.accept_provider(data, count)
        m += count
        yield progress("finish", runtime.node_id, m, 0)
    if n != s.count:
        raise InvalidInput("the re-encrypted set is incomplete")
    size = s.cardinality()
    p = job_kinds.params_of(doc, "psi")
    summary = {"intersection": size, "own": s.count, "cardinality_only": s.cardinality_only,
               "datasets": [f"{a}.{d}" for a, d in p.datasets]}
    if s.cardinality_only:
        csv_text = f"intersection_size\n{size}\n"
    else:
        csv_text = "id_number\n" + "".join(f"{i}\n" for i in s.finish())
    store_results(runtime, doc["job_id"], csv_text, size, summary)
    runtime.audit.append("psi.finish", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"own": s.count, "provider": m})
    if p.result_to_all and not s.cardinality_only:
        data = s.provider_indices()
        yield from chunks("indices", data, 4, len(data) // 4)
    # The intersection and its size stay here; the coordinator is told only that it is done.
    yield done(PsiFinished(own=s.count))


def learn(runtime, header, inbound):
    """Result to both parties: the requester's positions of the intersection in our list."""
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    use_once(runtime, doc, "psi.learn")
    if not job_kinds.params_of(doc, "psi").result_to_all:
        raise PermissionDenied("the requester did not ask to share the result")
    with runtime.sessions_lock:
        s = runtime.sessions.get(doc["job_id"])
    if s is None:
        raise FailedPrecondition("no PSI session for this job at this node")
    data = b"".join(c.data for c in read_stream(inbound, "indices"))
    ids = s.learn_intersection(data)
    store_results(runtime, doc["job_id"], "id_number\n" + "".join(f"{i}\n" for i in ids), len(ids),
                  {"intersection": len(ids), "shared_by": doc["requester"]})
    runtime.audit.append("psi.learn", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"intersection": len(ids)})
    yield done(NoResult())
