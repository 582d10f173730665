"""PSI steps at the nodes (two-party, PSI-CA, k-party); lookups reuse ``prepare_over_datasets``.

A job's EC key lives only in this node's memory (``runtime.sessions``) for the job's
lifetime; ``job.cleanup`` drops it. Every stream is a *chain* of the job's plan
(``pc_common.psi_plan``, computed here from the signed spec, never taken from the
coordinator): R's set through every provider, and in k-party PSI each provider's set through
every other provider.

Bound to the signature: the requester signs its set size ``subjects`` in the spec at
``PrepareJob``; every node that produces a point stream signs (SM2, its certified key) the
statement (job, chain, stage, count, SHA-256 of the points) and sends it after the points.
A hop raises its input while it arrives but answers only after checking the count (R's chain:
exactly the signed ``subjects``) and the producer's signature over count and digest, and each
node runs each of its steps once per job (atomic markers): a coordinator can neither feed a
provider points of its own choosing nor use a spare hop.

Sealed end to end: what a chain delivers to its destination (the requester's values under
every key, the provider's own set in two-party PSI, the combined set, the result-to-all
bitmap) is sealed to the recipient node's certified X25519 key, chunk by chunk
(``pc_node.envelope``; associated data: job, stream, chunk number, last flag), with the
producer's signature inside the last envelope. The coordinator relays bytes it cannot use.

Requester:  ``psi.blind``   H(x)^a in its own secret order                → out, binding
            ``psi.finish``  double (own values under every key), provider (the provider's or
                            the combined set), sealed → result at this node; with result to
                            all, a bitmap over the provider's list sealed to it → sealed
Provider:   ``psi.hop``     raise one chain's stream to its key (in order or shuffled)
            ``psi.own``     H(y)^b of its own dataset, shuffled
            ``psi.combine`` (k-party, the combining provider) common rows of all providers'
                            fully re-encrypted sets, padded to the smallest set's size
            ``psi.learn``   (result to all) the requester's bitmap → result at this node
"""
from __future__ import annotations

import hashlib
import secrets

import numpy as np

from pc_common import gm, job_kinds, psi_plan
from pc_common.errors import (
    FailedPrecondition,
    IntegrityError,
    InvalidInput,
    PermissionDenied,
)
from pc_common.pb import common_pb2, node_pb2
from pc_common.steps_schema import (
    Count,
    HopParams,
    NoResult,
    PsiFinished,
    decode_params,
)
from pc_common.wire import CHUNK_BYTES, MAX_BLOB, POINT_LEN
from pc_node import envelope
from pc_node.psi import ProviderSession, RequesterSession
from pc_node.steps.admit import checked_spec, require_admitted, use_once
from pc_node.steps.common import done, progress, read_blob, read_stream, store_results

CHUNK_POINTS = 16384          # 512 KiB of points per message
MAX_POINTS = MAX_BLOB // POINT_LEN
MAX_SIGNATURE = 1024
INDICES = "indices"           # stream id of the result-to-all bitmap
COMBINED = "combined"         # stream id of the combined providers' set


# ----- prepare and admission ---------------------------------------------------------------------------
def prepare_job(runtime, params: dict, subject_set: str = "") -> tuple[dict, str]:
    """Complete a PSI spec (``PrepareJob``): the requester signs the size of the set it will
    blind (distinct normalised identifiers); providers raise exactly that many of its points."""
    p = job_kinds.PsiParams.from_params(params)
    spec, purpose = prepare_over_datasets(runtime, params, p)
    spec["subjects"] = len(runtime.store.subject_ids(p.datasets[0][1]))
    spec["protocol"] = p.engine          # the planner's choice, signed
    return spec, purpose


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


def _plan(doc: dict) -> tuple[job_kinds.PsiParams, psi_plan.Plan]:
    p = job_kinds.params_of(doc, "psi")
    if p.datasets[0][0] != doc["requester"]:
        raise PermissionDenied("the first dataset must belong to the requester")
    if p.engine != "ecdh":
        raise PermissionDenied("this job does not run the ECDH protocol")
    return p, psi_plan.plan(doc["requester"], p.providers(), p.cardinality_only)


def session(runtime, doc: dict):
    """This node's PSI session for the job, created (with a fresh key) on first use."""
    sessions = runtime.sessions
    with runtime.sessions_lock:
        s = sessions.get(doc["job_id"])
    if s is not None:
        return s
    ids = runtime.store.subject_ids(own_dataset(runtime, doc))
    cardinality_only = job_kinds.params_of(doc, "psi").cardinality_only
    cls = RequesterSession if doc["requester"] == runtime.node_id else ProviderSession
    # The job's scalar multiplications on the node's cluster only where psi_scalars may go there.
    s = cls(ids, cardinality_only=cardinality_only and cls is RequesterSession,
            backend=runtime.compute.psi_backend())
    with runtime.sessions_lock:
        return sessions.setdefault(doc["job_id"], s)


def drop_session(runtime, job_id: str) -> bool:
    with runtime.sessions_lock:
        return runtime.sessions.pop(job_id, None) is not None


def _requester_set(runtime, doc: dict, p: job_kinds.PsiParams):
    s = session(runtime, doc)
    if s.count != p.subjects:
        raise FailedPrecondition(f"the dataset changed since the job was prepared ({s.count} identifiers, the "
                                 f"signed spec says {p.subjects}); prepare the job again")
    return s


# ----- signed and sealed streams -------------------------------------------------------------------
def statement(job_id: str, stream: str, stage: int, n: int, digest: bytes) -> bytes:
    """What a stream's producer signs: job, stream (chain) id, keys on it, count, SHA-256."""
    return (b"pc/psi/stream/v1\x00" + f"{job_id}\x00{stream}\x00{stage}\x00{n}\x00".encode() + digest)


def check_signed(runtime, doc: dict, signer: str, stream: str, stage: int, n: int, digest: bytes,
                 signature: bytes) -> None:
    try:
        gm.Sm2PublicKey.from_hex(runtime.peer_keys(signer).sm2_public).verify(
            statement(doc["job_id"], stream, stage, n, digest), signature)
    except (IntegrityError, InvalidInput, ValueError):
        raise PermissionDenied(f"the stream of '{stream}' is not the one '{signer}' signed for this job "
                               "(its count or digest differ)") from None


def _aad(job_id: str, stream: str, seq: int, last: bool) -> bytes:
    return f"pc/psi/v1/{job_id}/{stream}/{seq}/{int(last)}".encode()


def _msg(name: str, seq: int, count: int, data: bytes, last: bool) -> node_pb2.StepMessage:
    return node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=name, seq=seq, count=count, data=data, last=last))


class Out:
    """A stream this node produces, signed: in clear for the next hop (``out`` then ``binding``)
    or sealed to ``recipient`` (``sealed``: one envelope per chunk, the signature in the last)."""

    def __init__(self, runtime, doc: dict, stream: str, stage: int, recipient: str | None = None,
                 item: int = POINT_LEN):
        self.rt, self.job_id, self.stream, self.stage, self.item = runtime, doc["job_id"], stream, stage, item
        self.key = runtime.peer_keys(recipient).x25519_public if recipient else None
        self.name = "sealed" if recipient else "out"
        self.hash, self.n, self.seq = hashlib.sha256(), 0, 0

    def chunks(self, data: bytes):
        per = max(1, (CHUNK_BYTES - envelope.ENVELOPE_OVERHEAD) // self.item) * self.item
        for lo in range(0, len(data), per):
            yield self.chunk(data[lo:lo + per])

    def chunk(self, data: bytes) -> node_pb2.StepMessage:
        data = bytes(data)
        count = len(data) // self.item
        self.hash.update(data)
        self.n += count
        if self.key is not None:
            data = envelope.seal(self.key, data, _aad(self.job_id, self.stream, self.seq, False))
        msg = _msg(self.name, self.seq, count, data, False)
        self.seq += 1
        return msg

    def end(self):
        signature = self.rt.sm2.sign(statement(self.job_id, self.stream, self.stage, self.n, self.hash.digest()))
        if self.key is not None:
            yield _msg(self.name, self.seq, 0, envelope.seal(self.key, signature,
                                                             _aad(self.job_id, self.stream, self.seq, True)), True)
        else:
            yield _msg(self.name, self.seq, 0, b"", True)
            yield _msg("binding", 0, 0, signature, True)


class SealedIn:
    """Read a sealed stream (see :class:`Out`): yields ``(data, count)`` per chunk; afterwards
    ``n``, ``digest`` and ``signature`` hold what to check with :func:`check_signed`."""

    def __init__(self, runtime, doc: dict, inbound, name: str, stream: str, item: int = POINT_LEN,
                 limit: int = MAX_POINTS):
        self.rt, self.job_id, self.inbound, self.name, self.stream = runtime, doc["job_id"], inbound, name, stream
        self.item, self.limit = item, limit
        self.n, self.signature, self._hash = 0, b"", hashlib.sha256()

    @property
    def digest(self) -> bytes:
        return self._hash.digest()

    def _open(self, c, last: bool) -> bytes:
        try:
            return envelope.open_envelope(self.rt.x25519_private, c.data, _aad(self.job_id, self.stream, c.seq, last))
        except IntegrityError:
            raise InvalidInput(f"a sealed chunk of stream '{self.name}' failed authentication") from None

    def __iter__(self):
        for c in read_stream(self.inbound, self.name):
            if c.last:
                if c.count:
                    raise InvalidInput(f"the last chunk of stream '{self.name}' must carry no items")
                self.signature = self._open(c, True)
                return
            if len(c.data) != c.count * self.item + envelope.ENVELOPE_OVERHEAD:
                raise InvalidInput(f"a sealed chunk of stream '{self.name}' does not match its count")
            self.n += c.count
            if self.n > self.limit:
                raise InvalidInput(f"stream '{self.name}' holds more items than allowed")
            data = self._open(c, False)
            self._hash.update(data)
            yield data, c.count


def _stream_points(inbound, name: str):
    for c in read_stream(inbound, name):
        if c.count or c.data:   # data under a zero count is malformed, never skipped
            yield c.data, c.count


# ----- requester ---------------------------------------------------------------------------------------
def blind(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester blinds its own set")
    p, plan = _plan(doc)
    s = _requester_set(runtime, doc, p)
    use_once(runtime, doc, "psi.blind")
    out = Out(runtime, doc, plan.requester_chain.id, 1)
    for data in s.blinded_chunks(CHUNK_POINTS):
        msg = out.chunk(data)
        yield msg
        yield progress("blind", runtime.node_id, out.n, s.count)
    yield from out.end()
    yield done(Count(count=s.count))


def finish(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester finishes its own PSI")
    p, plan = _plan(doc)
    s = _requester_set(runtime, doc, p)
    use_once(runtime, doc, "psi.finish")
    rchain = plan.requester_chain
    double = SealedIn(runtime, doc, inbound, "double", rchain.id, limit=s.count)
    for data, count in double:
        s.accept_double(data, count)
        yield progress("receive", runtime.node_id, double.n, s.count)
    if double.n != s.count:
        raise InvalidInput("the re-encrypted set is incomplete")
    check_signed(runtime, doc, rchain.hops[-1].node, rchain.id, rchain.final_stage, double.n, double.digest,
                 double.signature)
    if plan.combiner is None:
        signer, stream, stage = plan.providers[0], psi_plan.chain_id(plan.providers[0]), 1
    else:
        signer, stream, stage = plan.combiner, COMBINED, 0
    provider = SealedIn(runtime, doc, inbound, "provider", stream)
    for data, count in provider:
        s.accept_provider(data, count)
        yield progress("finish", runtime.node_id, provider.n, 0)
    check_signed(runtime, doc, signer, stream, stage, provider.n, provider.digest, provider.signature)
    size = s.cardinality()
    summary = {"intersection": size, "own": s.count, "cardinality_only": s.cardinality_only,
               "datasets": [f"{a}.{d}" for a, d in p.datasets]}
    if s.cardinality_only:
        csv_text = f"intersection_size\n{size}\n"
    else:
        csv_text = "id_number\n" + "".join(f"{i}\n" for i in s.finish())
    store_results(runtime, doc["job_id"], csv_text, size, summary)
    runtime.audit.append("psi.finish", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"own": s.count, "provider": provider.n})
    if p.result_to_all and not s.cardinality_only:
        # Sealed to the provider, fixed length (one bit per row of its list): the coordinator
        # relays it without learning the intersection or its size.
        out = Out(runtime, doc, INDICES, 0, recipient=plan.providers[0], item=1)
        yield from out.chunks(s.provider_bitmap())
        yield from out.end()
    # The intersection and its size stay here; the coordinator is told only that it is done.
    yield done(PsiFinished(own=s.count))


# ----- providers ---------------------------------------------------------------------------------------
def hop(runtime, header, inbound):
    """Raise one chain's stream to this provider's key, after checking count and signature."""
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    hp: HopParams = decode_params(header)
    p, plan = _plan(doc)
    chain = plan.chain(hp.chain or plan.requester_chain.id)
    pos = chain.position(runtime.node_id) if chain is not None else None
    if pos is None:
        raise PermissionDenied("this node has no hop in that chain of the job")
    shuffle = chain.hops[pos].shuffle
    if hp.shuffle != shuffle:
        raise InvalidInput("the hop's shuffle flag disagrees with the job's plan")
    use_once(runtime, doc, f"psi.hop:{chain.id}")
    # R's chain carries exactly the set size R signed (what the quota charged); other chains
    # carry what their producer signs after the stream.
    expected = p.subjects if chain.owner == doc["requester"] else None
    s = session(runtime, doc)
    stage = s.hop(shuffle=shuffle)
    digest, n_in, outputs = hashlib.sha256(), 0, []
    for data, count in _stream_points(inbound, "in"):
        n_in += count
        if n_in > (MAX_POINTS if expected is None else expected):
            raise PermissionDenied("the stream holds more points than the requester signed for")
        digest.update(data)
        if shuffle:
            stage.accept(data, count)
        else:
            outputs.append(stage.process_later(data, count))      # fetched once the stream is signed
        yield progress(hp.label, runtime.node_id, n_in, expected or 0)
    signature = read_blob(inbound, "binding", MAX_SIGNATURE)
    if expected is not None and n_in != expected:
        raise PermissionDenied("the stream does not hold the number of points the requester signed for")
    check_signed(runtime, doc, chain.producer(pos), chain.id, pos + 1, n_in, digest.digest(), signature)
    # Only now does anything leave this node.
    final = pos == len(chain.hops) - 1
    out = Out(runtime, doc, chain.id, pos + 2, recipient=chain.destination if final else None)
    for data in (stage.output_chunks(CHUNK_POINTS) if shuffle else (later() for later in outputs)):
        yield out.chunk(data)
    yield from out.end()
    runtime.audit.append("psi.hop", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"points": n_in})
    yield done(Count(count=n_in))


def own(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    _, plan = _plan(doc)
    use_once(runtime, doc, "psi.own")
    s = session(runtime, doc)
    # Two-party: straight to the requester, sealed. k-party: into the chain, in clear, signed.
    out = Out(runtime, doc, psi_plan.chain_id(runtime.node_id), 1,
              recipient=doc["requester"] if plan.combiner is None else None)
    for data in s.own_chunks(CHUNK_POINTS, shuffle=True):
        yield out.chunk(data)
        yield progress("own", runtime.node_id, out.n, s.count)
    yield from out.end()
    runtime.audit.append("psi.own", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         dataset=own_dataset(runtime, doc), counts={"rows": s.count})
    yield done(Count(count=s.count))


def combine(runtime, header, inbound):
    """k-party: the common rows of every provider's fully re-encrypted set, padded to the
    smallest set's size with re-randomised rows of it, shuffled and sealed to the requester."""
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    _, plan = _plan(doc)
    if plan.combiner != runtime.node_id:
        raise PermissionDenied("this node does not combine the providers' sets of this job")
    use_once(runtime, doc, "psi.combine")
    s = session(runtime, doc)
    combiner = psi_plan.Combiner(len(plan.providers))
    for i, owner in enumerate(plan.providers):
        chain = plan.chain(psi_plan.chain_id(owner))
        got = SealedIn(runtime, doc, inbound, f"set:{owner}", chain.id)
        for data, count in got:
            combiner.accept(i, data, count)
        check_signed(runtime, doc, chain.hops[-1].node, chain.id, chain.final_stage, got.n, got.digest,
                     got.signature)
        yield progress("combine", runtime.node_id, i + 1, len(plan.providers))
    fresh = s.backend.random_scalar(secrets.token_bytes)
    total = combiner.pad_to_smallest(lambda rows: s.backend.scalarmult_batch(fresh, rows) if len(rows)
                                     else np.empty((0, POINT_LEN), dtype=np.uint8))
    out = Out(runtime, doc, COMBINED, 0, recipient=doc["requester"])
    for data in combiner.result_chunks(CHUNK_POINTS):
        yield out.chunk(data)
    yield from out.end()
    runtime.audit.append("psi.combine", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"sets": len(plan.providers), "rows": total})
    yield done(Count(count=total))


def learn(runtime, header, inbound):
    """Result to both parties: the requester's bitmap of the intersection over our list."""
    doc = checked_spec(runtime, header)
    require_admitted(runtime, doc)
    if not job_kinds.params_of(doc, "psi").result_to_all:
        raise PermissionDenied("the requester did not ask to share the result")
    use_once(runtime, doc, "psi.learn")
    with runtime.sessions_lock:
        s = runtime.sessions.get(doc["job_id"])
    if s is None:
        raise FailedPrecondition("no PSI session for this job at this node")
    got = SealedIn(runtime, doc, inbound, INDICES, INDICES, item=1, limit=(s.count + 7) // 8)
    bitmap = b"".join(data for data, _ in got)
    check_signed(runtime, doc, doc["requester"], INDICES, 0, got.n, got.digest, got.signature)
    ids = s.learn_from_bitmap(bitmap)
    store_results(runtime, doc["job_id"], "id_number\n" + "".join(f"{i}\n" for i in ids), len(ids),
                  {"intersection": len(ids), "shared_by": doc["requester"]})
    runtime.audit.append("psi.learn", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"intersection": len(ids)})
    yield done(NoResult())
