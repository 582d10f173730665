"""KKRT16 PSI steps (two-party, ``protocol = "kkrt"``): one bidirectional step per party.

The requester R is the KKRT receiver (it learns X ∩ Y and |Y|), the provider S the sender
(it learns |X|). The coordinator opens ``psi.kkrt_recv`` at R and ``psi.kkrt_send`` at S and
pipes each one's output into the other's input; the five messages of the protocol
(``pc_node.psi.kkrt``: m1 S→R, m2 R→S, m3 S→R, m4 R→S, m5 S→R) travel as chunk streams
``kkrt<round>`` (``pc_common.psi_plan.kkrt_stream``).

Sealed end to end: every chunk is an envelope (``pc_node.envelope``) to the recipient node's
certified X25519 key, associated data binding job, round, chunk number and last flag, so the
coordinator relays bytes it cannot read and can neither reorder, splice, truncate nor replay
chunks. Before buffering a message its size is bounded by the exact size the protocol gives
for the set sizes (R's: the signed ``subjects``; S's: the count it announced in m1), and S
checks that R announces exactly the signed ``subjects`` (the quota it charged at admission).
Each step runs once per job (atomic markers): no second OPRF for a replaying coordinator.
"""
from __future__ import annotations

import logging

from pc_common import job_kinds
from pc_common.errors import FailedPrecondition, IntegrityError, InvalidInput, PermissionDenied
from pc_common.pb import common_pb2, node_pb2
from pc_common.psi_plan import kkrt_stream
from pc_common.steps_schema import Count, PsiFinished
from pc_common.wire import CHUNK_BYTES
from pc_node import envelope
from pc_node.psi import kkrt
from pc_node.steps.admit import checked_spec, require_admitted, use_once
from pc_node.steps.common import done, progress, read_stream, store_results

PIECE = CHUNK_BYTES - envelope.ENVELOPE_OVERHEAD     # plaintext bytes per sealed chunk
log = logging.getLogger("pc.node.psi_kkrt")


def _params(doc: dict) -> job_kinds.PsiParams:
    p = job_kinds.params_of(doc, "psi")
    if p.datasets[0][0] != doc["requester"]:
        raise PermissionDenied("the first dataset must belong to the requester")
    if p.engine != "kkrt":
        raise PermissionDenied("this job does not run the KKRT protocol")
    return p


def _domain(doc: dict) -> bytes:
    return f"pc/psi/kkrt/job/{doc['job_id']}".encode()


def aad(job_id: str, round_no: int, seq: int, last: bool) -> bytes:
    return f"pc/psi/kkrt/v1/{job_id}/{round_no}/{seq}/{int(last)}".encode()


def sealed(runtime, doc: dict, recipient: str, round_no: int, data: bytes):
    """Message ``round_no`` as sealed chunks to ``recipient`` (``count``: plaintext bytes)."""
    return sealed_parts(runtime, doc, recipient, round_no, [data])


def sealed_parts(runtime, doc: dict, recipient: str, round_no: int, parts):
    """Message ``round_no``, produced in ``parts`` (bytes-like), as sealed chunks of PIECE
    plaintext bytes to ``recipient``: each chunk goes out as soon as its bytes exist."""
    key = runtime.peer_keys(recipient).x25519_public
    buf, seq = bytearray(), 0

    def chunk(piece: bytes, last: bool):
        return node_pb2.StepMessage(chunk=common_pb2.DataChunk(
            stream=kkrt_stream(round_no), seq=seq, count=len(piece), last=last,
            data=envelope.seal(key, piece, aad(doc["job_id"], round_no, seq, last))))

    for part in parts:
        view = memoryview(part).cast("B")
        if buf:                               # top up the partial chunk of the last part
            need = PIECE - len(buf)
            buf += view[:need]
            view = view[need:]
            if not len(view):
                continue
            yield chunk(bytes(buf), False)    # full, and more bytes follow: not the last
            buf, seq = bytearray(), seq + 1
        while len(view) > PIECE:
            yield chunk(view[:PIECE].tobytes(), False)
            view, seq = view[PIECE:], seq + 1
        buf += view
    yield chunk(bytes(buf), True)


def read_sealed(runtime, doc: dict, inbound, round_no: int, limit: int) -> bytes:
    """Message ``round_no`` opened from its sealed chunks, at most ``limit`` bytes."""
    return b"".join(opened(runtime, doc, inbound, round_no, limit))


def opened(runtime, doc: dict, inbound, round_no: int, limit: int):
    """The plaintext pieces of message ``round_no``, chunk by chunk as they arrive (at most
    ``limit`` bytes in all; a bad chunk raises before any later one is read)."""
    name, size = kkrt_stream(round_no), 0
    for c in read_stream(inbound, name):
        if len(c.data) != c.count + envelope.ENVELOPE_OVERHEAD:
            raise InvalidInput(f"a sealed chunk of stream '{name}' does not match its count")
        size += c.count
        if size > limit:
            raise InvalidInput(f"stream '{name}' is larger than the protocol allows for these set sizes")
        try:
            piece = envelope.open_envelope(runtime.x25519_private, c.data,
                                           aad(doc["job_id"], round_no, c.seq, c.last))
        except IntegrityError:
            raise InvalidInput(f"a sealed chunk of stream '{name}' failed authentication") from None
        yield piece


# ----- requester: the receiver ---------------------------------------------------------------------
def recv(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester receives the intersection")
    p = _params(doc)
    provider = p.providers()[0]
    r = kkrt.KkrtReceiver(runtime.store.subject_ids(p.datasets[0][1]), domain=_domain(doc), crypto=p.crypto or "aes")
    if r.count != p.subjects:
        raise FailedPrecondition(f"the dataset changed since the job was prepared ({r.count} identifiers, the "
                                 f"signed spec says {p.subjects}); prepare the job again")
    use_once(runtime, doc, "psi.kkrt_recv")
    n_r = r.count
    m1 = read_sealed(runtime, doc, inbound, 1, kkrt.message_size(1, n_r, 0))
    yield from sealed(runtime, doc, provider, 2, r.respond(m1))
    yield progress("kkrt", runtime.node_id, 1, 3)
    m3 = read_sealed(runtime, doc, inbound, 3, kkrt.message_size(3, n_r, 0))
    # pipelined: each batch of corrections is sealed and sent as soon as it is computed
    yield from sealed_parts(runtime, doc, provider, 4, r.correct_parts(m3))
    del m3
    yield progress("kkrt", runtime.node_id, 2, 3)
    r.prepare_finish()                  # own OPRF outputs while the sender evaluates
    ids = r.finish_from(opened(runtime, doc, inbound, 5, kkrt.message_size(5, n_r, r.sender_count)))
    yield progress("kkrt", runtime.node_id, 3, 3)
    log.info("kkrt receiver stages (s): %s", {k: round(v, 3) for k, v in r.stages.items()})
    summary = {"intersection": len(ids), "own": n_r, "cardinality_only": False, "protocol": "kkrt",
               "crypto": p.crypto or "aes",
               "datasets": [f"{a}.{d}" for a, d in p.datasets]}
    store_results(runtime, doc["job_id"], "id_number\n" + "".join(f"{i}\n" for i in ids), len(ids), summary)
    runtime.audit.append("psi.kkrt_recv", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"own": n_r, "provider": r.sender_count})
    yield done(PsiFinished(own=n_r))


# ----- provider: the sender ------------------------------------------------------------------------
def send(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    p = _params(doc)
    dataset = p.own_dataset(runtime.node_id)
    if dataset is None or runtime.node_id == doc["requester"]:
        raise PermissionDenied("the job names no dataset of this node")
    use_once(runtime, doc, "psi.kkrt_send")
    requester = doc["requester"]
    s = kkrt.KkrtSender(runtime.store.subject_ids(dataset), domain=_domain(doc), crypto=p.crypto or "aes")
    yield from sealed(runtime, doc, requester, 1, s.start())
    m2 = read_sealed(runtime, doc, inbound, 2, kkrt.message_size(2, p.subjects, s.count))
    if kkrt.announced_count(m2, 2) != p.subjects:
        raise PermissionDenied("the receiver's set size is not the one the requester signed for")
    yield from sealed(runtime, doc, requester, 3, s.extend(m2))
    yield progress("kkrt", runtime.node_id, 1, 2)
    s.prepare()                         # code words while the receiver computes its corrections
    # pipelined: each sealed chunk of corrections is evaluated as it arrives
    m5 = s.masks_from(opened(runtime, doc, inbound, 4, kkrt.message_size(4, p.subjects, s.count)))
    yield from sealed(runtime, doc, requester, 5, m5)
    yield progress("kkrt", runtime.node_id, 2, 2)
    log.info("kkrt sender stages (s): %s", {k: round(v, 3) for k, v in s.stages.items()})
    runtime.audit.append("psi.kkrt_send", job=doc["job_id"], requester=requester, purpose=doc["purpose"],
                         dataset=dataset, counts={"rows": s.count, "requester": p.subjects})
    yield done(Count(count=s.count))
