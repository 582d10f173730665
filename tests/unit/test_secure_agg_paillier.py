"""Paillier backend, what only Paillier has: fast-encryption arithmetic on a tiny known-answer
key, half decryption, fixed-width ciphertexts, key sizes, parallel work, malformed inputs.

The interface every backend shares (algebra, serialisation, key mixing) is in
test_secure_agg_contract.py."""
from __future__ import annotations

import pytest
from phe import paillier as phe_paillier

from pc_common.errors import CryptoError, InvalidInput
from pc_node.secure_agg import get_backend, wire
from pc_node.secure_agg.paillier import PaillierPublicContext, encrypt_with_randomness
from pc_node.secure_agg.paillier_keys import PaillierSecretContext

# Tiny fixed key (as in python-paillier's own tests): n = 126869 = 293 * 433.
TINY_N, TINY_P, TINY_Q = 126869, 293, 433
TINY_X = 5  # h = -x^2 mod n
TINY_HS = 1874378419  # (-25 mod n)^n mod n^2
RAND = b"\x03\x01"  # α = 3 + 1·256 = 259 (little-endian digits)

be = get_backend("paillier")


@pytest.fixture(scope="module")
def keys():
    return be.generate_keypair(key_bits=1024, allow_test_key=True)


def secret_factors(sec) -> tuple[int, int]:
    """(p, q) of a secret context, read through the one public way out (``serialize_secret``)."""
    payload = wire.unpack_context(sec.serialize_secret(), wire.MAGIC_SECRET, "paillier")
    _, p, q = wire.unpack_fields(payload, 3, "secret key is malformed")
    return int.from_bytes(p, "big"), int.from_bytes(q, "big")


@pytest.fixture(scope="module")
def tiny():
    pub = PaillierPublicContext(TINY_N, TINY_HS, key_bits=17, alpha_bits=16)
    return pub, PaillierSecretContext(pub, TINY_P, TINY_Q)


# --- known answers ------------------------------------------------------------------------

def test_tiny_hs_is_h_to_the_n():
    n2 = TINY_N * TINY_N
    assert pow((-TINY_X * TINY_X) % TINY_N, TINY_N, n2) == TINY_HS


@pytest.mark.parametrize("m, expected", [(42, 16052915660), (-7, 898540479), (0, 764059339)])
def test_known_answer_fast_encryption(tiny, m, expected):
    pub, _ = tiny
    (c,) = encrypt_with_randomness(pub, [m], RAND)
    assert c == expected
    n2 = TINY_N * TINY_N
    assert c == ((1 + (m % TINY_N) * TINY_N) * pow(TINY_HS, 259, n2)) % n2


def test_fast_path_equals_textbook_paillier_with_r_equal_h_to_alpha(tiny):
    """hs^α = (h^α)^n, so our ciphertext is phe's with randomness r = h^α mod n."""
    pub, _ = tiny
    h = (-TINY_X * TINY_X) % TINY_N
    phe_pub = phe_paillier.PaillierPublicKey(TINY_N)
    for m, rand in [(1, b"\x00\x00"), (12345, b"\xff\xff"), (-3, b"\x10\x80")]:
        alpha = int.from_bytes(rand, "little")
        (c,) = encrypt_with_randomness(pub, [m], rand)
        assert c == phe_pub.raw_encrypt(m % TINY_N, r_value=pow(h, alpha, TINY_N))


def test_tiny_key_homomorphism_and_centring(tiny):
    pub, sec = tiny
    assert pub.plaintext_bound == 63  # 2^(17//2 - 2) - 1 < min(p, q) / 2
    a = be.encrypt(pub, [10, -5, 0, 63, -63])
    assert list(be.decrypt(sec, a)) == [10, -5, 0, 63, -63]
    b = be.encrypt(pub, [-30, 20, 0, 0, 0])
    assert list(be.decrypt(sec, be.add(a, b)))[:3] == [-20, 15, 0]
    assert list(be.decrypt(sec, be.mul_plain(a, [3, -2, 7, 0, 1]))) == [30, 10, 0, 0, -63]
    (c,) = encrypt_with_randomness(pub, [42], RAND)
    assert list(be.decrypt(sec, type(a)(pub, [c]))) == [42]


def test_half_decryption_agrees_with_phe_full_crt(keys):
    pub, sec = keys
    cv = be.encrypt(pub, [0, 1, -1, pub.plaintext_bound, -pub.plaintext_bound])
    p, q = secret_factors(sec)
    phe_key = phe_paillier.PaillierPrivateKey(phe_paillier.PaillierPublicKey(pub.n), p, q)
    full = [phe_key.raw_decrypt(int(c)) for c in cv.cts]
    assert [m - pub.n if m > pub.n // 2 else m for m in full] == list(be.decrypt(sec, cv))


def test_table_rows_are_powers_of_the_base(tiny):
    pub, _ = tiny
    rows = pub.table().rows
    n2 = TINY_N * TINY_N
    assert rows[1][7] == pow(TINY_HS, 7 * 256, n2)
    assert rows[0][255] == pow(TINY_HS, 255, n2)


# --- a real (1024-bit test) key -----------------------------------------------------------

def test_plaintext_bound_is_below_half_a_prime(keys):
    pub, _ = keys
    assert pub.plaintext_bound == 2 ** (1024 // 2 - 2) - 1   # (the contract test checks it holds)
    assert min(secret_factors(keys[1])) > 2 * pub.plaintext_bound


def test_parallel_encryption_matches(keys):
    pub, sec = keys
    values = list(range(-20, 20))
    cv = be.encrypt(pub, values, workers=2)
    assert list(be.decrypt(sec, cv)) == values
    assert len(set(cv.cts)) == len(values)


# --- serialisation and key separation --------------------------------------------------------

def test_ciphertexts_are_fixed_width_and_randomised(keys):
    pub, _ = keys
    data = be.encrypt(pub, [1, -2, 3]).serialize()
    assert len(data) < 3 * pub.ct_bytes + 100
    assert be.encrypt(pub, [5]).cts != be.encrypt(pub, [5]).cts


def test_public_context_holds_no_prime_and_test_keys_are_refused_by_default(keys):
    pub, sec = keys
    data = pub.serialize()
    p, q = secret_factors(sec)
    assert p * q == pub.n                                      # control: the seam gives the primes
    for secret in (p, q):
        assert secret.to_bytes(64, "big") not in data
        assert str(secret).encode() not in data
        assert secret.to_bytes(64, "little") not in data
    with pytest.raises(CryptoError):
        be.load_public(data)  # 1024-bit keys are refused by default


def test_repr_shows_no_prime(keys):
    _, sec = keys
    p, q = secret_factors(sec)
    assert "p=" not in repr(sec) and str(p) not in repr(sec) and str(q) not in repr(sec)


def test_out_of_range_ciphertext_with_valid_envelope_is_refused(keys):
    pub, _ = keys
    too_big = (pub.n * pub.n).to_bytes(pub.ct_bytes, "big")
    for payload in (too_big, bytes(pub.ct_bytes), too_big[:-1]):
        data = wire.pack_ciphertext("paillier", pub.fingerprint, 0, 1, payload)
        with pytest.raises(CryptoError):
            be.load_ciphertext(pub, data)


def test_malformed_public_contexts_are_refused(keys):
    pub, _ = keys
    n = pub.n
    bad_hs = wire.pack_fields((1024).to_bytes(2, "big"), n.to_bytes(128, "big"), n.to_bytes(256, "big"))
    bad_bits = wire.pack_fields((1000).to_bytes(2, "big"), n.to_bytes(128, "big"), (5).to_bytes(256, "big"))
    for payload in (bad_hs, bad_bits, b"\x00" * 10):
        with pytest.raises(CryptoError):
            be.load_public(wire.pack_context(wire.MAGIC_PUBLIC, "paillier", payload), min_key_bits=1024)


def test_key_sizes():
    with pytest.raises(InvalidInput):
        be.generate_keypair(key_bits=1024)
    with pytest.raises(InvalidInput):
        be.generate_keypair(key_bits=4000)


def test_parallel_exponentiations_match(keys):
    """Large mul_plain batches go to the worker pool; results must be identical in order."""
    from pc_node.secure_agg.paillier import PARALLEL_MIN_POWMODS

    pub, sec = keys
    size = PARALLEL_MIN_POWMODS + 3
    values = list(range(size))
    factors = [(-1) ** i * (i + 2) for i in range(size)]
    out = be.mul_plain(be.encrypt(pub, values, workers=1), factors)
    assert list(be.decrypt(sec, out)) == [v * f for v, f in zip(values, factors)]
