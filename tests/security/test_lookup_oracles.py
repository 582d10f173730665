"""Lookups (匿踪查询) against a deviating coordinator and a greedy requester.

The coordinator is played with the provider node's real ``Node.Step`` API under the
coordinator's own certificate (``as_coordinator``); where a test needs the requester's part it
computes it as the requester node's software would (the requester's signing key signs the
binding, its envelope key opens what was sealed to it). Covered:

* injected, altered or unsigned blinded points are refused before anything is evaluated, and a
  job is evaluated (and its filter sent) once;
* the coordinator's recorded transcript of a real lookup holds only sealed filters and answers:
  not parseable as a snapshot, no label (plate) in any form, no queried identifier; the leakage
  report states the sizes it actually saw;
* the quota is charged per point evaluated (1,000 points under a 10-a-day quota are refused; with
  room, usage says 1,000 where the spec declared 1) and points are capped per key epoch;
* keys rotate per epoch (an injectable clock, no sleeping) and are per requester.
"""
from __future__ import annotations

import datetime as dt
import json
import secrets as _secrets

import grpc
import pytest
from nacl import bindings as sodium

from pc_common.errors import CryptoError, IntegrityError
from pc_common.pb import node_pb2
from pc_coordinator.runner import JobContext
from pc_node import envelope, idnum
from pc_node.psi import LookupRequester
from pc_node.psi.lookup_format import SNAPSHOT_MAGIC
from pc_node.steps import lookup as lookup_steps
from pc_node.steps.lookup_epochs import DAY, GRACE_SECONDS, current_epoch

from tests import lookup_kit as kit
from tests.conftest import write_csv

REQ, OTHER, PS = "civil_affairs", "housing", "public_security"
GREEDY = "hrss"      # the requester of the quota test, with no other usage at the provider
DAYS = 7


def _ids(n: int, start: int = 0) -> list[str]:
    base = dt.date(1958, 2, 1)
    return [idnum.make_id("440305", base + dt.timedelta(days=37 * i), (7 * i + 1) % 1000) for i in range(start, start + n)]


POOL = _ids(120)
QUERIES = POOL[:40]
VEHICLE_IDS = POOL[20:60]
ROSTER = POOL[:10] + POOL[80:100]
# Every sequence number of one district and birth date: the enumeration of issue 11.
ENUMERATION = [idnum.make_id("440305", dt.date(1980, 6, 1), s) for s in range(1000)]


def plate(i: int) -> str:
    return f"粤B{(53 * i + 7) % 100000:05d}"


def policy(quota: str = "") -> str:
    """Grants for the requesters; ``quota`` applies to GREEDY's grant on the registry."""
    text = ""
    for requester in (REQ, OTHER, GREEDY):
        for ds, cols in (("vehicles", 'plate = "plaintext"'), ("roster", ""), ("registry", "")):
            text += (f'[[grants]]\ndataset = "{ds}"\nrequester = "{requester}"\npurposes = ["data_matching"]\n'
                     f'[grants.columns]\nid_number = "join_key"\n{cols}\n'
                     + (f"[grants.quota]\n{quota}\n" if quota and requester == GREEDY else ""))
    return text


@pytest.fixture(scope="module")
def env(new_federation):
    fed = new_federation("lookup_oracles", [REQ, OTHER, GREEDY, PS])
    data = fed.root.parent / "data"
    fed.import_csv(REQ, write_csv(data / "q.csv", ["id_number"], [[i] for i in QUERIES]), dataset="queries")
    fed.import_csv(GREEDY, write_csv(data / "one.csv", ["id_number"], [[ENUMERATION[0]]]), dataset="few")
    fed.import_csv(GREEDY, write_csv(data / "gq.csv", ["id_number"], [[i] for i in QUERIES]), dataset="queries")
    fed.import_csv(OTHER, write_csv(data / "o.csv", ["id_number"], [[i] for i in QUERIES]), dataset="queries")
    fed.import_csv(PS, write_csv(data / "v.csv", ["id_number", "plate"],
                                 [[i, plate(n)] for n, i in enumerate(VEHICLE_IDS)]), dataset="vehicles")
    fed.import_csv(PS, write_csv(data / "r.csv", ["id_number"], [[i] for i in ROSTER]), dataset="roster")
    fed.import_csv(PS, write_csv(data / "g.csv", ["id_number"], [[i] for i in ENUMERATION[::3]]), dataset="registry")
    fed.write_policy(PS, policy())
    for agency in (REQ, OTHER, GREEDY):
        fed.write_policy(agency, "")
    return {"fed": fed, "data": data}


@pytest.fixture(scope="module")
def fed(env):
    return env["fed"]


@pytest.fixture
def clock(fed):
    """The provider's lookup clock, set by the test (``clock.now``); restored afterwards."""
    rt = fed.runtime(PS)

    class Clock:
        now = rt.lookup_clock()

        def __call__(self):
            return self.now
    c = Clock()
    saved = rt.lookup_clock
    rt.lookup_clock = c
    yield c
    rt.lookup_clock = saved


class Job:
    """One lookup job, admitted at the provider, driven step by step as a coordinator would."""

    def __init__(self, fed, stub, client, datasets, labels=(), requester=REQ):
        self.fed, self.stub, self.requester = fed, stub, requester
        self.signed, self.job_id = kit.signed_lookup(client.node, datasets, labels)
        self.provider_ds = datasets[1].split(".")[1]
        admitted = list(stub.Step(iter([self.head("job.admit")]), timeout=10))
        assert kit.summary(admitted)["admitted"] == "yes"

    def head(self, step, params=None):
        return kit.header(self.signed, self.job_id, step, params)

    def step(self, step, messages=(), params=None):
        return list(self.stub.Step(iter([self.head(step, params)] + list(messages)), timeout=30))

    def filter(self, have: LookupRequester | None = None):
        """The sealed filter (bytes as the coordinator relays them), its kind and epoch."""
        params = {"epoch": have.epoch, "version": str(have.version)} if have else None
        out = self.step("lookup.filter", params=params)
        s = kit.summary(out)
        return b"".join(d for d, _ in kit.stream_data(out, s["kind"])), s["kind"], s["epoch"]

    def open(self, sealed: bytes, what: str) -> bytes:
        rt = self.fed.runtime(self.requester)
        return envelope.open_envelope(rt.x25519_private, sealed, lookup_steps.aad(self.job_id, what))

    def evaluate(self, parts: list[tuple[bytes, int]], epoch: str, signed_parts=None, key_of=None):
        key = kit.requester_key(self.fed, key_of or self.requester)
        msgs = [kit.chunk("in", i, d, n) for i, (d, n) in enumerate(parts)] + [kit.chunk("in", len(parts), b"", 0, True)]
        binding = kit.binding(key, self.job_id, PS, epoch, parts if signed_parts is None else signed_parts)
        return self.step("lookup.evaluate", binding + msgs)

    def answers(self, out) -> list[bytes]:
        return [self.open(d, f"answers/{i}") for i, (d, _) in enumerate(kit.stream_data(out, "out"))]

    def cleanup(self):
        self.step("job.cleanup")


def random_points(n: int) -> bytes:
    return b"".join(sodium.crypto_scalarmult_base(_secrets.token_bytes(32)) for _ in range(n))


def code_of(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn(*args, **kw)
    return err.value


def members(job: Job, filt: LookupRequester, ids: list[str], epoch: str) -> list[str]:
    """Run the requester's part by hand: blind ``ids``, have them evaluated, match against ``filt``."""
    q = filt.query(ids)
    out = job.evaluate([(q.blinded(), q.count)], epoch)
    for a in job.answers(out):
        q.accept(a, q.count)
    return q.finish().members


# ----- 1. injection ----------------------------------------------------------------------------------------
def test_injected_or_altered_points_are_refused(fed, analyst, as_coordinator):
    stub = as_coordinator(fed, PS)
    job = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.vehicles"])
    sealed, kind, epoch = job.filter()
    honest = (random_points(3), 3)
    guesses = random_points(2)
    # An extra chunk of the coordinator's own guesses after the requester's stream.
    err = code_of(job.evaluate, [honest, (guesses, 2)], epoch, signed_parts=[honest])
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "did not sign" in err.details()
    job.cleanup()
    # Guesses appended inside the requester's chunk.
    job = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.vehicles"])
    _, _, epoch = job.filter()
    err = code_of(job.evaluate, [(honest[0] + guesses, 5)], epoch, signed_parts=[honest])
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    job.cleanup()
    # A binding signed by someone else than the job's requester (another node's key).
    job = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.vehicles"])
    _, _, epoch = job.filter()
    err = code_of(job.evaluate, [honest], epoch, key_of=OTHER)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "not signed by the requester" in err.details()
    job.cleanup()
    # Fewer points than signed: refused at the end of the stream (nothing more is answered).
    job = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.vehicles"])
    _, _, epoch = job.filter()
    err = code_of(job.evaluate, [honest], epoch, signed_parts=[honest, (guesses, 2)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "signed" in err.details()
    job.cleanup()


def test_a_binding_of_another_job_is_refused(fed, analyst, as_coordinator):
    stub = as_coordinator(fed, PS)
    first = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.vehicles"])
    second = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.vehicles"])
    _, _, epoch = first.filter()
    pts = (random_points(2), 2)
    stolen = kit.binding(kit.requester_key(fed, REQ), first.job_id, PS, epoch, [pts])
    err = code_of(second.step, "lookup.evaluate", stolen + [kit.chunk("in", 0, pts[0], 2, True)])
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "another job" in err.details()
    first.cleanup()
    second.cleanup()


def test_filter_and_evaluation_run_once_per_job(fed, analyst, as_coordinator):
    stub = as_coordinator(fed, PS)
    job = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.vehicles"])
    _, _, epoch = job.filter()
    assert code_of(job.filter).code() == grpc.StatusCode.PERMISSION_DENIED
    pts = (random_points(4), 4)
    assert kit.points_in(job.evaluate([pts], epoch)) == 4
    err = code_of(job.evaluate, [pts], epoch)
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "already run" in err.details()
    job.cleanup()


# ----- 2. sealed end to end: the coordinator's transcript ----------------------------------------------------
@pytest.fixture
def transcript(monkeypatch):
    """Every message the coordinator exchanges with nodes: (node, direction, StepMessage)."""
    seen: list[tuple[str, str, node_pb2.StepMessage]] = []
    original = JobContext.step

    def recording(self, node_id, messages):
        def tap(msgs):
            for m in msgs:
                seen.append((node_id, "to_node", m))
                yield m
        for m in original(self, node_id, tap(messages)):
            seen.append((node_id, "from_node", m))
            yield m
    monkeypatch.setattr(JobContext, "step", recording)
    return seen


def _streams(seen, node: str, direction: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for n, d, m in seen:
        if n == node and d == direction and m.WhichOneof("kind") == "chunk":
            out.setdefault(m.chunk.stream, []).append(m.chunk)
    return out


def test_the_coordinator_relays_only_sealed_filters_and_answers(fed, analyst, transcript, tmp_path):
    res = analyst.lookup(f"{REQ}.queries", f"{PS}.vehicles", out=tmp_path / "out.csv", labels=["plate"])
    assert res.state == "succeeded"
    rows = {r.split(",")[0]: r for r in (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()[1:]}
    assert sum(1 for r in rows.values() if ",true," in r) == 20          # the lookup really found its matches
    assert plate(0) in (tmp_path / "out.csv").read_text(encoding="utf-8")
    from_ps = _streams(transcript, PS, "from_node")
    kind = res.summary["filter"]
    filt = b"".join(c.data for c in from_ps[kind])
    assert len(filt) == res.summary["filter_bytes"]
    # Not a snapshot the coordinator could test identifiers against, nor open.
    assert not filt.startswith(SNAPSHOT_MAGIC)
    with pytest.raises(CryptoError):
        LookupRequester(filt)
    # ... while the requester node's key opens it (the control).
    opened = envelope.open_envelope(fed.runtime(REQ).x25519_private, filt, lookup_steps.aad(res.job_id, kind))
    assert LookupRequester(opened).labelled
    # Answers: one envelope per chunk, 32 bytes a point plus the envelope's overhead.
    answers = [c for c in _streams(transcript, REQ, "to_node")["answers"] if c.data]
    assert sum(c.count for c in answers) == len(QUERIES)
    assert all(len(c.data) == 32 * c.count + envelope.ENVELOPE_OVERHEAD for c in answers)
    # No label and no queried identifier anywhere in what the coordinator handled.
    everything = b"".join(m.SerializeToString() for _, _, m in transcript)
    for n in range(len(VEHICLE_IDS)):
        assert plate(n).encode() not in everything and plate(n)[1:].encode() not in everything
    for ident in QUERIES:
        assert ident[:17].encode() not in everything
    # The leakage report says what the coordinator saw, and the numbers are the transcript's.
    coordinator = " ".join(res.leakage["coordinator"])
    assert f"{len(QUERIES)} blinded points" in coordinator and f"{len(filt)}-byte sealed filter" in coordinator
    blinded = sum(c.count for c in _streams(transcript, PS, "to_node")["in"])
    assert blinded == len(QUERIES) and f"({len(QUERIES)})" in " ".join(res.leakage[PS])


# ----- 3. quota per point, cap per epoch --------------------------------------------------------------------
def test_quota_is_charged_per_point_evaluated(env, fed, as_coordinator):
    """The spec declares 1 subject; the requester's operator re-imports 1,000 candidates (every
    sequence number of one district and birth date) before submitting. Under a 10-a-day quota
    the evaluation is refused; with room, the usage table says 1,000, not 1."""
    gov = fed.runtime(PS).governance
    greedy = fed.client(f"analyst@{GREEDY}")

    def prepared_then_grown(name: str):
        fed.import_csv(GREEDY, write_csv(env["data"] / name / "one.csv", ["id_number"], [[ENUMERATION[0]]]),
                       dataset="few", replace=True)
        signed = greedy.node.PrepareJob(node_pb2.PrepareJobRequest(kind="lookup", params=json.dumps(
            {"datasets": [f"{GREEDY}.few", f"{PS}.registry"], "purpose": "data_matching"}).encode()), timeout=10)
        assert json.loads(signed.spec)["params"]["subjects"] == 1
        fed.import_csv(GREEDY, write_csv(env["data"] / name / "all.csv", ["id_number"], [[i] for i in ENUMERATION]),
                       dataset="few", replace=True)
        return signed

    fed.write_policy(PS, policy("subjects_per_day = 10"))
    try:
        assert gov.usage(GREEDY)["subjects"] == 0
        signed = prepared_then_grown("a")
        job = greedy.watch(greedy.coordinator.SubmitJob(signed, timeout=10).job_id, timeout=60)
        assert job.state == "failed" and "quota exceeded" in job.reason, job.reason
        assert gov.usage(GREEDY)["subjects"] == 1            # the declared subject only; no point evaluated

        # The same, driven directly (a spec declaring 1 subject): the provider answers RESOURCE_EXHAUSTED.
        fed.import_csv(GREEDY, write_csv(env["data"] / "one.csv", ["id_number"], [[ENUMERATION[0]]]),
                       dataset="few", replace=True)
        stub = as_coordinator(fed, PS)
        j = Job(fed, stub, greedy, [f"{GREEDY}.few", f"{PS}.registry"], requester=GREEDY)
        _, _, epoch = j.filter()
        err = code_of(j.evaluate, [(random_points(1000), 1000)], epoch)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "quota exceeded" in err.details()
        j.cleanup()

        fed.write_policy(PS, policy("subjects_per_day = 5000"))
        before = gov.usage(GREEDY)["subjects"]
        job = greedy.watch(greedy.coordinator.SubmitJob(prepared_then_grown("b"), timeout=10).job_id, timeout=60)
        assert job.state == "succeeded", job.reason
        assert json.loads(job.summary_json)["queried"] == 1000
        assert gov.usage(GREEDY)["subjects"] - before == 1000
    finally:
        fed.write_policy(PS, policy())
        greedy.close()


def test_points_are_capped_per_requester_and_key_epoch(fed, analyst, as_coordinator, clock):
    rt = fed.runtime(PS)
    stub = as_coordinator(fed, PS)
    saved = rt.config.lookup_points_per_epoch
    clock.now += 3 * DAYS * DAY          # a fresh epoch of its own, away from the other tests' counters
    rt.config.lookup_points_per_epoch = 1500
    try:
        epoch_no = current_epoch(rt)
        first = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
        _, _, epoch = first.filter()
        assert kit.points_in(first.evaluate([(random_points(1000), 1000)], epoch)) == 1000
        assert rt.governance.lookup_points(REQ, "roster", epoch_no) == 1000
        second = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
        _, _, epoch = second.filter()
        err = code_of(second.evaluate, [(random_points(600), 600)], epoch)
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "lookup cap" in err.details()
        assert rt.governance.lookup_points(REQ, "roster", epoch_no) == 1000      # nothing charged
        # Another requester has its own count; the next epoch starts afresh.
        other = Job(fed, stub, fed.client(f"analyst@{OTHER}"), [f"{OTHER}.queries", f"{PS}.roster"],
                    requester=OTHER)
        _, _, epoch = other.filter()
        assert kit.points_in(other.evaluate([(random_points(600), 600)], epoch)) == 600
        clock.now += DAYS * DAY
        third = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
        _, _, epoch = third.filter()
        assert kit.points_in(third.evaluate([(random_points(600), 600)], epoch)) == 600
        for j in (first, second, other, third):
            j.cleanup()
    finally:
        rt.config.lookup_points_per_epoch = saved


# ----- 4. keys per epoch and per requester --------------------------------------------------------------------
def test_keys_rotate_per_epoch_and_old_filters_stop_matching(fed, analyst, as_coordinator, clock, tmp_path):
    rt = fed.runtime(PS)
    stub = as_coordinator(fed, PS)
    clock.now += 20 * DAYS * DAY
    job = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
    sealed, kind, old_epoch = job.filter()
    old = LookupRequester(job.open(sealed, kind))
    present = [i for i in QUERIES if i in ROSTER]
    assert sorted(members(job, old, QUERIES, old_epoch)) == sorted(present)    # the control

    # Just after the rotation, within the grace, a job holding the old filter may still finish.
    clock.now = (current_epoch(rt) + 1) * DAYS * DAY + 1
    late = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
    assert sorted(members(late, old, QUERIES, old_epoch)) == sorted(present)
    # After the grace: the old key is wiped; a binding naming it is refused...
    clock.now += GRACE_SECONDS + 1
    stale = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
    sealed, kind, new_epoch = stale.filter(have=old)
    assert kind == "snapshot" and new_epoch.split("-")[0] != old_epoch.split("-")[0]
    err = code_of(stale.evaluate, [(random_points(1), 1)], old_epoch)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "key epoch has ended" in err.details()
    stored = json.loads(rt.store.get_blob("lookupkey", f"roster/{REQ}"))
    assert list(stored) == [str(current_epoch(rt))]
    assert not any(k[:2] == ("roster", REQ) and e["epoch"] != current_epoch(rt)
                   for k, e in rt.lookup_providers.items())
    # ...and the old filter no longer matches answers under the new key; the new one does.
    new = LookupRequester(stale.open(sealed, kind))
    fresh = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
    q = new.query(QUERIES)
    answers = fresh.answers(fresh.evaluate([(q.blinded(), q.count)], new_epoch))
    for a in answers:
        q.accept(a, q.count)
    assert sorted(q.finish().members) == sorted(present)
    q_old = old.query(QUERIES)
    fresh2 = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
    for a in fresh2.answers(fresh2.evaluate([(q_old.blinded(), q_old.count)], new_epoch)):
        q_old.accept(a, q_old.count)
    assert q_old.finish().members == []
    for j in (job, late, stale, fresh, fresh2):
        j.cleanup()
    # The requester's cached filter is refreshed through the real job flow as well.
    res = analyst.lookup(f"{REQ}.queries", f"{PS}.roster", out=tmp_path / "a.csv")
    clock.now += DAYS * DAY + GRACE_SECONDS + 1
    res2 = analyst.lookup(f"{REQ}.queries", f"{PS}.roster", out=tmp_path / "b.csv")
    assert res2.summary["filter"] == "snapshot"
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text()
    assert res.state == res2.state == "succeeded"


def test_keys_and_filters_are_per_requester(fed, analyst, as_coordinator):
    stub = as_coordinator(fed, PS)
    mine = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
    other_client = fed.client(f"analyst@{OTHER}")
    theirs = Job(fed, stub, other_client, [f"{OTHER}.queries", f"{PS}.roster"], requester=OTHER)
    s1, k1, e1 = mine.filter()
    s2, k2, e2 = theirs.filter()
    assert e1.split("-")[0].split(".")[1] != e2.split("-")[0].split(".")[1]     # other key ids
    f1, f2 = LookupRequester(mine.open(s1, k1)), LookupRequester(theirs.open(s2, k2))
    assert f1.count == f2.count == len(ROSTER)
    assert not set(f1._tags.tolist()) & set(f2._tags.tolist())                   # other keys, other tags
    # One requester cannot open the other's envelope...
    with pytest.raises(IntegrityError):
        envelope.open_envelope(fed.runtime(REQ).x25519_private, s2, lookup_steps.aad(theirs.job_id, k2))
    # ...and the same point is answered differently for each requester.
    pt = random_points(1)
    a1 = mine.answers(mine.evaluate([(pt, 1)], e1))
    a2 = theirs.answers(theirs.evaluate([(pt, 1)], e2))
    assert a1 != a2
    # Another requester's filter epoch is not a key epoch of this requester.
    third = Job(fed, stub, analyst, [f"{REQ}.queries", f"{PS}.roster"])
    third.filter()
    err = code_of(third.evaluate, [(pt, 1)], e2)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    for j in (mine, theirs, third):
        j.cleanup()
    other_client.close()
