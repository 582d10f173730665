"""Paillier key holder side: key generation, secret storage, decryption.

Only the requester node imports this module (through ``PaillierBackend``); the
coordinator's blinding code never does. Decryption uses the p-half of ``phe``'s CRT private key (see ``decrypt``).
"""
from __future__ import annotations

import secrets

import gmpy2
import numpy as np
from phe import paillier as phe_paillier

from pc_common.errors import CryptoError, InvalidInput

from . import wire
from .backend import CipherVector, SecretContext, check_backend
from .paillier import DEFAULT_KEY_BITS, NAME, PaillierBackend, PaillierCipherVector, PaillierPublicContext

SECURE_KEY_BITS = (2048, 3072)


class PaillierSecretContext(SecretContext):
    backend_name = NAME

    def __init__(self, public: PaillierPublicContext, p: int, q: int) -> None:
        if p * q != public.n or p == q or min(p, q) <= 2 * public.plaintext_bound:
            raise CryptoError("secret key does not match its public key")
        self.public = public
        self._key = phe_paillier.PaillierPrivateKey(phe_paillier.PaillierPublicKey(public.n), p, q)
        # decryption modulo p alone (see PaillierPublicContext.plaintext_bound)
        self._p = gmpy2.mpz(self._key.p)
        self._p2 = gmpy2.mpz(self._key.psquare)
        self._hp = gmpy2.mpz(self._key.hp)

    def serialize_secret(self) -> bytes:
        """For the key holder's own sealed storage only."""
        k = self._key
        size = (self.public.key_bits + 7) // 8
        payload = wire.pack_fields(
            self.public.serialize(), int(k.p).to_bytes(size, "big"), int(k.q).to_bytes(size, "big")
        )
        return wire.pack_context(wire.MAGIC_SECRET, NAME, payload)


def make_hs(n: int) -> int:
    """hs = h^n mod n^2 with h = -x^2 mod n, x random in Z_n* (DJN)."""
    n_mpz = gmpy2.mpz(n)
    while True:
        x = gmpy2.mpz(secrets.randbelow(n - 2) + 2)
        if gmpy2.gcd(x, n_mpz) == 1:
            break
    h = (-x * x) % n_mpz
    return int(gmpy2.powmod(h, n_mpz, n_mpz * n_mpz))


def generate_keypair(
    key_bits: int = DEFAULT_KEY_BITS, *, allow_test_key: bool = False
) -> tuple[PaillierPublicContext, PaillierSecretContext]:
    """Fresh key pair. ``key_bits`` 2048 or 3072; 1024 only with ``allow_test_key``."""
    if key_bits not in SECURE_KEY_BITS and not (allow_test_key and key_bits == 1024):
        raise InvalidInput("Paillier key size must be 2048 or 3072 bits")
    phe_pub, phe_priv = phe_paillier.generate_paillier_keypair(n_length=key_bits)
    pub = PaillierPublicContext(phe_pub.n, make_hs(phe_pub.n), key_bits)
    return pub, PaillierSecretContext(pub, phe_priv.p, phe_priv.q)


def load_secret(data: bytes) -> PaillierSecretContext:
    msg = "secret key is malformed"
    payload = wire.unpack_context(data, wire.MAGIC_SECRET, NAME)
    pub_bytes, pb, qb = wire.unpack_fields(payload, 3, msg)
    pub = PaillierBackend().load_public(pub_bytes, min_key_bits=1024)
    return PaillierSecretContext(pub, int.from_bytes(pb, "big"), int.from_bytes(qb, "big"))


def decrypt(secret: SecretContext, cv: CipherVector) -> np.ndarray:
    """Centred plaintexts (object array of Python ints), decrypted modulo p.

    m ≡ L_p(c^(p-1) mod p^2)·h_p (mod p) is the p-half of phe's CRT decryption;
    since every meaningful plaintext satisfies |m| <= plaintext_bound < p/2, the
    centred residue mod p is m itself. A blinded zero test (uniform mod n) reads
    as zero mod p with probability 1/p < 2^-1000 when it is not zero.
    """
    check_backend(secret, PaillierSecretContext)
    check_backend(cv, PaillierCipherVector)
    if cv.public.fingerprint != secret.public.fingerprint:
        raise CryptoError("ciphertext was encrypted under a different key")
    p, p2, hp = secret._p, secret._p2, secret._hp
    pm1 = p - 1
    half = p // 2
    powmod, f_mod = gmpy2.powmod, gmpy2.f_mod
    out = np.empty(cv.length, dtype=object)
    for i, c in enumerate(cv.cts):
        m = f_mod(((powmod(f_mod(c, p2), pm1, p2) - 1) // p) * hp, p)
        out[i] = int(m - p) if m > half else int(m)
    return out
