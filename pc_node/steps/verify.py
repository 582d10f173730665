"""Eligibility verification steps at the nodes.

Requester node:
  ``verify.prepare``  fresh HE key pair; opaque slots (a random permutation of the
                      subjects); per provider a sealed (slot, identifier) list in random
                      order with no grouping; to the coordinator only the public context
                      and the slot→group layout (no identifiers).
  ``verify.compare``  (``pc_node.steps.verify_compare``) decrypts the coordinator's masked
                      values, runs the garbled-circuit comparison as evaluator, learns one bit
                      per household (or per household and criterion), writes the results
                      file, and wipes the job's keys.
Provider node:
  ``verify.evaluate`` opens its sealed list, evaluates its criteria locally and returns one
                      ciphertext per slot and criterion under the requester's key.
"""
from __future__ import annotations

import hashlib
import json
import random
import struct

import numpy as np

from pc_common import gm, job_kinds, money
from pc_common import steps_schema as schema
from pc_node import envelope
from pc_common.errors import IntegrityError, InvalidInput, PermissionDenied
from pc_rules.rules import Rule, column_uses
from pc_node.secure_agg import get_backend
from pc_node.secure_agg.verdict import COUNT_CAP
from pc_node.steps.admit import charge_subjects, checked_spec, require_admitted, use_once
from pc_common.wire import MAX_GROUP, MAX_VALUE_CENTS
from pc_node.steps.common import blob_chunks, done, hours_from_now, progress, read_blob

SLOT_ITEM = struct.Struct(">I18s")
WORKING_DATA_HOURS = 24           # keys and working data of a job never outlive this
_rng = random.SystemRandom()


def _params(doc: dict) -> job_kinds.VerifyParams:
    return job_kinds.params_of(doc, "verify")


def _rule(doc: dict) -> Rule:
    return Rule.from_dict(_params(doc).rule, "job spec")


def prepare_job(runtime, params: dict, subject_set: str) -> tuple[dict, str]:
    """Complete a verification spec (``PrepareJob``): the subject set and its sizes."""
    rule = Rule.from_dict(job_kinds.VerifyParams.from_params(params).rule, "job spec")
    if rule.requester != runtime.node_id:
        raise PermissionDenied(f"the rule's requester is '{rule.requester}', not this node")
    subjects = json.loads(runtime.store.get_blob("subjects", subject_set))
    return {**params, "subject_set": subject_set, "subjects": len(subjects["subjects"]),
            "groups": len(set(subjects["groups"]))}, rule.purpose


def admission(p: job_kinds.VerifyParams, node_id: str) -> tuple[dict, str]:
    """What a verification asks of this node's datasets (see ``admit.needs``)."""
    rule = Rule.from_dict(p.rule, "job spec")
    return column_uses(rule, node_id), rule.reveal


def _aad(job_id: str, provider: str) -> bytes:
    return f"pc/verify/{job_id}/{provider}".encode()


def _binding(job_id: str, provider: str, pubctx: bytes, sealed: bytes) -> bytes:
    return b"pc/verify/binding\x00" + f"{job_id}\x00{provider}\x00".encode() + \
        hashlib.sha256(pubctx).digest() + hashlib.sha256(sealed).digest()


def _sealed_list(items: list[tuple[int, str]], recipient_public: bytes, aad: bytes) -> bytes:
    buf = bytearray(SLOT_ITEM.size * len(items))
    for i, (slot, ident) in enumerate(items):
        SLOT_ITEM.pack_into(buf, i * SLOT_ITEM.size, slot, ident.encode("ascii"))
    return envelope.seal(recipient_public, bytes(buf), aad)


def _open_list(runtime, blob: bytes, aad: bytes) -> list[tuple[int, str]]:
    raw = envelope.open_envelope(runtime.x25519_private, blob, aad)
    if len(raw) % SLOT_ITEM.size:
        raise InvalidInput("sealed subject list has a bad length")
    return [(slot, ident.decode("ascii")) for slot, ident in SLOT_ITEM.iter_unpack(raw)]


def prepare(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester node prepares its verification")
    rule = _rule(doc)
    params = _params(doc)
    subjects = json.loads(runtime.store.get_blob("subjects", params.subject_set))
    ids, groups = subjects["subjects"], subjects["groups"]
    n = len(ids)
    backend = get_backend(params.he)
    pub, secret = backend.generate_keypair()
    # Group numbers in random order, subjects in random slots: the layout tells the
    # coordinator household sizes, nothing about who or which input rows.
    distinct = list(dict.fromkeys(groups))
    if n and max(np.unique(np.array(groups, dtype=object), return_counts=True)[1]) > MAX_GROUP:
        raise InvalidInput(f"a group has more than {MAX_GROUP} members")
    _rng.shuffle(distinct)
    group_no = {g: i for i, g in enumerate(distinct)}
    slots = list(range(n))
    _rng.shuffle(slots)
    layout = np.zeros(n, dtype="<u4")
    for i in range(n):
        layout[slots[i]] = group_no[groups[i]]
    working = {"he": backend.name, "slots": slots, "group_no": [group_no[g] for g in groups], "groups": len(distinct)}
    # Wiped by job.cleanup; the expiry is the backstop if cleanup never reaches this node.
    expires = hours_from_now(WORKING_DATA_HOURS)
    runtime.store.put_blob("jobkeys", doc["job_id"], secret.serialize_secret(), expires_at=expires)
    runtime.store.put_blob("verifyjob", doc["job_id"], json.dumps(working).encode(), expires_at=expires)
    pubctx = pub.serialize()
    yield from blob_chunks("pubctx", pubctx)
    yield from blob_chunks("layout", layout.tobytes())
    for provider in rule.providers():
        items = [(slots[i], ids[i]) for i in range(n)]
        _rng.shuffle(items)
        sealed = _sealed_list(items, runtime.peer_keys(provider).x25519_public, _aad(doc["job_id"], provider))
        yield from blob_chunks(schema.sealed_stream(provider), sealed)
        # Bind key and list to this job and provider under our SM2 signature: the coordinator
        # cannot swap in its own key or its own identifiers.
        yield from blob_chunks(schema.binding_stream(provider),
                               runtime.sm2.sign(_binding(doc["job_id"], provider, pubctx, sealed)))
    runtime.audit.append("verify.prepare", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"subjects": n, "groups": len(distinct)}, detail=backend.name)
    yield done(schema.VerifyPrepared(slots=n, groups=len(distinct), he=backend.name))


def _typed_rows(meta, rows: list[list[str]]) -> list[dict]:
    names = [c.name for c in meta.columns]
    return [dict(zip(names, r)) for r in rows]


def evaluate_criteria(runtime, rule: Rule, items: list[tuple[int, str]], n_slots: int) -> dict[str, np.ndarray]:
    """Per criterion touching this node: one integer per slot (match count or sum in cents)."""
    out: dict[str, np.ndarray] = {}
    cache: dict[str, dict] = {}
    keys = [ident for _, ident in items]
    for c in rule.criteria:
        refs = {ref: cols for ref, cols in c.datasets().items() if ref.split(".")[0] == runtime.node_id}
        if not refs:
            continue
        values = np.zeros(n_slots, dtype=object)
        for ref in refs:
            dataset = ref.split(".")[1]
            meta = runtime.store.dataset(dataset)
            if dataset not in cache:
                cache[dataset] = runtime.store.rows_for_keys(dataset, keys)
            found = cache[dataset]
            sum_cols = [s.split(".")[2] for s in c.sources if s.startswith(ref + ".")] if c.type == "sum_below" else []
            for slot, ident in items:
                rows = _typed_rows(meta, found.get(ident, []))
                if c.where is not None:
                    rows = [r for r in rows if c.where.evaluate(r)]
                if c.type == "sum_below":
                    v = sum(money.cell_cents(r[col]) for r in rows for col in sum_cols)
                else:
                    v = len(rows)
                # Clamp rather than fail: an error here would tell the coordinator and the other
                # agencies that some subject has an extreme record. Thresholds are far below the
                # bound, so a clamped value gives the same verdict. Counts are capped lower
                # (COUNT_CAP, exact for every admitted count test) so that they fit the
                # comparison's integer mode.
                if c.type == "sum_below":
                    values[slot] = max(-MAX_VALUE_CENTS, min(MAX_VALUE_CENTS, values[slot] + v))
                else:
                    values[slot] = min(COUNT_CAP, values[slot] + v)
        out[c.name] = values
    return out


def evaluate(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    grants = require_admitted(runtime, doc)
    rule = _rule(doc)
    backend = get_backend(_params(doc).he)
    pubctx = read_blob(inbound, "pubctx", 64 << 20)
    sealed = read_blob(inbound, "sealed", 1 << 30)
    signature = read_blob(inbound, "binding", 1024)
    try:
        gm.Sm2PublicKey.from_hex(runtime.peer_keys(doc["requester"]).sm2_public).verify(
            _binding(doc["job_id"], runtime.node_id, pubctx, sealed), signature)
    except (IntegrityError, InvalidInput, ValueError):
        raise PermissionDenied("the key and subject list are not signed by the requester for this job") from None
    use_once(runtime, doc, "verify.evaluate")
    pub = backend.load_public(pubctx)
    items = _open_list(runtime, sealed, _aad(doc["job_id"], runtime.node_id))
    n = _params(doc).subjects
    if len(items) != n or any(not (0 <= s < n) for s, _ in items) or len({s for s, _ in items}) != n:
        raise InvalidInput("sealed subject list does not match the job's slots")
    # No subject twice in one list, and at most N evaluations of a subject per period (per grant).
    charge_subjects(runtime, doc, grants, [ident for _, ident in items])
    yield progress("evaluate", runtime.node_id, 0, n)
    values = evaluate_criteria(runtime, rule, items, n)
    yield progress("evaluate", runtime.node_id, n, n)
    for name, vec in values.items():
        cv = backend.encrypt(pub, [int(v) for v in vec])
        yield from blob_chunks(schema.ciphertext_stream(name), cv.serialize())
    runtime.audit.append("verify.evaluate", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                         counts={"subjects": n, "criteria": len(values)})
    yield done(schema.VerifyEvaluated(subjects=n, criteria=tuple(values)))


def _working(runtime, job_id: str):
    working = json.loads(runtime.store.get_blob("verifyjob", job_id))
    backend = get_backend(working["he"])
    secret = backend.load_secret(runtime.store.get_blob("jobkeys", job_id))
    return working, backend, secret


def wipe(runtime, job_id: str, subject_set: str | None = None) -> int:
    n = 0
    for kind in ("jobkeys", "verifyjob", "psiwork", "queryjob"):
        n += runtime.store.delete_blobs(kind, job_id)
    if subject_set:
        n += runtime.store.delete_blobs("subjects", subject_set)
    return n


def cleanup(runtime, header, inbound):
    """``job.cleanup`` (every kind): wipe the job's keys, working data and sessions here."""
    doc = checked_spec(runtime, header)
    own_subjects = doc["kind"] == "verify" and doc["requester"] == runtime.node_id
    n = wipe(runtime, doc["job_id"], _params(doc).subject_set if own_subjects else None)
    from pc_node.steps.psi import drop_session
    n += int(drop_session(runtime, doc["job_id"]))
    if n:
        runtime.audit.append("retention.wipe", job=doc["job_id"], counts={"items": n})
    yield done(schema.Wiped(wiped=n))
