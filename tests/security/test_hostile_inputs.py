"""Hostile inputs: forged, expired, future and replayed job specs, dataset names with
traversal or quotes, ``where`` injections, and malformed or oversized protobuf bytes sent
straight to every RPC method of both services.

Each refusal is checked for its gRPC status, and the federation is checked to still serve with
its stored data unchanged. Callers without the right certificate, role or grant are in
test_hostile_callers.py.
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
from pc_common.errors import InvalidInput
from pc_common.pb import node_pb2
from pc_node.importer import import_file
from pc_node.policy import parse_policy
from pc_rules.rules import load_rule

from tests.conftest import coordinator_address, node_address
from tests.security.hostile_kit import (AGENCIES, PURPOSE, REQ, admit, analyst, job_ids, prepare, requester_key,
                                        rpc_error, rule, rule_text)

pytestmark = pytest.mark.usefixtures("base_policies")


# ----- job specs: forged, expired, replayed -----------------------------------------------------------
def test_forged_specs_are_refused(env, as_coordinator):
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


def test_expired_and_future_specs_are_refused(env, as_coordinator):
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
def test_where_injection_is_refused_before_anything_runs(env, tmp_path, where, as_coordinator):
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
