"""A coordinator that keeps its promises over time and under load, on real servers (loopback).

* Lifetimes, with injected clocks instead of sleeping: an approval two days after submission
  still runs the job; a spec submitted after its 15-minute transport expiry is refused (by the
  coordinator and by a provider seeing it first); a node's PSI session past its job's lifetime
  is wiped and audited; jobs waiting for approval hold no work slot of the runner.
* Restarts: a new coordinator on the same data directory resumes a job that was waiting for
  approval (it then succeeds) and fails a job that was running, with the reason, telling its
  parties to wipe the job's working data.
* Load: 200 watch streams from one client are bounded (RESOURCE_EXHAUSTED beyond four) while
  another agency's directory and catalog calls and the nodes' heartbeats answer within a second.
* Malformed bytes: garbage sent to unary and streaming methods of both servers is answered
  INVALID_ARGUMENT, not grpcio's INTERNAL "Exception deserializing request".
"""
from __future__ import annotations

import contextlib
import json
import threading
import time

import grpc
import pytest

from pc_common import certs, tls
from pc_common.pb import common_pb2, coordinator_pb2, coordinator_pb2_grpc, node_pb2
from pc_coordinator.limits import WATCHES_PER_CLIENT
from pc_coordinator.runner import RESTARTED
from pc_node import steps

from tests.conftest import coordinator_address, node_address
from tests.security.hostile_kit import (REQ, VEHICLES_GRANT, admit, analyst, prepare, rpc_error, submit,
                                        wait_state)

pytestmark = pytest.mark.usefixtures("base_policies")
DAY = 86400


@contextlib.contextmanager
def clocks_ahead(fed, seconds: float, nodes=None, coordinator: bool = True):
    """Every node's (or ``nodes``') and the coordinator's clock ``seconds`` ahead of real time."""
    def ahead():
        return time.time() + seconds
    runtimes = [fed.runtime(a) for a in (nodes if nodes is not None else fed.agencies)]
    runner = fed.coordinator[1].runner
    saved = [(rt.clock, rt.governance.clock) for rt in runtimes], runner.clock
    try:
        for rt in runtimes:
            rt.clock = rt.governance.clock = ahead
        if coordinator:
            runner.clock = ahead
        yield
    finally:
        for rt, (clock, gov_clock) in zip(runtimes, saved[0]):
            rt.clock, rt.governance.clock = clock, gov_clock
        runner.clock = saved[1]


def _audit(fed, agency: str, action: str, job_id: str) -> list[dict]:
    return [e for e in fed.runtime(agency).audit.entries() if e["action"] == action and e.get("job") == job_id]


def _eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


# ----- lifetimes -------------------------------------------------------------------------------------------
def test_approval_two_days_after_submission_runs_the_job(env, tmp_path):
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="manual"))
    with analyst(env) as c, fed.client("officer@public_security") as officer:
        job_id = submit(c, env)
        wait_state(c, job_id, ("pending_approval",))
        with clocks_ahead(fed, 2 * DAY):            # the officer decides two days later
            assert officer.decide(job_id, True, "checked after two days").state == "approved"
            job = c.watch(job_id, timeout=60)
            assert job.state == "succeeded", job.reason
        rows, _ = c.results(job_id, tmp_path / "out.csv")
        assert rows == len(env["rows"])


def test_spec_submitted_after_its_transport_expiry_is_refused(env, as_coordinator):
    fed = env["fed"]
    with analyst(env) as c:
        signed = prepare(c, env)
        with clocks_ahead(fed, 16 * 60, nodes=[]):  # submitted 16 minutes after signing
            err = rpc_error(c.coordinator.SubmitJob, signed, timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "expired" in err.details() and "submitted by" in err.details()
        # A provider seeing the spec for the first time after its transport expiry refuses it too.
        with clocks_ahead(fed, 16 * 60, nodes=["public_security"], coordinator=False):
            err = rpc_error(admit, as_coordinator(fed, "public_security"), signed)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in err.details()
        # Within its lifetime, a provider that saw it in time keeps accepting it; after, nobody.
        admit(as_coordinator(fed, "public_security"), signed)
        with clocks_ahead(fed, 2 * DAY, nodes=["public_security"], coordinator=False):
            admit(as_coordinator(fed, "public_security"), signed)
        with clocks_ahead(fed, 8 * DAY, nodes=["public_security"], coordinator=False):
            err = rpc_error(admit, as_coordinator(fed, "public_security"), signed)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "lifetime ended" in err.details()


def test_node_session_past_its_job_lifetime_is_wiped(env, as_coordinator):
    fed = env["fed"]
    rt = fed.runtime(REQ)
    with analyst(env) as c:
        signed = c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="psi", params=json.dumps(
            {"datasets": [f"{REQ}.applicants", "public_security.vehicles"], "purpose": "data_matching",
             "protocol": "ecdh"}).encode()),
            timeout=10)
    job_id = json.loads(signed.spec)["job_id"]
    header = node_pb2.StepMessage(header=node_pb2.StepHeader(job_id=job_id, step="psi.blind", spec=signed))
    out = list(as_coordinator(fed, REQ).Step(iter([header]), timeout=30))
    assert out[-1].WhichOneof("kind") == "done"
    assert rt.sessions.get(job_id) is not None          # EC key and identifiers, in memory
    with clocks_ahead(fed, 7 * DAY + 60, nodes=[REQ], coordinator=False):
        rt.expire()                                     # the presence loop's tick
        assert rt.sessions.get(job_id) is None
    wiped = _audit(fed, REQ, "retention.wipe", job_id)
    assert len(wiped) == 1 and wiped[0]["detail"] == "session expired"


def test_jobs_waiting_for_approval_hold_no_work_slot(env, monkeypatch, tmp_path):
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="manual"))
    monkeypatch.setattr(fed.coordinator[1].runner, "_working", threading.BoundedSemaphore(1))
    with analyst(env) as c:
        waiting = [submit(c, env, "car") for _ in range(2)]
        for job_id in waiting:
            wait_state(c, job_id, ("pending_approval",))
        result = c.verify(env["rules"] / "pension.toml", env["subjects"], out=tmp_path / "out.csv")
        assert result.rows == len(env["rows"])      # ran in the one work slot, past both
        for job_id in waiting:
            assert c.cancel(job_id).state == "cancelled"


# ----- restarts --------------------------------------------------------------------------------------------
def test_restart_resumes_a_pending_job_and_fails_a_running_one(env, monkeypatch, tmp_path):
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="manual"))
    started, release = threading.Event(), threading.Event()
    evaluate = steps.STEPS["verify.evaluate"]

    def stuck_at_hrss(runtime, header, inbound):
        if runtime.node_id == "hrss":
            started.set()
            release.wait(20)
        yield from evaluate(runtime, header, inbound)
    monkeypatch.setitem(steps.STEPS, "verify.evaluate", stuck_at_hrss)
    port = fed.coordinator_port
    try:
        with analyst(env) as c:
            pending = submit(c, env, "car")
            wait_state(c, pending, ("pending_approval",))
            running = submit(c, env, "pension")
            assert started.wait(20)
            assert c.job(running).state == "running"
        fed.stop_coordinator()
    finally:
        release.set()
    fed.coordinator_config.listen = f"127.0.0.1:{port}"
    try:
        fed.start_coordinator()
    finally:
        fed.coordinator_config.listen = "127.0.0.1:0"
    with analyst(env) as c, fed.client("officer@public_security") as officer:
        job = c.job(running)
        assert job.state == "failed" and job.reason == RESTARTED
        # Its parties were told to wipe: the requester's keys, working data and subjects are gone.
        assert _eventually(lambda: _audit(fed, REQ, "retention.wipe", running))
        assert wait_state(c, pending, ("pending_approval",)).reason.startswith("waiting for approval")
        assert officer.decide(pending, True, "checked").state == "approved"
        job = c.watch(pending, timeout=60)
        assert job.state == "succeeded", job.reason
        assert c.results(pending, tmp_path / "out.csv")[0] == len(env["rows"])


# ----- load ------------------------------------------------------------------------------------------------
def _timed(fn, *args, **kw) -> float:
    t = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t


def test_two_hundred_watch_streams_from_one_client_stall_no_one(env):
    fed = env["fed"]
    service = fed.coordinator[1]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="manual"))
    node_channel = tls.secure_channel(coordinator_address(fed), certs.node_files(fed.certs, "hrss"), "coordinator")
    heartbeat = coordinator_pb2_grpc.CoordinatorStub(node_channel).Heartbeat
    calls = []
    with analyst(env) as c, fed.client("analyst@housing") as other, fed.client(f"officer@{REQ}") as colleague:
        job_id = submit(c, env)
        wait_state(c, job_id, ("pending_approval",))     # a job that stays open while it is watched
        ref = node_pb2.JobRef(job_id=job_id)
        try:
            t0 = time.perf_counter()
            calls = [c.coordinator.WatchJob(ref, timeout=30) for _ in range(200)]
            assert _eventually(lambda: sum(call.done() for call in calls) >= 200 - WATCHES_PER_CLIENT, 10)
            opened_s = time.perf_counter() - t0
            refused = [call for call in calls if call.done()]
            held = [call for call in calls if not call.done()]
            assert len(held) == WATCHES_PER_CLIENT and len(refused) == 200 - WATCHES_PER_CLIENT
            assert {call.code() for call in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            assert "at most 4 at a time" in refused[0].details()
            for call in held:
                assert next(call).state == "pending_approval"
            # While they are open: another agency, the nodes' heartbeats, a colleague's own watch.
            latencies = {"ListNodes": [], "GetCatalog": [], "Heartbeat": []}
            for _ in range(5):
                latencies["ListNodes"].append(_timed(other.nodes))
                latencies["GetCatalog"].append(_timed(other.catalog))
                latencies["Heartbeat"].append(_timed(heartbeat, coordinator_pb2.HeartbeatRequest(), timeout=5))
            print("\n200 watch streams opened/refused in %.2f s; worst latency while held: %s" % (
                opened_s, ", ".join(f"{k} {max(v) * 1000:.0f} ms" for k, v in latencies.items())))
            assert all(max(v) < 1.0 for v in latencies.values()), latencies
            assert all(n.online for n in other.nodes())
            theirs = colleague.coordinator.WatchJob(ref, timeout=10)
            assert next(theirs).job_id == job_id
            theirs.cancel()
            assert service.watches.open(f"pc://client/{REQ}/analyst") == WATCHES_PER_CLIENT
        finally:
            for call in calls:
                call.cancel()
            c.cancel(job_id)
            node_channel.close()
    assert _eventually(lambda: service.watches.open() == 0, 5)


# ----- malformed bytes -------------------------------------------------------------------------------------
GARBAGE = (b"\xff" * 11, b"\x0a\x05ab", b"\x0f\x00garbage")


def _raw(channel: grpc.Channel, method: str, shape: str):
    make = getattr(channel, shape)
    return make(method, request_serializer=None, response_deserializer=None)


def test_garbage_bytes_are_invalid_argument_on_both_servers(env):
    fed = env["fed"]
    client = certs.client_files(fed.certs, REQ, "analyst")
    coord = tls.secure_channel(coordinator_address(fed), client, "coordinator")
    node = tls.secure_channel(node_address(fed, REQ), client, REQ)
    as_coord = tls.secure_channel(node_address(fed, "hrss"), certs.coordinator_files(fed.certs), "hrss")
    valid_chunk = node_pb2.SubjectsChunk(subject_column="id_number", rows=[
        node_pb2.SubjectRow(subject=env["rows"][0]["id_number"], group="H1")]).SerializeToString()
    try:
        cases = [
            (coord, "/pc.v1.Coordinator/ListNodes", "unary_unary", "pc.v1.Empty", None),
            (coord, "/pc.v1.Coordinator/SubmitJob", "unary_unary", "pc.v1.SignedJobSpec", None),
            (coord, "/pc.v1.Coordinator/WatchJob", "unary_stream", "pc.v1.JobRef", None),
            (coord, "/grpc.health.v1.Health/Check", "unary_unary", "grpc.health.v1.HealthCheckRequest", None),
            (node, "/pc.v1.Node/GetInfo", "unary_unary", "pc.v1.Empty", None),
            (node, "/pc.v1.Node/FetchResults", "unary_stream", "pc.v1.JobRef", None),
            (node, "/pc.v1.Node/UploadSubjects", "stream_unary", "pc.v1.SubjectsChunk", valid_chunk),
            (as_coord, "/pc.v1.Node/Step", "stream_stream", "pc.v1.StepMessage", None),
        ]
        for channel, method, shape, message, first in cases:
            for garbage in GARBAGE:
                call = _raw(channel, method, shape)
                arg = garbage if shape.startswith("unary") else iter(([first] if first else []) + [garbage])
                err = rpc_error(call, arg, timeout=10)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (method, err.code(), err.details())
                assert err.details() == f"request is not a valid {message}", (method, err.details())
        # Both servers still serve well-formed calls.
        with analyst(env) as c:
            assert c.nodes() and c.node.GetInfo(common_pb2.Empty(), timeout=10).node_id == REQ
    finally:
        for ch in (coord, node, as_coord):
            ch.close()
