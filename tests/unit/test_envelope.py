"""Digital envelope: round trip, wrong recipient, tampering, large payloads."""
from __future__ import annotations

import os
import pickle

import pytest

from pc_node.envelope import ENVELOPE_OVERHEAD, X25519KeyPair, _seal_with, open_envelope, seal
from pc_common.errors import CryptoError, IntegrityError

RECIPIENT = X25519KeyPair.from_private(bytes(range(32)))
OTHER = X25519KeyPair.from_private(bytes(range(1, 33)))
# A point of small order on Curve25519: every shared secret with it is all zeros.
LOW_ORDER = bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")


@pytest.mark.parametrize("payload", [b"", b"x", b"blinded PSI set " * 1000])
def test_round_trip(payload):
    blob = seal(RECIPIENT.public, payload, b"job-1/step-2")
    assert len(blob) == len(payload) + ENVELOPE_OVERHEAD
    assert open_envelope(RECIPIENT.private, blob, b"job-1/step-2") == payload
    assert open_envelope(RECIPIENT, blob, b"job-1/step-2") == payload


def test_each_envelope_uses_a_fresh_ephemeral_key():
    a, b = seal(RECIPIENT.public, b"same"), seal(RECIPIENT.public, b"same")
    assert a[1:33] != b[1:33] and a != b


def test_deterministic_with_injected_randomness():
    eph = bytes([7]) * 32
    nonce = bytes(12)
    a = _seal_with(RECIPIENT.public, b"payload", b"aad", eph, nonce)
    assert a == _seal_with(RECIPIENT.public, b"payload", b"aad", eph, nonce)
    assert a[1:33] == X25519KeyPair.from_private(eph).public
    assert open_envelope(RECIPIENT.private, a, b"aad") == b"payload"


def test_wrong_recipient_or_aad_is_rejected():
    blob = seal(RECIPIENT.public, b"secret", b"job-1")
    with pytest.raises(IntegrityError):
        open_envelope(OTHER.private, blob, b"job-1")
    with pytest.raises(IntegrityError):
        open_envelope(RECIPIENT.private, blob, b"job-2")
    with pytest.raises(IntegrityError):
        open_envelope(RECIPIENT.private, blob)


def test_any_tampering_is_rejected():
    blob = seal(RECIPIENT.public, b"household income sums", b"aad")
    for i in range(len(blob)):
        bad = bytearray(blob)
        bad[i] ^= 0x01
        with pytest.raises(IntegrityError):
            open_envelope(RECIPIENT.private, bytes(bad), b"aad")
    for bad in (blob[:-1], blob[:ENVELOPE_OVERHEAD - 1], b"", blob + b"\0", b"\x02" + blob[1:]):
        with pytest.raises(IntegrityError):
            open_envelope(RECIPIENT.private, bad, b"aad")


def test_low_order_points_are_refused():
    with pytest.raises(CryptoError):
        seal(LOW_ORDER, b"x")
    blob = bytearray(seal(RECIPIENT.public, b"x"))
    blob[1:33] = LOW_ORDER
    with pytest.raises(IntegrityError):
        open_envelope(RECIPIENT.private, bytes(blob))


def test_bad_key_sizes():
    with pytest.raises(CryptoError):
        seal(bytes(31), b"x")
    with pytest.raises(CryptoError):
        open_envelope(bytes(31), seal(RECIPIENT.public, b"x"))
    with pytest.raises(CryptoError):
        X25519KeyPair.from_private(bytes(16))


def test_keypair_hides_private_key():
    kp = X25519KeyPair.generate()
    assert kp.private.hex() not in repr(kp) and repr(kp.private) not in repr(kp)
    with pytest.raises(TypeError):
        pickle.dumps(kp)


def test_large_payload():
    payload = os.urandom(20 * 1024 * 1024)
    blob = seal(RECIPIENT.public, payload)
    assert open_envelope(RECIPIENT.private, blob) == payload
    assert open_envelope(RECIPIENT.private, memoryview(blob)) == payload
