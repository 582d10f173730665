"""Admission of a job at a provider: signature, policy, quota, approval.

The coordinator calls ``job.admit`` on every provider before any data moves. Each later
step calls ``checked_spec`` again, so nothing runs for a job the node has not admitted
under a spec the requester really signed.
"""
from __future__ import annotations

import hashlib

from pc_common.errors import FailedPrecondition, InvalidInput, PermissionDenied
from pc_rules.rules import Rule, column_uses
from pc_node.steps import step
from pc_node.steps.common import done


def needs(doc: dict, node_id: str, runtime) -> list[tuple[str, dict, str]]:
    """(dataset, {column: use}, reveal) for every dataset of this node the job touches."""
    params = doc["params"]
    out: dict[str, dict] = {}
    reveal = "verdict"
    if doc["kind"] == "verify":
        rule = Rule.from_dict(params.get("rule"))
        reveal = rule.reveal
        out = column_uses(rule, node_id)
    elif doc["kind"] in ("psi", "lookup"):
        for ref in params.get("datasets", []):
            agency, _, dataset = str(ref).partition(".")
            if agency == node_id:
                out.setdefault(dataset, {})
                for col in params.get("labels", []) if doc["kind"] == "lookup" else []:
                    out[dataset][col] = "masked" if params.get("masked") else "plaintext"
    else:
        raise InvalidInput("unknown job kind")
    result = []
    for dataset, uses in out.items():
        meta = runtime.store.dataset(dataset)
        uses = {meta.key_column: "join_key", **uses}
        result.append((dataset, uses, reveal))
    return result


def subject_count(doc: dict) -> int:
    n = doc["params"].get("subjects", 0)
    if not isinstance(n, int) or n < 0:
        raise InvalidInput("job spec has an invalid subject count")
    return n


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


@step("job.admit")
def admit(runtime, header, inbound):
    doc = checked_spec(runtime, header)
    if doc["requester"] == runtime.node_id:
        yield done({"admitted": "yes", "role": "requester"})
        return
    grants = authorise(runtime, doc)
    if not grants:
        raise PermissionDenied("this node holds none of the job's datasets")
    datasets = sorted({g.dataset for g in grants})
    first_time = not runtime.governance.spec_seen(doc["job_id"] + "#charged", b"1")
    if first_time:
        try:
            runtime.governance.charge(doc["requester"], subject_count(doc),
                                      {k: min(g.quota[k] for g in grants) for k in grants[0].quota})
        except Exception as exc:
            runtime.audit.append("alert.quota", job=doc["job_id"], requester=doc["requester"],
                                 purpose=doc["purpose"], detail=str(exc)[:200], outcome="refused")
            raise
        runtime.governance.remember_spec(doc["job_id"] + "#charged", b"1", doc["expires_at"])
    if any(g.approval == "manual" for g in grants):
        state = runtime.governance.approval_state(doc["job_id"], doc["requester"], doc["purpose"], datasets)
        if state == "pending":
            if first_time:
                runtime.audit.append("approval.requested", job=doc["job_id"], requester=doc["requester"],
                                     purpose=doc["purpose"], dataset=",".join(datasets))
            yield done({"admitted": "pending"})
            return
        if state != "approved":
            raise PermissionDenied(f"the job was {state} by the data officer of '{runtime.node_id}'")
    if not runtime.governance.spec_seen(doc["job_id"] + "#admitted", b"1"):
        runtime.governance.remember_spec(doc["job_id"] + "#admitted", b"1", doc["expires_at"])
        runtime.audit.append("job.admit", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                             dataset=",".join(datasets), counts={"subjects": subject_count(doc)})
    yield done({"admitted": "yes"})


def spec_digest(header) -> bytes:
    return hashlib.sha256(header.spec.spec).digest()


def require_admitted(runtime, doc: dict) -> None:
    """A provider step runs only for a job this node admitted (approval included) and whose
    grants still hold now (the policy may have changed since admission)."""
    if doc["requester"] == runtime.node_id:
        raise PermissionDenied("this step is a provider's; the requester does not run it")
    if not runtime.governance.spec_seen(doc["job_id"] + "#admitted", b"1"):
        raise FailedPrecondition("job was not admitted at this node")
    authorise(runtime, doc)


def use_once(runtime, doc: dict, what: str, limit: int = 1) -> None:
    """Refuse to repeat a provider step for the same job beyond ``limit`` times, so a
    coordinator cannot turn a provider into an oracle by replaying steps."""
    for i in range(limit):
        marker = f"{doc['job_id']}#{what}#{i}"
        if not runtime.governance.spec_seen(marker, b"1"):
            runtime.governance.remember_spec(marker, b"1", doc["expires_at"])
            return
    raise PermissionDenied(f"step '{what}' was already run for this job")
