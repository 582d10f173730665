"""The coordinator's gRPC service: directory, catalog, jobs.

``create_server(config) -> (server, port, coordinator)`` builds everything, binds the
port (0 picks a free one) and starts serving without blocking (built by
``pc_common.server.create_server``); ``serve`` runs until SIGTERM/SIGINT.
"""
from __future__ import annotations

import logging
import sqlite3
import threading
import time

from pc_common import gm, jobspec, server as grpc_server, tls
from pc_common.audit import AuditLog
from pc_common.config import CoordinatorConfig
from pc_common.errors import InvalidInput, NotFound, PcError, PermissionDenied
from pc_common.identity import Identity
from pc_common.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc, node_pb2
from pc_common.rpc import rpc
from pc_coordinator import kinds
from pc_coordinator.directory import Directory
from pc_coordinator.jobs import TERMINAL, JobStore
from pc_coordinator.admission import admit_once
from pc_coordinator.limits import SERVER_THREADS, StreamSlots
from pc_coordinator.runner import RESTARTED, JobContext, JobRunner

log = logging.getLogger("pc.coordinator")
VERSION = "0.1.0"
CLIENTS = ("client", "officer", "operator")


class CoordinatorService(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, config: CoordinatorConfig, clock=time.time):
        self.config = config
        config.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(config.data_dir / "coordinator.db", check_same_thread=False,
                                   isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # No fsync per commit (1.5 ms each here, a dozen per job): the job table is the
        # coordinator's working state, and a job whose last updates a power cut loses is
        # resumed or failed at restart like any unfinished job. Nodes keep FULL for ledgers.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self.directory = Directory(self._db, self._lock, config.offline_after_seconds)
        self.jobs = JobStore(self._db, self._lock)
        self.watches = StreamSlots()
        self.ca_pem = config.tls.ca.read_bytes()
        key_file = config.tls.cert.parent / "sm2.key"
        signer = gm.Sm2PrivateKey.from_hex(key_file.read_text().strip()) if key_file.exists() else None
        self.audit = AuditLog(config.data_dir / "audit.db", "coordinator", signer)
        self.runner = JobRunner(self.jobs, self.directory, config.tls, config.job_timeout_seconds, clock)
        self.resume_jobs()

    @property
    def clock(self):
        return self.runner.clock

    def resume_jobs(self) -> None:
        """At start, every job that was not over: one waiting for admission (``created``,
        ``pending_approval``) resumes its admission polling, since admission is idempotent at the
        nodes; one that was ``running`` had started single-use steps, so it fails with the reason
        and its parties are told to wipe its working data."""
        resumed = failed = 0
        for j in self.jobs.unfinished():
            job_id, parties = j["job_id"], list(dict.fromkeys([j["requester"], *j["providers"]]))
            if j["state"] == "running":
                self.jobs.transition(job_id, "failed", RESTARTED)
                self.runner.cleanup_later(job_id, j["requester"], parties)
                self.audit.append("job.interrupted", job=job_id, requester=j["requester"], outcome="failed",
                                  detail=RESTARTED)
                failed += 1
                continue
            spec, signature = self.jobs.spec(job_id)
            try:
                doc = jobspec.verify(spec, signature, self.directory.certificate(j["requester"]), self.ca_pem,
                                     now=self.clock(), first_seen=j["created_at"])
                orchestrate = kinds.kind_of(doc).run
            except PcError as exc:
                self.jobs.transition(job_id, "failed", f"could not resume after a coordinator restart: {exc}")
                self.runner.cleanup_later(job_id, j["requester"], parties)
                self.audit.append("job.interrupted", job=job_id, requester=j["requester"], outcome="failed",
                                  detail=str(exc)[:200])
                failed += 1
                continue
            self.runner.start(job_id, orchestrate, doc, wait_for=parties)
            self.audit.append("job.resume", job=job_id, requester=j["requester"], detail=j["state"])
            resumed += 1
        if resumed or failed:
            log.info("after restart: %d job(s) resumed, %d failed", resumed, failed)

    def close(self) -> None:
        self.runner.shutdown()
        with self._lock:
            self._db.close()

    # ----- nodes -----------------------------------------------------------------
    @rpc("node")
    def Register(self, request, context, caller: Identity):
        if not request.address or len(request.address) > 255:
            raise InvalidInput("registration needs the node's host:port address")
        pem = tls.peer_certificate_pem(context)
        self.directory.register(caller.agency, request.address, pem, request.version)
        self.audit.append("node.register", requester=caller.agency)
        return coordinator_pb2.RegistrationReply(node_id=caller.agency,
                                                 heartbeat_seconds=self.config.heartbeat_seconds)

    @rpc("node")
    def Heartbeat(self, request, context, caller: Identity):
        return coordinator_pb2.HeartbeatReply(send_catalog=self.directory.heartbeat(caller.agency,
                                                                                    request.catalog_digest))

    @rpc("node")
    def PublishCatalog(self, request, context, caller: Identity):
        for d in request.datasets:
            if d.agency != caller.agency:
                raise PermissionDenied("a node may only publish its own datasets")
        self.directory.publish_catalog(caller.agency, request)
        self.audit.append("catalog.publish", requester=caller.agency, counts={"datasets": len(request.datasets)})
        return common_pb2.Empty()

    @rpc("node", "coordinator")
    def GetNodeCertificate(self, request, context, caller: Identity):
        return coordinator_pb2.NodeCertificate(node_id=request.node_id,
                                               certificate_pem=self.directory.certificate(request.node_id))

    # ----- clients -----------------------------------------------------------------
    @rpc(*CLIENTS)
    def ListNodes(self, request, context, caller: Identity):
        import datetime as dt
        return coordinator_pb2.NodeList(nodes=[
            coordinator_pb2.NodeStatus(node_id=n["node_id"], address=n["address"], online=n["online"],
                                       datasets=n["datasets"],
                                       last_seen=dt.datetime.fromtimestamp(n["last_seen"], dt.timezone.utc)
                                       .strftime("%Y-%m-%dT%H:%M:%SZ"))
            for n in self.directory.nodes()])

    @rpc(*CLIENTS)
    def GetCatalog(self, request, context, caller: Identity):
        return self.directory.catalog()

    @rpc("client")
    def SubmitJob(self, request: node_pb2.SignedJobSpec, context, caller: Identity):
        doc = jobspec.parse(request.spec)
        if doc["requester"] != caller.agency:
            raise PermissionDenied("a client may only submit jobs of its own agency")
        signer_pem = self.directory.certificate(doc["requester"])
        doc = jobspec.verify(request.spec, request.signature, signer_pem, self.ca_pem, now=self.clock())
        providers = kinds.validate(doc, self.directory)
        self.jobs.create(doc["job_id"], doc["kind"], doc["requester"], request.spec, request.signature, providers)
        self.audit.append("job.submit", job=doc["job_id"], requester=doc["requester"], purpose=doc["purpose"],
                          detail=doc["kind"])
        # First admission round before answering: a policy or quota refusal reaches the client
        # as its own status (PERMISSION_DENIED, RESOURCE_EXHAUSTED), not only as a failed job.
        try:
            admit_once(JobContext(self.runner, doc["job_id"], request.spec, request.signature, doc["requester"]),
                       providers)
        except PcError as exc:
            self.jobs.transition(doc["job_id"], "failed", str(exc))
            self.audit.append("job.refused", job=doc["job_id"], requester=doc["requester"], outcome="refused")
            raise
        self.runner.start(doc["job_id"], kinds.kind_of(doc).run, doc)
        return self.jobs.get(doc["job_id"])

    def _visible(self, job_id: str, caller: Identity):
        job = self.jobs.get(job_id)
        if caller.role != "operator" and job.requester != caller.agency and caller.agency not in job.providers:
            raise NotFound("no such job")
        return job

    @rpc(*CLIENTS)
    def GetJob(self, request, context, caller: Identity):
        return self._visible(request.job_id, caller)

    @rpc(*CLIENTS)
    def ListJobs(self, request, context, caller: Identity):
        jobs = self.jobs.list(None if caller.role == "operator" else caller.agency)
        return coordinator_pb2.JobList(jobs=jobs)

    @rpc(*CLIENTS)
    def WatchJob(self, request, context, caller: Identity):
        """Updates of one job until it ends. Each open stream holds a server thread, so streams are
        bounded per client identity and overall (``limits.StreamSlots``): RESOURCE_EXHAUSTED beyond."""
        job = self._visible(request.job_id, caller)
        release = self.watches.acquire(caller.uri)

        def ended() -> None:
            release()
            with self.jobs.changed:       # wake the loop now rather than at its next timeout
                self.jobs.changed.notify_all()
        try:
            if not context.add_callback(ended):
                return
            last = None
            while context.is_active():
                snapshot = job.SerializeToString()
                if snapshot != last:
                    last = snapshot
                    yield job
                if job.state in TERMINAL:
                    return
                with self.jobs.changed:
                    self.jobs.changed.wait(timeout=1.0)
                job = self.jobs.get(request.job_id)
        finally:
            release()

    @rpc("client", "operator")
    def CancelJob(self, request, context, caller: Identity):
        job = self._visible(request.job_id, caller)
        if caller.role == "client" and job.requester != caller.agency:
            raise PermissionDenied("only the requester may cancel a job")
        if job.state not in TERMINAL:
            self.runner.cancel(job.job_id)
            self.jobs.transition(job.job_id, "cancelled", "cancelled by the requester")
            self.audit.append("job.cancel", job=job.job_id, requester=job.requester)
        return self.jobs.get(job.job_id)


def create_server(config: CoordinatorConfig, max_workers: int = SERVER_THREADS, clock=time.time):
    """The coordinator service and its started server: ``(server, port, service)``."""
    service = CoordinatorService(config, clock)
    try:
        server, port = grpc_server.create_server(
            [(service, coordinator_pb2_grpc.add_CoordinatorServicer_to_server)], config.listen, config.tls,
            service_names=[coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name],
            max_workers=max_workers)
    except BaseException:
        service.close()
        raise
    server.start()
    return server, port, service


def serve(config: CoordinatorConfig) -> None:
    server, port, service = create_server(config)
    log.info("coordinator listening on port %d", port)

    def after_stop() -> None:
        try:
            service.audit.checkpoint()   # sign the tail so truncation of it is detectable too
        except PcError:
            log.warning("audit log has no signing key; tail left unsigned")
        service.close()
    grpc_server.serve_until_signal(server, config.data_dir, config.listen, port, after_stop=after_stop)
