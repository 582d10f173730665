"""Query-private lookup: membership, labels, deltas, rebuilds, malformed messages."""
from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput
from pc_node.psi import (
    LookupProvider,
    LookupRequester,
    deterministic_rng,
    lookup,
    normalise_ids,
)

KEY = bytes(range(32))
RECORDS = [f"1101051949{i:08d}" for i in range(200)]


@pytest.fixture(scope="module")
def provider() -> LookupProvider:
    return LookupProvider.build(RECORDS, epoch="2025-q1", key=KEY)


def _ask(provider: LookupProvider, requester: LookupRequester, ids, rng=None):
    q = requester.query(ids, rng)
    return q.finish(provider.evaluate(q.blinded(), q.count))


def test_membership(provider):
    req = LookupRequester(provider.snapshot())
    assert req.count == 200 and not req.labelled and req.epoch == "2025-q1"
    res = _ask(provider, req, [RECORDS[3], "nobody", " " + RECORDS[150].lower() + " ", RECORDS[3]])
    assert res.members == [RECORDS[3], RECORDS[150]]
    assert RECORDS[3] in res and "nobody" not in res
    assert provider.queries_evaluated >= 3  # all the provider learns: how many


def test_provider_sees_only_uniform_points(provider):
    req = LookupRequester(provider.snapshot())
    q1 = req.query([RECORDS[0]], deterministic_rng(1))
    q2 = req.query([RECORDS[0]], deterministic_rng(2))
    assert q1.blinded() != q2.blinded()  # same identifier, unlinkable requests
    assert q1.finish(provider.evaluate(q1.blinded())).members == [RECORDS[0]]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(RECORDS[:30] + [f"X{i}" for i in range(30)]), max_size=12))
def test_membership_property(provider, ids):
    req = LookupRequester(provider.snapshot())
    res = _ask(provider, req, ids)
    assert set(res.members) == set(normalise_ids(ids)) & set(RECORDS)


def test_labelled_lookup():
    labels = {"A1": b"vehicles=2", "B2": b"", "c3": b"x" * 20}
    p = LookupProvider.build(["D4"], labels=labels, epoch="e1", key=KEY)
    assert p.label_size == 20
    req = LookupRequester(p.snapshot())
    assert req.labelled
    res = _ask(p, req, ["a1", "B2", "C3", "D4", "E5"])
    assert res.members == ["A1", "B2", "C3", "D4"]
    assert res.labels == {"A1": b"vehicles=2", "B2": b"", "C3": b"x" * 20, "D4": b""}
    with pytest.raises(InvalidInput, match="longer"):
        LookupProvider.build(labels={"A": b"toolong"}, label_size=3, epoch="e1")


def test_labels_need_the_oprf_value():
    """A requester who did not evaluate F on y cannot open y's label, even knowing its tag."""
    from pc_common.errors import IntegrityError
    from pc_common.gm import sm4_gcm_decrypt

    p = LookupProvider.build(labels={"A": b"secret"}, epoch="e1", key=KEY)
    req = LookupRequester(p.snapshot())
    with pytest.raises(IntegrityError):
        sm4_gcm_decrypt(bytes(16), req._labels[0].tobytes())


def test_delta_refresh():
    p = LookupProvider.build(["A", "B", "C"], epoch="e2", key=KEY)
    req = LookupRequester(p.snapshot())
    d1 = p.apply_changes(added=["D", "E"], removed=["A"])
    d2 = p.apply_changes(added=["A"], removed=["E"])
    noop = p.apply_changes(added=["B"])  # already present: nothing changes
    assert p.version == 2 and len(d1) < len(p.snapshot())
    req.apply_delta(d1)
    assert _ask(p, req, ["A", "D", "E"]).members == ["D", "E"]
    req.apply_delta(d2)
    req.apply_delta(noop)
    assert req.version == 2 and req.count == p.count == 4
    assert _ask(p, req, ["A", "B", "C", "D", "E"]).members == ["A", "B", "C", "D"]
    assert p.deltas_since(0) == [d1, d2]
    with pytest.raises(FailedPrecondition, match="out of step"):
        req.apply_delta(d1)
    with pytest.raises(InvalidInput, match="not in the filter"):
        p.apply_changes(removed=["nobody"])


def test_labelled_delta_upsert():
    p = LookupProvider.build(labels={"A": b"1", "B": b"2"}, label_size=4, epoch="e3", key=KEY)
    req = LookupRequester(p.snapshot())
    req.apply_delta(p.apply_changes(added={"A": b"11", "C": b"3"}, removed=["B"]))
    res = _ask(p, req, ["A", "B", "C"])
    assert res.labels == {"A": b"11", "C": b"3"} and req.count == 2


def test_new_epoch_needs_a_fresh_filter():
    p1 = LookupProvider.build(["A"], epoch="e4", key=KEY)
    p2 = LookupProvider.build(["A"], epoch="e5")
    req = LookupRequester(p1.snapshot())
    with pytest.raises(FailedPrecondition, match="epoch"):
        req.apply_delta(p2.apply_changes(added=["B"]))
    # answers under another epoch's key don't match this filter
    q = req.query(["A"])
    assert q.finish(p2.evaluate(q.blinded())).members == []


def test_rebuild_under_the_same_key_reproduces_the_filter():
    """What the node's filter cache relies on after a restart: the epoch key is kept, the filter rebuilt."""
    calls = []
    p = LookupProvider.build(["A", "B"], epoch="e6", key=KEY, dataset_version="v1",
                             progress=lambda done, total: calls.append((done, total)))
    assert calls == [(2, 2)] and p.dataset_version == "v1"
    delta = p.apply_changes(added=["C"], dataset_version="v2")
    assert p.dataset_version == "v2" and p.version == 1 and p.deltas_since(0) == [delta]
    again = LookupProvider.build(["A", "B", "C"], epoch="e6", key=KEY, dataset_version="v2")
    assert again.tags.tolist() == p.tags.tolist() and again.version == 0
    req = LookupRequester(again.snapshot())
    assert _ask(p, req, ["C", "D"]).members == ["C"]      # the old provider's answers fit the rebuilt filter
    rebuilt = LookupProvider.build(["A"], epoch="e6", key=KEY, dataset_version="v3")
    assert rebuilt.count == 1 and rebuilt.version == 0


def test_empty_sets():
    p = LookupProvider.build([], epoch="e7")
    req = LookupRequester(p.snapshot())
    assert _ask(p, req, ["A"]).members == []
    assert _ask(p, req, []).members == []
    assert lookup([], ["A"]).members == []


@pytest.mark.parametrize("tag_bytes", [4, 6])
def test_shorter_tags(tag_bytes):
    p = LookupProvider.build(RECORDS[:50], epoch="e8", tag_bytes=tag_bytes)
    req = LookupRequester(p.snapshot())
    assert len(p.snapshot()) <= 200 + 50 * tag_bytes  # header + tags, nothing else
    assert _ask(p, req, RECORDS[:5] + ["nobody"]).members == RECORDS[:5]


def test_malformed_messages(provider):
    snap = provider.snapshot()
    for bad in (b"", b"PCLS\x01", snap[:-1], b"XXXX" + snap[4:], snap[:9] + b"x" + snap[10:], snap[:9] + b"[" + snap[10:]):
        with pytest.raises(CryptoError):
            LookupRequester(bad)
    req = LookupRequester(snap)
    with pytest.raises(CryptoError):
        req.apply_delta(snap)
    q = req.query(["A", "B"])
    with pytest.raises(CryptoError, match="multiple of 32"):
        provider.evaluate(q.blinded()[:-3])
    with pytest.raises(CryptoError, match="small order"):
        provider.evaluate(bytes(32))
    with pytest.raises(CryptoError, match="more answers"):
        q.finish(provider.evaluate(q.blinded() * 2))
    q2 = req.query(["A", "B"])
    q2.accept(provider.evaluate(q2.blinded()[:32]))
    with pytest.raises(FailedPrecondition, match="not all"):
        q2.finish()
    with pytest.raises(InvalidInput, match="epoch"):
        LookupProvider(epoch="bad epoch/..")
    with pytest.raises(InvalidInput, match="tag_bytes"):
        LookupProvider(epoch="e", tag_bytes=3)


def test_unsorted_snapshot_rejected(provider):
    snap = bytearray(provider.snapshot())
    body = len(snap) - 200 * 8
    first, second = bytes(snap[body:body + 8]), bytes(snap[body + 8:body + 16])
    snap[body:body + 8], snap[body + 8:body + 16] = second, first
    with pytest.raises(CryptoError, match="sorted"):
        LookupRequester(bytes(snap))


def test_tag_false_positive_rate_is_as_documented():
    # 2^-32 per query at 4 bytes for N=1: simulate with many random tags instead of EC work
    from pc_node.psi.lookup_format import tags_from_bytes, tags_to_bytes

    tags = np.sort(np.frombuffer(os.urandom(8 * 1000), dtype=np.uint64) >> np.uint64(32))
    assert np.array_equal(tags_from_bytes(memoryview(tags_to_bytes(tags, 4)), 1000, 4), tags)
