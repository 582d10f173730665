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

import threading

from pc_common.errors import FailedPrecondition, InvalidInput, PermissionDenied
from pc_common.pb import common_pb2, node_pb2
from pc_node.psi import ProviderSession, RequesterSession
from pc_node.steps import step
from pc_node.steps.admit import checked_spec, require_admitted, use_once
from pc_node.steps.common import done, progress, read_stream, store_results

CHUNK_POINTS = 16384          # 512 KiB of points per message
_lock = threading.RLock()


def _sessions(runtime) -> dict:
    with _lock:
        if not hasattr(runtime, "sessions"):
            runtime.sessions = {}
        return runtime.sessions


def own_dataset(runtime, doc: dict) -> str:
    for ref in doc["params"].get("datasets", []):
        agency, _, dataset = str(ref).partition(".")
        if agency == runtime.node_id:
            return dataset
    raise PermissionDenied("the job names no dataset of this node")


def session(runtime, doc: dict):
    """This node's PSI session for the job, created (with a fresh key) on first use."""
    sessions = _sessions(runtime)
    with _lock:
        s = sessions.get(doc["job_id"])
    if s is not None:
        return s
    ids = runtime.store.keys(own_dataset(runtime, doc))
    cardinality_only = bool(doc["params"].get("cardinality_only"))
    cls = RequesterSession if doc["requester"] == runtime.node_id else ProviderSession
    s = cls(ids, cardinality_only=cardinality_only and cls is RequesterSession)
    with _lock:
        return sessions.setdefault(doc["job_id"], s)


def drop_session(runtime, job_id: str) -> bool:
    with _lock:
        return _sessions(runtime).pop(job_id, None) is not None


def _stream_points(inbound, name: str):
    for c in read_stream(inbound, name):
        if c.count or c.data:   # data under a zero count is malformed, never skipped
            yield c.data, c.count


@step("psi.blind")
def blind(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester blinds its own set")
    s = session(runtime, doc)
    total, sent, seq = s.count, 0, 0
    for data in s.blinded_chunks(CHUNK_POINTS):
        n = len(data) // 32
        sent += n
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="a", seq=seq, count=n, data=data,
                                                              last=sent >= total))
        seq += 1
        yield progress("blind", runtime.node_id, sent, total)
    if total == 0:
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="a", seq=0, count=0, data=b"", last=True))
    yield done({"count": total})


@step("psi.hop")
def hop(runtime, header, inbound):
    """Raise a stream to this provider's key: in order (streamed) or shuffled (whole set)."""
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    # One hop per set in the job (k-party: every other party's set passes once).
    use_once(runtime, doc, "psi.hop", limit=len(doc["params"].get("datasets", [])))
    shuffle = header.params.get("shuffle") == "1"
    label = header.params.get("label", "hop")
    s = session(runtime, doc)
    stage = s.hop(shuffle=shuffle)
    seq, n_in = 0, 0
    for data, count in _stream_points(inbound, "in"):
        n_in += count
        if shuffle:
            stage.accept(data, count)
        else:
            out = stage.process(data, count)
            yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="out", seq=seq, count=count, data=out))
            seq += 1
        yield progress(label, runtime.node_id, n_in, 0)
    if shuffle:
        for out in stage.output_chunks(CHUNK_POINTS):
            yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="out", seq=seq, count=len(out) // 32,
                                                                  data=out))
            seq += 1
    yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="out", seq=seq, count=0, data=b"", last=True))
    runtime.audit.append("psi.hop", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"points": n_in})
    yield done({"count": n_in})


@step("psi.own")
def own(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    use_once(runtime, doc, "psi.own")
    s = session(runtime, doc)
    seq, sent = 0, 0
    for data in s.own_chunks(CHUNK_POINTS, shuffle=True):
        n = len(data) // 32
        sent += n
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="own", seq=seq, count=n, data=data))
        seq += 1
        yield progress("own", runtime.node_id, sent, s.count)
    yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="own", seq=seq, count=0, data=b"", last=True))
    runtime.audit.append("psi.own", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         dataset=own_dataset(runtime, doc), counts={"rows": s.count})
    yield done({"count": s.count})


@step("psi.finish")
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
    summary = {"intersection": size, "own": s.count, "cardinality_only": s.cardinality_only,
               "datasets": doc["params"].get("datasets", [])}
    if s.cardinality_only:
        csv_text = f"intersection_size\n{size}\n"
    else:
        csv_text = "id_number\n" + "".join(f"{i}\n" for i in s.finish())
    store_results(runtime, doc["job_id"], csv_text, size, summary)
    runtime.audit.append("psi.finish", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"own": s.count, "provider": m})
    if doc["params"].get("result_to_all") and not s.cardinality_only:
        data = s.provider_indices()
        yield node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream="indices", seq=0, count=len(data) // 4,
                                                              data=data, last=True))
    # The intersection and its size stay here; the coordinator is told only that it is done.
    yield done({"own": s.count})


@step("psi.learn")
def learn(runtime, header, inbound):
    """Result to both parties: the requester's positions of the intersection in our list."""
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    use_once(runtime, doc, "psi.learn")
    if not doc["params"].get("result_to_all"):
        raise PermissionDenied("the requester did not ask to share the result")
    with _lock:
        s = _sessions(runtime).get(doc["job_id"])
    if s is None:
        raise FailedPrecondition("no PSI session for this job at this node")
    data = b"".join(c.data for c in read_stream(inbound, "indices"))
    ids = s.learn_intersection(data)
    store_results(runtime, doc["job_id"], "id_number\n" + "".join(f"{i}\n" for i in ids), len(ids),
                  {"intersection": len(ids), "shared_by": doc["requester"]})
    runtime.audit.append("psi.learn", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"intersection": len(ids)})
    yield done({})
