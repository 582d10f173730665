"""Hostile callers: certificates of another CA, roles calling what they may not (node
certificates calling client methods, clients calling Step, clients of another agency), missing
grants, columns beyond their allowed use, quota bursts and suspension, and manual approvals.

Each refusal is checked for its gRPC status and for a message naming what is missing.
Requests that are malformed rather than unauthorised are in test_hostile_inputs.py.
"""
from __future__ import annotations

import time

import grpc
import pytest

from pc_client.sdk import Federation
from pc_common import certs, tls
from pc_common.certs import PartyFiles
from pc_common.pb import common_pb2, coordinator_pb2, node_pb2, node_pb2_grpc

from tests.conftest import coordinator_address, node_address
from tests.security.hostile_kit import (PENSIONS_GRANT, PURPOSE, REQ, VEHICLES_GRANT, admit, analyst, job_ids,
                                        prepare, rpc_error, rule, submit, wait_state)

pytestmark = pytest.mark.usefixtures("base_policies")


# ----- certificates and roles ------------------------------------------------------------------------
def test_certificate_from_another_ca_is_refused(env, tmp_path):
    fed = env["fed"]
    other = tmp_path / "other"
    certs.init(other, [REQ], [f"analyst@{REQ}"])
    theirs = certs.client_files(other, REQ, "analyst")
    # Trusts our CA (so the client side is happy) but presents a certificate of another CA.
    files = PartyFiles(theirs.cert, theirs.key, fed.certs / "ca.pem")
    with Federation(coordinator_address(fed), files) as c:
        c.timeout = 5
        err = rpc_error(c.catalog)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    stub = node_pb2_grpc.NodeStub(tls.secure_channel(node_address(fed, REQ), files, REQ))
    assert rpc_error(stub.GetInfo, common_pb2.Empty(), timeout=5).code() == grpc.StatusCode.UNAVAILABLE
    # A node certificate of another CA cannot join the directory.
    node = certs.node_files(other, REQ)
    rogue = PartyFiles(node.cert, node.key, fed.certs / "ca.pem")
    from pc_common.pb import coordinator_pb2_grpc
    stub = coordinator_pb2_grpc.CoordinatorStub(tls.secure_channel(coordinator_address(fed), rogue, "coordinator"))
    err = rpc_error(stub.Register, coordinator_pb2.Registration(address="127.0.0.1:1", version="x"), timeout=5)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    with fed.client() as c:
        assert {n.node_id: n.address for n in c.nodes()}[REQ] == fed.runtime(REQ).address


def test_node_certificate_cannot_call_client_methods(env):
    fed = env["fed"]
    with Federation(coordinator_address(fed), certs.node_files(fed.certs, "public_security")) as c:
        for fn, arg in ((c.coordinator.GetCatalog, common_pb2.Empty()), (c.coordinator.ListJobs, common_pb2.Empty()),
                        (c.coordinator.SubmitJob, node_pb2.SignedJobSpec(spec=b"{}"))):
            err = rpc_error(fn, arg, timeout=10)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "node certificates may not call" in err.details()
    # An officer may approve, not submit; an analyst may submit, not approve.
    with fed.client(f"officer@{REQ}") as c:
        err = rpc_error(c.coordinator.SubmitJob, node_pb2.SignedJobSpec(spec=b"{}"), timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    with analyst(env) as c:
        err = rpc_error(c.decide, "0" * 24, True)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_client_and_node_cannot_call_step(env):
    fed = env["fed"]
    header = node_pb2.StepMessage(header=node_pb2.StepHeader(job_id="x", step="job.admit"))
    for files in (certs.client_files(fed.certs, REQ, "analyst"), certs.node_files(fed.certs, REQ)):
        stub = node_pb2_grpc.NodeStub(tls.secure_channel(node_address(fed, "public_security"), files,
                                                         "public_security"))
        err = rpc_error(stub.Step, iter([header]), timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "may not call Step" in err.details()


def test_client_of_another_agency_cannot_use_a_node(env):
    fed = env["fed"]
    files = certs.client_files(fed.certs, REQ, "analyst")
    stub = node_pb2_grpc.NodeStub(tls.secure_channel(node_address(fed, "housing"), files, "housing"))
    row = node_pb2.SubjectRow(subject=env["rows"][0]["id_number"], group="H1")
    calls = [(stub.UploadSubjects, iter([node_pb2.SubjectsChunk(subject_column="id_number", rows=[row])])),
             (stub.PrepareJob, node_pb2.PrepareJobRequest(kind="verify")),
             (stub.FetchResults, node_pb2.JobRef(job_id="x")),
             (stub.ListDatasets, common_pb2.Empty())]
    for fn, arg in calls:
        err = rpc_error(fn, arg, timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "only clients of agency 'housing'" in err.details()
    officer = certs.client_files(fed.certs, "housing", "officer")
    stub = node_pb2_grpc.NodeStub(tls.secure_channel(node_address(fed, "public_security"), officer,
                                                     "public_security"))
    assert rpc_error(stub.ListApprovals, common_pb2.Empty(), timeout=10).code() == grpc.StatusCode.PERMISSION_DENIED


# ----- policy ------------------------------------------------------------------------------------------
def test_missing_grant_is_refused_naming_what_is_missing(env, as_coordinator):
    fed = env["fed"]
    before = job_ids(fed)
    with analyst(env) as c:
        err = rpc_error(c.verify, rule(env, "home"), env["subjects"])
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "housing.properties" in err.details() and f"no grant for '{REQ}'" in err.details()
        err = rpc_error(c.verify, rule(env, "purpose"), env["subjects"])
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "purpose 'tax.audit'" in err.details()
        err = rpc_error(c.verify, rule(env, "car_reasons"), env["subjects"])
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "reveal 'verdict' only" in err.details()
    assert job_ids(fed) == before
    # The provider enforces its policy itself, even for a coordinator that skips the checks.
    with analyst(env) as c:
        signed = prepare(c, env, "home")
    err = rpc_error(admit, as_coordinator(fed, "housing"), signed)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"no grant for requester '{REQ}' on dataset 'properties'" in err.details()


def test_column_beyond_allowed_use_fails_the_job(env, tmp_path):
    with analyst(env) as c:
        err = rpc_error(c.verify, rule(env, "plate"), env["subjects"], out=tmp_path / "out.csv")
    msg = err.details()
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "plate as predicate" in msg and "public_security" in msg
    assert not (tmp_path / "out.csv").exists()


def test_quota_bursts_suspend_the_requester(env, tmp_path):
    fed = env["fed"]
    gov = fed.runtime("hrss").governance
    fed.write_policy("hrss", PENSIONS_GRANT.format(quota="[grants.quota]\njobs_per_hour = 1\n"))
    try:
        with analyst(env) as c:
            c.verify(rule(env, "pension"), env["subjects"])               # within the quota
            for burst in range(3):
                err = rpc_error(c.verify, rule(env, "pension"), env["subjects"])
                assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "jobs_per_hour" in err.details()
                assert gov.is_suspended(REQ) == (burst == 2)
            err = rpc_error(c.verify, rule(env, "pension"), env["subjects"])
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "suspended" in err.details()
            alerts = [e for e in fed.runtime("hrss").audit.entries() if e["action"] == "alert.quota"]
            assert len(alerts) >= 4
            # Lifting the suspension and raising the quota lets the requester in again.
            assert gov.unsuspend(REQ)
            fed.write_policy("hrss", PENSIONS_GRANT.format(quota="[grants.quota]\njobs_per_hour = 100\n"))
            c.verify(rule(env, "pension"), env["subjects"], out=tmp_path / "ok.csv")
            assert (tmp_path / "ok.csv").exists()
    finally:
        gov.unsuspend(REQ)


# ----- approvals ----------------------------------------------------------------------------------------
def test_manual_approval_then_success(env, tmp_path):
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="manual"))
    with analyst(env) as c, fed.client("officer@public_security") as officer:
        job_id = submit(c, env)
        job = wait_state(c, job_id, ("pending_approval",))
        assert "public_security" in job.reason
        pending = {a.job_id: a for a in officer.approvals()}
        assert pending[job_id].state == "pending" and pending[job_id].purpose == PURPOSE
        assert list(pending[job_id].datasets) == ["vehicles"]
        time.sleep(1.5)                                   # still waiting: nothing runs without the officer
        assert c.job(job_id).state == "pending_approval"
        assert officer.decide(job_id, True, "checked").state == "approved"
        job = c.watch(job_id, timeout=60)
        assert job.state == "succeeded", job.reason
        rows, summary = c.results(job_id, tmp_path / "out.csv")
        assert rows == len(env["rows"]) and summary["subjects"] == len(env["rows"])
        err = rpc_error(officer.decide, job_id, False)
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_manual_approval_reject_and_cancel(env):
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="manual"))
    with analyst(env) as c, fed.client("officer@public_security") as officer:
        rejected = submit(c, env)
        cancelled = submit(c, env)
        wait_state(c, rejected, ("pending_approval",))
        wait_state(c, cancelled, ("pending_approval",))
        officer.decide(rejected, False, "no legal basis")
        job = c.watch(rejected, timeout=60)
        assert job.state == "failed" and "rejected" in job.reason and "public_security" in job.reason
        assert c.cancel(cancelled).state == "cancelled"
        time.sleep(1.5)
        assert c.job(cancelled).state == "cancelled"


