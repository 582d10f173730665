"""``verify.compare`` at the requester node R: masked values in, one bit per household out.

One bidirectional Step stream with the coordinator C (the garbler):

  C → R  header (``CompareParams``: groups, criteria) and ``masked:<criterion>`` per criterion
         (BFV: per-slot values one-time-padded mod t; Paillier: per-group sums statistically
         masked and re-randomised)
  R → C  ``gc1``   R decrypts, adds up per group (BFV), derives its circuit inputs, OT start
  C → R  ``gc2``   base-OT replies
  R → C  ``gc3``   OT extension
  C → R  ``gc4``   garbled circuit, C's labels, output decoding bits
  R → C  done      R evaluates: per household the verdict (or per criterion its pass bit),
                   writes the results file (same contract as before), wipes the job's keys

R never encrypts here. The plan (widths, modes, offsets) comes from the signed rule and R's
own key, the group count from R's own job state; the header must agree with both.
"""
from __future__ import annotations

import csv
import io
import json

import numpy as np

from pc_common import steps_schema as schema
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.wire import MAX_BLOB
from pc_node.secure_agg import verdict
from pc_node.secure_agg.gc import ComparisonEvaluator
from pc_node.steps.admit import checked_spec
from pc_node.steps.common import blob_chunks, done, read_blob, store_results
from pc_node.steps.verify import _params, _rule, _working, wipe

_MASKED_LIMIT = 1 << 31
_GC2_LIMIT = 64 << 10
_GC4_LIMIT = MAX_BLOB


def _slot_groups(working: dict) -> np.ndarray:
    slot_group = np.zeros(len(working["slots"]), dtype=np.int64)
    slot_group[np.array(working["slots"], dtype=np.int64)] = np.array(working["group_no"], dtype=np.int64)
    return slot_group


def masked_group_values(backend, secret, cv, p, slot_group: np.ndarray, n_groups: int):
    """The masked value d of each group for one criterion, from its masked ciphertext."""
    t = secret.public.plaintext_modulus
    if backend.supports_group_sum:      # Paillier: one statistically masked value per group
        if cv.length != n_groups:
            raise InvalidInput(f"criterion '{p.name}': masked values do not match the job's groups")
        return [int(v) for v in backend.decrypt(secret, cv).tolist()]
    if cv.length != len(slot_group):     # BFV: one-time-padded per slot, summed per group here
        raise InvalidInput(f"criterion '{p.name}': masked values do not match the job's slots")
    return verdict.group_values(backend.decrypt(secret, cv), slot_group, n_groups, t)


def results_csv(rule, subjects: dict, group_no: list[int], passed: np.ndarray,
                failed: list[list[str]]) -> str:
    """The results file: one row per subject in input order (the contract of rules.md)."""
    originals = subjects.get("original", subjects["subjects"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header_row = [rule.subject_column] + ([rule.group_column] if rule.group_column else []) + ["eligible"]
    reasons = rule.reveal == "reasons"
    w.writerow(header_row + (["failed"] if reasons else []))
    for i, ident in enumerate(originals):
        g = group_no[i]
        row = [ident] + ([subjects["groups"][i]] if rule.group_column else []) + \
            ["true" if passed[g] else "false"]
        if reasons:
            row.append(";".join(failed[g]))
        w.writerow(row)
    return buf.getvalue()


def compare(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] != runtime.node_id:
        raise PermissionDenied("only the requester node compares its own job")
    rule = _rule(doc)
    working, backend, secret = _working(runtime, doc["job_id"])
    if backend.name != _params(doc).he:
        raise InvalidInput("the job's key does not belong to the signed backend")
    params: schema.CompareParams = schema.decode_params(header)
    n_groups = working["groups"]
    names = tuple(c.name for c in rule.criteria)
    if params.groups != n_groups or params.criteria != names:
        raise InvalidInput("the comparison does not match this job's groups or the signed rule's criteria")
    if n_groups < 1:
        raise InvalidInput("the job has no subjects to compare")
    t = secret.public.plaintext_modulus
    plans = verdict.plan(rule.criteria, backend.name, t)
    slot_group = _slot_groups(working)
    inputs = []
    for p in plans:
        cv = backend.load_ciphertext(secret.public, read_blob(inbound, schema.masked_stream(p.name), _MASKED_LIMIT))
        inputs.append(verdict.evaluator_input(p, masked_group_values(backend, secret, cv, p, slot_group, n_groups), t))
        del cv
    evaluator = ComparisonEvaluator(verdict.circuit_spec(plans, rule.reveal), inputs)
    yield from blob_chunks(schema.gc_stream(1), evaluator.start())
    yield from blob_chunks(schema.gc_stream(3), evaluator.extend(read_blob(inbound, schema.gc_stream(2), _GC2_LIMIT)))
    bits = evaluator.evaluate(read_blob(inbound, schema.gc_stream(4), _GC4_LIMIT))
    if rule.reveal == "reasons":
        passes = np.asarray(bits, dtype=bool).reshape(n_groups, len(plans))
        passed = passes.all(axis=1)
        failed = [[names[k] for k in np.nonzero(~row)[0]] for row in passes]
    else:
        passed = np.asarray(bits, dtype=bool).reshape(n_groups)
        failed = [[] for _ in range(n_groups)]
    subject_set = _params(doc).subject_set
    subjects = json.loads(runtime.store.get_blob("subjects", subject_set))
    rows = len(subjects.get("original", subjects["subjects"]))
    summary = {"subjects": rows, "groups": n_groups, "eligible_groups": int(passed.sum()),
               "reveal": rule.reveal, "rule": rule.id}
    store_results(runtime, doc["job_id"], results_csv(rule, subjects, working["group_no"], passed, failed),
                  rows, summary)
    wipe(runtime, doc["job_id"], subject_set)
    runtime.audit.append("verify.finish", job=doc["job_id"], requester=runtime.node_id, purpose=doc["purpose"],
                         counts={"subjects": rows, "groups": n_groups})
    # Only sizes go back to the coordinator: verdicts stay at this node.
    yield done(schema.Rows(rows=rows))
