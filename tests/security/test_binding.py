"""A coordinator that swaps in its own HE key (to decrypt providers' per-person answers) or
replays a provider step is refused: the requester node signs the binding of its one-job key
and each sealed subject list, and provider steps run once per job."""
from __future__ import annotations

import json

import grpc
import pytest

from pc_common.pb import node_pb2
from pc_rules.rules import parse_rule
from pc_node.secure_agg import get_backend
from pc_common.wire import blob_chunks

RULE = """
id = "nocar"
title = "No car"
purpose = "social_assistance.eligibility"
requester = "civil_affairs"
subject_column = "id_number"
reveal = "verdict"

[[criteria]]
name = "no_car"
type = "none_exists"
source = "public_security.vehicles"
"""
GRANT = f"""
[[grants]]
dataset = "vehicles"
requester = "civil_affairs"
purposes = ["social_assistance.eligibility"]
rules = [{{ id = "nocar", digest = "{parse_rule(RULE).criteria_digest('public_security')}" }}]
[grants.columns]
id_number = "join_key"
"""
IDS = ["11010519491231002X", "110101199003071233"]


@pytest.fixture(scope="module")
def fed(new_federation):
    f = new_federation("binding", ["civil_affairs", "public_security"])
    vehicles = f.root.parent / "vehicles.csv"
    vehicles.write_text("id_number,plate\n11010519491231002X,A1\n")
    f.import_csv("public_security", vehicles)
    f.write_policy("public_security", GRANT)
    return f


def _blobs(messages):
    out = {}
    for m in messages:
        if m.WhichOneof("kind") == "chunk":
            out.setdefault(m.chunk.stream, b"")
            out[m.chunk.stream] += m.chunk.data
    return out


def test_swapped_key_and_replayed_step_are_refused(fed, analyst, as_coordinator):
    rule = parse_rule(RULE, "nocar.toml")
    receipt = analyst.node.UploadSubjects(iter([node_pb2.SubjectsChunk(
        subject_column="id_number", rows=[node_pb2.SubjectRow(subject=s) for s in IDS])]), timeout=10)
    signed = analyst.node.PrepareJob(node_pb2.PrepareJobRequest(
        kind="verify", params=json.dumps({"rule": rule.to_dict(), "he": "bfv"}).encode(),
        subject_set=receipt.subject_set), timeout=10)
    signed = node_pb2.SignedJobSpec(spec=signed.spec, signature=signed.signature, signer="civil_affairs")
    job_id = json.loads(signed.spec)["job_id"]

    def head(step):
        return node_pb2.StepMessage(header=node_pb2.StepHeader(job_id=job_id, step=step, spec=signed))

    provider, requester = as_coordinator(fed, "public_security"), as_coordinator(fed, "civil_affairs")
    assert list(provider.Step(iter([head("job.admit")]), timeout=10))[-1].done.summary["admitted"] == "yes"
    prepared = _blobs(requester.Step(iter([head("verify.prepare")]), timeout=30))
    sealed, binding = prepared["sealed:public_security"], prepared["binding:public_security"]

    # The coordinator's own key pair instead of the requester's: refused before any work.
    own_pub, _ = get_backend("bfv").generate_keypair()

    def evaluate(pubctx):
        msgs = [head("verify.evaluate"), *blob_chunks("pubctx", pubctx), *blob_chunks("sealed", sealed),
                *blob_chunks("binding", binding)]
        return list(provider.Step(iter(msgs), timeout=30))

    with pytest.raises(grpc.RpcError) as err:
        evaluate(own_pub.serialize())
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "signed by the requester" in err.value.details()

    # The genuine key is accepted once ...
    out = evaluate(prepared["pubctx"])
    assert "ct:no_car" in _blobs(out)
    # ... and the step cannot be replayed to collect a second set of answers.
    with pytest.raises(grpc.RpcError) as err:
        evaluate(prepared["pubctx"])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    for stub in (provider, requester):
        list(stub.Step(iter([head("job.cleanup")]), timeout=10))
