"""Admission of a job at every provider before any data moves (shared by all job kinds).

Providers answer ``admitted`` or ``pending`` (a data officer must approve). While any is
pending the job waits in ``pending_approval`` and the coordinator asks again; a rejection,
an expiry or a policy refusal from a provider fails the job with that provider's reason.
"""
from __future__ import annotations

import time

from pc_common.errors import FailedPrecondition, InvalidInput, PermissionDenied
from pc_common.steps_schema import decode_result
from pc_coordinator.runner import JobContext

POLL_SECONDS = 1.0


def admit_once(ctx: JobContext, parties: list[str]) -> list[str]:
    """One admission round; returns the parties still waiting for approval.

    Raises the first refusal with the provider's own status (PERMISSION_DENIED,
    RESOURCE_EXHAUSTED, …). Admission is idempotent at the provider: quota is charged once.
    """
    pending = []
    for node in parties:
        ctx.check_cancelled()
        answer = None
        for msg in ctx.step(node, [ctx.header("job.admit", ctx.requester)]):
            if msg.WhichOneof("kind") == "done":
                try:
                    answer = decode_result("job.admit", msg.done).admitted
                except InvalidInput:
                    answer = None
        if answer == "pending":
            pending.append(node)
        elif answer != "yes":   # fail closed: no clear yes is a refusal
            raise PermissionDenied(f"node '{node}' did not admit the job")
    return pending


def admit_all(ctx: JobContext, parties: list[str], max_wait: float | None = None) -> None:
    """Admission at every provider, waiting in ``pending_approval`` while officers decide."""
    deadline = time.time() + (max_wait if max_wait is not None else ctx.timeout)
    still = admit_once(ctx, parties)
    if not still:
        return
    ctx.jobs.transition(ctx.job_id, "pending_approval",
                        "waiting for approval by the data officer of " + ", ".join(still))
    while still:
        if time.time() > deadline:
            raise FailedPrecondition("approval did not arrive in time from " + ", ".join(still))
        time.sleep(POLL_SECONDS)
        still = admit_once(ctx, still)
    ctx.jobs.transition(ctx.job_id, "running", "")
