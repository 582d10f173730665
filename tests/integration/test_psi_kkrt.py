"""KKRT16 PSI jobs (``protocol = "kkrt"``) through real servers, on the session's test city.

The result must equal the plaintext intersection and the ECDH job's result; a coordinator
driving the two steps itself sees only envelopes sealed to the node that reads them; malformed,
truncated, duplicated or oversized chunks are refused with INVALID_ARGUMENT and the nodes keep
serving; each step runs once per job.
"""
from __future__ import annotations

import csv
import json
import queue

import grpc
import pytest

from pc_common.pb import common_pb2, node_pb2
from pc_node import envelope
from pc_node.steps import psi_kkrt
from tests.conftest import norm
from tests.psi_kit import header

REQ = "civil_affairs"
PS = "public_security"
DATASETS = [f"{REQ}.applicants", f"{PS}.vehicles"]


def _ids(path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as fh:
        return [row["id_number"] for row in csv.DictReader(fh)]


def _result(path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id_number"
    return lines[1:]


def _prepare(c, **kw) -> node_pb2.SignedJobSpec:
    signed = c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="psi", params=json.dumps(
        {"datasets": DATASETS, "purpose": "data_matching", **kw}).encode()), timeout=10)
    return node_pb2.SignedJobSpec(spec=signed.spec, signature=signed.signature, signer=REQ)


def _admitted(stub, analyst) -> node_pb2.SignedJobSpec:
    signed = _prepare(analyst)
    assert json.loads(signed.spec)["params"]["protocol"] == "kkrt"
    admitted = list(stub.Step(iter([header(signed, "job.admit")]), timeout=10))
    assert admitted[-1].done.summary["admitted"] == "yes"
    return signed


class _Feed:
    """A request iterator fed by the test (a coordinator of its own)."""

    def __init__(self, first):
        self.q = queue.Queue()
        self.q.put(first)

    def put(self, msgs):
        for m in msgs:
            self.q.put(m)

    def close(self):
        self.q.put(None)

    def __iter__(self):
        while (m := self.q.get()) is not None:
            yield m


def _until_last(answers) -> list:
    out = []
    for m in answers:
        if m.WhichOneof("kind") == "chunk":
            out.append(m)
            if m.chunk.last:
                return out
        elif m.WhichOneof("kind") == "done":
            raise AssertionError("step finished early")
    raise AssertionError("stream ended early")


def _sealed_chunk(key: bytes, job_id: str, round_no: int, data: bytes, seq: int = 0, last: bool = True,
                  aad_round: int | None = None):
    blob = envelope.seal(key, data, psi_kkrt.aad(job_id, round_no if aad_round is None else aad_round, seq, last))
    return node_pb2.StepMessage(chunk=common_pb2.DataChunk(stream=f"kkrt{round_no}", seq=seq, count=len(data),
                                                           data=blob, last=last))


def test_kkrt_equals_the_plaintext_and_the_ecdh_intersection(fed, city, analyst, tmp_path):
    folder = city[0]
    mine = [norm(i) for i in _ids(folder / REQ / "applicants.csv")]
    theirs = {norm(i) for i in _ids(folder / PS / "vehicles.csv")}
    want = [i for i in dict.fromkeys(mine) if i in theirs]
    assert want, "the test city must have common identifiers"
    kk = analyst.psi(DATASETS, out=tmp_path / "kkrt.csv", protocol="kkrt")
    ec = analyst.psi(DATASETS, out=tmp_path / "ecdh.csv", protocol="ecdh")
    auto = analyst.psi(DATASETS, out=tmp_path / "auto.csv")
    gm = analyst.psi(DATASETS, out=tmp_path / "gm.csv", crypto="gm")            # the national profile
    assert kk.state == ec.state == auto.state == gm.state == "succeeded"
    assert _result(tmp_path / "kkrt.csv") == want == _result(tmp_path / "ecdh.csv") == _result(tmp_path / "auto.csv")
    assert _result(tmp_path / "gm.csv") == want
    assert (kk.summary["crypto"], gm.summary["crypto"], gm.summary["protocol"]) == ("aes", "gm", "kkrt")
    assert kk.summary["intersection"] == len(want) and kk.summary["protocol"] == "kkrt"
    assert ec.summary["protocol"] == "ecdh" and auto.summary["protocol"] == "kkrt"
    assert set(kk.leakage) == {REQ, PS, "coordinator"}
    assert any("sealed" in line for line in kk.leakage["coordinator"])
    assert kk.leakage[PS][0] == f"the requester's set size ({len(set(mine))})"


def test_a_job_asks_each_party_once_to_admit_it_and_to_wipe_it(fed, analyst, tmp_path, monkeypatch):
    """Admitted in SubmitJob's round, the provider is not asked again by the job itself (its
    steps check its own admission record); cleanup reaches both parties (in parallel)."""
    from pc_node import steps
    calls: list[str] = []
    for name in ("job.admit", "job.cleanup"):
        def counted(runtime, head, inbound, _inner=steps.STEPS[name], _name=name):
            calls.append(f"{_name}@{runtime.node_id}")
            yield from _inner(runtime, head, inbound)
        monkeypatch.setitem(steps.STEPS, name, counted)
    res = analyst.psi(DATASETS, out=tmp_path / "once.csv", protocol="kkrt")
    assert res.state == "succeeded"
    assert sorted(calls) == sorted([f"job.admit@{PS}", f"job.cleanup@{REQ}", f"job.cleanup@{PS}"])


def test_kkrt_refuses_ecdh_only_options_in_one_line(analyst):
    for kw in ({"cardinality_only": True}, {"result_to_all": True}):
        with pytest.raises(grpc.RpcError) as err:
            _prepare(analyst, protocol="kkrt", **kw)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "--protocol kkrt" in err.value.details() and "\n" not in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        _prepare(analyst, protocol="rr22")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for kw in ({"protocol": "ecdh", "crypto": "gm"}, {"crypto": "sm9"}):
        with pytest.raises(grpc.RpcError) as err:
            _prepare(analyst, **kw)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "crypto" in err.value.details()


def test_coordinator_transcript_holds_only_sealed_bytes_and_steps_run_once(fed, city, analyst, as_coordinator):
    rs, ss = as_coordinator(fed, REQ), as_coordinator(fed, PS)
    signed = _admitted(ss, analyst)
    job_id = json.loads(signed.spec)["job_id"]
    to_r, to_s = _Feed(header(signed, "psi.kkrt_recv")), _Feed(header(signed, "psi.kkrt_send"))
    r_ans, s_ans = iter(rs.Step(iter(to_r), timeout=60)), iter(ss.Step(iter(to_s), timeout=60))
    transcript = []                                   # (recipient, chunk)
    for sender_turn in (True, False, True, False, True):
        got = _until_last(s_ans if sender_turn else r_ans)
        transcript += [(REQ if sender_turn else PS, m.chunk) for m in got]
        (to_r if sender_turn else to_s).put(got)
    to_r.close()
    to_s.close()
    r_rest, s_rest = list(r_ans), list(s_ans)
    assert r_rest[-1].WhichOneof("kind") == "done" and s_rest[-1].WhichOneof("kind") == "done"
    rounds = sorted({c.stream for _, c in transcript})
    assert rounds == ["kkrt1", "kkrt2", "kkrt3", "kkrt4", "kkrt5"]
    ids = [norm(i).encode() for i in _ids(city[0] / REQ / "applicants.csv")[:50]]
    blob = b"".join(c.data for _, c in transcript)
    assert b"PCKK" not in blob and not any(i in blob for i in ids)
    for recipient, c in transcript:
        rt, other = fed.runtime(recipient), fed.runtime(PS if recipient == REQ else REQ)
        aad = psi_kkrt.aad(job_id, int(c.stream[4:]), c.seq, c.last)
        plain = envelope.open_envelope(rt.x25519_private, c.data, aad)
        assert len(plain) == c.count
        with pytest.raises(Exception):
            envelope.open_envelope(other.x25519_private, c.data, aad)
    # Single use: neither step runs a second time for the job.
    for stub, step in ((rs, "psi.kkrt_recv"), (ss, "psi.kkrt_send")):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Step(iter([header(signed, step)]), timeout=10))
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # ECDH steps refuse a KKRT job.
    with pytest.raises(grpc.RpcError) as err:
        list(rs.Step(iter([header(signed, "psi.blind")]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_malformed_chunks_are_refused_and_the_nodes_keep_serving(fed, analyst, as_coordinator, tmp_path):
    rs, ss = as_coordinator(fed, REQ), as_coordinator(fed, PS)
    req_key = fed.runtime(REQ).peer_keys(REQ).x25519_public
    ps_key = fed.runtime(REQ).peer_keys(PS).x25519_public

    def raw(round_no, data, seq=0, last=True, count=None):
        return node_pb2.StepMessage(chunk=common_pb2.DataChunk(
            stream=f"kkrt{round_no}", seq=seq, count=len(data) if count is None else count, data=data, last=last))

    def cases(job_id, key, rnd):
        good = envelope.ENVELOPE_OVERHEAD
        return {
            "garbage under a count": [raw(rnd, b"\x01" * (good + 8), count=8)],
            "count disagrees with length": [raw(rnd, b"\x01" * (good + 8), count=9)],
            "wrong associated data": [_sealed_chunk(key, job_id, rnd, b"x" * 16, aad_round=rnd + 1)],
            "duplicated chunk": [_sealed_chunk(key, job_id, rnd, b"x" * 16, last=False),
                                 _sealed_chunk(key, job_id, rnd, b"x" * 16, last=False)],
            "truncated stream": [_sealed_chunk(key, job_id, rnd, b"x" * 16, last=False)],
            "oversized message": [_sealed_chunk(key, job_id, rnd, b"x" * 200_000)],
            "not a KKRT message": [_sealed_chunk(key, job_id, rnd, b"x" * 64)],
        }

    names = list(cases("j", req_key, 1))
    for name in names:
        signed = _admitted(ss, analyst)
        job_id = json.loads(signed.spec)["job_id"]
        with pytest.raises(grpc.RpcError) as err:     # the receiver, fed a bad first message
            list(rs.Step(iter([header(signed, "psi.kkrt_recv")] + cases(job_id, req_key, 1)[name]), timeout=20))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.details())
        with pytest.raises(grpc.RpcError) as err:     # the sender, fed a bad second message
            list(ss.Step(iter([header(signed, "psi.kkrt_send")] + cases(job_id, ps_key, 2)[name]), timeout=20))
        assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED), name
        if name != "oversized message":
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.details())
        for stub in (rs, ss):
            list(stub.Step(iter([header(signed, "job.cleanup")]), timeout=10))
    # Still serving, still exact.
    res = analyst.psi(DATASETS, out=tmp_path / "after.csv", protocol="kkrt")
    assert res.state == "succeeded" and res.summary["protocol"] == "kkrt"
