"""Digital envelope (数字信封): a payload sealed end to end for one recipient node.

Format (version 1)::

    0x01 || ephemeral X25519 public key (32) || SM4-GCM blob (nonce 12 || ciphertext || tag 16)

The SM4 key is fresh for every envelope: an ephemeral X25519 key agrees a secret with the
recipient's long-term X25519 key, and HKDF over SM3 derives the SM4 key from that secret, both
public keys and the caller's associated data. The header (version and ephemeral key) and the
associated data are also authenticated by GCM. Any change to the blob, the wrong private key or
different associated data raises the same opaque :class:`IntegrityError`.

The envelope hides the payload, not its length, and it does not say who sealed it: sign the
payload (SM2) where the recipient must know the sender.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from nacl import bindings as _sodium
from nacl import exceptions as _nacl_exc

from pc_common.errors import CryptoError, IntegrityError
from pc_common.gm import GCM_OVERHEAD, SM4_KEY_SIZE, sm4_gcm_decrypt, sm4_gcm_encrypt

__all__ = ["X25519KeyPair", "seal", "open_envelope", "ENVELOPE_OVERHEAD"]

_VERSION = 1
_KEY_SIZE = 32
_HEADER_SIZE = 1 + _KEY_SIZE
ENVELOPE_OVERHEAD = _HEADER_SIZE + GCM_OVERHEAD
_INFO = b"pc-envelope-v1/x25519-hkdf-sm3-sm4gcm"


@dataclass(frozen=True)
class X25519KeyPair:
    """A node's long-term envelope key. ``repr`` shows only the public half."""

    private: bytes = field(repr=False)
    public: bytes

    @classmethod
    def generate(cls) -> "X25519KeyPair":
        return cls.from_private(secrets.token_bytes(_KEY_SIZE))

    @classmethod
    def from_private(cls, private: bytes) -> "X25519KeyPair":
        private = bytes(private)
        if len(private) != _KEY_SIZE:
            raise CryptoError("X25519 private key must be 32 bytes")
        return cls(private=private, public=_sodium.crypto_scalarmult_base(private))

    def __reduce__(self):  # refuse accidental pickling of the private key
        raise TypeError("X25519KeyPair cannot be pickled; store .private explicitly")


def _derive_key(shared: bytes, eph_public: bytes, recipient_public: bytes, aad: bytes) -> bytes:
    info = b"".join(
        (_INFO, eph_public, recipient_public, len(aad).to_bytes(8, "big"), aad)
    )
    return HKDF(algorithm=hashes.SM3(), length=SM4_KEY_SIZE, salt=None, info=info).derive(shared)


def seal(recipient_public: bytes, plaintext: bytes, aad: bytes = b"") -> bytes:
    """Seal ``plaintext`` so that only the holder of ``recipient_public``'s private key can open it."""
    return _seal_with(recipient_public, plaintext, aad, secrets.token_bytes(_KEY_SIZE), None)


def _seal_with(
    recipient_public: bytes,
    plaintext: bytes,
    aad: bytes,
    ephemeral_private: bytes,
    nonce: bytes | None,
) -> bytes:
    """Seam for known-answer tests: chosen ephemeral key and nonce."""
    recipient_public = bytes(recipient_public)
    if len(recipient_public) != _KEY_SIZE:
        raise CryptoError("recipient public key must be 32 bytes")
    aad = bytes(aad)
    eph_public = _sodium.crypto_scalarmult_base(ephemeral_private)
    try:
        shared = _sodium.crypto_scalarmult(ephemeral_private, recipient_public)
    except _nacl_exc.CryptoError:  # low-order point: the shared secret would be all zeros
        raise CryptoError("recipient public key is not usable") from None
    key = _derive_key(shared, eph_public, recipient_public, aad)
    header = bytes((_VERSION,)) + eph_public
    return header + sm4_gcm_encrypt(key, plaintext, header + aad, nonce)


def open_envelope(recipient_private: bytes | X25519KeyPair, blob: bytes, aad: bytes = b"") -> bytes:
    """Open an envelope sealed to this node; tampering or the wrong key → IntegrityError."""
    if isinstance(recipient_private, X25519KeyPair):
        recipient_private = recipient_private.private
    recipient_private = bytes(recipient_private)
    if len(recipient_private) != _KEY_SIZE:
        raise CryptoError("X25519 private key must be 32 bytes")
    view = memoryview(blob)
    if len(view) < ENVELOPE_OVERHEAD or view[0] != _VERSION:
        raise IntegrityError("envelope failed authentication")
    header = view[:_HEADER_SIZE].tobytes()
    eph_public = header[1:]
    try:
        shared = _sodium.crypto_scalarmult(recipient_private, eph_public)
    except _nacl_exc.CryptoError:
        raise IntegrityError("envelope failed authentication") from None
    recipient_public = _sodium.crypto_scalarmult_base(recipient_private)
    aad = bytes(aad)
    key = _derive_key(shared, eph_public, recipient_public, aad)
    try:
        return sm4_gcm_decrypt(key, view[_HEADER_SIZE:], header + aad)
    except IntegrityError:
        raise IntegrityError("envelope failed authentication") from None
