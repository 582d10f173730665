"""Validation of a submitted job against the catalog, per job kind.

Each kind's module registers a validator (``doc, directory -> providers``) and an
orchestrator (see ``runner``). Importing this module loads them all.
"""
from __future__ import annotations

from typing import Callable

from pc_common.errors import InvalidInput
from pc_coordinator.directory import Directory

Validator = Callable[[dict, Directory], list[str]]
VALIDATORS: dict[str, Validator] = {}


def validator(kind: str):
    def register(fn: Validator) -> Validator:
        VALIDATORS[kind] = fn
        return fn
    return register


def validate(doc: dict, directory: Directory) -> list[str]:
    _load()
    fn = VALIDATORS.get(doc["kind"])
    if fn is None:
        raise InvalidInput(f"this coordinator does not run '{doc['kind']}' jobs")
    return fn(doc, directory)


def _load() -> None:
    # Imported lazily: each module registers its validator and orchestrator.
    from pc_coordinator import psi_jobs, verify_jobs  # noqa: F401
