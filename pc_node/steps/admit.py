"""Admission of a job at a provider: signature, policy, quota, approval.

The coordinator calls ``job.admit`` on every provider before any data moves. Each later
step calls ``checked_spec`` again, so nothing runs for a job the node has not admitted
under a spec the requester really signed.
"""
from __future__ import annotations

import hashlib

from pc_common import job_kinds
from pc_common.errors import FailedPrecondition, PermissionDenied
from pc_common.steps_schema import Admission
from pc_node.steps.common import done


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


def authorise(runtime, doc: dict) -> list:
    grants = []
    for dataset, uses, reveal in needs(doc, runtime.node_id, runtime):
        grants.append(runtime.policy.authorise(dataset, runtime.store.dataset(dataset).key_column,
                                               doc["requester"], doc["purpose"], uses, reveal))
    return grants


def admit(runtime, header, inbound):
    """``job.admit``: signature, policy, quota and (manual) approval at a provider."""
    doc = checked_spec(runtime, header)
    if doc["requester"] == runtime.node_id:
        yield done(Admission(admitted="yes", role="requester"))
        return
    grants = authorise(runtime, doc)
    if not grants:
        raise PermissionDenied("this node holds none of the job's datasets")
    datasets = sorted({g.dataset for g in grants})
    try:   # at most once per job, however many admissions race (first_time: this one charged it)
        first_time = runtime.governance.charge(doc["job_id"] + "#charged", doc["requester"], subject_count(doc),
                                               {k: min(g.quota[k] for g in grants) for k in grants[0].quota},
                                               doc["expires_at"])
    except Exception as exc:
        runtime.audit.append("alert.quota", job=doc["job_id"], requester=doc["requester"],
                             purpose=doc["purpose"], detail=str(exc)[:200], outcome="refused")
        raise
    if any(g.approval == "manual" for g in grants):
        state = runtime.governance.approval_state(doc["job_id"], doc["requester"], doc["purpose"], datasets)
        if state == "pending":
            if first_time:
                runtime.audit.append("approval.requested", job=doc["job_id"], requester=doc["requester"],
                                     purpose=doc["purpose"], dataset=",".join(datasets))
            yield done(Admission(admitted="pending"))
            return
        if state != "approved":
            raise PermissionDenied(f"the job was {state} by the data officer of '{runtime.node_id}'")
    if runtime.governance.mark_once(doc["job_id"] + "#admitted", doc["expires_at"]):
        runtime.audit.append("job.admit", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                             dataset=",".join(datasets), counts={"subjects": subject_count(doc)})
    yield done(Admission(admitted="yes"))


def spec_digest(header) -> bytes:
    return hashlib.sha256(header.spec.spec).digest()


def require_admitted(runtime, doc: dict) -> None:
    """A provider step runs only for a job this node admitted (approval included) and whose
    grants still hold now (the policy may have changed since admission)."""
    if doc["requester"] == runtime.node_id:
        raise PermissionDenied("this step is a provider's; the requester does not run it")
    if not runtime.governance.is_marked(doc["job_id"] + "#admitted"):
        raise FailedPrecondition("job was not admitted at this node")
    authorise(runtime, doc)


def use_once(runtime, doc: dict, what: str, limit: int = 1) -> None:
    """Refuse to repeat a provider step for the same job beyond ``limit`` times, so a
    coordinator cannot turn a provider into an oracle by replaying steps. Each use takes one
    marker atomically, so racing replays cannot both pass."""
    for i in range(limit):
        if runtime.governance.mark_once(f"{doc['job_id']}#{what}#{i}", doc["expires_at"]):
            return
    raise PermissionDenied(f"step '{what}' was already run for this job")
