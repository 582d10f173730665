"""Runs jobs: one background thread per job, driving nodes through ``Node.Step``.

A job waiting for approval (days, possibly) only polls admission; it holds no work slot. At
most ``MAX_WORKING`` jobs work at a time (``JobContext.working``, taken once admission is
complete), so pending approvals never keep other jobs from running.

Orchestrators for each job kind live in their own modules (table: ``pc_coordinator.kinds``).
They get a ``JobContext`` with everything they may touch: channels to nodes, the job store
(for progress and the leakage report) and a cancellation flag. They never see a secret key.
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from typing import Callable, Iterable, Iterator

import grpc

from pc_common import jobspec, tls
from pc_common.certs import PartyFiles
from pc_common.errors import PcError, Unavailable  # noqa: F401 (Unavailable re-exported)
from pc_common.pb import node_pb2, node_pb2_grpc
from pc_common.steps_schema import Record, encode_params
from pc_coordinator.directory import Directory
from pc_coordinator.jobs import JobStore

log = logging.getLogger("pc.coordinator.runner")

Orchestrator = Callable[["JobContext", dict], None]


class Cancelled(PcError):
    pass


class NodeRefused(PcError):
    """A node answered a step with an error status; keeps that status for the caller.

    Refusals a user can act on (policy, quota, bad input) pass through with their own code;
    transport failures become UNAVAILABLE.
    """

    PASS_THROUGH = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED,
                    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                    grpc.StatusCode.NOT_FOUND)

    def __init__(self, node_id: str, code: grpc.StatusCode | None, detail: str):
        super().__init__(f"node '{node_id}' failed in this step: {code.name if code else 'error'}: {detail}")
        self.grpc_code = code if code in self.PASS_THROUGH else grpc.StatusCode.UNAVAILABLE


class JobContext:
    def __init__(self, runner: "JobRunner", job_id: str, spec: bytes, signature: bytes, requester: str):
        self.runner, self.job_id, self.requester = runner, job_id, requester
        self.signed = node_pb2.SignedJobSpec(spec=spec, signature=signature)
        self.cancelled = threading.Event()
        self.timeout = runner.job_timeout
        self.has_work_slot = False

    @property
    def jobs(self) -> JobStore:
        return self.runner.jobs

    @property
    def lifetime_end(self) -> float:
        """When the job's signed lifetime ends: admission (approvals) must be over by then."""
        return jobspec.lifetime_end(jobspec.parse(self.signed.spec))

    def now(self) -> float:
        return self.runner.clock()

    def working(self) -> None:
        """Take one of the runner's work slots (once admission is complete); waits while all
        ``MAX_WORKING`` are taken, and is released when the job ends."""
        while not self.has_work_slot:
            self.check_cancelled()
            self.has_work_slot = self.runner._working.acquire(timeout=0.5)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("job was cancelled")

    def progress(self, step: str, party: str, done: int, total: int) -> None:
        self.jobs.progress(self.job_id, step, party, done, total)

    def header(self, step: str, signer: str, params: Record | None = None) -> node_pb2.StepMessage:
        """The first message of a step: the signed spec and the step's declared parameters."""
        spec = node_pb2.SignedJobSpec(spec=self.signed.spec, signature=self.signed.signature, signer=signer)
        return node_pb2.StepMessage(header=node_pb2.StepHeader(
            job_id=self.job_id, step=step, spec=spec, params=encode_params(step, params)))

    def cleanup(self, parties: list[str]) -> None:
        """Wipe the job's working data at every party, whatever happened to the job.

        Not while the coordinator shuts down: the job is resumed (or failed and cleaned up)
        at the next start, and a job waiting for approval still needs its data. The parties
        are wiped in parallel (each is one round trip the job's end would otherwise wait for)."""
        def wipe(p: str) -> None:
            if self.runner.stopping:
                return
            try:
                for _ in self.step(p, [self.header("job.cleanup", self.requester)]):
                    pass
            except Exception:  # noqa: BLE001 - a node that is down wipes on its own expiry
                pass
        first, *others = list(dict.fromkeys(parties)) or [None]
        threads = [threading.Thread(target=wipe, args=(p,), daemon=True, name="job-wipe") for p in others]
        for t in threads:
            t.start()
        if first is not None:
            wipe(first)
        for t in threads:
            t.join()

    def step(self, node_id: str, messages: Iterable[node_pb2.StepMessage]) -> Iterator[node_pb2.StepMessage]:
        """Open a Step stream to a node; errors become Unavailable with the node named."""
        stub = self.runner.node_stub(node_id)
        call = stub.Step(iter(messages), timeout=self.timeout)
        try:
            for msg in call:
                if self.cancelled.is_set():
                    call.cancel()
                    raise Cancelled("job was cancelled")
                yield msg
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            detail = exc.details() if hasattr(exc, "details") else ""
            raise NodeRefused(node_id, code, detail) from None


RESTARTED = "the coordinator restarted while the job was running"
MAX_WORKING = 8
MAX_NOTED = 1024


class JobRunner:
    def __init__(self, jobs: JobStore, directory: Directory, tls_files: PartyFiles, job_timeout: int,
                 clock: Callable[[], float] = time.time):
        self.jobs, self.directory, self.tls_files = jobs, directory, tls_files
        self.job_timeout = job_timeout
        self.clock = clock          # spec lifetimes and admission deadlines; tests replace it
        self._pool = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="job-cleanup")
        self._working = threading.BoundedSemaphore(MAX_WORKING)
        self._channels: dict[tuple[str, str], grpc.Channel] = {}
        self._contexts: dict[str, JobContext] = {}
        # Providers that admitted a job in SubmitJob's round (admission.admit_once), so that the
        # job's own admission does not ask them a second time a few milliseconds later.
        self._admitted: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    def node_stub(self, node_id: str) -> node_pb2_grpc.NodeStub:
        node = self.directory.node(node_id)
        if not node["online"]:
            raise Unavailable(f"node '{node_id}' is offline")
        key = (node_id, node["address"])
        with self._lock:
            ch = self._channels.get(key)
            if ch is None:
                ch = tls.secure_channel(node["address"], self.tls_files, node_id)
                self._channels[key] = ch
        return node_pb2_grpc.NodeStub(ch)

    def note_admitted(self, job_id: str, node_id: str) -> None:
        with self._lock:
            if job_id not in self._admitted and len(self._admitted) >= MAX_NOTED:
                self._admitted.pop(next(iter(self._admitted)))    # oldest: a job refused at submit
            self._admitted.setdefault(job_id, set()).add(node_id)

    def take_admitted(self, job_id: str) -> set[str]:
        """The providers that already admitted ``job_id`` in this process (once: then forgotten)."""
        with self._lock:
            return self._admitted.pop(job_id, set())

    def start(self, job_id: str, orchestrate: Orchestrator, doc: dict, wait_for: list[str] | None = None) -> None:
        """Run a job's orchestrator in the pool; ``wait_for``: parties to give a short while to
        come online first (a job resumed after a restart, before the nodes' next heartbeat)."""
        spec, signature = self.jobs.spec(job_id)
        ctx = JobContext(self, job_id, spec, signature, doc["requester"])
        with self._lock:
            self._contexts[job_id] = ctx
        threading.Thread(target=self._run, args=(ctx, orchestrate, doc, wait_for or []), daemon=True,
                         name=f"job-{job_id[:8]}").start()

    def cleanup_later(self, job_id: str, requester: str, parties: list[str]) -> None:
        """Send ``job.cleanup`` to a job's parties in the background (a job failed at start)."""
        spec, signature = self.jobs.spec(job_id)
        ctx = JobContext(self, job_id, spec, signature, requester)

        def run():
            self._wait_online(ctx, parties)
            ctx.cleanup(parties)
        self._pool.submit(run)

    def _wait_online(self, ctx: JobContext, parties: list[str], grace: float | None = None) -> None:
        grace = self.directory.offline_after if grace is None else grace
        deadline = time.monotonic() + grace
        while not self._stopping.is_set() and time.monotonic() < deadline:
            try:
                if all(self.directory.node(p)["online"] for p in parties):
                    return
            except PcError:
                return
            self._stopping.wait(0.2)

    def cancel(self, job_id: str) -> None:
        with self._lock:
            ctx = self._contexts.get(job_id)
        if ctx is not None:
            ctx.cancelled.set()

    def _run(self, ctx: JobContext, orchestrate: Orchestrator, doc: dict, wait_for: list[str]) -> None:
        try:
            if wait_for:
                self._wait_online(ctx, wait_for)
            if self._stopping.is_set() or not self.jobs.transition(ctx.job_id, "running"):
                return
            orchestrate(ctx, doc)
            self.jobs.transition(ctx.job_id, "succeeded")
        except Exception as exc:  # noqa: BLE001 - a job failure must never take the server down
            if self._stopping.is_set():
                # Shutting down: leave the job's state as it was; the next start resumes it
                # (admission) or fails it with RESTARTED and cleans up.
                return
            if isinstance(exc, Cancelled):
                self.jobs.transition(ctx.job_id, "cancelled", "cancelled by the requester")
            elif isinstance(exc, PcError):
                self.jobs.transition(ctx.job_id, "failed", str(exc))
            else:
                log.exception("job failed unexpectedly")
                self.jobs.transition(ctx.job_id, "failed", "internal error in the coordinator")
        finally:
            if ctx.has_work_slot:
                self._working.release()
            with self._lock:
                self._contexts.pop(ctx.job_id, None)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def shutdown(self) -> None:
        self._stopping.set()
        with self._lock:
            for ctx in self._contexts.values():
                ctx.cancelled.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for ch in self._channels.values():
            ch.close()
