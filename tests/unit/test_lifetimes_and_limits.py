"""Spec lifetimes (transport expiry vs the job's lifetime), node session expiry, the
coordinator's stream slots and verification size caps, and the guarded request deserializer —
all with explicit times, no sleeping and no servers."""
from __future__ import annotations

import json

import grpc
import pytest

from pc_common import certs, gm, jobspec
from pc_common.errors import InvalidInput, PermissionDenied, ResourceExhausted
from pc_common.pb import node_pb2
from pc_common.server import Malformed, guard_handler
from pc_coordinator.limits import (MAX_CRITERIA, MAX_CRITERIA_X_GROUPS, MAX_GROUPS, StreamSlots,
                                   check_verification_size)
from pc_node.governance import Governance
from pc_node.sessions import Sessions

T0 = 1_800_000_000
DAY = 86400
PARAMS = {"datasets": ["civil_affairs.people", "tax.wages"], "purpose": "data_matching", "subjects": 1}


@pytest.fixture(scope="module")
def signer(tmp_path_factory):
    root = tmp_path_factory.mktemp("certs")
    certs.init(root, ["civil_affairs"], [])
    files = certs.node_files(root, "civil_affairs")
    key = gm.Sm2PrivateKey.from_hex((root / "nodes" / "civil_affairs" / "sm2.key").read_text().strip())
    return key, files.cert.read_bytes(), files.ca.read_bytes()


def _signed(signer, **kw):
    key, cert, ca = signer
    spec = jobspec.build("psi", "civil_affairs", PARAMS, "data_matching", now=T0, **kw)
    return spec, jobspec.sign(spec, key), cert, ca


def test_spec_carries_a_transport_expiry_and_a_longer_job_lifetime(signer):
    spec, sig, cert, ca = _signed(signer)
    doc = json.loads(spec)
    assert doc["expires_at"] == T0 + jobspec.DEFAULT_TTL_SECONDS
    assert doc["admission_until"] == jobspec.lifetime_end(doc) == T0 + 7 * DAY
    # First sight: within the transport expiry only.
    assert jobspec.verify(spec, sig, cert, ca, now=T0 + 60)["job_id"] == doc["job_id"]
    with pytest.raises(PermissionDenied, match="expired: it had to be submitted by"):
        jobspec.verify(spec, sig, cert, ca, now=T0 + 16 * 60)
    # Seen in time: accepted for the job's whole lifetime (an approval two days later)…
    assert jobspec.verify(spec, sig, cert, ca, now=T0 + 2 * DAY, first_seen=T0 + 60)
    # …but not after it, and not when the first sight itself was late.
    with pytest.raises(PermissionDenied, match="lifetime ended"):
        jobspec.verify(spec, sig, cert, ca, now=T0 + 7 * DAY + 1, first_seen=T0 + 60)
    with pytest.raises(PermissionDenied, match="expired"):
        jobspec.verify(spec, sig, cert, ca, now=T0 + DAY, first_seen=T0 + 16 * 60)


def test_a_valid_signature_is_verified_once_and_only_those_exact_bytes_are_remembered(signer, monkeypatch):
    spec, sig, cert, ca = _signed(signer)
    calls = []
    real = gm.Sm2PublicKey.verify
    monkeypatch.setattr(gm.Sm2PublicKey, "verify", lambda self, *a: calls.append(1) or real(self, *a))
    for _ in range(3):                                  # admission, then each step
        jobspec.verify(spec, sig, cert, ca, now=T0 + 60)
    assert len(calls) == 1
    forged = bytes([sig[0] ^ 1]) + sig[1:]
    with pytest.raises(PermissionDenied, match="signature is invalid"):
        jobspec.verify(spec, forged, cert, ca, now=T0 + 60)
    other = spec.replace(b'"subjects":1', b'"subjects":2')
    assert other != spec
    with pytest.raises(PermissionDenied, match="signature is invalid"):
        jobspec.verify(other, sig, cert, ca, now=T0 + 60)
    with pytest.raises(PermissionDenied, match="expired"):                 # time checks every time
        jobspec.verify(spec, sig, cert, ca, now=T0 + 16 * 60)
    own, own_sig, *_ = _signed(signer)                  # the requester's own, just signed
    jobspec.remember_signed(own, own_sig, signer[0].public_key().to_hex())
    jobspec.verify(own, own_sig, cert, ca, now=T0 + 60)
    assert len(calls) == 3                              # two refusals above, none for its own spec


def test_lifetime_is_configurable_and_bounded(signer):
    spec, sig, cert, ca = _signed(signer, lifetime=3600)
    assert json.loads(spec)["admission_until"] == T0 + 3600
    with pytest.raises(PermissionDenied, match="lifetime ended"):
        jobspec.verify(spec, sig, cert, ca, now=T0 + 3601, first_seen=T0)
    short, *_ = _signed(signer, lifetime=60)       # the transport expiry never outlasts the job
    assert json.loads(short)["expires_at"] == T0 + 60
    with pytest.raises(InvalidInput, match="lifetime"):
        _signed(signer, lifetime=40 * DAY)
    doc = json.loads(spec)
    doc["admission_until"] = doc["issued_at"] + 40 * DAY    # a signed spec beyond the bound is malformed
    with pytest.raises(InvalidInput, match="admission_until"):
        jobspec.parse(jobspec.canonical(doc))


def test_governance_remembers_when_it_first_saw_a_spec(tmp_path):
    now = [float(T0)]
    gov = Governance(tmp_path / "g.db", clock=lambda: now[0])
    gov.remember_spec("j" * 20, b"d1", T0 + 7 * DAY)
    now[0] += DAY
    gov.remember_spec("j" * 20, b"d1", T0 + 7 * DAY)          # a later poll keeps the first time
    assert gov.first_seen("j" * 20, b"d1") == T0
    assert gov.first_seen("j" * 20, b"other") is None
    assert gov.spec_lifetime("j" * 20) == T0 + 7 * DAY and gov.spec_lifetime("k" * 20) is None
    with pytest.raises(PermissionDenied, match="replay"):
        gov.remember_spec("j" * 20, b"other", T0 + 7 * DAY)
    gov.close()


def test_sessions_are_wiped_when_their_job_lifetime_ends():
    now = [float(T0)]
    wiped: list[str] = []
    lifetimes = {"a": T0 + 100, "b": T0 + 1000}
    s = Sessions(lifetimes.get, lambda: now[0], wiped.extend)
    s["a"] = "session a"
    assert s.setdefault("b", "session b") == "session b" and s.setdefault("b", "other") == "session b"
    s["c"] = "unknown job"                              # no record: a day at most
    assert len(s) == 3 and "a" in s and s.deadline("c") == T0 + 86400
    now[0] = T0 + 101
    assert s.get("a") is None and wiped == ["a"]        # lazily, on access
    assert s["b"] == "session b"
    now[0] = T0 + 1001
    assert s.expire() == ["b"] and wiped == ["a", "b"]  # on the periodic tick
    assert s.pop("c") == "unknown job" and len(s) == 0 and wiped == ["a", "b"]   # cleanup: not an expiry
    with pytest.raises(KeyError):
        s["a"]


def test_stream_slots_per_client_and_overall():
    slots = StreamSlots(per_client=2, total=3)
    a1, a2 = slots.acquire("a"), slots.acquire("a")
    with pytest.raises(ResourceExhausted, match="for 'a' \\(at most 2 at a time\\)"):
        slots.acquire("a")
    b1 = slots.acquire("b")
    with pytest.raises(ResourceExhausted, match="3 open watch streams, its limit"):
        slots.acquire("c")
    a1()
    a1()                                                # releasing twice frees one slot only
    assert slots.open() == 2 and slots.open("a") == 1
    c1 = slots.acquire("c")
    for release in (a2, b1, c1):
        release()
    assert slots.open() == 0


def test_verification_size_caps_name_the_numbers():
    check_verification_size(3, 100_000)
    check_verification_size(MAX_CRITERIA, MAX_CRITERIA_X_GROUPS // MAX_CRITERIA)
    with pytest.raises(InvalidInput, match=f"{MAX_CRITERIA + 1} criteria.*at most {MAX_CRITERIA}"):
        check_verification_size(MAX_CRITERIA + 1, 10)
    with pytest.raises(InvalidInput, match=f"{MAX_GROUPS + 1} groups"):
        check_verification_size(1, MAX_GROUPS + 1)
    with pytest.raises(InvalidInput, match="5 criteria × 2000000 groups = 10000000"):
        check_verification_size(5, 2_000_000)


class _Context:
    def __init__(self):
        self.aborted = None

    def abort(self, code, detail):
        self.aborted = (code, detail)
        raise RuntimeError("aborted")


def test_guarded_deserializer_never_raises_and_aborts_invalid_argument():
    seen = []

    def unary(request, context):
        seen.append(request)
        return "ok"
    h = guard_handler(grpc.unary_unary_rpc_method_handler(unary, node_pb2.JobRef.FromString, None))
    bad = h.request_deserializer(b"\xff" * 11)
    assert isinstance(bad, Malformed) and bad.detail == "request is not a valid pc.v1.JobRef"
    ctx = _Context()
    with pytest.raises(RuntimeError):
        h.unary_unary(bad, ctx)
    assert ctx.aborted == (grpc.StatusCode.INVALID_ARGUMENT, "request is not a valid pc.v1.JobRef") and not seen
    good = h.request_deserializer(node_pb2.JobRef(job_id="x").SerializeToString())
    assert h.unary_unary(good, _Context()) == "ok" and seen == [good]

    def stream(requests, context):
        for r in requests:
            yield r.job_id
    h = guard_handler(grpc.stream_stream_rpc_method_handler(stream, node_pb2.JobRef.FromString, None))
    ctx = _Context()
    out = []
    with pytest.raises(RuntimeError):
        for item in h.stream_stream(iter([good, h.request_deserializer(b"\x0a\x05ab")]), ctx):
            out.append(item)
    assert out == ["x"] and ctx.aborted[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_relay_outbox_is_bounded_and_never_waits_on_an_abandoned_reader():
    import threading
    from pc_coordinator.verify_compare import Outbox
    box = Outbox(maxsize=3)
    done = threading.Event()

    def produce():
        box.put(range(10))
        box.close()
        done.set()

    threading.Thread(target=produce, daemon=True).start()
    assert not done.wait(0.5)                      # 3 wait, the producer waits for the reader
    it = iter(box)
    assert [next(it) for _ in range(4)] == [0, 1, 2, 3]
    box.abandon()                                  # the reader's step ended
    assert done.wait(2)                            # the producer returns instead of hanging


def test_relay_outbox_wait_ends_at_cancel_or_deadline_and_close_never_blocks():
    import threading
    import time as _time
    from pc_coordinator.runner import Cancelled
    from pc_coordinator.verify_compare import Outbox
    stop = threading.Event()
    box = Outbox(maxsize=1, stop=stop)
    box.put([1])
    stop.set()
    with pytest.raises(Cancelled):
        box.put([2])                                   # a full queue and a cancelled job
    late = Outbox(maxsize=1, deadline=_time.monotonic() + 0.3)
    late.put([1])
    with pytest.raises(InvalidInput, match="stopped reading"):
        late.put([2])                                  # nobody reads before the job's deadline
    late.close()                                       # full: close still returns at once
    assert list(late) == [1]                           # what was put is read, then the stream ends
    gone = Outbox()
    gone.put([1, 2])
    gone.abandon()
    assert list(gone) == []                            # an abandoned reader's stream ends at once
