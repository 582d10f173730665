"""PSI against a deviating coordinator (issue 11): no spare hops, no points it chose, outputs
sealed end to end, reports that match what the coordinator actually saw.

The attacks are driven through the nodes' real ``Node.Step`` API under the coordinator's own
certificate (``as_coordinator``); the honest runs are recorded message by message at the
coordinator's relay (every message it sends to and receives from a node) and the recorded
transcript is checked against the job's leakage report.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
import pathlib

import grpc
import numpy as np
import pytest

from pc_common.errors import IntegrityError
from pc_common.pb import node_pb2
from pc_coordinator.runner import JobContext
from pc_node import envelope, idnum
from pc_node.psi import best_backend
from pc_node.psi.encoding import encode_indices
from pc_node.psi.protocol import DEFAULT_DOMAIN
from tests.conftest import norm
from tests.psi_kit import (
    as_hop_input,
    blind,
    chunk,
    header,
    hop_header,
    open_sealed,
    renamed,
)

REQ, PS, HOUSING = "civil_affairs", "public_security", "housing"


def _pool(n: int = 400) -> list[str]:
    base = dt.date(1951, 3, 1)
    return [idnum.make_id("440305", base + dt.timedelta(days=41 * i), (11 * i) % 1000) for i in range(n)]


POOL = _pool()
A = POOL[0:80]                                          # civil_affairs.people
VEHICLES = POOL[50:130]                                 # public_security.vehicles   |A ∩ V| = 30
SAME_SIZE = POOL[0:80]                                  # public_security.same (80)  |A ∩ S| = 80
PROPERTIES = POOL[40:60] + POOL[70:100] + POOL[300:310]  # housing.properties (60)    |V ∩ P| = 40


def _write(path: pathlib.Path, ids: list[str]) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id_number"])
        w.writerows([i] for i in ids)
    return path


def _grants(datasets: list[str], quota: str = "") -> str:
    return "".join(f'[[grants]]\ndataset = "{d}"\nrequester = "{REQ}"\npurposes = ["data_matching"]\n'
                   f'[grants.columns]\nid_number = "join_key"\n{quota}\n' for d in datasets)


@pytest.fixture(scope="module")
def env(new_federation):
    fed = new_federation("psi_oracles", [REQ, HOUSING, PS])
    data = fed.root.parent / "data"
    for (agency, name), ids in {(REQ, "people"): A, (REQ, "grow"): A, (PS, "vehicles"): VEHICLES,
                                (PS, "same"): SAME_SIZE, (PS, "limited"): VEHICLES,
                                (HOUSING, "properties"): PROPERTIES}.items():
        fed.import_csv(agency, _write(data / agency / f"{name}.csv", ids), dataset=name)
    fed.write_policy(PS, _grants(["vehicles", "same", "limited"]))
    fed.write_policy(HOUSING, _grants(["properties"]))
    fed.write_policy(REQ, "")
    return {"fed": fed, "data": data}


@pytest.fixture(scope="module")
def fed(env):
    return env["fed"]


def prepare(c, datasets: list[str], **kw) -> node_pb2.SignedJobSpec:
    signed = c.node.PrepareJob(node_pb2.PrepareJobRequest(kind="psi", params=json.dumps(
        {"datasets": datasets, "purpose": "data_matching", "protocol": "ecdh", **kw}).encode()), timeout=10)
    return node_pb2.SignedJobSpec(spec=signed.spec, signature=signed.signature, signer=REQ)


def admitted(stub, signed):
    assert list(stub.Step(iter([header(signed, "job.admit")]), timeout=10))[-1].done.summary["admitted"] == "yes"


def rpc_error(stub, msgs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Step(iter(msgs), timeout=10))
    return err.value


def job_of(signed) -> str:
    return json.loads(signed.spec)["job_id"]


def guesses(ids: list[str]) -> bytes:
    """What a coordinator can compute for identifiers it guesses: H(z), no key of anyone."""
    return best_backend().hash_to_points(ids, DEFAULT_DOMAIN).tobytes()


def result_ids(path: pathlib.Path) -> set[str]:
    return set(pathlib.Path(path).read_text(encoding="utf-8").splitlines()[1:])


def truth(*sets) -> set[str]:
    out = {norm(i) for i in sets[0]}
    for s in sets[1:]:
        out &= {norm(i) for i in s}
    return out


def usage(fed, agency: str) -> int:
    db = fed.runtime(agency).governance._db
    return db.execute("SELECT COALESCE(SUM(subjects), 0) FROM usage WHERE requester = ?", (REQ,)).fetchone()[0]


# ----- 1. spare hops and points the coordinator chose -------------------------------------------------------
def test_a_spare_hop_is_refused_and_the_real_job_still_works(fed, analyst, as_coordinator, tmp_path):
    ps, req = as_coordinator(fed, PS), as_coordinator(fed, REQ)
    signed = prepare(analyst, [f"{REQ}.people", f"{PS}.vehicles"])
    admitted(ps, signed)
    real = blind(req, signed)
    out = list(ps.Step(iter([hop_header(signed)] + as_hop_input(real)), timeout=10))
    assert out[-1].done.summary["count"] == str(len(A))
    # The hop's output went sealed to the requester: nothing in it the coordinator can compare.
    assert {m.chunk.stream for m in out if m.WhichOneof("kind") == "chunk"} == {"sealed"}
    # The spare hop the old code allowed (one per set of the job), with the coordinator's guesses.
    spare = [chunk(0, guesses(VEHICLES[:5] + POOL[300:305]), last=True), chunk(0, b"", count=0, last=True,
                                                                                stream="binding")]
    for params in ({}, {"chain": f"chain:{REQ}"}, {"chain": f"chain:{PS}"}, {"chain": "combined"}):
        err = rpc_error(ps, [header(signed, "psi.hop", {"shuffle": "0", **params})] + spare)
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (params, err.details())
    # Every other step of the job runs once as well.
    list(ps.Step(iter([header(signed, "psi.own")]), timeout=10))
    assert rpc_error(ps, [header(signed, "psi.own")]).code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error(req, [header(signed, "psi.blind")]).code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error(ps, [header(signed, "psi.learn")]).code() == grpc.StatusCode.PERMISSION_DENIED
    assert rpc_error(ps, [header(signed, "psi.combine")]).code() == grpc.StatusCode.PERMISSION_DENIED
    for agency in (PS, REQ):
        list(as_coordinator(fed, agency).Step(iter([header(signed, "job.cleanup")]), timeout=10))
    # The real job through the coordinator is exact.
    res = analyst.psi([f"{REQ}.people", f"{PS}.vehicles"], out=tmp_path / "out.csv")
    assert res.state == "succeeded" and result_ids(tmp_path / "out.csv") == truth(A, VEHICLES)


def _fresh_hop(analyst, ps, req):
    signed = prepare(analyst, [f"{REQ}.people", f"{PS}.vehicles"])
    admitted(ps, signed)
    return signed, as_hop_input(blind(req, signed))


def _with_points(msgs, data: bytes):
    """The requester's stream (and its signature) with the points replaced by ``data``."""
    binding = [m for m in msgs if m.chunk.stream == "binding"]
    return [chunk(0, data), chunk(1, b"", count=0, last=True)] + binding


@pytest.mark.parametrize("case", ["guess swapped in", "guesses appended", "points dropped", "no signature",
                                  "another job's stream"])
def test_a_hop_refuses_points_the_requester_did_not_sign(fed, analyst, as_coordinator, case):
    ps, req = as_coordinator(fed, PS), as_coordinator(fed, REQ)
    signed, msgs = _fresh_hop(analyst, ps, req)
    points = b"".join(m.chunk.data for m in msgs if m.chunk.stream == "in")
    assert len(points) == 32 * len(A)
    if case == "guess swapped in":          # same count, other digest
        bad = _with_points(msgs, guesses([VEHICLES[0]]) + points[32:])
    elif case == "guesses appended":        # more points than signed
        bad = _with_points(msgs, points + guesses(VEHICLES[:3]))
    elif case == "points dropped":
        bad = _with_points(msgs, points[:-32])
    elif case == "no signature":
        bad = [m for m in msgs if m.chunk.stream != "binding"]
    else:                                    # a valid stream and signature, but of another job
        _, bad = _fresh_hop(analyst, ps, req)
    err = rpc_error(ps, [hop_header(signed)] + bad)
    want = (grpc.StatusCode.INVALID_ARGUMENT,) if case == "no signature" else (grpc.StatusCode.PERMISSION_DENIED,)
    assert err.code() in want, (case, err.code(), err.details())
    # Nothing was answered: the refusal came before any output point.
    for agency in (PS, REQ):
        list(as_coordinator(fed, agency).Step(iter([header(signed, "job.cleanup")]), timeout=10))


def test_quota_is_charged_by_the_points_evaluated(env, fed, analyst, as_coordinator, tmp_path):
    before = usage(fed, PS)
    # A daily quota with room for two jobs of the requester's 80 identifiers, not for 1,000.
    quota = before + 2 * len(A) + 50
    fed.write_policy(PS, _grants(["vehicles", "same"])
                     + _grants(["limited"], f"[grants.quota]\nsubjects_per_day = {quota}\n"))
    res = analyst.psi([f"{REQ}.people", f"{PS}.limited"], out=tmp_path / "q.csv", protocol="ecdh")
    assert res.state == "succeeded"
    hops = [e for e in fed.runtime(PS).audit.entries(job=res.job_id) if e["action"] == "psi.hop"]
    assert [e["counts"] for e in hops] == [{"points": len(A)}]
    assert usage(fed, PS) - before == len(A)
    # The requester's operator grows the dataset between prepare and submit (the attack:
    # 1,000 candidates under a quota with room for 130): the signed size no longer matches, so
    # nothing is evaluated.
    signed = prepare(analyst, [f"{REQ}.grow", f"{PS}.limited"])
    assert json.loads(signed.spec)["params"]["subjects"] == len(A)
    candidates = [idnum.make_id("440305", dt.date(1990, 5, 17), i) for i in range(1000)]
    fed.import_csv(REQ, _write(env["data"] / REQ / "grow.csv", candidates), dataset="grow", replace=True)
    job_id = analyst.coordinator.SubmitJob(signed, timeout=10).job_id
    job = analyst.watch(job_id)
    assert job.state == "failed" and "changed since the job was prepared" in job.reason
    assert not [e for e in fed.runtime(PS).audit.entries(job=job_id) if e["action"] == "psi.hop"]
    # A spec signed for the grown set is over the quota: refused at admission.
    with pytest.raises(grpc.RpcError) as err:
        analyst.psi([f"{REQ}.grow", f"{PS}.limited"], protocol="ecdh")
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert usage(fed, PS) - before == 2 * len(A)      # what the two admitted jobs declared and signed
    fed.import_csv(REQ, _write(env["data"] / REQ / "grow.csv", A), dataset="grow", replace=True)
    fed.write_policy(PS, _grants(["vehicles", "same", "limited"]))


# ----- 2./3. transcripts of honest runs -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(fed):
    """Run the jobs below through the real coordinator, recording every message its relay handles."""
    transcript: list[tuple[str, str, node_pb2.StepMessage]] = []
    original = JobContext.step

    def recording_step(self, node_id, messages):
        def tap(msgs):
            for m in msgs:
                transcript.append((node_id, "to_node", node_pb2.StepMessage.FromString(m.SerializeToString())))
                yield m
        for m in original(self, node_id, tap(messages)):
            transcript.append((node_id, "from_node", node_pb2.StepMessage.FromString(m.SerializeToString())))
            yield m

    mp = pytest.MonkeyPatch()
    mp.setattr(JobContext, "step", recording_step)
    runs = {}
    try:
        with fed.client(f"analyst@{REQ}") as c:
            out = fed.root.parent / "recorded"
            out.mkdir(exist_ok=True)
            for name, datasets, kw in (("to_all_30", [f"{REQ}.people", f"{PS}.vehicles"], {"result_to_all": True}),
                                       ("to_all_80", [f"{REQ}.people", f"{PS}.same"], {"result_to_all": True}),
                                       ("three", [f"{REQ}.people", f"{PS}.vehicles", f"{HOUSING}.properties"], {})):
                start = len(transcript)
                res = c.psi(datasets, out=out / f"{name}.csv", **kw)
                assert res.state == "succeeded"
                runs[name] = {"res": res, "messages": transcript[start:], "out": out / f"{name}.csv"}
    finally:
        mp.undo()
    return runs


def _all_chunks(run, direction: str | None = None):
    for node, d, m in run["messages"]:
        if m.WhichOneof("kind") == "chunk" and (direction is None or d == direction):
            yield node, d, m.chunk


def test_result_to_all_indices_cross_the_coordinator_sealed_at_a_fixed_length(fed, recorded):
    lengths = {}
    for name, want in (("to_all_30", truth(A, VEHICLES)), ("to_all_80", truth(A, SAME_SIZE))):
        run = recorded[name]
        job_id = run["res"].job_id
        # What the provider keeps is the same intersection...
        blob = json.loads(fed.runtime(PS).store.get_blob("results", job_id))
        assert set(blob["csv"].splitlines()[1:]) == want
        # ...and what crossed the coordinator towards it was one sealed stream.
        to_ps = [c for node, d, c in _all_chunks(run, "to_node") if node == PS and c.stream == "indices"]
        assert to_ps and all(c.data[0] == 1 for c in to_ps)          # envelope version byte
        lengths[name] = [len(c.data) for c in to_ps]
        msgs = [node_pb2.StepMessage(chunk=c) for c in to_ps]
        bitmap, signature = open_sealed(fed.runtime(PS), job_id, "indices", msgs, name="indices")
        assert len(bitmap) == (80 + 7) // 8 and signature
        positions = np.nonzero(np.unpackbits(np.frombuffer(bitmap, np.uint8), bitorder="little"))[0]
        assert len(positions) == len(want)
        # The coordinator never saw the index list in clear, in any encoding of it.
        everything = b"".join(c.data for _, _, c in _all_chunks(run))
        assert encode_indices(positions) not in everything and bitmap not in everything
        # Only the provider can open it.
        with pytest.raises(IntegrityError):
            open_sealed(fed.runtime(REQ), job_id, "indices", msgs, name="indices")
        # Neither the answer of any step nor any progress message carries the intersection size
        # (where it differs from the set sizes, which the coordinator knows anyway).
        if len(want) not in (len(A), 80):
            for node, d, m in run["messages"]:
                if m.WhichOneof("kind") == "done":
                    assert str(len(want)) not in m.done.summary.values(), (node, m.done.summary)
                elif m.WhichOneof("kind") == "progress":
                    assert len(want) not in (m.progress.done, m.progress.total), (node, m.progress)
    # Same provider set size, intersections of 30 and 80: the coordinator saw the same lengths.
    assert lengths["to_all_30"] == lengths["to_all_80"]


def test_two_party_transcript_matches_the_report(recorded):
    run = recorded["to_all_30"]
    clear = {}
    for node, d, c in _all_chunks(run):
        if c.stream in ("out", "in") and c.count:
            clear.setdefault((node, d, c.stream), []).append(c)
    # In clear the coordinator saw only the requester's blinded set: out of psi.blind into psi.hop.
    assert {k for k in clear} == {(REQ, "from_node", "out"), (PS, "to_node", "in")}
    n_x = sum(c.count for c in clear[(REQ, "from_node", "out")])
    # Sealed: the double (to the requester), the provider's own set (to the requester), the bitmap.
    sealed = {}
    for node, d, c in _all_chunks(run):
        if c.stream in ("sealed", "double", "provider", "indices") and not c.last:
            bitmap = c.stream == "indices" or (node, d) == (REQ, "from_node")    # one byte per count
            assert len(c.data) == (1 if bitmap else 32) * c.count + envelope.ENVELOPE_OVERHEAD
            sealed[(node, d, c.stream)] = sealed.get((node, d, c.stream), 0) + c.count
    assert sealed[(REQ, "to_node", "double")] == n_x == len(A)
    n_y = sealed[(REQ, "to_node", "provider")]
    assert n_y == len(VEHICLES)
    leak = run["res"].leakage
    assert any(f"requester {n_x}" in s and f"{PS} {n_y}" in s for s in leak["coordinator"]), leak["coordinator"]
    assert any("sealed" in s for s in leak["coordinator"])
    assert run["res"].summary["provider_sets"] == {PS: n_y} and run["res"].summary["requester_set"] == n_x


def test_k_party_transcript_matches_the_report(fed, recorded):
    run = recorded["three"]
    res, job_id = run["res"], run["res"].job_id
    want = truth(A, VEHICLES, PROPERTIES)
    assert result_ids(run["out"]) == want and len(want) == 20
    pair = truth(VEHICLES, PROPERTIES)
    assert len(pair) == 40 and truth(A, VEHICLES) and truth(A, PROPERTIES)      # overlaps exist to be found
    # Every stream in clear, as the coordinator received it from a node (one set per call; a
    # node's calls that produce clear points do not overlap in time).
    streams, current = [], {}
    for node, d, c in _all_chunks(run, "from_node"):
        if c.stream == "out":
            rows = current.setdefault(node, set())
            rows.update(bytes(r) for r in np.frombuffer(c.data, np.uint8).reshape(-1, 32))
            if c.last:
                streams.append((node, current.pop(node)))
    sizes_seen = sorted(len(s) for _, s in streams)
    # R's blinded set (80), R's set after PS's key (80) and each provider's own set (80, 60); the
    # last hop of every chain sealed its output.
    assert sizes_seen == sorted([len(A), len(A), len(VEHICLES), len(PROPERTIES)]), sizes_seen
    # No two of them share a value: no two streams under the same keys, nothing to intersect,
    # although the underlying sets overlap (A∩V, A∩P, V∩P are all non-empty).
    for i in range(len(streams)):
        for j in range(i + 1, len(streams)):
            assert not (streams[i][1] & streams[j][1]), (streams[i][0], streams[j][0])
    # Sealed streams: the providers' fully re-encrypted sets to the combining provider (PS), the
    # padded common set and the double to the requester. Only their recipients open them.
    sealed_to = {}
    for node, d, c in _all_chunks(run, "to_node"):
        if c.stream.startswith("set:") or c.stream in ("double", "provider"):
            if not c.last:
                assert len(c.data) == 32 * c.count + envelope.ENVELOPE_OVERHEAD
            sealed_to.setdefault((node, c.stream), []).append(node_pb2.StepMessage(chunk=c))
    assert set(sealed_to) == {(PS, f"set:{PS}"), (PS, f"set:{HOUSING}"), (REQ, "double"), (REQ, "provider")}
    combined, _ = open_sealed(fed.runtime(REQ), job_id, "combined", sealed_to[(REQ, "provider")], name="provider")
    # The common set reached the requester padded to the smallest provider set: its length (all
    # the coordinator sees of it) is 60, neither |V ∩ P| = 40 nor the result's 20.
    assert len(combined) == 32 * min(len(VEHICLES), len(PROPERTIES))
    with pytest.raises(IntegrityError):
        open_sealed(fed.runtime(PS), job_id, "combined", sealed_to[(REQ, "provider")], name="provider")
    for owner in (PS, HOUSING):
        got, _ = open_sealed(fed.runtime(PS), job_id, f"chain:{owner}", sealed_to[(PS, f"set:{owner}")],
                             name=f"set:{owner}")
        assert len(got) == 32 * {PS: len(VEHICLES), HOUSING: len(PROPERTIES)}[owner]
    # Every size the coordinator saw — stream lengths, answers, progress — is a set size the
    # report lists (the padded set's is the smallest of them); never 40 or 20.
    leak, summary = res.leakage, res.summary
    listed = {len(A), summary["provider_sets"][PS], summary["provider_sets"][HOUSING]}
    assert any(f"requester {len(A)}" in s and f"{PS} {len(VEHICLES)}" in s and f"{HOUSING} {len(PROPERTIES)}" in s
               for s in leak["coordinator"]), leak["coordinator"]
    seen = set()
    for node, d, m in run["messages"]:
        kind = m.WhichOneof("kind")
        if kind == "done":
            seen |= {int(v) for k, v in m.done.summary.items() if k in ("count", "own")}   # PSI steps' answers
        elif kind == "progress" and m.progress.step != "combine":
            seen |= {m.progress.done, m.progress.total} - {0}
    per_stream, open_streams = [], {}      # the length of each stream of each call
    for node, d, c in _all_chunks(run):
        if c.stream == "binding":
            continue
        key = (node, d, c.stream)
        open_streams[key] = open_streams.get(key, 0) + c.count
        if c.last:
            per_stream.append(open_streams.pop(key))
    assert not open_streams and per_stream
    seen |= set(per_stream)
    assert seen <= listed | {0}, (seen, listed)
    assert not seen & {len(pair), len(want)}
    # And the report says who learned the providers' overlap sizes: the combining provider.
    assert any("combining provider" in s and "|Yi ∩ Yj|" in s for s in leak[PS]), leak[PS]
    assert not any("combining" in s for s in leak[HOUSING])
    assert any(f"({min(len(VEHICLES), len(PROPERTIES))})" in s for s in leak[REQ]), leak[REQ]


def test_k_party_steps_follow_the_plan(fed, analyst, as_coordinator):
    """A provider refuses hops outside its place in the plan and combining when it is not the combiner."""
    ps, housing = as_coordinator(fed, PS), as_coordinator(fed, HOUSING)
    signed = prepare(analyst, [f"{REQ}.people", f"{PS}.vehicles", f"{HOUSING}.properties"])
    admitted(ps, signed)
    admitted(housing, signed)
    # Housing's own set is raised by PS, not by housing itself; shuffle flags come from the plan.
    err = rpc_error(housing, [hop_header(signed, shuffle=True, chain=f"chain:{HOUSING}"), chunk(0, b"", 0, True)])
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    err = rpc_error(ps, [hop_header(signed, shuffle=False, chain=f"chain:{HOUSING}"), chunk(0, b"", 0, True)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    err = rpc_error(housing, [header(signed, "psi.combine")])
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "combine" in err.details()
    # A provider's own set relayed into a hop must carry that provider's signature.
    own = list(housing.Step(iter([header(signed, "psi.own")]), timeout=10))
    forged = renamed(own, {"out": "in"})
    forged = [m for m in forged if m.chunk.stream == "in"] + [chunk(0, b"\x00" * 64, 0, True, stream="binding")]
    err = rpc_error(ps, [hop_header(signed, shuffle=True, chain=f"chain:{HOUSING}")] + forged)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    for agency in (REQ, PS, HOUSING):
        list(as_coordinator(fed, agency).Step(iter([header(signed, "job.cleanup")]), timeout=10))
