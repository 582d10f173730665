"""PSI jobs (two-party, PSI-CA, k-party, result to both) through real servers.

One small federation (coordinator + civil_affairs, public_security, housing on loopback with
mutual TLS) serves the module. Every intersection is checked against the plaintext
intersection of the normalised identifiers (whitespace stripped, upper case); leakage is
checked at the coordinator (its whole data directory) and in the job's reports; refusals are
checked for their status and message; a node is fed malformed streams by a forging
coordinator and must refuse them and keep serving.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import pathlib

import grpc
import pytest
from pc_client.cli import main as cli_main
from pc_client.sdk import Federation

from pc_common import certs, gm, jobspec
from pc_common.pb import node_pb2
from pc_node import idnum
from tests.conftest import norm
from tests.psi_kit import (
    BASE_POINT,
    as_hop_input,
    blind,
    chunk,
    header,
    hop_header,
    open_sealed,
)

REQ = "civil_affairs"
PS = "public_security"
HOUSING = "housing"
AGENCIES = [REQ, HOUSING, PS]


def _pool(n: int = 400) -> list[str]:
    base = dt.date(1950, 1, 1)
    out = [idnum.make_id("320102", base + dt.timedelta(days=37 * i), (7 * i) % 1000) for i in range(n)]
    assert len(set(out)) == n
    return out


POOL = _pool()
A = POOL[0:80]                                             # civil_affairs.people
VEHICLES = POOL[50:130]                                    # public_security.vehicles
PROPERTIES = POOL[40:60] + POOL[70:100] + POOL[300:310]    # housing.properties
DISJOINT = POOL[300:360]                                   # public_security.disjoint
SECRET = POOL[0:10]                                        # public_security.secret (no grant)
# Duplicates on both sides (requester rows repeated, some spelled in lower case).
PEOPLE_DUP = [i for i in POOL[0:40] for _ in range(2)] + [POOL[5].lower(), POOL[39]]
DUPS = [i for i in POOL[20:60] for _ in range(3)]
# The provider spells identifiers with a lower-case x and surrounding blanks.
X_IDS = [i for i in A if i.endswith("X")]
MESSY_IDS = X_IDS + POOL[200:230] + A[1:6]

GRANTED = ["vehicles", "messy", "dups", "disjoint", "same"]


def _grants(datasets: list[str]) -> str:
    return "".join(f'[[grants]]\ndataset = "{d}"\nrequester = "{REQ}"\npurposes = ["data_matching"]\n'
                   f'[grants.columns]\nid_number = "join_key"\n\n' for d in datasets)


def _write(path: pathlib.Path, ids: list[str]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id_number", "note"])
        for n, i in enumerate(ids):
            w.writerow([i, f"r{n}"])
    return path


@pytest.fixture(scope="module")
def env(new_federation):
    assert len(X_IDS) >= 2, "the pool must hold identifiers with an X check character"
    fed = new_federation("psi", AGENCIES)
    root = fed.root.parent
    data = root / "data"
    messy = [f"  {i[:-1]}x " if i.endswith("X") else f" {i}  " for i in MESSY_IDS]
    files = {
        (REQ, "people"): A, (REQ, "people_dup"): PEOPLE_DUP,
        (PS, "vehicles"): VEHICLES, (PS, "messy"): messy, (PS, "dups"): DUPS,
        (PS, "disjoint"): DISJOINT, (PS, "same"): list(reversed(A)), (PS, "secret"): SECRET,
        (HOUSING, "properties"): PROPERTIES,
    }
    for (agency, name), ids in files.items():
        fed.import_csv(agency, _write(data / agency / f"{name}.csv", ids), dataset=name)
    fed.write_policy(PS, _grants(GRANTED))
    fed.write_policy(HOUSING, _grants(["properties"]))
    fed.write_policy(REQ, "")
    return {"fed": fed, "root": root}


@pytest.fixture(scope="module")
def fed(env):
    """This module's own federation (the conftest's ``analyst`` is a client of it)."""
    return env["fed"]


def result_ids(path: pathlib.Path) -> list[str]:
    lines = pathlib.Path(path).read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id_number"
    return lines[1:]


def psi(c: Federation, datasets: list[str], out: pathlib.Path, **kw):
    res = c.psi(datasets, out=out, **kw)
    assert res.state == "succeeded"
    return res


def truth(*sets: list[str]) -> set[str]:
    out = {norm(i) for i in sets[0]}
    for s in sets[1:]:
        out &= {norm(i) for i in s}
    return out


# ----- correctness against the plaintext intersection ---------------------------------------------------
def test_two_party_equals_plaintext_intersection(analyst, tmp_path):
    res = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles"], tmp_path / "out.csv")
    got = result_ids(tmp_path / "out.csv")
    want = truth(A, VEHICLES)
    assert len(want) == 30
    assert set(got) == want and len(got) == len(want)
    # Each party's result lists its own identifiers in its own input order.
    assert got == [i for i in A if i in want]
    assert res.summary["intersection"] == len(want) and res.rows == len(want)
    assert res.summary["own"] == len(A)


def test_lowercase_x_and_blanks_at_the_provider_still_match(analyst, tmp_path):
    psi(analyst, [f"{REQ}.people", f"{PS}.messy"], tmp_path / "out.csv")
    got = set(result_ids(tmp_path / "out.csv"))
    want = truth(A, MESSY_IDS)
    assert want == set(X_IDS) | set(A[1:6])
    assert got == want
    assert {i for i in got if i.endswith("X")} == set(X_IDS)


def test_duplicates_count_once(analyst, tmp_path):
    res = psi(analyst, [f"{REQ}.people_dup", f"{PS}.dups"], tmp_path / "out.csv")
    got = result_ids(tmp_path / "out.csv")
    want = truth(PEOPLE_DUP, DUPS)
    assert want == set(POOL[20:40])
    assert len(got) == len(set(got)) == len(want) and set(got) == want
    assert res.summary["intersection"] == len(want)
    assert res.summary["own"] == 40                     # the requester's de-duplicated set
    assert res.summary["provider_sets"] == {PS: 40}


def test_disjoint_sets_give_an_empty_intersection(analyst, tmp_path):
    res = psi(analyst, [f"{REQ}.people", f"{PS}.disjoint"], tmp_path / "out.csv")
    assert truth(A, DISJOINT) == set()
    assert result_ids(tmp_path / "out.csv") == []
    assert res.summary["intersection"] == 0 and res.rows == 0


def test_identical_sets_intersect_completely(analyst, tmp_path):
    res = psi(analyst, [f"{REQ}.people", f"{PS}.same"], tmp_path / "out.csv")
    assert result_ids(tmp_path / "out.csv") == A
    assert res.summary["intersection"] == len(A)


def test_cardinality_only_returns_the_size_alone(analyst, tmp_path):
    out = tmp_path / "ca.csv"
    res = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles"], out, cardinality_only=True)
    want = truth(A, VEHICLES)
    text = out.read_text(encoding="utf-8")
    assert text.splitlines() == ["intersection_size", str(len(want))]
    for ident in POOL:
        assert ident not in text
    assert res.summary["intersection"] == len(want) and res.summary["cardinality_only"] is True
    assert res.leakage[REQ][0].startswith("the size of the intersection only")


def test_three_parties_equal_the_three_way_intersection(analyst, tmp_path):
    res = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles", f"{HOUSING}.properties"], tmp_path / "out.csv")
    want = truth(A, VEHICLES, PROPERTIES)
    assert want == set(POOL[50:60] + POOL[70:80])
    # Neither two-way intersection alone: the three-way one.
    assert want != truth(A, VEHICLES) and want != truth(A, PROPERTIES)
    got = result_ids(tmp_path / "out.csv")
    assert set(got) == want and len(got) == len(want)
    assert res.summary["parties"] == 3
    assert res.summary["provider_sets"] == {PS: len(VEHICLES), HOUSING: len(PROPERTIES)}
    for party in (REQ, PS, HOUSING, "coordinator"):
        assert res.leakage[party], party


def test_three_party_cardinality_only(analyst, tmp_path):
    out = tmp_path / "ca3.csv"
    res = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles", f"{HOUSING}.properties"], out, cardinality_only=True)
    assert out.read_text().splitlines() == ["intersection_size", str(len(truth(A, VEHICLES, PROPERTIES)))]
    assert res.summary["intersection"] == 20


def test_result_to_all_gives_the_provider_the_same_intersection(env, analyst, tmp_path):
    fed = env["fed"]
    res = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles"], tmp_path / "out.csv", result_to_all=True)
    want = truth(A, VEHICLES)
    assert set(result_ids(tmp_path / "out.csv")) == want
    blob = json.loads(fed.runtime(PS).store.get_blob("results", res.job_id))
    lines = blob["csv"].splitlines()
    assert lines[0] == "id_number"
    assert set(lines[1:]) == want and len(lines) - 1 == len(want)
    assert blob["rows"] == len(want)
    assert any("shared with both" in s for s in res.leakage[PS])
    # Without the option the provider keeps no result.
    res2 = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles"], tmp_path / "out2.csv")
    assert not fed.runtime(PS).store.has_blob("results", res2.job_id)
    assert any("nothing about which" in s for s in res2.leakage[PS])


def test_result_to_all_is_refused_with_cardinality_only_or_three_parties(analyst):
    for kw, ds in (({"cardinality_only": True}, [f"{REQ}.people", f"{PS}.vehicles"]),
                   ({}, [f"{REQ}.people", f"{PS}.vehicles", f"{HOUSING}.properties"])):
        with pytest.raises(grpc.RpcError) as err:
            analyst.psi(ds, result_to_all=True, **kw)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "result-to-all" in err.value.details()


# ----- what the coordinator and the reports hold ------------------------------------------------------------
def test_intersection_is_written_only_at_the_requester(env, analyst, tmp_path):
    fed = env["fed"]
    res = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles"], tmp_path / "out.csv")
    inter = sorted(truth(A, VEHICLES))
    assert inter and set(result_ids(tmp_path / "out.csv")) == set(inter)
    # The requester's node holds it (encrypted at rest), the provider's node does not.
    blob = json.loads(fed.runtime(REQ).store.get_blob("results", res.job_id))
    assert set(blob["csv"].splitlines()[1:]) == set(inter)
    assert not fed.runtime(PS).store.has_blob("results", res.job_id)
    # No file under the coordinator's data directory (database, WAL, anything) holds any identifier.
    cdir = fed.root / "coordinator"
    files = [p for p in cdir.rglob("*") if p.is_file()]
    assert files, "the coordinator keeps a data directory"
    needles = [i.encode() for i in set(POOL)] + [i.lower().encode() for i in inter if i.endswith("X")]
    for p in files:
        content = p.read_bytes()
        leaked = [n.decode() for n in needles if n in content]
        assert not leaked, f"{p.relative_to(cdir)} holds {len(leaked)} identifier(s)"
    # The coordinator's job record: sizes, no identifiers.
    job = analyst.job(res.job_id)
    summary, leakage = json.loads(job.summary_json), json.loads(job.leakage_json)
    assert summary["requester_set"] == len(A) and summary["provider_sets"] == {PS: len(VEHICLES)}
    assert "intersection" not in summary            # not even its size: it stays at the requester
    for text in (job.summary_json, job.leakage_json, job.reason):
        for ident in POOL:
            assert ident not in text


def test_leakage_report_names_each_party_with_numbers(analyst, tmp_path):
    res = psi(analyst, [f"{REQ}.people", f"{PS}.vehicles"], tmp_path / "out.csv")
    leak = res.leakage
    assert set(leak) == {REQ, PS, "coordinator"}
    assert any(f"({len(VEHICLES)})" in s for s in leak[REQ]), leak[REQ]
    assert any(f"({len(A)})" in s for s in leak[PS]), leak[PS]
    assert any(f"requester {len(A)}" in s and f"{PS} {len(VEHICLES)}" in s for s in leak["coordinator"]), \
        leak["coordinator"]
    # The coordinator's copy is the same report.
    assert json.loads(analyst.job(res.job_id).leakage_json) == leak


# ----- refusals ---------------------------------------------------------------------------------------------------
def test_provider_without_grant_is_refused_naming_the_dataset(analyst):
    before = {j.job_id for j in analyst.jobs()}
    with pytest.raises(grpc.RpcError) as err:
        analyst.psi([f"{REQ}.people", f"{PS}.secret"])
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{PS}.secret" in err.value.details() and REQ in err.value.details()
    # A grant for another purpose does not help either.
    with pytest.raises(grpc.RpcError) as err:
        analyst.psi([f"{REQ}.people", f"{PS}.vehicles"], purpose="tax.audit")
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{PS}.vehicles" in err.value.details() and "tax.audit" in err.value.details()
    assert {j.job_id for j in analyst.jobs()} == before


def test_provider_refuses_itself_when_the_coordinator_skips_the_check(env, analyst, as_coordinator):
    fed = env["fed"]
    signed = prepare(analyst, [f"{REQ}.people", f"{PS}.secret"])
    with pytest.raises(grpc.RpcError) as err:
        list(as_coordinator(fed, PS).Step(iter([header(signed, "job.admit")]), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "'secret'" in err.value.details()


def test_unknown_dataset_is_a_clear_error(analyst):
    with pytest.raises(grpc.RpcError) as err:
        analyst.psi([f"{REQ}.people", f"{PS}.nope"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"no dataset '{PS}.nope'" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:       # the requester's own dataset is checked at its node
        analyst.psi([f"{REQ}.nope", f"{PS}.vehicles"])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "nope" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        analyst.psi([f"{REQ}.people", "vehicles"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "AGENCY.DATASET" in err.value.details()


def test_first_dataset_not_the_requesters_is_refused(env, analyst):
    # The requester's node will not sign it...
    with pytest.raises(grpc.RpcError) as err:
        analyst.psi([f"{PS}.vehicles", f"{REQ}.people"])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "first dataset" in err.value.details()
    # ...and a spec signed with the requester's key anyway is refused by the coordinator.
    key = gm.Sm2PrivateKey.from_hex((env["fed"].certs / "nodes" / REQ / "sm2.key").read_text().strip())
    spec = jobspec.build("psi", REQ, {"datasets": [f"{PS}.vehicles", f"{REQ}.people"], "purpose": "data_matching",
                                      "subjects": 80}, "data_matching")
    signed = node_pb2.SignedJobSpec(spec=spec, signature=jobspec.sign(spec, key), signer=REQ)
    with pytest.raises(grpc.RpcError) as err:
        analyst.coordinator.SubmitJob(signed, timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "first dataset must belong to the requester" in err.value.details()


def test_cli_psi_json(env, tmp_path, capsys):
    fed = env["fed"]
    files = certs.client_files(fed.certs, REQ, "analyst")
    out = tmp_path / "cli.csv"
    rc = cli_main(["psi", f"{REQ}.people", f"{PS}.vehicles", "--json", "--out", str(out),
                   "--coordinator", f"127.0.0.1:{fed.coordinator_port}", "--node", f"127.0.0.1:{fed.nodes[REQ][2]}",
                   "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    doc = json.loads(captured.out)
    want = truth(A, VEHICLES)
    assert doc["state"] == "succeeded" and doc["job_id"]
    assert doc["summary"]["intersection"] == len(want) and doc["rows"] == len(want)
    assert doc["out"] == str(out) and set(result_ids(out)) == want
    assert set(doc["leakage"]) == {REQ, PS, "coordinator"}
    # A refused job: one line on stderr, non-zero exit, no traceback.
    rc = cli_main(["psi", f"{REQ}.people", f"{PS}.secret", "--json",
                   "--coordinator", f"127.0.0.1:{fed.coordinator_port}", "--node", f"127.0.0.1:{fed.nodes[REQ][2]}",
                   "--cert", str(files.cert), "--key", str(files.key), "--ca", str(files.ca)])
    captured = capsys.readouterr()
    assert rc != 0 and captured.out == ""
    assert captured.err.startswith("error: PERMISSION_DENIED") and f"{PS}.secret" in captured.err
    assert "Traceback" not in captured.err


# ----- malformed peers ------------------------------------------------------------------------------------------
def prepare(c: Federation, datasets: list[str]) -> node_pb2.SignedJobSpec:
    signed = c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="psi", params=json.dumps(
        {"datasets": datasets, "cardinality_only": False, "purpose": "data_matching",
         "result_to_all": False, "protocol": "ecdh"}).encode()), timeout=10)
    return node_pb2.SignedJobSpec(spec=signed.spec, signature=signed.signature, signer=REQ)


MALFORMED = {
    "33-byte point": [chunk(0, BASE_POINT + b"\x00", count=1, last=True)],
    "chunk not a multiple of 32": [chunk(0, BASE_POINT * 3 + b"\x01" * 4, count=3, last=True)],
    "count disagrees with length": [chunk(0, BASE_POINT * 2, count=3, last=True)],
    "data under a zero count": [chunk(0, BASE_POINT + b"\x00" * 7, count=0, last=True)],
    "all-zero point": [chunk(0, bytes(32), count=1, last=True)],
    "small-order point in a good chunk": [chunk(0, BASE_POINT + (1).to_bytes(32, "little"), count=2, last=True)],
    "duplicated chunk seq": [chunk(0, BASE_POINT), chunk(0, BASE_POINT, last=True)],
    "stream without its last chunk": [chunk(0, BASE_POINT)],
}


def _admitted_hop(stub, analyst):
    """A fresh signed and admitted job, and its psi.hop header (a provider runs a step once)."""
    signed = prepare(analyst, [f"{REQ}.people", f"{PS}.vehicles"])
    admitted = list(stub.Step(iter([header(signed, "job.admit")]), timeout=10))
    assert admitted[-1].done.summary["admitted"] == "yes"
    return signed, hop_header(signed)


def _reencrypted(fed, stub, req_stub, analyst) -> tuple[bytes, bytes, list]:
    """A fresh job's real hop: (the requester's blinded points, the hop's output opened with the
    requester's key, the hop's answer)."""
    signed, hop = _admitted_hop(stub, analyst)
    answer = blind(req_stub, signed)
    sent = b"".join(m.chunk.data for m in answer if m.WhichOneof("kind") == "chunk" and m.chunk.stream == "out")
    out = list(stub.Step(iter([hop] + as_hop_input(answer)), timeout=10))
    job_id = json.loads(signed.spec)["job_id"]
    got, _ = open_sealed(fed.runtime(REQ), job_id, f"chain:{REQ}", out)
    return sent, got, out


def test_malformed_streams_are_refused_and_the_node_keeps_serving(env, analyst, as_coordinator, tmp_path):
    fed = env["fed"]
    stub, req_stub = as_coordinator(fed, PS), as_coordinator(fed, REQ)

    # Control: the requester's signed stream is re-encrypted point for point, sealed to the requester.
    sent, got, out = _reencrypted(fed, stub, req_stub, analyst)
    assert len(sent) == len(got) == 32 * len(A)
    assert all(got[i:i + 32] != sent[i:i + 32] for i in range(0, len(sent), 32))
    assert out[-1].done.summary["count"] == str(len(A))
    assert sent not in b"".join(m.chunk.data for m in out if m.WhichOneof("kind") == "chunk")

    # The step runs once per chain of the job: no oracle for a replaying coordinator.
    signed, hop = _admitted_hop(stub, analyst)
    answer = blind(req_stub, signed)
    list(stub.Step(iter([hop] + as_hop_input(answer)), timeout=10))
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Step(iter([hop] + as_hop_input(answer)), timeout=10))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED

    for name, msgs in MALFORMED.items():
        _, bad_hop = _admitted_hop(stub, analyst)
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Step(iter([bad_hop] + msgs), timeout=10))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (name, err.value.code(), err.value.details())
        assert BASE_POINT.hex() not in err.value.details()
        # Still serving after each one, and still correct.
        sent, got, _ = _reencrypted(fed, stub, req_stub, analyst)
        assert len(got) == len(sent) == 32 * len(A) and got[:32] != sent[:32], name

    # The requester's finish step refuses a malformed stream as well.
    finish = header(signed, "psi.finish")
    with pytest.raises(grpc.RpcError) as err:
        list(req_stub.Step(iter([finish, chunk(0, BASE_POINT + b"\x00", count=1, last=True, stream="double")]),
                           timeout=10))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    for agency in (PS, REQ):
        list(as_coordinator(fed, agency).Step(iter([header(signed, "job.cleanup")]), timeout=10))

    # A real job afterwards succeeds with the exact answer.
    psi(analyst, [f"{REQ}.people", f"{PS}.vehicles"], tmp_path / "after.csv")
    assert set(result_ids(tmp_path / "after.csv")) == truth(A, VEHICLES)


def test_unadmitted_job_cannot_use_the_provider(env, analyst, as_coordinator):
    """A hop for a job the provider never admitted is refused before any point is touched."""
    signed = prepare(analyst, [f"{REQ}.people", f"{PS}.vehicles"])
    with pytest.raises(grpc.RpcError) as err:
        list(as_coordinator(env["fed"], PS).Step(iter([header(signed, "psi.hop", {"shuffle": "0"}),
                                                       chunk(0, BASE_POINT, last=True)]), timeout=10))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "not admitted" in err.value.details()
