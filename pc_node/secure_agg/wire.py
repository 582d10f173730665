"""Byte envelopes for keys and ciphertexts of every HE backend.

Why an envelope of our own instead of the libraries' formats alone:

* every ciphertext names the key it was made under (a 16-byte fingerprint of the
  public context), so a ciphertext under another job's key is refused with
  ``CryptoError`` instead of decrypting to garbage;
* a 16-byte BLAKE2b digest over header and payload catches truncated or corrupted
  transfers before a library parser sees them (this is an integrity check against
  accidents, not a MAC: the transport is mutually authenticated TLS);
* public contexts, secret contexts and ciphertexts have different magic numbers,
  so a secret key blob can never be loaded where a public context is expected.

Layouts (all integers big-endian)::

    context:    magic(4) version(1) backend(1) payload_len(8) payload digest(16)
    ciphertext: magic(4) version(1) backend(1) fingerprint(16) depth(1)
                length(8) payload_len(8) payload digest(16)
"""
from __future__ import annotations

import hashlib
import hmac
import struct

from pc_common.errors import CryptoError

MAGIC_PUBLIC = b"PCHP"
MAGIC_SECRET = b"PCHS"
MAGIC_CIPHERTEXT = b"PCHC"
VERSION = 1
BACKEND_IDS = {"paillier": 1, "bfv": 2}
FINGERPRINT_LEN = 16
_DIGEST_LEN = 16

_CONTEXT_HEADER = struct.Struct(">4sBBQ")
_CIPHER_HEADER = struct.Struct(">4sBB16sBQQ")

_MALFORMED = "ciphertext is malformed"
_WRONG_KEY = "ciphertext was encrypted under a different key"


def _digest(data: bytes | memoryview) -> bytes:
    return hashlib.blake2b(data, digest_size=_DIGEST_LEN).digest()


def key_fingerprint(public_payload: bytes) -> bytes:
    """Names a public context; equal iff the public key material is equal."""
    return hashlib.sha256(b"pc-he-public-context-v1\x00" + public_payload).digest()[:FINGERPRINT_LEN]


def pack_context(magic: bytes, backend: str, payload: bytes) -> bytes:
    head = _CONTEXT_HEADER.pack(magic, VERSION, BACKEND_IDS[backend], len(payload))
    body = head + payload
    return body + _digest(body)


def unpack_context(data: bytes, magic: bytes, backend: str) -> bytes:
    """Returns the payload; ``CryptoError`` if the blob is not this kind of context."""
    view = _as_view(data, "key context is malformed")
    size = _CONTEXT_HEADER.size
    if len(view) < size + _DIGEST_LEN:
        raise CryptoError("key context is malformed")
    got_magic, version, backend_id, payload_len = _CONTEXT_HEADER.unpack_from(view)
    if (
        got_magic != magic
        or version != VERSION
        or backend_id != BACKEND_IDS[backend]
        or payload_len != len(view) - size - _DIGEST_LEN
    ):
        raise CryptoError("key context is malformed or of the wrong kind")
    body = view[: size + payload_len]
    if not hmac.compare_digest(_digest(body), bytes(view[size + payload_len :])):
        raise CryptoError("key context is malformed")
    return bytes(view[size : size + payload_len])


def pack_ciphertext(backend: str, fingerprint: bytes, depth: int, length: int, payload: bytes) -> bytes:
    head = _CIPHER_HEADER.pack(
        MAGIC_CIPHERTEXT, VERSION, BACKEND_IDS[backend], fingerprint, depth, length, len(payload)
    )
    body = head + payload
    return body + _digest(body)


def unpack_ciphertext(data: bytes, backend: str, fingerprint: bytes) -> tuple[int, int, memoryview]:
    """Returns (depth, length, payload) after checking kind, integrity and key."""
    view = _as_view(data, _MALFORMED)
    size = _CIPHER_HEADER.size
    if len(view) < size + _DIGEST_LEN:
        raise CryptoError(_MALFORMED)
    magic, version, backend_id, got_fp, depth, length, payload_len = _CIPHER_HEADER.unpack_from(view)
    if (
        magic != MAGIC_CIPHERTEXT
        or version != VERSION
        or backend_id != BACKEND_IDS[backend]
        or payload_len != len(view) - size - _DIGEST_LEN
    ):
        raise CryptoError(_MALFORMED)
    body = view[: size + payload_len]
    if not hmac.compare_digest(_digest(body), bytes(view[size + payload_len :])):
        raise CryptoError(_MALFORMED)
    if not hmac.compare_digest(got_fp, fingerprint):
        raise CryptoError(_WRONG_KEY)
    return depth, length, view[size : size + payload_len]


def _as_view(data: object, message: str) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CryptoError(message)
    return memoryview(data).cast("B")


def pack_fields(*fields: bytes) -> bytes:
    """Length-prefixed concatenation (u32 lengths) for payloads with several parts."""
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def unpack_fields(payload: bytes | memoryview, count: int, message: str) -> list[bytes]:
    view = memoryview(payload)
    out: list[bytes] = []
    pos = 0
    for _ in range(count):
        if pos + 4 > len(view):
            raise CryptoError(message)
        (n,) = struct.unpack_from(">I", view, pos)
        pos += 4
        if pos + n > len(view):
            raise CryptoError(message)
        out.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != len(view):
        raise CryptoError(message)
    return out
