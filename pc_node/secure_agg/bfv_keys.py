"""BFV key holder side: key generation, secret storage, decryption.

Only the requester node imports this module (through ``BfvBackend``).
"""
from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import tenseal as ts

from pc_common.errors import CryptoError

from . import wire
from .backend import CipherVector, SecretContext, check_backend
from .bfv import (
    NAME,
    POLY_MODULUS_DEGREE,
    BfvBackend,
    BfvCipherVector,
    BfvPublicContext,
    new_context,
    public_bytes,
)


class BfvSecretContext(SecretContext):
    backend_name = NAME

    def __init__(self, public: BfvPublicContext, private_ctx: Any) -> None:
        if not private_ctx.is_private():
            raise CryptoError("secret key is malformed")
        self.public = public
        self._ctx = private_ctx
        self._sk = private_ctx.secret_key()

    def serialize_secret(self) -> bytes:
        """For the key holder's own sealed storage only."""
        sec = self._ctx.serialize(save_secret_key=True, save_galois_keys=False, save_relin_keys=False)
        payload = wire.pack_fields(self.public.serialize(), sec)
        return wire.pack_context(wire.MAGIC_SECRET, NAME, payload)


def generate_keypair() -> tuple[BfvPublicContext, BfvSecretContext]:
    """A fresh key pair."""
    ctx = new_context()
    payload = public_bytes(ctx)
    pub = BfvPublicContext(ts.context_from(payload), payload)
    return pub, BfvSecretContext(pub, ctx)


def load_secret(data: bytes) -> BfvSecretContext:
    msg = "secret key is malformed"
    payload = wire.unpack_context(data, wire.MAGIC_SECRET, NAME)
    pub_bytes, sec_bytes = wire.unpack_fields(payload, 2, msg)
    pub = BfvBackend().load_public(pub_bytes)
    try:
        ctx = ts.context_from(sec_bytes)
    except Exception:
        raise CryptoError(msg) from None
    secret = BfvSecretContext(pub, ctx)
    # The secret key must open what its public key encrypts.
    probe = [secrets.randbelow(1 << 40) for _ in range(4)]
    if list(decrypt(secret, BfvBackend().encrypt(pub, probe))) != probe:
        raise CryptoError(msg)
    return secret


def decrypt(secret: SecretContext, cv: CipherVector) -> np.ndarray:
    """Centred plaintexts as int64 (SEAL's signed batch decoding)."""
    check_backend(secret, BfvSecretContext)
    check_backend(cv, BfvCipherVector)
    if cv.public.fingerprint != secret.public.fingerprint:
        raise CryptoError("ciphertext was encrypted under a different key")
    out = np.empty(len(cv.chunks) * POLY_MODULUS_DEGREE, dtype=np.int64)
    for i, chunk in enumerate(cv.chunks):
        out[i * POLY_MODULUS_DEGREE : (i + 1) * POLY_MODULUS_DEGREE] = chunk.decrypt(secret._sk)
    return out[: cv.length]
