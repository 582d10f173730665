"""The agency node's gRPC service.

``create_server(config) -> (server, port, runtime)`` binds (port 0 picks a free one) and
starts serving without blocking (built by ``pc_common.server.create_server``); ``serve``
also registers with the coordinator, keeps the heartbeat and catalog fresh, and stops
cleanly on SIGTERM/SIGINT.
"""
from __future__ import annotations

import json
import logging
import secrets
import threading

import grpc

from pc_common import clock, jobspec, server as grpc_server, wire
from pc_node import idnum, kernels
from pc_common.config import NodeConfig
from pc_common.catalog import catalog_digest
from pc_common.errors import InvalidInput, PermissionDenied
from pc_common.identity import Identity
from pc_common.pb import coordinator_pb2, node_pb2, node_pb2_grpc
from pc_common.rpc import rpc
from pc_node import steps
from pc_node.quota_report import quota_report
from pc_node.steps.common import hours_from_now
from pc_node.runtime import VERSION, NodeRuntime

log = logging.getLogger("pc.node")
MAX_SUBJECTS = 5_000_000
SUBJECTS_TTL_HOURS = 24


def _own_agency(service: "NodeService", caller: Identity) -> None:
    if caller.agency != service.rt.node_id:
        raise PermissionDenied(f"only clients of agency '{service.rt.node_id}' may call this")


class NodeService(node_pb2_grpc.NodeServicer):
    def __init__(self, runtime: NodeRuntime):
        self.rt = runtime

    @rpc("client", "officer", check=_own_agency)
    def GetInfo(self, request, context, caller):
        return node_pb2.NodeInfo(node_id=self.rt.node_id, version=VERSION, datasets=len(self.rt.store.datasets()))

    @rpc("client", "officer", check=_own_agency)
    def ListDatasets(self, request, context, caller):
        return self.rt.catalog()

    @rpc("client", check=_own_agency)
    def UploadSubjects(self, request_iterator, context, caller):
        subjects, groups, original = [], [], []
        header = None
        for chunk in request_iterator:
            if header is None:
                header = chunk
            for row in chunk.rows:
                subjects.append(row.subject)
                original.append(row.subject)
                groups.append(row.group)
                if len(subjects) > MAX_SUBJECTS:
                    raise InvalidInput(f"too many subjects in one upload (at most {MAX_SUBJECTS})")
        if header is None or not subjects:
            raise InvalidInput("the subject upload is empty")
        bad = []
        for i, s in enumerate(subjects):
            try:
                subjects[i] = idnum.validate(s)
            except InvalidInput as exc:
                bad.append(f"row {i + 2}: {exc}")
        if bad:
            raise InvalidInput(f"{len(bad)} invalid subject identifier(s): " + "; ".join(bad[:5]))
        first_row: dict[str, int] = {}
        for i, s in enumerate(subjects):     # one person twice would be asked twice in one job
            if first_row.setdefault(s, i) != i:
                raise InvalidInput(f"row {i + 2}: the same subject as row {first_row[s] + 2}"
                                   " (each subject may appear once in a verification)")
        if not header.group_column:
            groups = [str(i) for i in range(len(subjects))]
        elif any(g == "" for g in groups):
            raise InvalidInput("every subject needs a group when a group column is given")
        set_id = secrets.token_hex(8)
        doc = {"subject_column": header.subject_column or "id_number", "group_column": header.group_column,
               "subjects": subjects, "groups": groups, "original": original}
        self.rt.store.put_blob("subjects", set_id, json.dumps(doc).encode(),
                               expires_at=hours_from_now(SUBJECTS_TTL_HOURS))
        n_groups = len(set(groups))
        self.rt.audit.append("subjects.upload", requester=caller.user, counts={"subjects": len(subjects),
                                                                              "groups": n_groups})
        return node_pb2.SubjectsReceipt(subject_set=set_id, subjects=len(subjects), groups=n_groups)

    @rpc("client", check=_own_agency)
    def PrepareJob(self, request, context, caller):
        try:
            params = json.loads(request.params or b"{}")
        except ValueError:
            raise InvalidInput("job parameters are not valid JSON") from None
        if not isinstance(params, dict):
            raise InvalidInput("job parameters must be a JSON object")
        kind = steps.KINDS.get(request.kind)
        if kind is None:
            raise InvalidInput(f"unknown job kind '{request.kind[:32]}'")
        params, purpose = kind.prepare(self.rt, params, request.subject_set)
        spec = jobspec.build(request.kind, self.rt.node_id, params, purpose, now=self.rt.clock(),
                             lifetime=self.rt.config.job_lifetime_hours * 3600)
        self.rt.remember_own_spec(spec)
        doc = jobspec.parse(spec)
        if request.subject_set:     # the subjects wait with the job (approvals may take days)
            self.rt.store.keep_blob("subjects", request.subject_set, clock.iso(jobspec.lifetime_end(doc)))
        self.rt.audit.append("job.prepare", job=doc["job_id"], requester=caller.user, purpose=purpose,
                             detail=request.kind)
        signature = jobspec.sign(spec, self.rt.sm2)
        jobspec.remember_signed(spec, signature, self.rt.sm2.public_key().to_hex())
        return node_pb2.SignedJobSpec(spec=spec, signature=signature, signer=self.rt.node_id)

    @rpc("client", check=_own_agency)
    def FetchResults(self, request, context, caller):
        doc = json.loads(self.rt.store.get_blob("results", request.job_id))
        data = doc["csv"].encode()
        self.rt.audit.append("results.fetch", job=request.job_id, requester=caller.user,
                             counts={"rows": doc.get("rows", 0)})
        for start in range(0, max(len(data), 1), wire.CHUNK_BYTES):
            last = start + wire.CHUNK_BYTES >= len(data)
            yield node_pb2.ResultChunk(data=data[start:start + wire.CHUNK_BYTES], last=last,
                                       summary_json=json.dumps(doc.get("summary", {})) if last else "")

    @rpc("officer", check=_own_agency)
    def ListApprovals(self, request, context, caller):
        return node_pb2.ApprovalList(approvals=[_approval_pb(a) for a in self.rt.governance.approvals()])

    @rpc("officer", check=_own_agency)
    def DecideApproval(self, request, context, caller):
        a = self.rt.governance.decide(request.job_id, request.approve, request.reason, caller.user)
        self.rt.audit.append("approval." + ("approve" if request.approve else "reject"), job=request.job_id,
                             requester=a["requester"], purpose=a["purpose"], detail=f"officer {caller.user}")
        return _approval_pb(a)

    @rpc("officer", check=_own_agency)
    def QuotaUsage(self, request, context, caller):
        return quota_report(self.rt)

    @rpc("coordinator")
    def Step(self, request_iterator, context, caller):
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("kind") != "header":
            raise InvalidInput("a step stream must start with a header")
        handler = steps.handler(first.header.step)
        yield from handler(self.rt, first.header, request_iterator)


def _approval_pb(a: dict) -> node_pb2.Approval:
    import datetime as dt
    d = a.get("details") or {}
    return node_pb2.Approval(job_id=a["job_id"], requester=a["requester"], purpose=a["purpose"],
                             datasets=a["datasets"], state=a["state"], reason=a["reason"],
                             created_at=dt.datetime.fromtimestamp(a["created_at"], dt.timezone.utc).isoformat(),
                             kind=d.get("kind", ""), subjects=d.get("subjects", 0), groups=d.get("groups", 0),
                             rule_id=d.get("rule", ""), rule_title=d.get("title", ""), reveal=d.get("reveal", ""),
                             criteria=[node_pb2.ApprovalCriterion(**c) for c in d.get("criteria", [])])


def create_server(config: NodeConfig, max_workers: int = 32):
    """The node's runtime and its started server: ``(server, port, runtime)``."""
    runtime = NodeRuntime(config)
    try:
        server, port = grpc_server.create_server(
            [(NodeService(runtime), node_pb2_grpc.add_NodeServicer_to_server)], config.listen, config.tls,
            service_names=[node_pb2.DESCRIPTOR.services_by_name["Node"].full_name], max_workers=max_workers)
    except BaseException:
        runtime.close()
        raise
    server.start()
    runtime.address = f"{config.listen.rsplit(':', 1)[0]}:{port}"
    kernels.warm_up_in_background()
    return server, port, runtime


class Presence:
    """Registration, heartbeats and catalog publishing, in a background thread."""

    def __init__(self, runtime: NodeRuntime):
        self.rt = runtime
        self.stop = threading.Event()
        self.interval = 5
        self.registered = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="presence", daemon=True)

    def start(self) -> "Presence":
        self._thread.start()
        return self

    def sync(self) -> None:
        reply = self.rt.coordinator.Register(coordinator_pb2.Registration(address=self.rt.address, version=VERSION),
                                             timeout=10)
        self.interval = max(1, reply.heartbeat_seconds)
        self.rt.coordinator.PublishCatalog(self.rt.catalog(), timeout=10)
        self.registered.set()

    def _loop(self) -> None:
        while not self.stop.is_set():
            try:
                if not self.registered.is_set():
                    self.sync()
                else:
                    catalog = self.rt.catalog()
                    reply = self.rt.coordinator.Heartbeat(
                        coordinator_pb2.HeartbeatRequest(catalog_digest=catalog_digest(catalog)), timeout=10)
                    if reply.send_catalog:
                        self.rt.coordinator.PublishCatalog(catalog, timeout=10)
                self.rt.expire()     # sessions past their job's lifetime, expired blobs
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    self.registered.clear()
                log.warning("coordinator unreachable: %s", exc.code().name)
            except Exception:  # noqa: BLE001 - the presence loop must survive anything
                log.exception("presence loop error")
            self.stop.wait(1 if not self.registered.is_set() else self.interval)


def serve(config: NodeConfig) -> None:
    server, port, runtime = create_server(config)
    presence = Presence(runtime).start()
    log.info("node %s listening on port %d", config.node_id, port)

    def after_stop() -> None:
        runtime.audit.checkpoint()   # sign the tail so truncation of it is detectable too
        runtime.close()
    grpc_server.serve_until_signal(server, config.data_dir, config.listen, port,
                                   before_stop=presence.stop.set, after_stop=after_stop)
