"""The declared step protocol and job kinds: schema round trips, refusals, and that both
sides' tables cover exactly the shared ones."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pc_common import job_kinds, steps_schema as schema, wire
from pc_common.errors import FailedPrecondition, InvalidInput
from pc_common.pb import node_pb2

SAMPLES = {
    schema.Admission: schema.Admission(admitted="pending", role="requester"),
    schema.Wiped: schema.Wiped(wiped=3),
    schema.Count: schema.Count(count=0),
    schema.VerifyPrepared: schema.VerifyPrepared(slots=10, groups=4, he="bfv"),
    schema.VerifyEvaluated: schema.VerifyEvaluated(subjects=10, criteria=("no_car", "income")),
    schema.CompareParams: schema.CompareParams(groups=4, criteria=("a", "b_2")),
    schema.Rows: schema.Rows(rows=7),
    schema.HopParams: schema.HopParams(shuffle=True, label="reencrypt:tax"),
    schema.PsiFinished: schema.PsiFinished(own=5),
    schema.FilterState: schema.FilterState(epoch="e01-ab", version=-1),
    schema.FilterSent: schema.FilterSent(epoch="e01", version=2, kind="deltas"),
    schema.BlindParams: schema.BlindParams(kind="snapshot"),
    schema.LookupBlinded: schema.LookupBlinded(queried=3, filter_rows=9),
    schema.QueryPrepared: schema.QueryPrepared(slots=9, groups=2),
    schema.QueryEvaluated: schema.QueryEvaluated(subjects=9, aggregates=("subjects", "rows", "sum:x")),
    schema.QueryReleaseParams: schema.QueryReleaseParams(groups=2, aggregates=("subjects", "rows"),
                                                         decimal_sums=("x",)),
    schema.QueryReleased: schema.QueryReleased(groups=2),
    schema.PrivatePrepared: schema.PrivatePrepared(rows=9, groups=2),
    schema.PrivateEvaluated: schema.PrivateEvaluated(rows=4, positions=13, aggregates=("subjects", "rows")),
    schema.PrivateReleaseParams: schema.PrivateReleaseParams(positions=13, provider_rows=4, aggregates=("subjects",),
                                                             decimal_sums=("x",)),
    schema.Evaluated: schema.Evaluated(evaluated=3),
    schema.Queried: schema.Queried(queried=3),
    schema.NoParams: schema.NoParams(),
    schema.NoResult: schema.NoResult(),
}


def test_every_step_record_survives_the_wire():
    used = {s.params for s in schema.STEPS.values()} | {s.result for s in schema.STEPS.values()}
    assert used == set(SAMPLES)
    for step, spec in schema.STEPS.items():
        header = node_pb2.StepHeader(job_id="j", step=step, params=schema.encode_params(step, SAMPLES[spec.params]))
        header = node_pb2.StepHeader.FromString(header.SerializeToString())
        assert schema.decode_params(header) == SAMPLES[spec.params]
        done = node_pb2.StepDone(summary=SAMPLES[spec.result].encode())
        done = node_pb2.StepDone.FromString(done.SerializeToString())
        assert schema.decode_result(step, done) == SAMPLES[spec.result]


def test_wire_form_stays_what_peers_and_tests_read():
    assert schema.HopParams(shuffle=False, label="x").encode() == {"shuffle": "0", "label": "x", "chain": ""}
    assert schema.Admission(admitted="yes").encode()["admitted"] == "yes"
    assert schema.Count(count=2).encode() == {"count": "2"}
    # Defaults fill what an older header leaves out.
    assert schema.decode_params(node_pb2.StepHeader(step="psi.hop")) == schema.HopParams(shuffle=False, label="hop")


@pytest.mark.parametrize("step, params, word", [
    ("psi.hop", {"shuffle": "yes"}, "'shuffle' is malformed"),
    ("psi.hop", {"shufle": "1"}, "unexpected key 'shufle'"),
    ("lookup.filter", {"version": "1e3"}, "'version' is malformed"),
    ("lookup.filter", {"version": "9" * 40}, "'version' is malformed"),
    ("lookup.blind", {"kind": "everything"}, "'kind' is malformed"),
    ("verify.compare", {"groups": "4", "criteria": "[1]"}, "'criteria' is malformed"),
    ("verify.compare", {"groups": "4"}, "'criteria' is missing"),
    ("verify.compare", {"groups": "x", "criteria": "[]"}, "'groups' is malformed"),
    ("job.admit", {"anything": "1"}, "unexpected key"),
])
def test_malformed_step_parameters_are_refused_by_name(step, params, word):
    with pytest.raises(InvalidInput, match=word) as err:
        schema.decode_params(node_pb2.StepHeader(step=step, params=params))
    assert step in str(err.value)


def test_unknown_step_and_wrong_record_are_refused():
    with pytest.raises(InvalidInput, match="unknown step"):
        schema.decode_params(node_pb2.StepHeader(step="psi.everything"))
    with pytest.raises(TypeError, match="HopParams"):
        schema.encode_params("psi.hop", schema.BlindParams())
    with pytest.raises(InvalidInput, match="'admitted' is malformed"):
        schema.decode_result("job.admit", node_pb2.StepDone(summary={"admitted": "maybe"}))


def test_both_sides_cover_exactly_the_shared_tables():
    from pc_coordinator import kinds as coordinator_kinds
    from pc_node import steps as node_steps
    assert set(node_steps.KINDS) == set(job_kinds.KINDS) == set(coordinator_kinds.KINDS)
    assert set(node_steps.STEPS) == set(schema.STEPS)
    with pytest.raises(RuntimeError, match="missing"):
        job_kinds.check_covers("a", {"verify": None})


def test_job_parameters_are_typed_and_checked():
    doc = {"kind": "psi", "params": {"datasets": ["a.x", "b.y", "c.z"], "purpose": "p", "subjects": 3}}
    p = job_kinds.params_of(doc, "psi")
    assert p.datasets == (("a", "x"), ("b", "y"), ("c", "z")) and p.providers() == ["b", "c"]
    assert p.uses("b") == {"y": {}} and p.uses("q") == {} and p.subjects == 3
    with pytest.raises(InvalidInput, match="belongs to lookup jobs"):
        job_kinds.params_of(doc, "lookup")
    lookup = job_kinds.LookupParams.from_params({"datasets": ["a.x", "b.y"], "labels": ["plate"], "masked": True})
    assert lookup.provider == ("b", "y") and lookup.uses("b") == {"y": {"plate": "masked"}}
    for params, word in (({"datasets": ["a.x", "y"]}, "AGENCY.DATASET"),
                         ({"datasets": ["a.x"]}, "at least one provider"),
                         ({"datasets": ["a.x", "a.y"]}, "one dataset only"),
                         ({"datasets": ["a.x", "b.y"], "cardinality_only": 1}, "true or false"),
                         ({"datasets": ["a.x", "b.y"], "subjects": -1}, "negative"),
                         ({"datasets": ["a.x", "b.y"], "colour": "red"}, "unknown parameter 'colour'"),
                         ({"datasets": ["a.x", "b.y", "c.z"], "result_to_all": True}, "result-to-all")):
        with pytest.raises(InvalidInput, match=word):
            job_kinds.PsiParams.from_params(params)
    with pytest.raises(InvalidInput, match="exactly one provider"):
        job_kinds.LookupParams.from_params({"datasets": ["a.x", "b.y", "c.z"]})
    with pytest.raises(InvalidInput, match="bfv or paillier"):
        job_kinds.VerifyParams.from_params({"rule": {}, "he": "ckks"})
    assert dataclasses.is_dataclass(job_kinds.VerifyParams.from_params({"rule": {}}))


def test_chunk_writer_numbers_a_stream_and_closes_it():
    out = wire.ChunkWriter("out")
    msgs = [out.chunk(bytes(64)), out.chunk(bytes(32)), out.end()]
    assert [(m.chunk.seq, m.chunk.count, m.chunk.last) for m in msgs] == [(0, 2, False), (1, 1, False), (2, 0, True)]
    assert b"".join(c.data for c in wire.read_stream(iter(msgs), "out")) == bytes(96)


def test_group_sum_behind_the_backend_interface():
    from pc_node.secure_agg import get_backend
    paillier, bfv = get_backend("paillier"), get_backend("bfv")
    assert paillier.supports_group_sum and not bfv.supports_group_sum
    pub, sec = paillier.generate_keypair()
    cv = paillier.encrypt(pub, [5, -2, 7, 1])
    layout = np.array([2, 0, 2, 0], dtype="<u4")
    assert paillier.decrypt(sec, paillier.group_sum(cv, layout, 3)).tolist() == [-1, 0, 12]
    with pytest.raises(InvalidInput):
        paillier.group_sum(cv, layout, 2)          # group 2 does not exist
    with pytest.raises(InvalidInput):
        paillier.group_sum(cv, layout[:3], 3)      # one group per slot
    bpub, _ = bfv.generate_keypair()
    with pytest.raises(FailedPrecondition):
        bfv.group_sum(bfv.encrypt(bpub, [1, 2]), [0, 0], 1)
