"""Protocol steps a node runs when the coordinator drives a job, and the node's job kinds.

A step handler is ``handler(runtime, header, inbound) -> iterator of StepMessage``:
``header`` is the first message of the stream (with the signed job spec), ``inbound`` the
rest. Every handler first checks the spec (``admit.checked_spec``), so a coordinator
cannot make a node act on a job its requester did not sign. Parameters and results of each
step are declared in ``pc_common.steps_schema``; the job kinds in ``pc_common.job_kinds``.

Both tables here are plain literals, checked at import against the shared ones:
:data:`STEPS` (step name → handler) and :data:`KINDS` (job kind → how this node completes
and signs its spec, and what the job asks of this node's datasets at admission).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from pc_common import job_kinds, steps_schema
from pc_common.errors import InvalidInput
from pc_common.pb import node_pb2
from pc_node.steps import admit, lookup, psi, psi_kkrt, query, query_private, verify, verify_compare

Handler = Callable[..., Iterator[node_pb2.StepMessage]]


@dataclass(frozen=True)
class NodeKind:
    #: ``(runtime, client params, subject set) -> (spec params, purpose)`` for ``PrepareJob``.
    prepare: Callable[..., tuple[dict, str]]
    #: ``(typed params, node id) -> ({dataset: {column: use}}, reveal)`` for ``job.admit``.
    admission: Callable[..., tuple[dict, str]]


KINDS: dict[str, NodeKind] = {
    "verify": NodeKind(prepare=verify.prepare_job, admission=verify.admission),
    "psi": NodeKind(prepare=psi.prepare_job, admission=psi.admission),
    "lookup": NodeKind(prepare=lookup.prepare_job, admission=psi.admission),
    "query": NodeKind(prepare=query.prepare_job, admission=query.admission),
    "query_private": NodeKind(prepare=query_private.prepare_job, admission=query_private.admission),
}

STEPS: dict[str, Handler] = {
    "job.admit": admit.admit,
    "job.cleanup": verify.cleanup,
    "verify.prepare": verify.prepare,
    "verify.evaluate": verify.evaluate,
    "verify.compare": verify_compare.compare,
    "psi.blind": psi.blind,
    "psi.hop": psi.hop,
    "psi.own": psi.own,
    "psi.combine": psi.combine,
    "psi.finish": psi.finish,
    "psi.learn": psi.learn,
    "psi.kkrt_recv": psi_kkrt.recv,
    "psi.kkrt_send": psi_kkrt.send,
    "lookup.status": lookup.status,
    "lookup.filter": lookup.filter_,
    "lookup.blind": lookup.blind,
    "lookup.evaluate": lookup.evaluate,
    "lookup.finish": lookup.finish,
    "query.prepare": query.prepare,
    "query.evaluate": query.evaluate,
    "query.release": query.release,
    "query_private.prepare": query_private.prepare,
    "query_private.evaluate": query_private.evaluate,
    "query_private.release": query_private.release,
}

job_kinds.check_covers("the node's", KINDS)
if set(STEPS) != set(steps_schema.STEPS):
    raise RuntimeError("pc_node.steps.STEPS is out of step with pc_common.steps_schema.STEPS "
                       f"({sorted(set(STEPS) ^ set(steps_schema.STEPS))})")


def handler(name: str) -> Handler:
    fn = STEPS.get(name)
    if fn is None:
        raise InvalidInput(f"unknown step '{name[:64]}'")
    return fn
