"""BFV backend, what only BFV has: parameters, chunked vectors, noise depth, tenseal contexts.

The interface every backend shares (algebra, serialisation, key mixing) is in
test_secure_agg_contract.py."""
from __future__ import annotations

import gmpy2
import pytest
import tenseal as ts

from pc_common.errors import CryptoError, InvalidInput
from pc_node.secure_agg import bfv, get_backend, wire

be = get_backend("bfv")
N = bfv.POLY_MODULUS_DEGREE


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
    assert pub.plaintext_bound == bound == be.fixed_plaintext_bound      # (the contract test checks it)
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


# --- serialisation and key separation --------------------------------------------------

def secret_context_bytes(sec) -> bytes:
    """The tenseal context with its secret key, read through the one public way out."""
    payload = wire.unpack_context(sec.serialize_secret(), wire.MAGIC_SECRET, "bfv")
    return wire.unpack_fields(payload, 2, "secret key is malformed")[1]


def test_public_context_has_no_secret_key(keys):
    pub, sec = keys
    data = pub.serialize()
    loaded = be.load_public(data)
    assert not loaded.ctx.is_private()
    assert not loaded.ctx.has_secret_key()
    raw = ts.context_from(wire.unpack_context(data, wire.MAGIC_PUBLIC, "bfv"))
    assert not raw.has_secret_key()
    assert not raw.has_relin_keys() and not raw.has_galois_keys()
    assert list(be.decrypt(sec, be.load_ciphertext(pub, be.encrypt(loaded, [3]).serialize()))) == [3]
    assert ts.context_from(secret_context_bytes(sec)).has_secret_key()      # control: the seam holds it


def test_private_context_in_public_envelope_is_refused(keys):
    _, sec = keys
    private_payload = secret_context_bytes(sec)
    with pytest.raises(CryptoError):
        be.load_public(wire.pack_context(wire.MAGIC_PUBLIC, "bfv", private_payload))


def test_foreign_parameters_are_refused():
    ctx = ts.context(ts.SCHEME_TYPE.BFV, poly_modulus_degree=8192, plain_modulus=1032193)
    with pytest.raises(CryptoError):
        be.load_public(wire.pack_context(wire.MAGIC_PUBLIC, "bfv", bfv.public_bytes(ctx)))


def test_secret_key_that_does_not_open_its_public_key_is_refused(keys, other_keys):
    pub, _ = keys
    _, other_sec = other_keys
    mixed = wire.pack_context(
        wire.MAGIC_SECRET,
        "bfv",
        wire.pack_fields(pub.serialize(), secret_context_bytes(other_sec)),
    )
    with pytest.raises(CryptoError):
        be.load_secret(mixed)


def test_garbage_tenseal_payload_with_valid_envelope_is_refused(keys):
    pub, _ = keys
    for payload in (wire.pack_fields(b"not a ciphertext"), wire.pack_fields(), b"\x00\x00"):
        data = wire.pack_ciphertext("bfv", pub.fingerprint, 0, 3, payload)
        with pytest.raises(CryptoError):
            be.load_ciphertext(pub, data)


def test_numpy_inputs(keys):
    import numpy as np

    pub, sec = keys
    arr = np.array([1, -2, 3], dtype=np.int64)
    out = be.decrypt(sec, be.mul_plain(be.encrypt(pub, arr), np.array([2, 2, 2], dtype=np.int32)))
    assert out.dtype == np.int64 and list(out) == [2, -4, 6]
    with pytest.raises(InvalidInput):
        be.encrypt(pub, np.array([1.0, 2.0]))
