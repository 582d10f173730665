"""The coordinator's job kinds: how a submitted job is validated and then orchestrated.

A plain table over the kinds of ``pc_common.job_kinds`` (checked at import): ``validate``
checks a verified spec against the catalog and the providers' published grants and returns
the parties that must admit the job; ``run`` drives the nodes through the job's steps.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from pc_common import job_kinds
from pc_common.errors import InvalidInput
from pc_coordinator import lookup_jobs, psi_jobs, query_jobs, query_private_jobs, verify_jobs
from pc_coordinator.directory import Directory
from pc_coordinator.runner import Orchestrator


@dataclass(frozen=True)
class CoordinatorKind:
    validate: Callable[[dict, Directory], list[str]]
    run: Orchestrator


KINDS: dict[str, CoordinatorKind] = {
    "verify": CoordinatorKind(validate=verify_jobs.validate, run=verify_jobs.run),
    "psi": CoordinatorKind(validate=psi_jobs.validate, run=psi_jobs.run),
    "lookup": CoordinatorKind(validate=lookup_jobs.validate, run=lookup_jobs.run),
    "query": CoordinatorKind(validate=query_jobs.validate, run=query_jobs.run),
    "query_private": CoordinatorKind(validate=query_private_jobs.validate, run=query_private_jobs.run),
}

job_kinds.check_covers("the coordinator's", KINDS)


def kind_of(doc: dict) -> CoordinatorKind:
    k = KINDS.get(doc["kind"])
    if k is None:
        raise InvalidInput(f"this coordinator does not run '{doc['kind']}' jobs")
    return k


def validate(doc: dict, directory: Directory) -> list[str]:
    """The parties that must admit the job, once it is valid against the catalog."""
    return kind_of(doc).validate(doc, directory)
