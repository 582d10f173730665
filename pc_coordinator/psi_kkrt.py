"""KKRT16 PSI jobs at the coordinator: two open streams, piped into each other.

``psi.kkrt_recv`` at the requester (the KKRT receiver) and ``psi.kkrt_send`` at the provider
(the sender) are opened together; every chunk one answers goes, unchanged, into the other's
request stream (a queue-fed iterator, as ``verify.compare``). Every chunk is an envelope
sealed to the node that reads it: the coordinator learns the set sizes (the nodes' answers),
the number of sealed bytes each way and timings — no identifier, no OPRF value, no result.
"""
from __future__ import annotations

import threading
import time

from pc_common.errors import InvalidInput
from pc_common.psi_plan import KKRT_FROM_RECEIVER, KKRT_FROM_SENDER, kkrt_stream
from pc_common.steps_schema import decode_result
from pc_coordinator.admission import admit_all
from pc_coordinator.runner import JobContext
from pc_coordinator.verify_compare import Outbox

TO_PROVIDER = frozenset(kkrt_stream(r) for r in KKRT_FROM_RECEIVER)
TO_REQUESTER = frozenset(kkrt_stream(r) for r in KKRT_FROM_SENDER)
RELAY_CHUNKS = 32


class _Pump:
    """One direction: a node's answers into the other node's requests. ``failed`` runs on the
    first error of either direction (it abandons both queues, so both streams end)."""

    def __init__(self, ctx: JobContext, node: str, streams: frozenset, outbox: Outbox, errors: list, failed):
        self.ctx, self.node, self.streams, self.outbox, self.errors = ctx, node, streams, outbox, errors
        self.failed = failed
        self.sealed_bytes = 0
        self.done = None

    def run(self, answers) -> None:
        try:
            for msg in answers:
                kind = msg.WhichOneof("kind")
                if kind == "chunk":
                    if msg.chunk.stream not in self.streams:
                        raise InvalidInput(f"node '{self.node}' sent an unexpected stream")
                    self.sealed_bytes += len(msg.chunk.data)
                    self.outbox.put([msg])
                elif kind == "progress":
                    p = msg.progress
                    self.ctx.progress(p.step, self.node, p.done, p.total)
                elif kind == "done":
                    self.done = msg.done
            if self.done is None:
                raise InvalidInput(f"node '{self.node}' ended the step without finishing it")
        except BaseException as exc:  # noqa: BLE001 - the first error is the job's
            self.errors.append(exc)
            self.failed()
        finally:
            self.outbox.close()


def run(ctx: JobContext, doc: dict, params, t0: float) -> dict:
    """Run the two steps; returns the job's summary fields (sizes, sealed bytes)."""
    requester, provider = doc["requester"], params.providers()[0]
    admit_all(ctx, [provider])
    # At most RELAY_CHUNKS sealed chunks (1 MiB each) wait per direction: the relay's memory is
    # bounded whatever the set sizes, and a slow reader slows its sender down. A wait for room
    # ends at a cancel or at the job's deadline, whatever the nodes do.
    deadline = time.monotonic() + ctx.timeout
    to_requester = Outbox(RELAY_CHUNKS, stop=ctx.cancelled, deadline=deadline)
    to_provider = Outbox(RELAY_CHUNKS, stop=ctx.cancelled, deadline=deadline)
    to_requester.put([ctx.header("psi.kkrt_recv", requester)])
    to_provider.put([ctx.header("psi.kkrt_send", requester)])
    errors: list[BaseException] = []

    def failed() -> None:                  # both request streams end, so both steps end
        to_requester.abandon()
        to_provider.abandon()

    sender = _Pump(ctx, provider, TO_REQUESTER, to_requester, errors, failed)
    receiver = _Pump(ctx, requester, TO_PROVIDER, to_provider, errors, failed)

    def provider_step() -> None:
        try:
            sender.run(ctx.step(provider, to_provider))
        finally:
            to_provider.abandon()          # its reader is gone: the requester's pump never waits on it

    thread = threading.Thread(target=provider_step, name=f"kkrt-{ctx.job_id[:8]}", daemon=True)
    thread.start()
    try:
        receiver.run(ctx.step(requester, to_requester))
    finally:
        to_requester.abandon()
        to_provider.close()
        thread.join()
    if errors:
        raise errors[0]
    n_x = decode_result("psi.kkrt_recv", receiver.done).own
    n_y = decode_result("psi.kkrt_send", sender.done).count
    return {"n_x": n_x, "sizes": {provider: n_y},
            "sealed_bytes": {"to_provider": receiver.sealed_bytes, "to_requester": sender.sealed_bytes},
            "elapsed": time.perf_counter() - t0}
