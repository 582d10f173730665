"""Known-answer and tamper tests for pc_common.gm (SM3, HMAC-SM3, SM4-GCM, SM2)."""
from __future__ import annotations

import pickle
import secrets
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from gmssl import sm2 as gmssl_sm2
from gmssl import sm4 as gmssl_sm4

from pc_common import sm2_openssl
from pc_common.errors import CryptoError, IntegrityError, InvalidInput
from pc_common.gm import (
    Sm2PrivateKey,
    Sm2PublicKey,
    hmac_sm3,
    sm3,
    sm4_gcm_decrypt,
    sm4_gcm_decrypt_many,
    sm4_gcm_encrypt,
    sm4_gcm_encrypt_many,
)

KEY = bytes(range(16))


# ----------------------------------------------------------------------------- SM3
def test_sm3_known_answers():
    # GB/T 32905-2016 Appendix A
    assert sm3(b"abc").hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    assert sm3(b"abcd" * 16).hex() == "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732"


def _reference_hmac_sm3(key: bytes, msg: bytes) -> bytes:
    block = 64
    if len(key) > block:
        key = sm3(key)
    key = key.ljust(block, b"\0")
    inner = sm3(bytes(k ^ 0x36 for k in key) + msg)
    return sm3(bytes(k ^ 0x5C for k in key) + inner)


@pytest.mark.parametrize("key", [b"k", bytes(range(32)), bytes(100)])
def test_hmac_sm3_matches_rfc2104_construction(key):
    msg = b"blind index input"
    assert hmac_sm3(key, msg) == _reference_hmac_sm3(key, msg)
    assert len(hmac_sm3(key, msg)) == 32


def test_hmac_sm3_rejects_empty_key():
    with pytest.raises(CryptoError):
        hmac_sm3(b"", b"x")


# ----------------------------------------------------------------------------- SM4
def test_sm4_block_known_answer():
    # GB/T 32907-2016 Appendix A.1: key = plaintext = 0123456789abcdeffedcba9876543210
    k = bytes.fromhex("0123456789abcdeffedcba9876543210")
    enc = Cipher(algorithms.SM4(k), modes.ECB()).encryptor()
    assert (enc.update(k) + enc.finalize()).hex() == "681edf34d206965e86b3e94f536e4246"
    # and the pure-Python implementation agrees
    c = gmssl_sm4.CryptSM4()
    c.set_key(k, gmssl_sm4.SM4_ENCRYPT)
    assert c.crypt_ecb(k)[:16].hex() == "681edf34d206965e86b3e94f536e4246"


def test_sm4_gcm_rfc8998_known_answer():
    key = bytes.fromhex("0123456789ABCDEFFEDCBA9876543210")
    nonce = bytes.fromhex("00001234567800000000ABCD")
    aad = bytes.fromhex("FEEDFACEDEADBEEFFEEDFACEDEADBEEFABADDAD2")
    pt = bytes.fromhex(
        "AAAAAAAAAAAAAAAABBBBBBBBBBBBBBBBCCCCCCCCCCCCCCCCDDDDDDDDDDDDDDDD"
        "EEEEEEEEEEEEEEEEFFFFFFFFFFFFFFFFEEEEEEEEEEEEEEEEAAAAAAAAAAAAAAAA"
    )
    ct = (
        "17F399F08C67D5EE19D0DC9969C4BB7D5FD46FD3756489069157B282BB200735"
        "D82710CA5C22F0CCFA7CBF93D496AC15A56834CBCF98C397B4024A2691233B8D"
    )
    tag = "83DE3541E4C2B58177E065A9BF7B62EC"
    blob = sm4_gcm_encrypt(key, pt, aad, nonce=nonce)
    assert blob.hex().upper() == nonce.hex().upper() + ct + tag
    assert sm4_gcm_decrypt(key, blob, aad) == pt


@pytest.mark.parametrize("pt", [b"", b"x", b"field value 50 bytes long ..........................", bytes(1000)])
def test_sm4_gcm_round_trip(pt):
    blob = sm4_gcm_encrypt(KEY, pt, b"aad")
    assert len(blob) == len(pt) + 28
    assert sm4_gcm_decrypt(KEY, blob, b"aad") == pt
    assert sm4_gcm_encrypt(KEY, pt, b"aad") != blob  # fresh nonce each time


def test_sm4_gcm_any_flipped_byte_is_rejected():
    blob = sm4_gcm_encrypt(KEY, b"sensitive column value", b"row-1")
    for i in range(len(blob)):
        for bit in (0x01, 0x80):
            bad = bytearray(blob)
            bad[i] ^= bit
            with pytest.raises(IntegrityError):
                sm4_gcm_decrypt(KEY, bytes(bad), b"row-1")


def test_sm4_gcm_wrong_key_aad_or_length_is_rejected():
    blob = sm4_gcm_encrypt(KEY, b"value", b"row-1")
    for key, data, aad in [
        (bytes(16), blob, b"row-1"),
        (KEY, blob, b"row-2"),
        (KEY, blob, b""),
        (KEY, blob[:-1], b"row-1"),
        (KEY, blob + b"\0", b"row-1"),
        (KEY, blob[:27], b"row-1"),
        (KEY, b"", b"row-1"),
    ]:
        with pytest.raises(IntegrityError):
            sm4_gcm_decrypt(key, data, aad)


def test_sm4_gcm_bad_key_or_nonce_is_a_crypto_error():
    with pytest.raises(CryptoError):
        sm4_gcm_encrypt(bytes(15), b"x")
    with pytest.raises(CryptoError):
        sm4_gcm_encrypt(KEY, b"x", nonce=bytes(8))
    with pytest.raises(CryptoError):
        sm4_gcm_decrypt(bytes(32), bytes(40))


def test_sm4_gcm_batch_round_trip_and_binding():
    fields = [f"value-{i}".encode() for i in range(200)]
    aads = [f"ds/col/{i}".encode() for i in range(200)]
    blobs = sm4_gcm_encrypt_many(KEY, fields, aads)
    assert len(set(b[:12] for b in blobs)) == 200  # distinct nonces
    assert sm4_gcm_decrypt_many(KEY, blobs, aads) == fields
    assert [sm4_gcm_decrypt(KEY, b, a) for b, a in zip(blobs, aads)] == fields
    swapped = [blobs[1], blobs[0]] + blobs[2:]
    with pytest.raises(IntegrityError):
        sm4_gcm_decrypt_many(KEY, swapped, aads)
    with pytest.raises(InvalidInput):
        sm4_gcm_encrypt_many(KEY, fields, aads[:-1])
    shared = sm4_gcm_encrypt_many(KEY, fields[:3], b"same")
    assert sm4_gcm_decrypt_many(KEY, shared, b"same") == fields[:3]
    with pytest.raises(IntegrityError):
        sm4_gcm_decrypt_many(KEY, [b"short"], b"")


# ----------------------------------------------------------------------------- SM2
# GM/T 0003.5-2012 / GB/T 32918.5-2017 Annex A example on the recommended curve.
KAT_D = "3945208F7B2144B13F36E38AC6D39F95889393692860B51A42FB81EF4DF7C5B8"
KAT_PUB = (
    "04"
    "09F9DF311E5421A150DD7D161E4BC5C672179FAD1833FC076BB08FF356F35020"
    "CCEA490CE26775A52DC6EA718CC1AA600AED05FBF35E084A6632F6072DA9AD13"
)
KAT_K = int("59276E27D506861A16680F3AD9C02DCCEF3CC1FA3CDBE4CE6D54B80DEAC1BC21", 16)
KAT_E = "F0B43E94BA45ACCAACE692ED534382EB17E6AB5A19CE7B31F4486FDFC0D28640"
KAT_SIG = (
    "F5A03B0648D2C4630EEAC513E1BB81A15944DA3827D5B74143AC7EACEEE720B3"
    "B1B6AA29DF212FD8763182BC0D421CA1BB9038FD1F7F42D4840B69C485BBC1AA"
)


@pytest.fixture(scope="module")
def kat_key() -> Sm2PrivateKey:
    return Sm2PrivateKey.from_hex(KAT_D)


def test_sm2_standard_vector(kat_key):
    pub = kat_key.public_key()
    assert pub.to_hex() == KAT_PUB.lower()
    assert pub.digest(b"message digest").hex() == KAT_E.lower()
    sig = kat_key._sign_with_k(b"message digest", KAT_K)
    assert sig.hex() == KAT_SIG.lower()
    pub.verify(b"message digest", sig)
    Sm2PublicKey.from_hex(KAT_PUB).verify(b"message digest", bytes.fromhex(KAT_SIG))


def test_sm2_matches_gmssl_sign_with_sm3(kat_key):
    eng = gmssl_sm2.CryptSM2(private_key=KAT_D, public_key=KAT_PUB[2:])
    msg = b"request: job 42, purpose allowance"
    k_hex = f"{KAT_K:064x}"
    assert kat_key._sign_with_k(msg, KAT_K).hex() == eng.sign_with_sm3(msg, k_hex)
    assert eng.verify_with_sm3(kat_key.sign(msg).hex(), msg)


@pytest.fixture(scope="module")
def signed():
    key = Sm2PrivateKey.generate()
    msg = b"job=7;requester=civil_affairs;purpose=dibao"
    return key, msg, key.sign(msg)


def test_sm2_sign_verify_and_rejections(signed):
    key, msg, sig = signed
    pub = key.public_key()
    assert len(sig) == 64
    pub.verify(msg, sig)
    assert pub.is_valid_signature(msg, sig)
    with pytest.raises(IntegrityError):
        pub.verify(msg + b"!", sig)
    with pytest.raises(IntegrityError):
        pub.verify(msg, sig, uid=b"another signer id")
    for i in (0, 31, 32, 63):
        bad = bytearray(sig)
        bad[i] ^= 1
        with pytest.raises(IntegrityError):
            pub.verify(msg, bytes(bad))
    other = Sm2PrivateKey.generate().public_key()
    with pytest.raises(IntegrityError):
        other.verify(msg, sig)


def test_sm2_malformed_signatures_are_integrity_errors(signed):
    key, msg, sig = signed
    pub = key.public_key()
    n = int("FFFFFFFEFFFFFFFFFFFFFFFFFFFFFFFF7203DF6B21C6052B53BBF40939D54123", 16)
    r = sig[:32]
    for bad in [b"", sig[:63], sig + b"\0", bytes(64), r + bytes(32), bytes(32) + sig[32:],
                n.to_bytes(32, "big") + sig[32:], r + n.to_bytes(32, "big"),
                r + (n - int.from_bytes(r, "big")).to_bytes(32, "big")]:
        with pytest.raises(IntegrityError):
            pub.verify(msg, bad)
        assert not pub.is_valid_signature(msg, bad)


def test_sm2_signatures_are_randomised(signed):
    key, msg, sig = signed
    assert key.sign(msg) != sig


@pytest.mark.parametrize("d", [307, 327])  # public x starts with "0404…" / "00…"
def test_sm2_keys_with_leading_zero_or_04_x_coordinate(d):
    key = Sm2PrivateKey(d)
    pub = key.public_key()
    assert pub.to_hex()[2:4] in ("04", "00")
    msg = b"checkpoint"
    sig = key._sign_with_k(msg, 123456789)
    Sm2PublicKey.from_hex(pub.to_hex()).verify(msg, sig)
    Sm2PublicKey.from_bytes(pub.to_bytes()[1:]).verify(msg, sig)


def test_sm2_key_serialisation_round_trips(kat_key):
    pub = kat_key.public_key()
    for restored in (
        Sm2PrivateKey.from_bytes(kat_key.private_bytes()),
        Sm2PrivateKey.from_hex(kat_key.private_hex()),
        Sm2PrivateKey.from_der(kat_key.to_der()),
        Sm2PrivateKey.from_pem(kat_key.to_pem()),
        Sm2PrivateKey.from_pem(kat_key.to_pem().encode()),
    ):
        assert restored.public_key() == pub
    for restored_pub in (
        Sm2PublicKey.from_bytes(pub.to_bytes()),
        Sm2PublicKey.from_hex(pub.to_hex()),
        Sm2PublicKey.from_der(pub.to_der()),
        Sm2PublicKey.from_pem(pub.to_pem()),
    ):
        assert restored_pub == pub and hash(restored_pub) == hash(pub)
    assert kat_key.to_pem().startswith("-----BEGIN PRIVATE KEY-----")
    assert pub.to_pem().startswith("-----BEGIN PUBLIC KEY-----")
    assert len(pub.fingerprint()) == 64


def test_sm2_rejects_bad_keys(kat_key):
    with pytest.raises(CryptoError):
        Sm2PublicKey.from_hex(KAT_PUB[:-2] + "00")  # off the curve
    with pytest.raises(CryptoError):
        Sm2PublicKey.from_bytes(bytes(65))
    with pytest.raises(CryptoError):
        Sm2PublicKey.from_hex("zz")
    with pytest.raises(CryptoError):
        Sm2PrivateKey.from_bytes(bytes(32))  # d = 0
    with pytest.raises(CryptoError):
        Sm2PrivateKey.from_hex("ff" * 32)  # d >= n
    with pytest.raises(CryptoError):
        Sm2PublicKey.from_pem(kat_key.to_pem())  # wrong label
    pem = kat_key.to_der()
    with pytest.raises(CryptoError):
        Sm2PrivateKey.from_der(pem[:-1] + bytes([pem[-1] ^ 1]))  # public part inconsistent


def test_sm2_private_key_is_not_leaked_by_repr_or_pickle(kat_key):
    assert KAT_D.lower() not in repr(kat_key).lower()
    with pytest.raises(TypeError):
        pickle.dumps(kat_key)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl command not installed")
def test_sm2_pem_is_readable_by_openssl(tmp_path, kat_key):
    (tmp_path / "k.pem").write_text(kat_key.to_pem())
    (tmp_path / "p.pem").write_text(kat_key.public_key().to_pem())
    priv = subprocess.run(["openssl", "pkey", "-in", tmp_path / "k.pem", "-pubout"],
                          capture_output=True, text=True)
    if priv.returncode != 0 and "unsupported" in priv.stderr.lower():
        pytest.skip("this openssl has no SM2")
    assert priv.returncode == 0, priv.stderr
    assert Sm2PublicKey.from_pem(priv.stdout) == kat_key.public_key()
    pub = subprocess.run(["openssl", "pkey", "-pubin", "-in", tmp_path / "p.pem", "-outform", "DER"],
                         capture_output=True)
    assert pub.returncode == 0
    assert Sm2PublicKey.from_der(pub.stdout) == kat_key.public_key()


@pytest.mark.skipif(not sm2_openssl.available(), reason="no system libcrypto with SM2")
def test_sm2_on_openssl_points_interoperates_with_gmssl(monkeypatch):
    """Signatures made with OpenSSL's points verify with gmssl's and the other way round; a
    wrong message, key or signature fails on both paths."""
    for _ in range(5):
        key = Sm2PrivateKey.generate()
        other = Sm2PrivateKey.generate().public_key()
        msg = secrets.token_bytes(70)
        fast_sig = key.sign(msg)
        with monkeypatch.context() as m:
            m.setattr(sm2_openssl, "available", lambda: False)       # the gmssl path
            assert Sm2PrivateKey.from_hex(key.private_hex()).public_key() == key.public_key()
            key.public_key().verify(msg, fast_sig)
            slow_sig = key.sign(msg)
            assert not other.is_valid_signature(msg, fast_sig)
        key.public_key().verify(msg, slow_sig)
        for bad_msg, bad_key, bad_sig in ((msg + b"!", key.public_key(), fast_sig), (msg, other, slow_sig),
                                          (msg, key.public_key(), fast_sig[:32] + slow_sig[32:])):
            assert not bad_key.is_valid_signature(bad_msg, bad_sig)
