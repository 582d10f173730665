"""Admission of a job at every provider before any data moves (shared by all job kinds).

Providers answer ``admitted`` or ``pending`` (a data officer must approve). While any is
pending the job waits in ``pending_approval`` and the coordinator asks again (every second
for the first minute, then every ``SLOW_POLL_SECONDS``) until the job's signed lifetime
(``admission_until``, days) ends; a rejection, an expiry or a policy refusal from a provider
fails the job with that provider's reason.
"""
from __future__ import annotations

import time

from pc_common.errors import FailedPrecondition, InvalidInput, PermissionDenied
from pc_common.steps_schema import decode_result
from pc_coordinator.runner import JobContext

POLL_SECONDS = 1.0
FAST_POLL_FOR_SECONDS = 60.0
SLOW_POLL_SECONDS = 10.0


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
        else:
            ctx.runner.note_admitted(ctx.job_id, node)
    return pending


def admit_all(ctx: JobContext, parties: list[str], max_wait: float | None = None) -> None:
    """Admission at every provider, waiting in ``pending_approval`` while officers decide.

    The wait ends with the job's lifetime (or after ``max_wait`` seconds, when given). Once
    every provider admitted, the job takes a work slot (``JobContext.working``)."""
    deadline = ctx.lifetime_end if max_wait is None else min(ctx.lifetime_end, ctx.now() + max_wait)
    # Providers that admitted the job in SubmitJob's round are not asked again (their steps
    # still check their own admission record: ``require_admitted``).
    admitted = ctx.runner.take_admitted(ctx.job_id)
    still = admit_once(ctx, [p for p in parties if p not in admitted])
    if not still:
        ctx.working()
        return
    ctx.jobs.transition(ctx.job_id, "pending_approval",
                        "waiting for approval by the data officer of " + ", ".join(still))
    started = time.monotonic()
    while still:
        if ctx.now() > deadline:
            raise FailedPrecondition("approval did not arrive within the job's lifetime from " + ", ".join(still))
        fast = time.monotonic() - started < FAST_POLL_FOR_SECONDS
        if ctx.cancelled.wait(POLL_SECONDS if fast else SLOW_POLL_SECONDS):
            ctx.check_cancelled()
        still = admit_once(ctx, still)
    ctx.jobs.transition(ctx.job_id, "running", "")
    ctx.working()
