"""The HE backend contract, once for every backend: encrypt, add, add_plain, mul_plain, sum,
rerandomize, serialise and decrypt give the plaintext answers (hypothesis properties for the
algebra), keys never mix, the public context serialises no secret, and damaged or foreign
bytes are refused with ``CryptoError``.

What only one scheme has (BFV chunks and noise depth, Paillier's fast encryption and
known-answer keys) stays in test_secure_agg_bfv.py and test_secure_agg_paillier.py.
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pc_common.errors import CryptoError, InvalidInput, OverflowDetected
from pc_node.secure_agg import available_backends, get_backend


@dataclasses.dataclass(frozen=True)
class Spec:
    """How to exercise one backend quickly."""
    name: str
    keygen: dict              # generate_keypair options (Paillier: a 1024-bit test key for speed)
    load_public: dict         # load_public options that accept that key
    value_bits: int           # |values| of the property tests
    factor_bits: int          # |plaintext factors| of mul_plain (BFV: one product must fit in t)
    max_len: int              # vector length of the property tests


SPECS = {
    "bfv": Spec("bfv", {}, {}, value_bits=40, factor_bits=18, max_len=40),
    "paillier": Spec("paillier", {"key_bits": 1024, "allow_test_key": True}, {"min_key_bits": 1024},
                     value_bits=64, factor_bits=64, max_len=6),
}
BACKENDS = list(SPECS)


@dataclasses.dataclass
class Backend:
    spec: Spec
    be: object
    pub: object
    sec: object
    pub2: object              # a second, unrelated key pair
    sec2: object

    def load_public(self, data: bytes):
        return self.be.load_public(data, **self.spec.load_public)


@pytest.fixture(scope="module", params=BACKENDS)
def he(request) -> Backend:
    spec = SPECS[request.param]
    be = get_backend(spec.name)
    pub, sec = be.generate_keypair(**spec.keygen)
    pub2, sec2 = be.generate_keypair(**spec.keygen)
    return Backend(spec, be, pub, sec, pub2, sec2)


def ints(bits: int):
    return st.integers(min_value=-(2 ** bits), max_value=2 ** bits)


def draw_pairs(data, he: Backend, second_bits: int | None = None) -> list[tuple[int, int]]:
    s = he.spec
    return data.draw(st.lists(st.tuples(ints(s.value_bits), ints(second_bits or s.value_bits)),
                              min_size=1, max_size=s.max_len))


def test_every_backend_is_covered():
    assert set(available_backends()) <= set(SPECS), "add the new backend to SPECS"


# ----- the algebra --------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_dec_of_sum_is_sum(he, data):
    pairs = draw_pairs(data, he)
    be, pub, sec = he.be, he.pub, he.sec
    a = be.encrypt(pub, [x for x, _ in pairs])
    b = be.encrypt(pub, [y for _, y in pairs])
    assert list(be.decrypt(sec, be.add(a, b))) == [x + y for x, y in pairs]


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_plain_ops(he, data):
    pairs = draw_pairs(data, he, he.spec.factor_bits)
    be, pub, sec = he.be, he.pub, he.sec
    a = be.encrypt(pub, [x for x, _ in pairs])
    ks = [y for _, y in pairs]
    assert list(be.decrypt(sec, be.add_plain(a, ks))) == [x + y for x, y in pairs]
    assert list(be.decrypt(sec, be.mul_plain(a, ks))) == [x * y for x, y in pairs]
    assert list(be.decrypt(sec, be.rerandomize(a))) == [x for x, _ in pairs]


def test_sum_of_ragged_rows(he):
    be, pub, sec = he.be, he.pub, he.sec
    rows = [be.encrypt(pub, [1, 2, 3]), be.encrypt(pub, [10]), be.encrypt(pub, [100, 200])]
    assert list(be.decrypt(sec, be.sum(rows))) == [111, 202, 3]
    assert list(be.decrypt(sec, be.add(rows[1], rows[0]))) == [11, 2, 3]


def test_plaintext_bounds(he):
    be, pub, sec = he.be, he.pub, he.sec
    b = pub.plaintext_bound
    assert list(be.decrypt(sec, be.encrypt(pub, [b, -b]))) == [b, -b]
    with pytest.raises(OverflowDetected):
        be.encrypt(pub, [b + 1])
    with pytest.raises(InvalidInput):
        be.encrypt(pub, [1.5])
    with pytest.raises(InvalidInput):
        be.encrypt(pub, [True])


def test_zero_plaintext_factor_gives_a_real_ciphertext(he):
    be, pub, sec = he.be, he.pub, he.sec
    out = be.mul_plain(be.encrypt(pub, [5, 6]), [0, 0])
    assert list(be.decrypt(sec, out)) == [0, 0]


def test_encryption_is_randomised(he):
    be, pub = he.be, he.pub
    assert be.encrypt(pub, [5]).serialize() != be.encrypt(pub, [5]).serialize()


# ----- serialisation and key separation -----------------------------------------------------------------
def test_ciphertext_round_trip(he):
    be, pub, sec = he.be, he.pub, he.sec
    back = be.load_ciphertext(pub, be.encrypt(pub, [1, -2, 3]).serialize())
    assert list(be.decrypt(sec, back)) == [1, -2, 3]


def test_public_context_round_trip_and_no_secret(he):
    be, pub, sec = he.be, he.pub, he.sec
    data = pub.serialize()
    loaded = he.load_public(data)
    assert loaded.fingerprint == pub.fingerprint
    cv = be.encrypt(loaded, [77])
    assert list(be.decrypt(sec, be.load_ciphertext(pub, cv.serialize()))) == [77]
    # A public context has no way to write a secret: only the secret context can.
    for public in (pub, loaded):
        assert not hasattr(public, "serialize_secret")
    with pytest.raises(CryptoError):
        be.load_secret(data)


def test_secret_round_trip_and_kinds_do_not_mix(he):
    be, pub, sec = he.be, he.pub, he.sec
    blob = sec.serialize_secret()
    sec2 = be.load_secret(blob)
    assert list(be.decrypt(sec2, be.encrypt(pub, [-9, 9]))) == [-9, 9]
    with pytest.raises(CryptoError):
        he.load_public(blob)
    with pytest.raises(CryptoError):
        be.load_secret(pub.serialize())
    assert blob.hex() not in repr(sec) and "fingerprint=" in repr(sec)


def test_wrong_key_is_refused(he):
    be, pub, sec, pub2, sec2 = he.be, he.pub, he.sec, he.pub2, he.sec2
    data = be.encrypt(pub, [1, 2]).serialize()
    with pytest.raises(CryptoError):
        be.load_ciphertext(pub2, data)
    with pytest.raises(CryptoError):
        be.decrypt(sec2, be.encrypt(pub, [1]))
    with pytest.raises(CryptoError):
        be.add(be.encrypt(pub, [1]), be.encrypt(pub2, [1]))


def test_corrupted_bytes_are_refused(he):
    be, pub = he.be, he.pub
    data = be.encrypt(pub, [1, 2]).serialize()
    flipped = []
    for bit in (0x01, 0x40):
        f = bytearray(data)
        f[len(data) // 2] ^= bit
        flipped.append(bytes(f))
    for bad in (b"", b"garbage", b"junk" * 10, data[:-1], data[:100], data + b"\x00", *flipped, "text"):
        with pytest.raises(CryptoError):
            be.load_ciphertext(pub, bad)


def test_cross_backend_objects_are_refused(he):
    for other in BACKENDS:
        if other == he.spec.name:
            continue
        with pytest.raises(CryptoError):
            get_backend(other).encrypt(he.pub, [1])
        with pytest.raises(CryptoError):
            get_backend(other).load_ciphertext(he.pub, he.be.encrypt(he.pub, [1]).serialize())


def test_unknown_backend_is_refused():
    with pytest.raises(InvalidInput):
        get_backend("ckks-or-whatever")
