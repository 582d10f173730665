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

import json

import numpy as np

from pc_common import job_kinds, money
from pc_common import steps_schema as schema
from pc_common.errors import InvalidInput, PermissionDenied
from pc_rules.rules import Rule, column_uses
from pc_node.secure_agg import get_backend
from pc_node.secure_agg.verdict import COUNT_CAP
from pc_node.steps.admit import charge_subjects, checked_spec, require_admitted, use_once
from pc_common.wire import MAX_GROUP, MAX_VALUE_CENTS
from pc_node.steps import subject_lists
from pc_node.steps.common import blob_chunks, done, hours_from_now, progress, read_blob

WORKING_DATA_HOURS = 24           # keys and working data of a job never outlive this


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
    if n and max(np.unique(np.array(groups, dtype=object), return_counts=True)[1]) > MAX_GROUP:
        raise InvalidInput(f"a group has more than {MAX_GROUP} members")
    placed = subject_lists.assign_slots(groups)
    slots, distinct = placed.slots, placed.distinct
    working = {"he": backend.name, "slots": slots, "group_no": placed.group_no, "groups": len(distinct)}
    # Wiped by job.cleanup; the expiry is the backstop if cleanup never reaches this node.
    expires = hours_from_now(WORKING_DATA_HOURS)
    runtime.store.put_blob("jobkeys", doc["job_id"], secret.serialize_secret(), expires_at=expires)
    runtime.store.put_blob("verifyjob", doc["job_id"], json.dumps(working).encode(), expires_at=expires)
    pubctx = pub.serialize()
    yield from blob_chunks("pubctx", pubctx)
    yield from blob_chunks("layout", placed.layout.tobytes())
    yield from subject_lists.send_lists(runtime, "verify", doc["job_id"], rule.providers(), slots, ids, pubctx)
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
            if dataset not in cache:   # only the columns the rule reads (the rest come back "")
                cache[dataset] = runtime.store.rows_for_keys(dataset, keys, columns=sorted(rule.datasets()[ref]))
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
    subject_lists.check_binding(runtime, "verify", doc, pubctx, sealed, signature)
    use_once(runtime, doc, "verify.evaluate")
    pub = backend.load_public(pubctx)
    items = subject_lists.open_list(runtime, sealed, subject_lists.aad("verify", doc["job_id"], runtime.node_id))
    n = _params(doc).subjects
    if len(items) != n or any(not (0 <= s < n) for s, _ in items) or len({s for s, _ in items}) != n:
        raise InvalidInput("sealed subject list does not match the job's slots")
    # No subject twice in one list, and at most N evaluations of a subject per period (per grant).
    charge_subjects(runtime, doc, grants, [ident for _, ident in items])
    yield progress("evaluate", runtime.node_id, 0, n)
    values = evaluate_criteria(runtime, rule, items, n)
    yield progress("evaluate", runtime.node_id, n, n)
    for name, vec in values.items():
        cv = runtime.compute.encrypt(backend, pub, [int(v) for v in vec])   # cluster only if values may go
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
