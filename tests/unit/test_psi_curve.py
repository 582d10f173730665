"""EC backends for PSI: known answers, commutativity, agreement, malformed input."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nacl.bindings import crypto_scalarmult

from pc_common.errors import CryptoError, FailedPrecondition, InvalidInput
from pc_node.psi import (
    backend_status,
    best_backend,
    decode_points,
    encode_points,
    get_backend,
)
from pc_node.psi.curve import run_sliced
from pc_node.psi.randomness import deterministic_rng, random_permutation
from pc_node.psi.x25519 import (
    L25519,
    P25519,
    blinding_pair,
    clamp,
    elligator2_u,
    hash_to_x25519,
    sm3_digests,
)

KEY_A = bytes(range(32))
KEY_B = bytes(range(32, 64))
DOMAIN = b"pc.psi.test"


def _reason(name: str) -> str | None:
    return backend_status()[name][1]


X25519_BACKENDS = [
    pytest.param("libsodium"),
    pytest.param("ifma", marks=pytest.mark.skipif(
        _reason("ifma") is not None, reason=f"Intel crypto_mb X25519 not usable here: {_reason('ifma')}")),
]


# ------------------------------------------------------------------ hash to curve
def test_hash_to_curve_is_deterministic_and_domain_separated():
    a = hash_to_x25519(["110105194912310021", "X"], DOMAIN)
    assert a.shape == (2, 32) and a.dtype == np.uint8
    assert np.array_equal(a, hash_to_x25519(["110105194912310021", "X"], DOMAIN))
    assert not np.array_equal(a, hash_to_x25519(["110105194912310021", "X"], b"other"))
    assert not np.array_equal(a[0], a[1])


def test_hash_to_curve_known_answer():
    # pins the encoding (SM3 input layout, reduction mod p, Elligator 2) across versions
    u = hash_to_x25519(["110105194912310021"], b"pc.psi.v1")[0].tobytes().hex()
    assert u == _KAT_HASH


_KAT_HASH = "34dd16eb0c242d37d3d384adbc9e428bc1ccc359531c2b31522c2fbca6bfb042"


def _reference_elligator2(t: int) -> int:
    """RFC 9380 map_to_curve_elligator2 for curve25519, written out plainly (slow)."""
    p, a, z = P25519, 486662, 2
    x1 = (-a * pow(1 + z * t * t, -1, p)) % p
    gx1 = (x1 ** 3 + a * x1 ** 2 + x1) % p
    is_sq = pow(gx1, (p - 1) // 2, p) == 1
    return x1 if is_sq else (-x1 - a) % p


def test_elligator2_matches_rfc9380_reference():
    ids = [f"ID{i}" for i in range(25)]
    digests = sm3_digests(ids, DOMAIN)
    us = hash_to_x25519(ids, DOMAIN)
    for i, u in enumerate(us):
        t = int.from_bytes(digests[32 * i:32 * i + 32], "little") % P25519
        assert int.from_bytes(u.tobytes(), "little") == _reference_elligator2(t)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, P25519 - 1))  # t = 0 maps to u = 0 (order 2); SM3 hits it w.p. 2^-255
def test_elligator2_lands_on_the_curve_not_the_twist(t):
    (u,) = elligator2_u([t])
    x = int.from_bytes(u.tobytes(), "little")
    assert x < P25519
    assert pow((x ** 3 + 486662 * x * x + x) % P25519, (P25519 - 1) // 2, P25519) == 1


def test_oprf_blinding_round_trip():
    # X25519(s, X25519(b, X25519(r, H))) == X25519(b, H): the identity the lookup relies on
    pts = hash_to_x25519(["A", "B", "C", "D"], DOMAIN)
    be = get_backend("libsodium")
    rng = deterministic_rng(1)
    for p in pts:
        r, s = blinding_pair(rng)
        blinded = be.scalarmult_batch(r, p.tobytes())
        assert be.scalarmult_batch(s, be.scalarmult_batch(KEY_B, blinded)) == be.scalarmult_batch(KEY_B, p.tobytes())


# ------------------------------------------------------------------ scalar multiplication
@pytest.mark.parametrize("name", X25519_BACKENDS)
def test_commutativity_known_answer(name):
    be = get_backend(name)
    pts = hash_to_x25519(["110105194912310021", "310101198001010011"], b"pc.psi.v1")
    ab = be.scalarmult_batch(KEY_B, be.scalarmult_batch(KEY_A, pts))
    ba = be.scalarmult_batch(KEY_A, be.scalarmult_batch(KEY_B, pts))
    assert np.array_equal(ab, ba)
    assert ab[0].tobytes().hex() == _KAT_AB


_KAT_AB = "cc82e146fe5bd077e53e98fb0aeb01ae5d049467f91f9e3f55136e4c75065507"


@pytest.mark.parametrize("name", X25519_BACKENDS)
def test_backend_matches_nacl_reference(name):
    be = get_backend(name)
    pts = hash_to_x25519([f"ID{i}" for i in range(37)], DOMAIN)  # not a multiple of 8
    got = be.scalarmult_batch(KEY_A, encode_points(pts))
    assert isinstance(got, bytes)
    assert decode_points(got).tolist() == [list(crypto_scalarmult(KEY_A, p.tobytes())) for p in pts]
    keys = np.frombuffer(deterministic_rng(3)(32 * len(pts)), np.uint8).reshape(-1, 32)
    each = be.scalarmult_each(keys, pts)
    for k, p, e in zip(keys, pts, each):
        assert crypto_scalarmult(k.tobytes(), p.tobytes()) == e.tobytes()


@pytest.mark.skipif(_reason("ifma") is not None,
                    reason=f"Intel crypto_mb X25519 not usable here: {_reason('ifma')}")
def test_ifma_agrees_with_libsodium_on_large_batch():
    pts = hash_to_x25519([f"ID{i}" for i in range(1001)], DOMAIN)
    assert np.array_equal(get_backend("ifma").scalarmult_batch(KEY_B, pts),
                          get_backend("libsodium").scalarmult_batch(KEY_B, pts))


def test_ifma_unavailability_is_explained():
    reason = _reason("ifma")
    if reason is None:
        pytest.skip("IFMA is usable on this CPU")
    assert "IFMA" in reason or "crypto_mb" in reason
    with pytest.raises(FailedPrecondition, match="not usable here"):
        get_backend("ifma")


def test_parallel_split_matches_serial(monkeypatch):
    be = get_backend("libsodium")
    pts = hash_to_x25519([f"ID{i}" for i in range(300)], DOMAIN)
    monkeypatch.setenv("PC_PSI_WORKERS", "1")
    one = be.scalarmult_batch(KEY_A, pts)
    monkeypatch.setenv("PC_PSI_WORKERS", "3")
    assert np.array_equal(one, be.scalarmult_batch(KEY_A, pts))
    bounds = sorted(tuple(r) for r in run_sliced(lambda lo, hi: [lo, hi], 1000, workers=3))
    assert bounds[0][0] == 0 and bounds[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


@settings(max_examples=30, deadline=None)
@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
       st.lists(st.text(max_size=12), min_size=1, max_size=5))
def test_commutativity_property(ka, kb, ids):
    be = get_backend("libsodium")
    pts = be.hash_to_points(ids, DOMAIN)
    assert np.array_equal(be.scalarmult_batch(kb, be.scalarmult_batch(ka, pts)),
                          be.scalarmult_batch(ka, be.scalarmult_batch(kb, pts)))


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=64, max_size=64))
def test_blinding_pair_inverts(seed):
    r, s = blinding_pair(deterministic_rng(seed))
    assert clamp(r) == int.from_bytes(r, "little") and clamp(s) == int.from_bytes(s, "little")
    assert clamp(r) * clamp(s) % L25519 == 1


# ------------------------------------------------------------------ malformed input
_SMALL_ORDER = [
    bytes(32),                                                     # u = 0
    (1).to_bytes(32, "little"),                                    # u = 1
    (P25519 - 1).to_bytes(32, "little"),                           # u = -1
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),  # order 8
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),  # order 8
]


@pytest.mark.parametrize("name", X25519_BACKENDS)
@pytest.mark.parametrize("bad", _SMALL_ORDER)
def test_small_order_points_rejected(name, bad):
    be = get_backend(name)
    good = hash_to_x25519(["A", "B", "C"], DOMAIN).tobytes()
    with pytest.raises(CryptoError, match="small order"):
        be.scalarmult_batch(KEY_A, good + bad)


@pytest.mark.parametrize("bad", [
    P25519.to_bytes(32, "little"),           # p: not reduced
    (P25519 + 1).to_bytes(32, "little"),     # p + 1: not reduced
    bytes(31) + b"\x80",                     # top bit set
])
def test_non_canonical_points_rejected(bad):
    with pytest.raises(CryptoError, match="encoding"):
        get_backend("libsodium").scalarmult_batch(KEY_A, bad)


@pytest.mark.parametrize("data", [b"\x01" * 31, b"\x01" * 33, b"\x09" * 65])
def test_wrong_length_rejected(data):
    with pytest.raises(CryptoError, match="multiple of 32"):
        get_backend("libsodium").scalarmult_batch(KEY_A, data)
    with pytest.raises(CryptoError):
        decode_points(data)


def test_bad_scalars_and_shapes():
    be = get_backend("libsodium")
    pts = hash_to_x25519(["A"], DOMAIN)
    with pytest.raises(CryptoError, match="32 bytes"):
        be.scalarmult_batch(b"short", pts)
    with pytest.raises(CryptoError):
        be.scalarmult_batch(KEY_A, np.zeros((2, 16), np.uint8))
    with pytest.raises(CryptoError, match="one scalar per point"):
        be.scalarmult_each(KEY_A * 2, pts)
    assert be.scalarmult_batch(KEY_A, b"") == b""


def test_decode_points_count_checks():
    data = hash_to_x25519(["A", "B"], DOMAIN).tobytes()
    assert decode_points(data, 2).shape == (2, 32)
    with pytest.raises(CryptoError, match="count"):
        decode_points(data, 3)
    with pytest.raises(CryptoError, match="count"):
        decode_points(b"", 1)
    with pytest.raises(CryptoError):
        decode_points("not bytes")  # type: ignore[arg-type]


# ------------------------------------------------------------------ backend selection
def test_best_backend_and_env_override(monkeypatch):
    monkeypatch.delenv("PC_PSI_BACKEND", raising=False)
    assert best_backend().curve == "x25519"
    monkeypatch.setenv("PC_PSI_BACKEND", "libsodium")
    assert best_backend().name == "libsodium"
    monkeypatch.setenv("PC_PSI_BACKEND", "no-such-backend")
    with pytest.raises(InvalidInput, match="unknown PSI backend"):
        best_backend()
    monkeypatch.setenv("PC_PSI_BACKEND", "libsodium")
    with pytest.raises(InvalidInput, match="curve"):
        best_backend("sm2")
    with pytest.raises(InvalidInput, match="unknown curve"):
        best_backend("p256")


def test_sm2_unavailable_error_is_clear(monkeypatch):
    from pc_node.psi import curve

    monkeypatch.delenv("PC_PSI_BACKEND", raising=False)
    monkeypatch.setattr(curve, "available_backends", lambda c="x25519": [])
    with pytest.raises(FailedPrecondition, match="SM2 curve needs a CPU with AVX-512 IFMA"):
        curve.best_backend("sm2")


def test_random_permutation_is_a_permutation():
    p = random_permutation(1000, deterministic_rng(7))
    assert sorted(p.tolist()) == list(range(1000))
    assert p.tolist() != list(range(1000))
    assert np.array_equal(p, random_permutation(1000, deterministic_rng(7)))


# ------------------------------------------------------------------ SM2
SM2_BACKENDS = [
    pytest.param("openssl-sm2", marks=pytest.mark.skipif(
        _reason("openssl-sm2") is not None, reason=f"OpenSSL SM2 not usable: {_reason('openssl-sm2')}")),
    pytest.param("ifma-sm2", marks=pytest.mark.skipif(
        _reason("ifma-sm2") is not None, reason=f"Intel crypto_mb SM2 not usable here: {_reason('ifma-sm2')}")),
]


@pytest.mark.parametrize("name", SM2_BACKENDS)
def test_sm2_matches_reference_and_commutes(name):
    from pc_node.psi.sm2 import reference_mul

    be = get_backend(name)
    ka, kb = be.random_scalar(deterministic_rng(1)), be.random_scalar(deterministic_rng(2))
    pts = be.hash_to_points([f"ID{i}" for i in range(11)], DOMAIN)
    a = be.scalarmult_batch(ka, pts)
    for p, q in zip(pts, a):
        assert reference_mul(ka, p.tobytes()) == q.tobytes()
    assert np.array_equal(be.scalarmult_batch(kb, a), be.scalarmult_batch(ka, be.scalarmult_batch(kb, pts)))


@pytest.mark.parametrize("name", SM2_BACKENDS)
def test_sm2_rejects_bad_points_and_scalars(name):
    from pc_node.psi.sm2 import SM2_N, SM2_P

    be = get_backend(name)
    k = be.random_scalar()
    off_curve = None
    for x in range(2, 100):  # find an x with no point on the curve
        xb = x.to_bytes(32, "big")
        try:
            from pc_node.psi.sm2 import reference_mul
            reference_mul((1).to_bytes(32, "big"), xb)
        except CryptoError:
            off_curve = xb
            break
    assert off_curve is not None
    with pytest.raises(CryptoError):
        be.scalarmult_batch(k, off_curve)
    with pytest.raises(CryptoError, match="not reduced"):
        be.scalarmult_batch(k, SM2_P.to_bytes(32, "big"))
    with pytest.raises(CryptoError, match="range"):
        be.scalarmult_batch(bytes(32), be.hash_to_points(["A"], DOMAIN))
    with pytest.raises(CryptoError, match="range"):
        be.scalarmult_batch(SM2_N.to_bytes(32, "big"), be.hash_to_points(["A"], DOMAIN))
