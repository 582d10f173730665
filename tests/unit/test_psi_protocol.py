"""Two-party PSI, PSI-CA, result-to-both and k-party PSI against plain set intersection."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput
from pc_node.psi import (
    Combiner,
    ProviderSession,
    RequesterSession,
    decode_indices,
    decode_points,
    deterministic_rng,
    encode_indices,
    encode_points,
    intersect,
    intersect_many,
    normalise_id,
    normalise_ids,
    provider_chain_order,
    run_multiparty,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))

# small alphabet so that random sets overlap often; whitespace/case variants included
_ids = st.lists(st.sampled_from([f"{p}{i}" for i in range(12) for p in ("id", "ID", " id", "i d")]),
                max_size=14)
_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _plain(*sets):
    common = set(normalise_ids(sets[0]))
    for s in sets[1:]:
        common &= set(normalise_ids(s))
    return common


# ------------------------------------------------------------------ normalisation
def test_normalisation_and_dedupe():
    assert normalise_id(" 11010519491231002x ") == "11010519491231002X"
    assert normalise_id("110105 1949\t1231002x") == "11010519491231002X"
    assert normalise_id("１１０１０５") == "110105"  # full-width digits (NFKC)
    assert normalise_ids(["b", "a", " B", "", "  ", "a"]) == ["B", "A"]
    with pytest.raises(InvalidInput):
        normalise_id(123)  # type: ignore[arg-type]


# ------------------------------------------------------------------ two-party
@_SETTINGS
@given(_ids, _ids, st.integers(1, 5))
def test_two_party_equals_plain_intersection(xs, ys, chunk):
    res = intersect(xs, ys, chunk_size=chunk, result_to_provider=True)
    assert set(res.intersection) == _plain(xs, ys)
    assert res.cardinality == len(_plain(xs, ys))
    assert set(res.provider_intersection) == _plain(xs, ys)
    assert res.requester_size == len(normalise_ids(xs)) and res.provider_size == len(normalise_ids(ys))


@_SETTINGS
@given(_ids, _ids)
def test_psi_ca_equals_plain_cardinality(xs, ys):
    res = intersect(xs, ys, cardinality_only=True, chunk_size=3)
    assert res.intersection is None and res.provider_intersection is None
    assert res.cardinality == len(_plain(xs, ys))


@pytest.mark.parametrize("xs,ys,expected", [
    ([], [], []),
    (["a"], [], []),
    ([], ["a"], []),
    (["a", "b"], ["c", "d"], []),                        # disjoint
    (["a", "b", "c"], ["c", "b", "a"], ["A", "B", "C"]),  # identical, A's order kept
    (["a", "A", " a "], ["a", "a"], ["A"]),              # duplicates after normalisation
])
def test_two_party_edge_cases(xs, ys, expected):
    assert intersect(xs, ys).intersection == expected
    assert intersect(xs, ys, cardinality_only=True).cardinality == len(expected)


def test_fixed_keys_are_deterministic_and_commutative():
    a1 = RequesterSession(["x", "y"], KEY_A, deterministic_rng(1))
    a2 = RequesterSession(["x", "y"], KEY_A, deterministic_rng(1))
    assert list(a1.blinded_chunks(1)) == list(a2.blinded_chunks(1))
    b = ProviderSession(["y"], KEY_B, deterministic_rng(2))
    # B's own value raised by a equals A's value raised by b
    (hy_b,) = list(b.own_chunks())
    a1.accept_provider(hy_b)
    for c in a1.blinded_chunks():
        a1.accept_double(b.reencrypt(c))
    assert a1.finish() == ["Y"]


def test_sessions_are_streamable_in_any_chunking():
    xs = [f"ID{i}" for i in range(50)]
    ys = [f"ID{i}" for i in range(25, 90)]
    a = RequesterSession(xs)
    b = ProviderSession(ys)
    sent = list(a.blinded_chunks(7))
    assert [len(c) for c in sent][:-1] == [7 * 32] * (len(sent) - 1)
    for c in sent:
        a.accept_double(b.reencrypt(c))
    for c in b.own_chunks(11):
        a.accept_provider(c)
    assert a.progress() == {"own": 50, "double_received": 50, "provider_received": 65}
    assert b.requester_count == 50
    assert a.finish() == [f"ID{i}".upper() for i in range(25, 50)]


def test_messages_round_trip_through_bytes():
    a = RequesterSession(["a", "b", "c"])
    b = ProviderSession(["b", "c", "d"])
    for c in a.blinded_chunks(2):
        wire = encode_points(decode_points(bytes(c), len(c) // 32))  # as a protobuf field would
        a.accept_double(bytes(b.reencrypt(wire, len(wire) // 32)))
    for c in b.own_chunks(2):
        a.accept_provider(bytes(bytearray(c)))
    idx = a.provider_indices()
    assert decode_indices(encode_indices(decode_indices(idx, 3)), 3).tolist() == sorted(decode_indices(idx, 3).tolist())
    assert b.learn_intersection(idx) == ["B", "C"]
    assert a.finish() == ["B", "C"]


def test_psi_ca_provider_shuffles_whole_set():
    xs = [f"ID{i}" for i in range(40)]
    a = RequesterSession(xs, KEY_A, deterministic_rng(1), cardinality_only=True)
    b = ProviderSession(xs, KEY_B, deterministic_rng(2), cardinality_only=True)
    in_order = [ProviderSession(xs, KEY_B).hop(False).process(c) for c in a.blinded_chunks(8)]
    for c in a.blinded_chunks(8):
        b.accept_blinded(c)
    shuffled = list(b.shuffled_reencrypted_chunks(8))
    assert sorted(decode_points(b"".join(shuffled)).tolist()) == sorted(decode_points(b"".join(in_order)).tolist())
    assert b"".join(shuffled) != b"".join(in_order)
    for c in shuffled:
        a.accept_double(c)
    for c in b.own_chunks():
        a.accept_provider(c)
    assert a.cardinality() == 40
    with pytest.raises(FailedPrecondition):
        a.finish()
    with pytest.raises(FailedPrecondition):
        a.provider_indices()
    with pytest.raises(FailedPrecondition):
        b.reencrypt(next(iter(a.blinded_chunks())))


def test_wrong_mode_and_order_errors():
    a = RequesterSession(["a", "b"])
    b = ProviderSession(["a"])
    with pytest.raises(FailedPrecondition):
        b.accept_blinded(next(iter(a.blinded_chunks())))
    with pytest.raises(FailedPrecondition):
        list(b.shuffled_reencrypted_chunks())
    with pytest.raises(FailedPrecondition, match="not all"):
        a.finish()
    with pytest.raises(FailedPrecondition, match="not been sent"):
        b.learn_intersection(b"")
    with pytest.raises(InvalidInput):
        intersect(["a"], ["a"], cardinality_only=True, result_to_provider=True)
    with pytest.raises(InvalidInput):
        list(a.blinded_chunks(0))


def test_malformed_chunks_raise_crypto_error():
    a = RequesterSession(["a", "b"])
    b = ProviderSession(["a"])
    (chunk,) = list(a.blinded_chunks())
    with pytest.raises(CryptoError, match="multiple of 32"):
        b.reencrypt(chunk[:-1])
    with pytest.raises(CryptoError, match="count"):
        b.reencrypt(chunk, count=3)
    with pytest.raises(CryptoError, match="small order"):
        b.reencrypt(bytes(32))
    with pytest.raises(CryptoError, match="small order"):
        a.accept_provider((1).to_bytes(32, "little"))
    with pytest.raises(CryptoError, match="more re-encrypted"):
        a.accept_double(b.reencrypt(chunk) + b.reencrypt(chunk))
    list(b.own_chunks())
    with pytest.raises(CryptoError):
        b.learn_intersection(b"\x01\x00\x00")
    with pytest.raises(CryptoError, match="out of range"):
        b.learn_intersection(encode_indices([5]))
    with pytest.raises(CryptoError, match="repeated"):
        b.learn_intersection(encode_indices([0, 0]))


def test_finished_session_refuses_more_input():
    a = RequesterSession(["a"])
    b = ProviderSession(["a"])
    for c in a.blinded_chunks():
        a.accept_double(b.reencrypt(c))
    provider = list(b.own_chunks())
    a.accept_provider(provider[0])
    assert a.finish() == ["A"]
    with pytest.raises(FailedPrecondition, match="finished"):
        a.accept_provider(provider[0])


def test_repr_never_shows_ids_or_key():
    a = RequesterSession(["SECRET-ID-1"], KEY_A)
    text = repr(a) + repr(a.backend)
    assert "SECRET" not in text and KEY_A.hex() not in text


def test_sm2_curve_two_party():
    pytest.importorskip("gmpy2")
    from pc_node.psi import available_backends

    if not available_backends("sm2"):
        pytest.skip("no SM2 backend on this machine")
    res = intersect(["a", "b", "c"], ["b", "c", "d"], curve="sm2", chunk_size=2)
    assert res.intersection == ["B", "C"]


# ------------------------------------------------------------------ k-party
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_ids, _ids, _ids)
def test_three_party_equals_plain_intersection(xs, y1, y2):
    res = intersect_many(xs, [y1, y2], chunk_size=4)
    assert set(res.intersection) == _plain(xs, y1, y2)
    assert res.provider_size == len(_plain(y1, y2))  # what R learns besides the result


@pytest.mark.parametrize("k", [3, 4])
def test_k_party_cardinality_only(k):
    base = [f"ID{i}" for i in range(30)]
    sets = [base[i:] for i in range(k - 1)] + [base[::2]]
    res = intersect_many(base, sets[: k - 1], cardinality_only=True)
    assert res.intersection is None
    assert res.cardinality == len(_plain(base, *sets[: k - 1]))


def test_k_party_requester_never_sees_single_provider_sets():
    # R's intersection with P1 alone is {A, B}; with P2 alone {B, C}; the k-way result is {B}.
    a = RequesterSession(["a", "b", "c"])
    p1, p2 = ProviderSession(["a", "b", "x"]), ProviderSession(["b", "c", "y"])
    combiner = run_multiparty(a, [p1, p2])
    assert combiner.set_sizes() == [3, 3] and combiner.result_size() == 1  # Y1 ∩ Y2 = {B}
    assert a.finish() == ["B"]
    assert a.provider_count == 1  # R received only the providers' common rows


def test_provider_chain_order_and_combiner_checks():
    assert provider_chain_order(0, 3) == [1, 2]
    assert provider_chain_order(2, 3) == [0, 1]
    with pytest.raises(InvalidInput):
        provider_chain_order(3, 3)
    c = Combiner(2)
    with pytest.raises(InvalidInput):
        c.accept(2, b"")
    with pytest.raises(CryptoError):
        c.accept(0, b"\x00" * 33)
    c.accept(0, bytes(range(32)) * 1)
    c.accept(1, bytes(range(32)) + bytes(range(1, 33)))
    assert c.set_sizes() == [1, 2]
    assert b"".join(c.result_chunks()) == bytes(range(32))
    with pytest.raises(FailedPrecondition):
        c.accept(0, bytes(32))
    with pytest.raises(InvalidInput):
        intersect_many(["a"], [["a"]])


def test_membership_handles_prefix_collisions():
    from pc_common.point_sets import intersect_rows, member_mask

    rng = np.random.default_rng(0)
    hay = rng.integers(0, 256, (50, 32), dtype=np.uint8)
    hay[10:20, :8] = hay[0, :8]  # many rows sharing an 8-byte prefix
    needles = np.concatenate([hay[[15, 19, 3]], rng.integers(0, 256, (2, 32), dtype=np.uint8)])
    needles[4, :8] = hay[0, :8]  # same prefix, different row
    assert member_mask(needles, hay).tolist() == [True, True, True, False, False]
    both = intersect_rows([hay, np.concatenate([hay[12:14], hay[12:14]])])
    assert sorted(map(bytes, both)) == sorted(map(bytes, hay[12:14]))
