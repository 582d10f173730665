"""Hostile peers and users: wrong certificates, wrong roles, missing grants, quotas,
approvals, forged / expired / replayed job specs, bad names and rules, and malformed or
oversized protobuf bytes sent straight to every RPC method of both services.

Each refusal is checked for its gRPC status and for a message naming what is missing, and
the federation is checked to still serve with its stored data unchanged.
"""
from __future__ import annotations

import csv
import json
import pathlib
import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pc_client.sdk import Federation
from pc_common import certs, gm, jobspec, tls
from pc_common.certs import PartyFiles
from pc_common.errors import InvalidInput
from pc_common.pb import common_pb2, coordinator_pb2, node_pb2, node_pb2_grpc
from pc_rules.rules import load_rule
from pc_node.importer import import_file
from pc_node.policy import parse_policy

from tests.integration.conftest import make_city, start_federation, subset_subjects

AGENCIES = ["civil_affairs", "housing", "hrss", "public_security"]
REQ = "civil_affairs"
PURPOSE = "social_assistance.eligibility"

VEHICLES_GRANT = """
[[grants]]
dataset = "vehicles"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
approval = "{approval}"
reveal = "verdict"
[grants.columns]
id_number = "join_key"
vehicle_type = "predicate"
"""
# Housing grants something to another agency only: civil affairs has no grant there.
HOUSING_POLICY = """
[[grants]]
dataset = "properties"
requester = "public_security"
purposes = ["social_assistance.eligibility"]
[grants.columns]
id_number = "join_key"
usage = "predicate"
"""
PENSIONS_GRANT = """
[[grants]]
dataset = "pensions"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
[grants.columns]
id_number = "join_key"
monthly_amount = "aggregate"
{quota}
"""


def rule_text(rule_id: str, criteria: str, purpose: str = PURPOSE, reveal: str = "verdict",
              group: bool = True) -> str:
    return (f'id = "{rule_id}"\ntitle = "test"\npurpose = "{purpose}"\nrequester = "{REQ}"\n'
            f'subject_column = "id_number"\n' + ('group_column = "household_id"\n' if group else "")
            + f'reveal = "{reveal}"\n\n' + criteria)


CAR = '[[criteria]]\nname = "no_car"\ntype = "none_exists"\nsource = "public_security.vehicles"\n' \
      'where = "vehicle_type = \'car\'"\n'
RULES = {
    "car": rule_text("car", CAR),
    "car_reasons": rule_text("car_reasons", CAR, reveal="reasons"),
    "purpose": rule_text("purpose", CAR, purpose="tax.audit"),
    "plate": rule_text("plate", '[[criteria]]\nname = "no_plate"\ntype = "none_exists"\n'
                       'source = "public_security.vehicles"\nwhere = "plate = \'粤B00000\'"\n'),
    "home": rule_text("home", '[[criteria]]\nname = "one_home"\ntype = "count_at_most"\n'
                      'source = "housing.properties"\nwhere = "usage = \'residential\'"\nmax = 1\n'),
    "pension": rule_text("pension", '[[criteria]]\nname = "small_pension"\ntype = "sum_below"\n'
                         'source = "hrss.pensions.monthly_amount"\nlimit = 3000.00\n', group=False),
    "quoted": rule_text("quoted", '[[criteria]]\nname = "no_car"\ntype = "none_exists"\n'
                        'source = "public_security.vehicles"\n'
                        'where = "vehicle_type = \'\'\'; DROP TABLE rows; --\'"\n'),
}


# ----- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    city = root / "city"
    make_city(city, households=15, seed=11)
    fed = start_federation(root / "fed", city, AGENCIES)
    rules = root / "rules"
    rules.mkdir()
    for name, text in RULES.items():
        (rules / f"{name}.toml").write_text(text, encoding="utf-8")
    subjects = root / "subjects.csv"
    rows = subset_subjects(city / "civil_affairs" / "applicants.csv", subjects, 3)
    try:
        yield {"fed": fed, "city": city, "rules": rules, "subjects": subjects, "rows": rows, "root": root}
    finally:
        fed.stop()


@pytest.fixture(autouse=True)
def base_policies(env):
    fed = env["fed"]
    fed.write_policy("public_security", VEHICLES_GRANT.format(approval="auto"))
    fed.write_policy("housing", HOUSING_POLICY)
    fed.write_policy("hrss", PENSIONS_GRANT.format(quota=""))
    yield


def analyst(env) -> Federation:
    return env["fed"].client(f"analyst@{REQ}")


def rule(env, name):
    return env["rules"] / f"{name}.toml"


def node_address(fed, agency) -> str:
    return f"127.0.0.1:{fed.nodes[agency][2]}"


def coordinator_address(fed) -> str:
    return f"127.0.0.1:{fed.coordinator_port}"


def prepare(c: Federation, env, name="car") -> node_pb2.SignedJobSpec:
    r = load_rule(rule(env, name))
    receipt = c.upload_subjects(env["subjects"], r)
    return c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="verify", params=json.dumps(
        {"rule": r.to_dict(), "he": "bfv"}).encode(), subject_set=receipt.subject_set), timeout=10)


def submit(c: Federation, env, name="car") -> str:
    return c.coordinator.SubmitJob(prepare(c, env, name), timeout=10).job_id


def wait_state(c: Federation, job_id: str, states, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = c.job(job_id)
        if job.state in states:
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} stayed {c.job(job_id).state}, expected one of {states}")


def job_ids(fed) -> set[str]:
    with fed.client() as c:
        return {j.job_id for j in c.jobs()}


def rpc_error(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        out = fn(*args, **kw)
        if hasattr(out, "__iter__") and not isinstance(out, (bytes, str)):
            list(out)
    return err.value


def requester_key(fed) -> gm.Sm2PrivateKey:
    return gm.Sm2PrivateKey.from_hex((fed.certs / "nodes" / REQ / "sm2.key").read_text().strip())


def as_coordinator(fed, agency) -> node_pb2_grpc.NodeStub:
    """A Step stub to a node under the coordinator's own certificate (a forging coordinator)."""
    return node_pb2_grpc.NodeStub(tls.secure_channel(node_address(fed, agency), certs.coordinator_files(fed.certs),
                                                     agency))


def admit(stub, signed: node_pb2.SignedJobSpec, job_id: str | None = None):
    job_id = job_id or json.loads(signed.spec)["job_id"]
    header = node_pb2.StepMessage(header=node_pb2.StepHeader(job_id=job_id, step="job.admit", spec=signed))
    return list(stub.Step(iter([header]), timeout=10))


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
def test_missing_grant_is_refused_naming_what_is_missing(env):
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


# ----- job specs: forged, expired, replayed -----------------------------------------------------------
def test_forged_specs_are_refused(env):
    fed = env["fed"]
    before = job_ids(fed)
    with analyst(env) as c:
        signed = prepare(c, env)
        doc = json.loads(signed.spec)
        forged = []
        nonce = doc["nonce"]
        forged.append(jobspec.canonical({**doc, "nonce": ("1" if nonce[0] != "1" else "2") + nonce[1:]}))
        forged.append(jobspec.canonical({**doc, "purpose": "law_enforcement.investigation"}))
        more = {**doc["params"], "subjects": doc["params"]["subjects"] + 1}
        forged.append(jobspec.canonical({**doc, "params": more}))
        for spec in forged:
            err = rpc_error(c.coordinator.SubmitJob, node_pb2.SignedJobSpec(spec=spec, signature=signed.signature),
                            timeout=10)
            assert err.code() == grpc.StatusCode.PERMISSION_DENIED, err.details()
            assert "signature is invalid" in err.details()
        sig = bytearray(signed.signature)
        sig[len(sig) // 2] ^= 0x01
        err = rpc_error(c.coordinator.SubmitJob, node_pb2.SignedJobSpec(spec=signed.spec, signature=bytes(sig)),
                        timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # Signed by another node's key: not the requester's signature.
        other = gm.Sm2PrivateKey.from_hex((fed.certs / "nodes" / "public_security" / "sm2.key").read_text().strip())
        err = rpc_error(c.coordinator.SubmitJob, node_pb2.SignedJobSpec(spec=signed.spec,
                                                                        signature=jobspec.sign(signed.spec, other)),
                        timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED
        # Any single flipped byte is refused (malformed or badly signed), never accepted.
        for pos in range(0, len(signed.spec), max(1, len(signed.spec) // 16)):
            spec = bytearray(signed.spec)
            spec[pos] ^= 0x01
            err = rpc_error(c.coordinator.SubmitJob, node_pb2.SignedJobSpec(spec=bytes(spec),
                                                                            signature=signed.signature), timeout=10)
            assert err.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT), pos
    assert job_ids(fed) == before
    # A forging coordinator is caught by the provider.
    err = rpc_error(admit, as_coordinator(fed, "public_security"),
                    node_pb2.SignedJobSpec(spec=forged[1], signature=signed.signature))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    # ...also when it names another job in the step header than the one signed.
    err = rpc_error(admit, as_coordinator(fed, "public_security"), signed, job_id="f" * 24)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def _self_signed(env, c: Federation, ttl=jobspec.DEFAULT_TTL_SECONDS, now=None, rule_dict=None):
    r = load_rule(rule(env, "car"))
    receipt = c.upload_subjects(env["subjects"], r)
    params = {"rule": rule_dict or r.to_dict(), "he": "bfv", "subject_set": receipt.subject_set,
              "subjects": receipt.subjects, "groups": receipt.groups}
    spec = jobspec.build("verify", REQ, params, PURPOSE, ttl=ttl, now=now)
    return node_pb2.SignedJobSpec(spec=spec, signature=jobspec.sign(spec, requester_key(env["fed"])), signer=REQ)


def test_expired_and_future_specs_are_refused(env):
    fed = env["fed"]
    with analyst(env) as c:
        expired = _self_signed(env, c, ttl=-1)
        err = rpc_error(c.coordinator.SubmitJob, expired, timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in err.details()
        err = rpc_error(admit, as_coordinator(fed, "public_security"), expired)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "expired" in err.details()
        future = _self_signed(env, c, now=time.time() + 3600)
        err = rpc_error(c.coordinator.SubmitJob, future, timeout=10)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "future" in err.details()
        # Control: the same construction with a current expiry is accepted and runs.
        good = _self_signed(env, c)
        job = c.coordinator.SubmitJob(good, timeout=10)
        assert c.watch(job.job_id, timeout=60).state == "succeeded"


def test_replayed_spec_is_refused(env):
    with analyst(env) as c:
        signed = prepare(c, env)
        job = c.coordinator.SubmitJob(signed, timeout=10)
        err = rpc_error(c.coordinator.SubmitJob, signed, timeout=10)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert c.watch(job.job_id, timeout=60).state == "succeeded"
        err = rpc_error(c.coordinator.SubmitJob, signed, timeout=10)
        assert err.code() == grpc.StatusCode.ALREADY_EXISTS
        assert [j.job_id for j in c.jobs()].count(job.job_id) == 1


# ----- names and rules ------------------------------------------------------------------------------------
def test_dataset_names_with_traversal_or_quotes_are_refused(env, tmp_path):
    fed = env["fed"]
    store = fed.runtime("housing").store
    before = [(m.name, m.rows, m.version) for m in store.datasets()]
    ident = env["rows"][0]["id_number"]
    src = tmp_path / "src"
    src.mkdir()
    good = src / "ok.csv"
    good.write_text(f"id_number,usage\n{ident},residential\n")
    for name in ("../x", "a'b", "x;drop", "Upper", "a" * 64, "..", "x/y", "/etc/passwd"):
        with pytest.raises(InvalidInput, match="dataset name"):
            import_file(store, good, dataset=name)
    quoted = src / "a'b.csv"
    quoted.write_text(good.read_text())
    with pytest.raises(InvalidInput, match="dataset name"):
        import_file(store, quoted)
    assert [(m.name, m.rows, m.version) for m in store.datasets()] == before
    assert not (tmp_path / "x").exists() and not (fed.root / "x").exists()
    with pytest.raises(InvalidInput):
        parse_policy('[[grants]]\ndataset = "../x"\nrequester = "civil_affairs"\npurposes = ["p"]\n')
    bad_rule = tmp_path / "bad.toml"
    bad_rule.write_text(rule_text("bad", '[[criteria]]\nname = "c"\ntype = "exists"\n'
                                         'source = "public_security.../vehicles"\n'))
    with pytest.raises(InvalidInput):
        load_rule(bad_rule)


INJECTIONS = [
    "vehicle_type = 'car'; DROP TABLE rows",
    "vehicle_type = 'car' or 1=1 --",
    "vehicle_type = 'car' union select key_enc from rows",
    "vehicle_type = \"car\"",
    "vehicle_type = 'car' /* */",
    "plate = plate",
    "__import__('os').system('true') = 1",
]


@pytest.mark.parametrize("where", INJECTIONS)
def test_where_injection_is_refused_before_anything_runs(env, tmp_path, where):
    fed = env["fed"]
    path = tmp_path / "inj.toml"
    path.write_text(rule_text("inj", '[[criteria]]\nname = "c"\ntype = "none_exists"\n'
                                     f'source = "public_security.vehicles"\nwhere = {json.dumps(where)}\n'),
                    encoding="utf-8")
    before = job_ids(fed)
    with analyst(env) as c:
        with pytest.raises(InvalidInput, match="where"):
            c.verify(path, env["subjects"])
        # The same rule smuggled past the client: refused by the node and by the coordinator.
        good = load_rule(rule(env, "car")).to_dict()
        evil = {**good, "criteria": [{**good["criteria"][0], "where": where}]}
        r = load_rule(rule(env, "car"))
        receipt = c.upload_subjects(env["subjects"], r)
        err = rpc_error(c.node.PrepareJob, node_pb2.PrepareJobRequest(
            kind="verify", params=json.dumps({"rule": evil}).encode(), subject_set=receipt.subject_set), timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        signed = _self_signed(env, c, rule_dict=evil)
        err = rpc_error(c.coordinator.SubmitJob, signed, timeout=10)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "where" in err.details()
        err = rpc_error(admit, as_coordinator(fed, "public_security"), signed)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert job_ids(fed) == before


def test_quoted_literal_is_data_not_code(env, tmp_path):
    store = env["fed"].runtime("public_security").store
    before = [(m.name, m.rows, m.version) for m in store.datasets()]
    with analyst(env) as c:
        c.verify(rule(env, "quoted"), env["subjects"], out=tmp_path / "q.csv")
    with open(tmp_path / "q.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(env["rows"]) and {r["eligible"] for r in rows} == {"true"}
    assert [(m.name, m.rows, m.version) for m in store.datasets()] == before


# ----- malformed and oversized protobuf bytes, straight to every method ----------------------------------
def _methods():
    from pc_common.pb import coordinator_pb2 as cpb, node_pb2 as npb
    out = []
    for desc, service in ((cpb.DESCRIPTOR.services_by_name["Coordinator"], "pc.v1.Coordinator"),
                          (npb.DESCRIPTOR.services_by_name["Node"], "pc.v1.Node")):
        for m in desc.methods:
            out.append((service, m.name, m.client_streaming, m.server_streaming))
    return out


METHODS = _methods()
NODE_ONLY = {"Register", "Heartbeat", "PublishCatalog", "GetNodeCertificate"}
TARGETS = ([(s, m, cs, ss, "analyst") for s, m, cs, ss in METHODS]
           + [(s, m, cs, ss, "mallory") for s, m, cs, ss in METHODS if m in NODE_ONLY]
           + [(s, m, cs, ss, "coordinator") for s, m, cs, ss in METHODS if m == "Step"])
ACCEPTABLE = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.OUT_OF_RANGE,
              grpc.StatusCode.DATA_LOSS}


def _state(fed) -> dict:
    """What must not change: node stores, the real nodes' directory entries and catalog, the jobs."""
    with fed.client() as c:
        nodes = {n.node_id: n.address for n in c.nodes() if n.node_id in AGENCIES}
        catalog = sorted(d.SerializeToString(deterministic=True) for d in c.catalog().datasets
                         if d.agency in AGENCIES)
        jobs = {j.job_id: j.state for j in c.jobs()}
    stores = {a: [(m.name, m.rows, m.version) for m in fed.runtime(a).store.datasets()] for a in AGENCIES}
    return {"nodes": nodes, "catalog": catalog, "jobs": jobs, "stores": stores}


@pytest.fixture(scope="module")
def fuzz(env):
    fed = env["fed"]
    certs.CertificateAuthority(fed.certs).issue_node("mallory")      # a certified node nobody registered
    files = {"analyst": certs.client_files(fed.certs, REQ, "analyst"),
             "mallory": certs.node_files(fed.certs, "mallory"),
             "coordinator": certs.coordinator_files(fed.certs)}
    big = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]

    def channel(who: str, service: str, options=()):
        f = files[who]
        cert, key, ca = f.read()
        creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
        if service == "pc.v1.Coordinator":
            address, name = coordinator_address(fed), "coordinator"
        else:
            # Clients talk to their own node; the coordinator identity drives a provider.
            agency = REQ if who == "analyst" else "public_security"
            address, name = node_address(fed, agency), agency
        return grpc.secure_channel(address, creds, options=[("grpc.ssl_target_name_override", name), *options])

    channels = {(who, svc): channel(who, svc) for who in files for svc in ("pc.v1.Coordinator", "pc.v1.Node")}
    big_channels = {(who, svc): channel(who, svc, big) for who in files for svc in ("pc.v1.Coordinator", "pc.v1.Node")}
    baseline = _state(fed)
    yield {"channels": channels, "big": big_channels, "baseline": baseline}
    for ch in list(channels.values()) + list(big_channels.values()):
        ch.close()


def _call(channel, service, method, client_streaming, server_streaming, payloads, timeout=10):
    path = f"/{service}/{method}"
    if not client_streaming and not server_streaming:
        return [channel.unary_unary(path)(payloads[0], timeout=timeout)]
    if not client_streaming:
        return list(channel.unary_stream(path)(payloads[0], timeout=timeout))
    if not server_streaming:
        return [channel.stream_unary(path)(iter(payloads), timeout=timeout)]
    return list(channel.stream_stream(path)(iter(payloads), timeout=timeout))


def _check_answer(fn):
    try:
        fn()
    except grpc.RpcError as exc:
        code, details = exc.code(), exc.details() or ""
        if code == grpc.StatusCode.INTERNAL:
            # Only gRPC's own refusal of bytes that are not the message is acceptable here;
            # "internal error in X" would be an unexpected exception in our handler.
            assert "deserializ" in details.lower(), details
        else:
            assert code in ACCEPTABLE, (code, details)
        return code
    return grpc.StatusCode.OK


@pytest.mark.timeout(120)
@pytest.mark.parametrize("target", TARGETS, ids=lambda t: f"{t[1]}-as-{t[4]}")
@settings(max_examples=25, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(payloads=st.lists(st.binary(max_size=1024), min_size=1, max_size=3))
def test_random_bytes_get_a_status(fuzz, target, payloads):
    service, method, cs, ss, who = target
    ch = fuzz["channels"][(who, service)]
    _check_answer(lambda: _call(ch, service, method, cs, ss, payloads, timeout=5))


OVERSIZED = {("SubmitJob", "analyst"), ("UploadSubjects", "analyst"), ("PublishCatalog", "mallory"),
             ("Step", "coordinator")}


@pytest.mark.parametrize("target", [t for t in TARGETS if (t[1], t[4]) in OVERSIZED],
                         ids=lambda t: f"{t[1]}-as-{t[4]}")
def test_oversized_message_is_refused(fuzz, target):
    service, method, cs, ss, who = target
    ch = fuzz["big"][(who, service)]
    payload = b"\x0a\x80\x80\x80\x04" + bytes(9 << 20)          # a 9 MB length-delimited field
    code = _check_answer(lambda: _call(ch, service, method, cs, ss, [payload], timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_still_serving_with_data_unchanged_after_fuzzing(env, fuzz, tmp_path):
    fed = env["fed"]
    assert _state(fed) == fuzz["baseline"]
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    for agency in AGENCIES:
        with tls.secure_channel(node_address(fed, agency), certs.client_files(fed.certs, REQ, "analyst"),
                                agency) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with analyst(env) as c:
        assert len(c.catalog().datasets) >= len(AGENCIES)
        res = c.verify(rule(env, "car"), env["subjects"], out=tmp_path / "after.csv")
    assert res.rows == len(env["rows"])
    assert pathlib.Path(tmp_path / "after.csv").exists()
