"""National algorithms (国密): SM3, HMAC-SM3, SM4-GCM and SM2 signatures.

Fast paths go through OpenSSL via ``cryptography`` (SM3, SM4-GCM; from 4 KiB SM4-GCM runs on
:mod:`pc_common.sm4_aesni`, the same function 4.5× as fast, where the CPU allows). SM2 signatures
run on the system OpenSSL's curve (:mod:`pc_common.sm2_openssl`, 0.4–0.5 ms), or the pure-Python
``gmssl`` where it is missing (7–13 ms): sign a few things per job (requests, audit checkpoints). The message digest for SM2
(``e = SM3(Z_A || M)``, GB/T 32918.2) is computed here with the fast SM3.

Every authentication failure raises the same opaque :class:`IntegrityError`; a key or argument
that cannot be used at all raises :class:`CryptoError`. Randomness comes from ``secrets`` /
``os.urandom``; private seams (``nonce=``, ``_sign_with_k``) exist for known-answer tests only.
"""
from __future__ import annotations

import base64
import hmac as _std_hmac
import os
import re
import secrets
from collections.abc import Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.exceptions import InvalidTag
from gmssl import sm2 as _gmssl_sm2

from pc_common import sm2_openssl
from pc_common.errors import CryptoError, IntegrityError, InvalidInput

__all__ = ["SM3_DIGEST_SIZE", "SM4_KEY_SIZE", "GCM_NONCE_SIZE", "GCM_TAG_SIZE",
           "SM2_SIGNATURE_SIZE", "DEFAULT_SM2_UID", "sm3", "hmac_sm3", "constant_time_equal",
           "sm4_gcm_encrypt", "sm4_gcm_decrypt", "sm4_gcm_encrypt_many", "sm4_gcm_decrypt_many",
           "Sm2PrivateKey", "Sm2PublicKey"]

SM3_DIGEST_SIZE = 32
SM4_KEY_SIZE = 16
GCM_NONCE_SIZE = 12
GCM_TAG_SIZE = 16
GCM_OVERHEAD = GCM_NONCE_SIZE + GCM_TAG_SIZE
SM2_SIGNATURE_SIZE = 64
FAST_MIN_BYTES = 4096     # from this size SM4-GCM runs on the AES-NI kernels where the CPU has them
_BULK_BYTES = 256 << 10   # a payload this large starts their compilation in the background
DEFAULT_SM2_UID = b"1234567812345678"  # GB/T 35276 default signer identity

_SM3 = hashes.SM3()


# --------------------------------------------------------------------------- SM3 / HMAC-SM3
def sm3(data: bytes) -> bytes:
    """SM3 digest (32 bytes) of ``data``."""
    h = hashes.Hash(_SM3)
    h.update(data)
    return h.finalize()


def hmac_sm3(key: bytes, data: bytes) -> bytes:
    """HMAC-SM3 (32 bytes) of ``data`` under ``key``."""
    if not key:
        raise CryptoError("HMAC key must not be empty")
    m = _hmac.HMAC(key, _SM3)
    m.update(data)
    return m.finalize()


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return _std_hmac.compare_digest(a, b)


# --------------------------------------------------------------------------- SM4-GCM
def _check_sm4_key(key: bytes) -> None:
    if not isinstance(key, (bytes, bytearray, memoryview)) or len(key) != SM4_KEY_SIZE:
        raise CryptoError("SM4 key must be 16 bytes")


def _fast(size: int):
    """:mod:`pc_common.sm4_aesni` for ``size`` bytes once compiled (never waited for), else None;
    imported here so that a small command never loads numpy."""
    if size < FAST_MIN_BYTES:
        return None
    from pc_common import sm4_aesni
    if sm4_aesni.ready():
        return sm4_aesni
    if size >= _BULK_BYTES:
        sm4_aesni.start_in_background()
    return None


def sm4_gcm_encrypt(key: bytes, plaintext: bytes, aad: bytes = b"", nonce: bytes | None = None) -> bytes:
    """Encrypt with SM4-GCM (RFC 8998); returns ``nonce(12) || ciphertext || tag(16)``.

    ``nonce`` is for known-answer tests; leave it out otherwise (a fresh random nonce is drawn;
    never reuse a nonce under one key).
    """
    _check_sm4_key(key)
    if nonce is None:
        nonce = os.urandom(GCM_NONCE_SIZE)
    elif len(nonce) != GCM_NONCE_SIZE:
        raise CryptoError("SM4-GCM nonce must be 12 bytes")
    fast = _fast(len(plaintext))
    if fast:
        return fast.gcm_encrypt_into(bytes(key), nonce, plaintext, bytes(aad))
    enc = Cipher(algorithms.SM4(bytes(key)), modes.GCM(nonce)).encryptor()
    if aad:
        enc.authenticate_additional_data(aad)
    body = enc.update(plaintext)
    enc.finalize()
    return b"".join((nonce, body, enc.tag))


def sm4_gcm_decrypt(key: bytes, blob: bytes, aad: bytes = b"") -> bytes:
    """Decrypt ``nonce || ciphertext || tag``; any tampering (or wrong key/aad) → IntegrityError."""
    _check_sm4_key(key)
    try:
        view = memoryview(blob)
    except TypeError:
        raise IntegrityError("ciphertext failed authentication") from None
    if len(view) < GCM_OVERHEAD:
        raise IntegrityError("ciphertext failed authentication")
    fast = _fast(len(view) - GCM_OVERHEAD)
    if fast:        # a buffer another thread may change is copied: only authenticated bytes are decrypted
        plain_bytes = view.readonly and view.contiguous and view.format == "B"
        return fast.gcm_decrypt(bytes(key), view if plain_bytes else memoryview(view.tobytes()), bytes(aad))
    try:
        dec = Cipher(
            algorithms.SM4(bytes(key)),
            modes.GCM(view[:GCM_NONCE_SIZE].tobytes(), view[-GCM_TAG_SIZE:].tobytes()),
        ).decryptor()
        if aad:
            dec.authenticate_additional_data(aad)
        out = dec.update(view[GCM_NONCE_SIZE:-GCM_TAG_SIZE])
        dec.finalize()
    except (InvalidTag, ValueError, TypeError, BufferError):
        raise IntegrityError("ciphertext failed authentication") from None
    return out


def _aad_list(aads: Sequence[bytes] | bytes, n: int) -> Sequence[bytes]:
    if isinstance(aads, (bytes, bytearray)):
        return [bytes(aads)] * n
    if len(aads) != n:
        raise InvalidInput("one associated-data value is needed per field")
    return aads


def sm4_gcm_encrypt_many(
    key: bytes, plaintexts: Sequence[bytes], aads: Sequence[bytes] | bytes = b""
) -> list[bytes]:
    """Encrypt many short fields, each with its own random nonce (same format as
    :func:`sm4_gcm_encrypt`). ``aads`` is one value for all fields or one per field; binding each
    field to its row and column in the aad stops ciphertexts from being swapped between cells.
    """
    _check_sm4_key(key)
    n = len(plaintexts)
    aad_list = _aad_list(aads, n)
    algo = algorithms.SM4(bytes(key))
    nonces = os.urandom(GCM_NONCE_SIZE * n)
    gcm = modes.GCM
    out: list[bytes] = [b""] * n
    for i in range(n):
        nonce = nonces[i * GCM_NONCE_SIZE:(i + 1) * GCM_NONCE_SIZE]
        enc = Cipher(algo, gcm(nonce)).encryptor()
        a = aad_list[i]
        if a:
            enc.authenticate_additional_data(a)
        body = enc.update(plaintexts[i])
        enc.finalize()
        out[i] = nonce + body + enc.tag
    return out


def sm4_gcm_decrypt_many(
    key: bytes, blobs: Sequence[bytes], aads: Sequence[bytes] | bytes = b""
) -> list[bytes]:
    """Decrypt many fields; the first one that fails authentication raises IntegrityError."""
    _check_sm4_key(key)
    n = len(blobs)
    aad_list = _aad_list(aads, n)
    algo = algorithms.SM4(bytes(key))
    gcm = modes.GCM
    out: list[bytes] = [b""] * n
    try:
        for i in range(n):
            blob = blobs[i]
            if len(blob) < GCM_OVERHEAD:
                raise IntegrityError("ciphertext failed authentication")
            dec = Cipher(algo, gcm(blob[:GCM_NONCE_SIZE], blob[-GCM_TAG_SIZE:])).decryptor()
            a = aad_list[i]
            if a:
                dec.authenticate_additional_data(a)
            body = dec.update(blob[GCM_NONCE_SIZE:-GCM_TAG_SIZE])
            dec.finalize()
            out[i] = body
    except (InvalidTag, ValueError, TypeError, BufferError):
        raise IntegrityError("ciphertext failed authentication") from None
    return out


# --------------------------------------------------------------------------- SM2
_P = int(_gmssl_sm2.default_ecc_table["p"], 16)
_N = int(_gmssl_sm2.default_ecc_table["n"], 16)
_A = int(_gmssl_sm2.default_ecc_table["a"], 16)
_B = int(_gmssl_sm2.default_ecc_table["b"], 16)
_G_HEX = _gmssl_sm2.default_ecc_table["g"]
_Z_PREFIX_CURVE = (
    bytes.fromhex(_gmssl_sm2.default_ecc_table["a"])
    + bytes.fromhex(_gmssl_sm2.default_ecc_table["b"])
    + bytes.fromhex(_G_HEX)
)

# DER templates for the SM2 curve (OID 1.2.156.10197.1.301) under id-ecPublicKey.
_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a811ccf5501822d034200")
_PKCS8_PREFIX = bytes.fromhex(
    "308187020100301306072a8648ce3d020106082a811ccf5501822d046d306b0201010420"
)
_PKCS8_MIDDLE = bytes.fromhex("a144034200")
_PEM_RE = re.compile(
    r"-----BEGIN (?P<label>[A-Z ]+)-----\s*(?P<body>[A-Za-z0-9+/=\s]+?)\s*-----END (?P=label)-----"
)


def _pem(label: str, der: bytes) -> str:
    b64 = base64.b64encode(der).decode("ascii")
    lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def _unpem(text: str | bytes, label: str) -> bytes:
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise CryptoError("not a PEM document") from None
    m = _PEM_RE.search(text)
    if m is None or m.group("label") != label:
        raise CryptoError(f"expected a PEM {label.lower()}")
    try:
        return base64.b64decode("".join(m.group("body").split()), validate=True)
    except ValueError:
        raise CryptoError("PEM body is not valid base64") from None


def _engine(private_hex: str = "", public_hex: str = "") -> _gmssl_sm2.CryptSM2:
    eng = _gmssl_sm2.CryptSM2(private_key=private_hex, public_key="")
    # Set after construction: gmssl's constructor lstrip("04")s the key, which corrupts
    # keys whose x coordinate starts with 0 or 4.
    eng.public_key = public_hex
    return eng


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < _P and 0 <= y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


class Sm2PublicKey:
    """An SM2 public key (a point on the SM2 curve, validated on load)."""

    __slots__ = ("_x", "_y", "_hex")

    def __init__(self, x: int, y: int) -> None:
        if not _on_curve(x, y):
            raise CryptoError("not a valid SM2 public key")
        self._x, self._y = x, y
        self._hex = f"{x:064x}{y:064x}"

    # -- serialisation
    @classmethod
    def from_bytes(cls, data: bytes) -> "Sm2PublicKey":
        """Uncompressed point ``04 || x || y`` (65 bytes) or bare ``x || y`` (64 bytes)."""
        data = bytes(data)
        if len(data) == 65 and data[0] == 4:
            data = data[1:]
        if len(data) != 64:
            raise CryptoError("not a valid SM2 public key")
        return cls(int.from_bytes(data[:32], "big"), int.from_bytes(data[32:], "big"))

    @classmethod
    def from_hex(cls, text: str) -> "Sm2PublicKey":
        try:
            return cls.from_bytes(bytes.fromhex(text.strip()))
        except ValueError:
            raise CryptoError("not a valid SM2 public key") from None

    @classmethod
    def from_der(cls, der: bytes) -> "Sm2PublicKey":
        der = bytes(der)
        if len(der) != len(_SPKI_PREFIX) + 65 or not der.startswith(_SPKI_PREFIX):
            raise CryptoError("not an SM2 SubjectPublicKeyInfo")
        return cls.from_bytes(der[len(_SPKI_PREFIX):])

    @classmethod
    def from_pem(cls, text: str | bytes) -> "Sm2PublicKey":
        return cls.from_der(_unpem(text, "PUBLIC KEY"))

    def to_bytes(self) -> bytes:
        """Uncompressed point ``04 || x || y`` (65 bytes)."""
        return b"\x04" + bytes.fromhex(self._hex)

    def to_hex(self) -> str:
        return self.to_bytes().hex()

    def to_der(self) -> bytes:
        """X.509 SubjectPublicKeyInfo (readable by ``openssl pkey -pubin``)."""
        return _SPKI_PREFIX + self.to_bytes()

    def to_pem(self) -> str:
        return _pem("PUBLIC KEY", self.to_der())

    def fingerprint(self) -> str:
        """Hex SM3 of the uncompressed point: a short name for the key."""
        return sm3(self.to_bytes()).hex()

    # -- signatures
    def digest(self, message: bytes, uid: bytes = DEFAULT_SM2_UID) -> bytes:
        """``e = SM3(Z_A || message)`` with ``Z_A`` per GB/T 32918.2 for signer identity ``uid``."""
        if len(uid) >= 8192:
            raise InvalidInput("SM2 signer identity is too long")
        z = sm3((len(uid) * 8).to_bytes(2, "big") + uid + _Z_PREFIX_CURVE + bytes.fromhex(self._hex))
        return sm3(z + bytes(message))

    def verify(self, message: bytes, signature: bytes, uid: bytes = DEFAULT_SM2_UID) -> None:
        """Check a raw ``r || s`` (64 bytes) signature; raise IntegrityError unless it is valid."""
        try:
            sig = bytes(signature)
            if len(sig) != SM2_SIGNATURE_SIZE:
                raise IntegrityError("signature verification failed")
            r = int.from_bytes(sig[:32], "big")
            s = int.from_bytes(sig[32:], "big")
            if not (1 <= r < _N and 1 <= s < _N) or (r + s) % _N == 0:
                raise IntegrityError("signature verification failed")
            e = self.digest(message, uid)
            ok = sm2_openssl.verify(self.to_bytes(), r, s, e, _N) if sm2_openssl.available() else \
                _engine(public_hex=self._hex).verify(sig.hex(), e)
        except IntegrityError:
            raise
        except Exception:  # gmssl fails with TypeError etc. on degenerate points
            raise IntegrityError("signature verification failed") from None
        if ok is not True:
            raise IntegrityError("signature verification failed")

    def is_valid_signature(self, message: bytes, signature: bytes, uid: bytes = DEFAULT_SM2_UID) -> bool:
        try:
            self.verify(message, signature, uid)
        except IntegrityError:
            return False
        return True

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sm2PublicKey) and other._hex == self._hex

    def __hash__(self) -> int:
        return hash(self._hex)

    def __repr__(self) -> str:
        return f"Sm2PublicKey(fingerprint={self.fingerprint()[:16]})"


class Sm2PrivateKey:
    """An SM2 signing key. ``repr`` never shows the secret; export it only on purpose."""

    __slots__ = ("_d", "_public")

    def __init__(self, d: int) -> None:
        if not 1 <= d <= _N - 2:
            raise CryptoError("not a valid SM2 private key")
        self._d = d
        if sm2_openssl.available():
            self._public = Sm2PublicKey.from_bytes(sm2_openssl.mul_add(d))
        else:
            xy = _engine()._kg(d, _G_HEX)
            self._public = Sm2PublicKey(int(xy[:64], 16), int(xy[64:], 16))

    @classmethod
    def generate(cls) -> "Sm2PrivateKey":
        return cls(secrets.randbelow(_N - 2) + 1)

    def public_key(self) -> Sm2PublicKey:
        return self._public

    # -- serialisation (private material: call only to store the key)
    @classmethod
    def from_bytes(cls, data: bytes) -> "Sm2PrivateKey":
        if len(data) != 32:
            raise CryptoError("not a valid SM2 private key")
        return cls(int.from_bytes(data, "big"))

    @classmethod
    def from_hex(cls, text: str) -> "Sm2PrivateKey":
        try:
            return cls.from_bytes(bytes.fromhex(text.strip()))
        except ValueError:
            raise CryptoError("not a valid SM2 private key") from None

    @classmethod
    def from_der(cls, der: bytes) -> "Sm2PrivateKey":
        """Unencrypted PKCS#8 as written by :meth:`to_der`."""
        der = bytes(der)
        p, m = len(_PKCS8_PREFIX), len(_PKCS8_MIDDLE)
        if (
            len(der) != p + 32 + m + 65
            or not der.startswith(_PKCS8_PREFIX)
            or der[p + 32:p + 32 + m] != _PKCS8_MIDDLE
        ):
            raise CryptoError("not an SM2 PKCS#8 private key")
        key = cls.from_bytes(der[p:p + 32])
        if key.public_key().to_bytes() != der[p + 32 + m:]:
            raise CryptoError("not an SM2 PKCS#8 private key")
        return key

    @classmethod
    def from_pem(cls, text: str | bytes) -> "Sm2PrivateKey":
        return cls.from_der(_unpem(text, "PRIVATE KEY"))

    def private_bytes(self) -> bytes:
        return self._d.to_bytes(32, "big")

    def private_hex(self) -> str:
        return self.private_bytes().hex()

    def to_der(self) -> bytes:
        """Unencrypted PKCS#8 (readable by ``openssl pkey``); protect the file (mode 0600)."""
        return _PKCS8_PREFIX + self.private_bytes() + _PKCS8_MIDDLE + self._public.to_bytes()

    def to_pem(self) -> str:
        return _pem("PRIVATE KEY", self.to_der())

    # -- signing
    def sign(self, message: bytes, uid: bytes = DEFAULT_SM2_UID) -> bytes:
        """SM2 signature of ``message`` (SM3 with Z value), raw ``r || s``, 64 bytes."""
        while True:
            sig = self._sign_with_k(message, secrets.randbelow(_N - 1) + 1, uid)
            if sig is not None:
                return sig

    def _sign_with_k(self, message: bytes, k: int, uid: bytes = DEFAULT_SM2_UID) -> bytes | None:
        """Seam for known-answer tests: sign with a chosen nonce ``k`` (None if k is unusable)."""
        if not 1 <= k < _N:
            raise CryptoError("SM2 nonce out of range")
        e = self._public.digest(message, uid)
        if sm2_openssl.available():
            return sm2_openssl.sign(self._d, k, e, _N)
        out = _engine(private_hex=f"{self._d:064x}").sign(e, f"{k:064x}")
        return None if out is None else bytes.fromhex(out)

    def __repr__(self) -> str:
        return f"Sm2PrivateKey(public={self._public.fingerprint()[:16]})"

    def __reduce__(self):  # refuse accidental pickling of secrets
        raise TypeError("Sm2PrivateKey cannot be pickled; use private_bytes() explicitly")
