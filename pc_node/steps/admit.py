"""Admission of a job at a provider: signature, policy (column uses, reveal, the rule's
comparisons as the grant pins them), quota, approval.

The coordinator calls ``job.admit`` on every provider before any data moves. Each later
step calls ``checked_spec`` again, so nothing runs for a job the node has not admitted
under a spec the requester really signed; ``require_admitted`` re-checks the grants.
:func:`charge_subjects` is the provider's check of a verification's opened subject list:
no duplicates, and each subject evaluated at most N times per period for one requester.
"""
from __future__ import annotations

import hashlib

import numpy as np

from pc_common import job_kinds, jobspec
from pc_common.errors import FailedPrecondition, InvalidInput, PermissionDenied, ResourceExhausted
from pc_common.steps_schema import Admission
from pc_node import idnum
from pc_node.policy import PERIODS
from pc_node.steps.common import done
from pc_rules import pinning
from pc_rules.rules import Rule


def needs(doc: dict, node_id: str, runtime) -> list[tuple[str, dict, str]]:
    """(dataset, {column: use}, reveal) for every dataset of this node the job touches."""
    from pc_node.steps import KINDS   # the node's table of job kinds (it imports this module)
    uses, reveal = KINDS[doc["kind"]].admission(job_kinds.params_of(doc), node_id)
    result = []
    for dataset, cols in uses.items():
        meta = runtime.store.dataset(dataset)
        result.append((dataset, {meta.key_column: "join_key", **cols}, reveal))
    return result


def subject_count(doc: dict) -> int:
    return job_kinds.params_of(doc).subjects


def checked_spec(runtime, header) -> dict:
    """Verify the signed spec of a step and that this node admitted the job."""
    doc = runtime.verify_spec(header.spec)
    if header.job_id != doc["job_id"]:
        raise PermissionDenied("step header names another job than its signed spec")
    return doc


def _rule(doc: dict) -> Rule | None:
    """A verification's rule (its comparisons need the grant's pins), None for other kinds."""
    if doc["kind"] != "verify":
        return None
    return Rule.from_dict(job_kinds.params_of(doc, "verify").rule, "job spec")


def authorise(runtime, doc: dict) -> list:
    grants = []
    rule = _rule(doc)
    for dataset, uses, reveal in needs(doc, runtime.node_id, runtime):
        grants.append(runtime.policy.authorise(dataset, runtime.store.dataset(dataset).key_column,
                                               doc["requester"], doc["purpose"], uses, reveal,
                                               rule=rule, agency=runtime.node_id))
    if doc["kind"] == "query" and grants:   # the grant's minimum group size (docs/query.md)
        from pc_node.steps.query import check_group_size
        check_group_size(job_kinds.params_of(doc, "query"), grants)
    return grants


def _threshold_text(c) -> str:
    if c.max is not None:
        return f"max = {c.max}"
    if c.per_member is not None:
        return f"per_member = {c.per_member}"
    if c.limit is not None:
        return f"limit = {c.limit}"
    return ""


def approval_details(runtime, doc: dict) -> dict:
    """What the data officer sees of a job besides its purpose: the subject count and, for a
    verification, the rule and every criterion touching this node with thresholds and ``where``."""
    params = job_kinds.params_of(doc)
    details: dict = {"kind": doc["kind"], "subjects": params.subjects}
    rule = _rule(doc)
    if rule is not None:
        details.update(rule=rule.id, title=rule.title, reveal=rule.reveal, groups=params.groups, criteria=[
            {"name": c.name, "type": c.type, "sources": list(c.sources) if c.type == "sum_below" else [c.source],
             "where": c.where.to_text() if c.where is not None else "", "threshold": _threshold_text(c)}
            for c in pinning.criteria_touching(rule, runtime.node_id)])
    return details


def admit(runtime, header, inbound):
    """``job.admit``: signature, policy, quota and (manual) approval at a provider."""
    doc = checked_spec(runtime, header)
    if doc["requester"] == runtime.node_id:
        yield done(Admission(admitted="yes", role="requester"))
        return
    grants = authorise(runtime, doc)
    if not grants:
        raise PermissionDenied("this node holds none of the job's datasets")
    if doc["kind"] == "query":   # ε demanded, declared categories, DP bounds, the ledger's budget
        from pc_node.steps.query import admit_query
        admit_query(runtime, doc, grants)
    elif doc["kind"] == "query_private":   # no DP demanded, the minimum group size
        from pc_node.steps.query_private import admit_private
        admit_private(runtime, doc, grants)
    datasets = sorted({g.dataset for g in grants})
    try:   # at most once per job, however many admissions race (first_time: this one charged it)
        first_time = runtime.governance.charge(doc["job_id"] + "#charged", doc["requester"], subject_count(doc),
                                               {k: min(g.quota[k] for g in grants) for k in grants[0].quota},
                                               jobspec.lifetime_end(doc))
    except Exception as exc:
        runtime.audit.append("alert.quota", job=doc["job_id"], requester=doc["requester"],
                             purpose=doc["purpose"], detail=str(exc)[:200], outcome="refused")
        raise
    if any(g.approval == "manual" for g in grants):
        state = runtime.governance.approval_state(doc["job_id"], doc["requester"], doc["purpose"], datasets,
                                                  approval_details(runtime, doc))
        if state == "pending":
            if first_time:
                runtime.audit.append("approval.requested", job=doc["job_id"], requester=doc["requester"],
                                     purpose=doc["purpose"], dataset=",".join(datasets))
            yield done(Admission(admitted="pending"))
            return
        if state != "approved":
            raise PermissionDenied(f"the job was {state} by the data officer of '{runtime.node_id}'")
    if runtime.governance.mark_once(doc["job_id"] + "#admitted", jobspec.lifetime_end(doc)):
        runtime.audit.append("job.admit", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                             dataset=",".join(datasets), counts={"subjects": subject_count(doc)})
    yield done(Admission(admitted="yes"))


def spec_digest(header) -> bytes:
    return hashlib.sha256(header.spec.spec).digest()


def require_admitted(runtime, doc: dict) -> list:
    """A provider step runs only for a job this node admitted (approval included) and whose
    grants still hold now (the policy may have changed since admission); returns those grants."""
    if doc["requester"] == runtime.node_id:
        raise PermissionDenied("this step is a provider's; the requester does not run it")
    if not runtime.governance.is_marked(doc["job_id"] + "#admitted"):
        raise FailedPrecondition("job was not admitted at this node")
    return authorise(runtime, doc)


def charge_subjects(runtime, doc: dict, grants: list, identifiers: list[str]) -> None:
    """A provider's check of an opened subject list before evaluating it.

    A list naming one subject twice (after normalisation) is refused (INVALID_ARGUMENT): copies
    of one person in several groups would give independent draws of the same answer. Then every
    subject is charged one evaluation for the requester, under the node's blind index of its
    identifier, all or nothing; beyond a grant's ``max_evaluations_per_subject`` per
    ``evaluation_period`` the whole job is refused (RESOURCE_EXHAUSTED) with an audit alert.
    """
    normalised = [idnum.normalise(i) for i in identifiers]
    if len(set(normalised)) != len(normalised):
        runtime.audit.append("alert.subjects", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                             detail="sealed subject list names a subject more than once", outcome="refused")
        raise InvalidInput("the sealed subject list names the same subject more than once")
    limits = [(g.max_evaluations_per_subject, PERIODS[g.evaluation_period]) for g in grants]
    indexes = _blind_indexes(runtime.store.cipher, normalised)
    try:
        runtime.governance.charge_evaluations(doc["job_id"] + "#evaluations", doc["requester"], indexes, limits,
                                              jobspec.lifetime_end(doc))
    except ResourceExhausted as exc:
        runtime.audit.append("alert.evaluations", job=doc["job_id"], requester=doc["requester"],
                             purpose=doc["purpose"], counts={"subjects": len(indexes)}, detail=str(exc)[:200],
                             outcome="refused")
        raise


def _blind_indexes(cipher, normalised: list[str]) -> list[bytes]:
    """The node's blind index of each identifier: in bulk (the numba HMAC-SM3 kernel, equal row
    by row to ``blind_index``) when all are identity numbers of 18 ASCII characters."""
    joined = "".join(normalised)
    if normalised and joined.isascii() and len(joined) == 18 * len(normalised):
        rows = cipher.blind_index_rows(np.frombuffer(joined.encode("ascii"), np.uint8).reshape(-1, 18))
        return [bytes(r) for r in rows]
    return [cipher.blind_index(i) for i in normalised]


def use_once(runtime, doc: dict, what: str, limit: int = 1) -> None:
    """Refuse to repeat a provider step for the same job beyond ``limit`` times, so a
    coordinator cannot turn a provider into an oracle by replaying steps. Each use takes one
    marker atomically, so racing replays cannot both pass."""
    for i in range(limit):
        if runtime.governance.mark_once(f"{doc['job_id']}#{what}#{i}", jobspec.lifetime_end(doc)):
            return
    raise PermissionDenied(f"step '{what}' was already run for this job")
