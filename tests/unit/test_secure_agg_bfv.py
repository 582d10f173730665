"""BFV backend: parameters, homomorphism over chunked vectors, noise depth, key separation."""
from __future__ import annotations

import gmpy2
import pytest
import tenseal as ts
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import CryptoError, InvalidInput, OverflowDetected
from pc_node.secure_agg import bfv, get_backend, wire

be = get_backend("bfv")
N = bfv.POLY_MODULUS_DEGREE
FAST = settings(max_examples=20, deadline=None)


@pytest.fixture(scope="module")
def keys():
    return be.generate_keypair()


@pytest.fixture(scope="module")
def other_keys():
    return be.generate_keypair()


def test_parameters():
    t = bfv.PLAIN_MODULUS
    assert gmpy2.is_prime(t, 64)
    assert t % (2 * N) == 1
    assert t.bit_length() == 60
    assert sum(bfv.COEFF_MOD_BIT_SIZES) <= 218  # HE standard, N = 8192, 128-bit security
    assert be.fixed_plaintext_bound == (t - 1) // 2


bound = (bfv.PLAIN_MODULUS - 1) // 2
vals = st.integers(min_value=-(2**40), max_value=2**40)


@FAST
@given(st.lists(st.tuples(vals, vals), min_size=1, max_size=40))
def test_dec_of_sum_is_sum(keys, pairs):
    pub, sec = keys
    a = be.encrypt(pub, [x for x, _ in pairs])
    b = be.encrypt(pub, [y for _, y in pairs])
    assert list(be.decrypt(sec, be.add(a, b))) == [x + y for x, y in pairs]


@FAST
@given(st.lists(st.tuples(vals, st.integers(-(2**18), 2**18)), min_size=1, max_size=40))
def test_plain_ops(keys, pairs):
    pub, sec = keys
    a = be.encrypt(pub, [x for x, _ in pairs])
    ks = [y for _, y in pairs]
    assert list(be.decrypt(sec, be.add_plain(a, ks))) == [x + y for x, y in pairs]
    assert list(be.decrypt(sec, be.mul_plain(a, ks))) == [x * y for x, y in pairs]


def test_multi_chunk_vectors_and_ragged_sums(keys):
    pub, sec = keys
    long = list(range(-N // 2, N // 2 + 5))  # two chunks
    short = [7] * 3
    a, b = be.encrypt(pub, long), be.encrypt(pub, short)
    assert len(a.chunks) == 2 and len(b.chunks) == 1
    expected = [v + (7 if i < 3 else 0) for i, v in enumerate(long)]
    assert list(be.decrypt(sec, be.add(b, a))) == expected
    assert list(be.decrypt(sec, be.sum([b, a, b]))) == [
        v + (14 if i < 3 else 0) for i, v in enumerate(long)
    ]
    assert list(be.decrypt(sec, be.mul_plain(a, 3)))[-1] == 3 * long[-1]


def test_plaintext_bound_and_wrapping_plain_values(keys):
    pub, sec = keys
    assert list(be.decrypt(sec, be.encrypt(pub, [bound, -bound]))) == [bound, -bound]
    with pytest.raises(OverflowDetected):
        be.encrypt(pub, [bound + 1])
    # plain operands are taken modulo t
    cv = be.encrypt(pub, [5])
    assert list(be.decrypt(sec, be.add_plain(cv, [bfv.PLAIN_MODULUS + 1]))) == [6]


def test_one_full_multiplication_after_many_additions_decrypts(keys):
    """Noise: 2^12 added ciphertexts of 40-bit values, then a full-size plaintext factor."""
    pub, sec = keys
    x = [2**40 - 1, -(2**40), 12345]
    cv = be.encrypt(pub, x)
    acc = be.sum([cv] * 64)
    acc = be.sum([acc] * 64)
    t = bfv.PLAIN_MODULUS
    rho = [t // 2 - 1, -(t // 3), 987654321987]
    out = be.rerandomize(be.add_plain(be.mul_plain(acc, rho), [t // 5, 1, 2]))
    expected = [((4096 * a * r + p + t // 2) % t) - t // 2 for a, r, p in zip(x, rho, [t // 5, 1, 2])]
    assert list(be.decrypt(sec, out)) == expected


def test_second_multiplication_is_refused(keys):
    pub, _ = keys
    once = be.mul_plain(be.encrypt(pub, [1]), [2])
    with pytest.raises(CryptoError):
        be.mul_plain(once, [2])
    again = be.load_ciphertext(pub, once.serialize())
    assert again.depth == 1
    with pytest.raises(CryptoError):
        be.mul_plain(again, [2])


def test_zero_plaintext_factor_gives_a_real_ciphertext(keys):
    pub, sec = keys
    out = be.mul_plain(be.encrypt(pub, [5, 6]), [0, 0])
    assert list(be.decrypt(sec, out)) == [0, 0]


# --- serialisation and key separation --------------------------------------------------

def test_public_context_has_no_secret_key(keys):
    pub, sec = keys
    data = pub.serialize()
    loaded = be.load_public(data)
    assert not loaded.ctx.is_private()
    assert not loaded.ctx.has_secret_key()
    assert loaded.fingerprint == pub.fingerprint
    raw = ts.context_from(wire.unpack_context(data, wire.MAGIC_PUBLIC, "bfv"))
    assert not raw.has_secret_key()
    assert not raw.has_relin_keys() and not raw.has_galois_keys()
    assert list(be.decrypt(sec, be.load_ciphertext(pub, be.encrypt(loaded, [3]).serialize()))) == [3]


def test_private_context_in_public_envelope_is_refused(keys):
    _, sec = keys
    private_payload = sec._ctx.serialize(save_secret_key=True)
    with pytest.raises(CryptoError):
        be.load_public(wire.pack_context(wire.MAGIC_PUBLIC, "bfv", private_payload))


def test_foreign_parameters_are_refused():
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
    with pytest.raises(CryptoError):
        be.load_public(wire.pack_context(wire.MAGIC_PUBLIC, "bfv", bfv.public_bytes(ctx)))


def test_secret_round_trip_and_kinds_do_not_mix(keys, other_keys):
    pub, sec = keys
    blob = sec.serialize_secret()
    sec2 = be.load_secret(blob)
    assert list(be.decrypt(sec2, be.encrypt(pub, [-9]))) == [-9]
    with pytest.raises(CryptoError):
        be.load_public(blob)
    with pytest.raises(CryptoError):
        be.load_secret(pub.serialize())
    # a secret key that does not open its claimed public key
    _, other_sec = other_keys
    mixed = wire.pack_context(
        wire.MAGIC_SECRET,
        "bfv",
        wire.pack_fields(pub.serialize(), other_sec._ctx.serialize(save_secret_key=True)),
    )
    with pytest.raises(CryptoError):
        be.load_secret(mixed)


def test_wrong_key_is_refused(keys, other_keys):
    pub, sec = keys
    pub2, sec2 = other_keys
    data = be.encrypt(pub, [1, 2]).serialize()
    with pytest.raises(CryptoError):
        be.load_ciphertext(pub2, data)
    with pytest.raises(CryptoError):
        be.decrypt(sec2, be.encrypt(pub, [1]))
    with pytest.raises(CryptoError):
        be.add(be.encrypt(pub, [1]), be.encrypt(pub2, [1]))


def test_corrupted_bytes_are_refused(keys):
    pub, _ = keys
    data = be.encrypt(pub, [1, 2]).serialize()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    for bad in (b"", b"junk" * 10, data[:-1], data[:100], bytes(flipped)):
        with pytest.raises(CryptoError):
            be.load_ciphertext(pub, bad)


def test_garbage_tenseal_payload_with_valid_envelope_is_refused(keys):
    pub, _ = keys
    for payload in (wire.pack_fields(b"not a ciphertext"), wire.pack_fields(), b"\x00\x00"):
        data = wire.pack_ciphertext("bfv", pub.fingerprint, 0, 3, payload)
        with pytest.raises(CryptoError):
            be.load_ciphertext(pub, data)


def test_cross_backend_objects_are_refused(keys):
    pub, _ = keys
    pai = get_backend("paillier")
    with pytest.raises(CryptoError):
        pai.encrypt(pub, [1])
    with pytest.raises(InvalidInput):
        get_backend("ckks-or-whatever")


def test_numpy_inputs(keys):
    import numpy as np

    pub, sec = keys
    arr = np.array([1, -2, 3], dtype=np.int64)
    out = be.decrypt(sec, be.mul_plain(be.encrypt(pub, arr), np.array([2, 2, 2], dtype=np.int32)))
    assert out.dtype == np.int64 and list(out) == [2, -4, 6]
    with pytest.raises(InvalidInput):
        be.encrypt(pub, np.array([1.0, 2.0]))
