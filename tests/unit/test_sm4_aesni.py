"""SM4-GCM on AES-NI (pc_common.sm4_aesni) is OpenSSL's SM4-GCM, byte for byte, and pc_common.gm
uses it for large payloads once it is compiled."""
from __future__ import annotations

import os

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings, strategies as st

from pc_common import gm, sm4_aesni
from pc_common.errors import IntegrityError

pytestmark = pytest.mark.skipif(not sm4_aesni.available(), reason="CPU without AES-NI/PCLMULQDQ/AVX2/VAES")


def openssl_gcm(key: bytes, nonce: bytes, pt: bytes, aad: bytes) -> bytes:
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    body = enc.update(pt) + enc.finalize()
    return nonce + body + enc.tag


def test_key_schedule_and_block_match_the_standard_example():
    # GB/T 32907-2016 appendix A: rk[0], rk[31] and the ciphertext of the example block
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    rk = sm4_aesni.round_keys(key)
    assert (int(rk[0]), int(rk[31])) == (0xF12186F9, 0x9124A012)
    # the counter block nonce ‖ ctr encrypted by XOR onto zeros is E_K(nonce ‖ ctr)
    out = np.empty(16, np.uint8)
    sm4_aesni.ctr_xor(rk, key[:12], bytes(16), out, counter=int.from_bytes(key[12:], "big"))
    assert out.tobytes().hex() == "681edf34d206965e86b3e94f536e4246"


@pytest.mark.parametrize("n", [0, 1, 15, 16, 17, 255, 256, 257, 511, 4096, 65_537, (1 << 20) + 3])
def test_gcm_equals_openssl_across_kernel_boundaries(n):
    key, nonce, pt, aad = os.urandom(16), os.urandom(12), os.urandom(n), os.urandom(n % 41)
    blob = sm4_aesni.gcm_encrypt_into(key, nonce, pt, aad)
    assert blob == openssl_gcm(key, nonce, pt, aad)
    assert sm4_aesni.gcm_decrypt(key, memoryview(blob), aad) == pt


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=16, max_size=16), st.binary(min_size=12, max_size=12),
       st.binary(max_size=700), st.binary(max_size=70))
def test_gcm_equals_openssl_property(key, nonce, pt, aad):
    assert sm4_aesni.gcm_encrypt_into(key, nonce, pt, aad) == openssl_gcm(key, nonce, pt, aad)


def test_counter_wraps_as_gcm_inc32():
    # GCM increments only the last 32 bits: start just below the wrap, across a kernel step
    key, nonce, pt = os.urandom(16), os.urandom(12), os.urandom(700)
    out = np.empty(len(pt), np.uint8)
    sm4_aesni.ctr_xor(sm4_aesni.round_keys(key), nonce, pt, out, counter=0xFFFFFFF0)
    ecb = Cipher(algorithms.SM4(key), modes.ECB()).encryptor()
    blocks = b"".join(nonce + ((0xFFFFFFF0 + i) & 0xFFFFFFFF).to_bytes(4, "big") for i in range(44))
    stream = ecb.update(blocks)
    assert out.tobytes() == bytes(a ^ b for a, b in zip(pt, stream))


def test_any_change_is_rejected_before_decryption():
    key, nonce, pt, aad = os.urandom(16), os.urandom(12), os.urandom(10_000), b"job/1"
    blob = bytearray(sm4_aesni.gcm_encrypt_into(key, nonce, pt, aad))
    for pos in (0, 11, 12, 5000, len(blob) - 17, len(blob) - 1):
        bad = bytearray(blob)
        bad[pos] ^= 0x01
        with pytest.raises(IntegrityError):
            sm4_aesni.gcm_decrypt(key, memoryview(bytes(bad)), aad)
    with pytest.raises(IntegrityError):
        sm4_aesni.gcm_decrypt(key, memoryview(bytes(blob)), b"job/2")
    with pytest.raises(IntegrityError):
        sm4_aesni.gcm_decrypt(os.urandom(16), memoryview(bytes(blob)), aad)


def test_gm_uses_the_kernels_for_large_payloads_and_interoperates(monkeypatch):
    key, pt = os.urandom(16), os.urandom(gm.FAST_MIN_BYTES + 99)
    calls = []
    real = sm4_aesni.gcm_encrypt_into
    monkeypatch.setattr(sm4_aesni, "gcm_encrypt_into", lambda *a: calls.append(1) or real(*a))
    blob = gm.sm4_gcm_encrypt(key, pt, b"x")
    assert calls == [1]
    dec = Cipher(algorithms.SM4(key), modes.GCM(blob[:12], blob[-16:])).decryptor()   # OpenSSL opens it
    dec.authenticate_additional_data(b"x")
    assert dec.update(blob[12:-16]) + dec.finalize() == pt
    assert gm.sm4_gcm_decrypt(key, openssl_gcm(key, blob[:12], pt, b"x"), b"x") == pt   # and the reverse
    small = gm.sm4_gcm_encrypt(key, pt[:100], b"x")                                     # OpenSSL path
    assert calls == [1] and gm.sm4_gcm_decrypt(key, small, b"x") == pt[:100]


@pytest.mark.parametrize("blocks", [1, 15, 16, 17, 1000])
def test_ecb_equals_openssl(blocks):
    key, data = os.urandom(16), os.urandom(16 * blocks)
    got = sm4_aesni.ecb_encrypt(sm4_aesni.round_keys(key), np.frombuffer(data, np.uint8)).tobytes()
    assert got == Cipher(algorithms.SM4(key), modes.ECB()).encryptor().update(data)
    with pytest.raises(ValueError):
        sm4_aesni.ecb_encrypt(sm4_aesni.round_keys(key), np.zeros(15, np.uint8))
